//! The Open Inference Protocol's model repository extension, independent of transport: the
//! index, load and unload, as tritonclient's `get_model_repository_index`, `load_model` and
//! `unload_model` call them. This server has one repository: its models directory, addressed by
//! an empty `repository_name`.

use serde::Serialize;

use super::MODEL_VERSION;
use crate::error::{Error, Result};
use crate::serving::Service;

/// One model of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IndexModel {
    /// The model (variant) name.
    #[schema(example = "mobilenet_v1_0.5_160")]
    pub name: String,
    /// Its version: "1".
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    #[schema(example = "READY")]
    pub state: String,
    /// Why it is not ready (failed to load, unloaded), or that a new load failed while the
    /// previous one serves; empty otherwise.
    pub reason: String,
}

/// Every model the repository knows (`ready`: only those ready for inference).
pub fn index(service: &Service, repository: &str, ready: bool) -> Result<Vec<IndexModel>> {
    check_repository(repository)?;
    Ok(service
        .repository_index(ready)
        .into_iter()
        .map(|e| IndexModel {
            name: e.name,
            version: MODEL_VERSION.into(),
            state: e.state.as_str().into(),
            reason: e.reason,
        })
        .collect())
}

/// Loads or reloads `name`; `parameters` names the request's parameters, none of which is
/// supported (a configuration or files given in the request instead of the directory's).
pub async fn load(
    service: &Service,
    repository: &str,
    name: &str,
    parameters: &[String],
) -> Result<()> {
    check_repository(repository)?;
    check_no_parameters(parameters)?;
    service.load_model(name).await
}

/// Unloads `name` (see [`load`] for `parameters`).
pub async fn unload(
    service: &Service,
    repository: &str,
    name: &str,
    parameters: &[String],
) -> Result<()> {
    check_repository(repository)?;
    check_no_parameters(parameters)?;
    service.unload_model(name).await
}

fn check_repository(repository: &str) -> Result<()> {
    if repository.is_empty() {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "no repository `{repository}`: this server has one, named by an empty \
             repository_name"
        )))
    }
}

fn check_no_parameters(parameters: &[String]) -> Result<()> {
    match parameters.first() {
        None => Ok(()),
        Some(p) => Err(Error::BadRequest(format!(
            "repository parameter `{p}` is not supported: models load from the models directory \
             as it is"
        ))),
    }
}
