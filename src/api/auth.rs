//! Optional bearer-token authentication (`--api-key` / `API_KEY`) for HTTP and gRPC. Inference
//! and model routes need the key; health and metrics only when asked (`--auth-health`), so that
//! probes and scrapers keep working without the secret; the pages and the API description are
//! public (they hold no data). The key is kept only as its SHA-256, compared in constant time,
//! and never logged.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::errors::{for_path, status};
use crate::error::{Error, Result};

/// A secret API key, held as its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    /// A key as given on the command line: visible ASCII, no spaces, at least 16 characters
    /// (a shorter one is guessable); a final line break is dropped. The error never contains
    /// the key.
    pub fn new(key: &str) -> Result<Self> {
        // A key read from a file (a Kubernetes Secret made --from-file) often ends in a newline.
        let key = key.trim_end_matches(['\r', '\n']);
        if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(
                "the API key must be at least 16 visible ASCII characters, without spaces".into(),
            ));
        }
        Ok(ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the key. Comparing digests in constant time reveals neither a
    /// matching prefix nor the key's length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let diff = self
            .digest
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Who needs the key.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// The key; without one nothing is checked.
    pub key: Option<ApiKey>,
    /// Health and metrics need the key too.
    pub protect_health: bool,
}

/// What a route gives access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The pages and the API description.
    Public,
    /// Liveness, readiness, metrics, server metadata.
    Health,
    /// Inference and the models.
    Protected,
}

/// The access class of an HTTP `path`; anything not listed (unknown routes included) is
/// protected.
pub fn access(path: &str) -> Access {
    match path {
        // Exact paths, no prefixes: nothing else can be made to look public.
        "/" | "/docs" | "/openapi.json" | "/static/app.js" | "/static/docs.js"
        | "/static/style.css" => Access::Public,
        "/healthz" | "/readyz" | "/metrics" | "/v2" | "/v2/health/live" | "/v2/health/ready" => {
            Access::Health
        }
        _ => Access::Protected,
    }
}

impl Auth {
    /// Whether requests of class `access` must carry the key.
    pub fn required(&self, access: Access) -> bool {
        self.key.is_some()
            && match access {
                Access::Public => false,
                Access::Health => self.protect_health,
                Access::Protected => true,
            }
    }

    /// Checks an `Authorization` value: `Bearer <key>`.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<()> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let Some(value) = authorization else {
            return Err(Error::Unauthorized(
                "this server needs an API key: send `Authorization: Bearer <key>`".into(),
            ));
        };
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or_else(|| {
                Error::Unauthorized("the Authorization header must be `Bearer <key>`".into())
            })?;
        if key.matches(token.trim_ascii()) {
            Ok(())
        } else {
            Err(Error::Unauthorized("wrong API key".into()))
        }
    }

    /// The gRPC interceptor for services of class `access`.
    pub fn interceptor(
        &self,
        access: Access,
    ) -> impl FnMut(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> + Clone
    {
        let auth = self.clone();
        move |request: tonic::Request<()>| {
            if !auth.required(access) {
                return Ok(request);
            }
            let value = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes());
            auth.check(value).map(|()| request).map_err(status)
        }
    }
}

/// The HTTP middleware: refuses requests without the key where it is required, with 401 and
/// `WWW-Authenticate: Bearer`, in the error format of the route's protocol.
pub async fn require_key(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !auth.required(access(path)) {
        return next.run(request).await;
    }
    match auth.check(authorization(request.headers())) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            tracing::debug!(path, "refused: no valid API key");
            let mut response = for_path(path, e);
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(AUTHORIZATION).map(|v| v.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "correct-horse-battery-staple";

    #[test]
    fn only_the_exact_bearer_key_passes() {
        let auth = Auth {
            key: Some(ApiKey::new(KEY).unwrap()),
            protect_health: false,
        };
        assert!(auth
            .check(Some(b"Bearer correct-horse-battery-staple"))
            .is_ok());
        assert!(auth
            .check(Some(b"bearer correct-horse-battery-staple "))
            .is_ok());
        for wrong in [
            &b"Bearer correct-horse-battery-stapl"[..],
            b"Bearer correct-horse-battery-staple!",
            b"Basic correct-horse-battery-staple",
            b"correct-horse-battery-staple",
            b"Bearer ",
            b"",
        ] {
            assert!(auth.check(Some(wrong)).is_err(), "{wrong:?}");
        }
        assert!(auth.check(None).is_err());
        assert!(Auth::default().check(None).is_ok(), "no key, no check");
    }

    #[test]
    fn weak_keys_are_refused_and_keys_never_print() {
        assert!(ApiKey::new("short").is_err());
        assert!(ApiKey::new("has a space in the middle").is_err());
        let e = ApiKey::new("a-secret-with\ta-tab-inside")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(
            ApiKey::new(&format!("{KEY}\n")).unwrap(),
            ApiKey::new(KEY).unwrap()
        );
        let key = ApiKey::new(KEY).unwrap();
        assert!(!format!("{key:?}").contains("horse"));
    }

    #[test]
    fn routes_fall_in_their_class() {
        assert_eq!(access("/"), Access::Public);
        assert_eq!(access("/static/app.js"), Access::Public);
        assert_eq!(access("/static/../classify"), Access::Protected);
        assert_eq!(access("/openapi.json"), Access::Public);
        assert_eq!(access("/metrics"), Access::Health);
        assert_eq!(access("/v2/health/ready"), Access::Health);
        assert_eq!(access("/classify"), Access::Protected);
        assert_eq!(access("/v2/models/m/infer"), Access::Protected);
        assert_eq!(access("/nowhere"), Access::Protected);
        let auth = Auth {
            key: Some(ApiKey::new(KEY).unwrap()),
            protect_health: false,
        };
        assert!(!auth.required(Access::Health) && auth.required(Access::Protected));
        let strict = Auth {
            protect_health: true,
            ..auth
        };
        assert!(strict.required(Access::Health) && !strict.required(Access::Public));
    }
}
