//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' own types and
//! attributes: every route is registered together with its description (utoipa-axum), so the
//! document and the router cannot drift apart.

use std::sync::{Arc, OnceLock};

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{OpenApi, PartialSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{access, Access};
use super::errors::is_oip_path;
use crate::serving::Service;

/// The document's frame: title, description, tags. The paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mobilenet-serve",
        description = "MobileNet v1 image classification on CPUs: 16 variants (width multiplier \
            alpha x input resolution) served by our own engine. Pick the variant per request by \
            name, by grid cell or by a latency/accuracy target. Errors are JSON: \
            `{\"error\": {\"code\", \"message\"}}` here, `{\"error\": \"...\"}` under `/v2` (the \
            Open Inference Protocol's format).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "classify", description = "Image classification"),
        (name = "models", description = "The variants, their cost, accuracy and live latency"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "open inference protocol",
            description = "KServe v2 / Open Inference Protocol REST binding"),
        (name = "pages", description = "The web pages and this description"),
    )
)]
struct Frame;

/// Every route of the HTTP application with its description; `api::http::app` serves them.
pub fn router() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::with_openapi(Frame::openapi())
        .merge(super::http::classifier::routes())
        .merge(super::http::oip::routes())
        .merge(super::http::repository::routes())
        .merge(super::web::routes())
        .routes(routes!(openapi_json))
}

/// Name of the bearer-token security scheme.
const API_KEY_SCHEME: &str = "api_key";

/// Describes the optional API key where [`access`] says the middleware asks for it: the scheme,
/// each operation's (optional) requirement, and its 401 answer. Health routes list it too,
/// since `--auth-health` protects them.
fn describe_auth(api: &mut utoipa::openapi::OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description = Some(
        "Only when the server runs with --api-key (API_KEY): `Authorization: Bearer <key>`.".into(),
    );
    components.add_security_scheme(API_KEY_SCHEME, SecurityScheme::Http(scheme));
    for (path, item) in api.paths.paths.iter_mut() {
        if access(path) == Access::Public {
            continue;
        }
        let error_schema = if is_oip_path(path) {
            "OipErrorBody"
        } else {
            "ErrorBody"
        };
        let unauthorized = ResponseBuilder::new()
            .description("The server needs an API key and the request has none, or a wrong one")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(error_schema)))
                    .build(),
            )
            .header(
                "www-authenticate",
                HeaderBuilder::new()
                    .schema(Some(String::schema()))
                    .description(Some("`Bearer`"))
                    .build(),
            )
            .build();
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            // `{}` first: the key is optional, as the server may run without one.
            operation.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
            ]);
            operation
                .responses
                .responses
                .insert("401".into(), unauthorized.clone().into());
        }
    }
}

/// Describes the request id every operation takes and every answer echoes
/// ([`super::request_id`]).
fn describe_request_id(api: &mut utoipa::openapi::OpenApi) {
    let name = super::request_id::HEADER;
    let parameter = ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Your id for this request (visible ASCII, at most 128 bytes), logged with every \
             line of it; one is made when absent",
        ))
        .schema(Some(String::schema()))
        .build();
    let header = HeaderBuilder::new()
        .schema(Some(String::schema()))
        .description(Some(
            "The request's id: the client's, or the one made for it",
        ))
        .build();
    for item in api.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .push(parameter.clone().into());
            for response in operation.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response.headers.insert(name.into(), header.clone().into());
                }
            }
        }
    }
}

/// The description as pretty JSON, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut api = router().into_openapi();
        api.info.version = env!("CARGO_PKG_VERSION").to_string();
        describe_auth(&mut api);
        describe_request_id(&mut api);
        // Built from our own types only: serialising it cannot fail.
        api.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"OpenAPI document: {e}\"}}"))
    })
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "pages",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-cache"),
        ],
        document(),
    )
}
