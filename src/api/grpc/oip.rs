//! The Open Inference Protocol's gRPC binding (`inference.GRPCInferenceService`) on the gRPC
//! port. Inputs come as typed `contents` or as `raw_input_contents`; outputs always go back as
//! `raw_output_contents`, which every client of the protocol reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::budget::{self, InferSizes, WireBudget};
use super::deadline::{grpc_timeout, request_timeout};
use crate::api::errors::status;
use crate::error::{Error, Result};
use crate::oip::{self, tensor, ElementLimits, InputData, InputTensor, RequestedOutput};
use crate::serving::Service;

/// The code generated from `proto/inference.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
}

/// The decoded sizes that an inference request's budget counts in.
const INFER_SIZES: InferSizes = InferSizes {
    request: size_of::<pb::ModelInferRequest>(),
    input: size_of::<pb::model_infer_request::InferInputTensor>(),
    output: size_of::<pb::model_infer_request::InferRequestedOutputTensor>(),
    parameter: size_of::<(String, pb::InferParameter)>() + 1,
    bytes: size_of::<Vec<u8>>(),
};

impl WireBudget for pb::ModelInferRequest {
    fn check(wire: &[u8]) -> std::result::Result<(), Status> {
        budget::infer_request(wire, &INFER_SIZES)
    }
}

/// The other requests: names and parameters only.
macro_rules! small_requests {
    ($($request:ident),*) => {$(
        impl WireBudget for pb::$request {
            fn check(wire: &[u8]) -> std::result::Result<(), Status> {
                budget::small_request(wire)
            }
        }
    )*};
}
small_requests!(
    ServerLiveRequest,
    ServerReadyRequest,
    ModelReadyRequest,
    ServerMetadataRequest,
    ModelMetadataRequest,
    RepositoryIndexRequest,
    RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest
);

/// Responses, which the generated client decodes, come from the server the client chose.
macro_rules! unchecked_responses {
    ($($response:ident),*) => {$(
        impl WireBudget for pb::$response {
            fn check(_wire: &[u8]) -> std::result::Result<(), Status> {
                Ok(())
            }
        }
    )*};
}
unchecked_responses!(
    ServerLiveResponse,
    ServerReadyResponse,
    ModelReadyResponse,
    ServerMetadataResponse,
    ModelMetadataResponse,
    ModelInferResponse,
    RepositoryIndexResponse,
    RepositoryModelLoadResponse,
    RepositoryModelUnloadResponse
);

use pb::grpc_inference_service_server::GrpcInferenceService;
pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// Protocol label of these requests in the metrics.
const PROTOCOL: &str = "oip_grpc";
/// The fully qualified service name (for health checks).
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// The `inference.GRPCInferenceService` implementation.
#[derive(Debug, Clone)]
pub struct InferenceApi {
    service: Arc<Service>,
}

impl InferenceApi {
    /// The protocol over `service`.
    pub fn new(service: Arc<Service>) -> Self {
        InferenceApi { service }
    }
}

fn string_param<'a>(
    params: &'a HashMap<String, pb::InferParameter>,
    key: &str,
) -> Result<Option<&'a str>> {
    use pb::infer_parameter::ParameterChoice;
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s)),
        Some(_) => Err(Error::BadRequest(format!(
            "parameter `{key}` must be a string"
        ))),
    }
}

fn int_param(params: &HashMap<String, pb::InferParameter>, key: &str) -> Result<Option<i64>> {
    use pb::infer_parameter::ParameterChoice;
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Uint64Param(v)) => i64::try_from(*v)
            .map(Some)
            .map_err(|_| Error::BadRequest(format!("parameter `{key}` is too large"))),
        Some(_) => Err(Error::BadRequest(format!(
            "parameter `{key}` must be an integer"
        ))),
    }
}

/// Translates a protobuf request; `deadline` is the client's grpc-timeout, if any.
pub(crate) fn to_request(
    msg: pb::ModelInferRequest,
    deadline: Option<Duration>,
    longest: Duration,
    limits: &ElementLimits,
) -> Result<oip::Request> {
    let asked = oip::timeout_from_micros(int_param(&msg.parameters, oip::TIMEOUT)?)?;
    let timeout = request_timeout(asked, deadline, longest)?;
    let resize = string_param(&msg.parameters, oip::RESIZE)?
        .map(str::parse)
        .transpose()?;
    let raw = msg.raw_input_contents;
    if !raw.is_empty() && raw.len() != msg.inputs.len() {
        return Err(Error::BadRequest(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            msg.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(msg.inputs.len());
    for input in msg.inputs {
        let count = limits.check(&input.name, &input.datatype, &input.shape)?;
        let data = match (raw.next(), input.contents) {
            (Some(_), Some(_)) => {
                return Err(Error::BadRequest(format!(
                    "input `{}` has both contents and raw_input_contents",
                    input.name
                )))
            }
            (Some(bytes), None) => match input.datatype.as_str() {
                "FP32" => InputData::Fp32(tensor::fp32_from_le(&bytes)?),
                "BYTES" => InputData::Bytes(tensor::bytes_from_raw(&Bytes::from(bytes), count)?),
                other => return Err(oip::unsupported_datatype(&input.name, other)),
            },
            (None, Some(contents)) => match input.datatype.as_str() {
                "FP32" => InputData::Fp32(contents.fp32_contents),
                "BYTES" => InputData::Bytes(
                    contents
                        .bytes_contents
                        .into_iter()
                        .map(Bytes::from)
                        .collect(),
                ),
                other => return Err(oip::unsupported_datatype(&input.name, other)),
            },
            (None, None) => {
                return Err(Error::BadRequest(format!(
                    "input `{}` has no contents",
                    input.name
                )))
            }
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        });
    }
    let mut outputs = Vec::with_capacity(msg.outputs.len());
    for o in msg.outputs {
        outputs.push(RequestedOutput {
            classification: int_param(&o.parameters, oip::CLASSIFICATION)?,
            name: o.name,
        });
    }
    Ok(oip::Request {
        model: msg.model_name,
        version: msg.model_version,
        inputs,
        outputs,
        timeout,
        resize,
    })
}

fn to_response(answer: oip::Response, id: String) -> pb::ModelInferResponse {
    let mut raw = Vec::with_capacity(answer.outputs.len());
    let outputs = answer
        .outputs
        .into_iter()
        .map(|o| {
            raw.push(o.data.to_raw());
            pb::model_infer_response::InferOutputTensor {
                name: o.name,
                datatype: o.data.datatype().to_string(),
                shape: o.shape,
                parameters: HashMap::new(),
                contents: None,
            }
        })
        .collect();
    pb::ModelInferResponse {
        model_name: answer.model,
        model_version: answer.version,
        id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceApi {
    async fn server_live(
        &self,
        _request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.service.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let m = request.into_inner();
        let ready = oip::model_ready(&self.service, &m.name, &m.version).map_err(status)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let m = oip::server_metadata();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let m = request.into_inner();
        let meta = oip::model_metadata(&self.service, &m.name, &m.version).map_err(status)?;
        let tensors = |list: Vec<oip::TensorMetadata>| {
            list.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: meta.name,
            versions: meta.versions,
            platform: meta.platform,
            inputs: tensors(meta.inputs),
            outputs: tensors(meta.outputs),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        let models = oip::repository::index(&self.service, &r.repository_name, r.ready)
            .map_err(status)?
            .into_iter()
            .map(|m| pb::repository_index_response::ModelIndex {
                name: m.name,
                version: m.version,
                state: m.state,
                reason: m.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        let parameters: Vec<String> = r.parameters.into_keys().collect();
        oip::repository::load(
            &self.service,
            &r.repository_name,
            &r.model_name,
            &parameters,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        // tritonclient always sends it; there are no dependents (no ensembles).
        let parameters: Vec<String> = r
            .parameters
            .into_keys()
            .filter(|k| k != "unload_dependents")
            .collect();
        oip::repository::unload(
            &self.service,
            &r.repository_name,
            &r.model_name,
            &parameters,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let mut admission = self.service.admit(PROTOCOL).map_err(status)?;
        let msg = request.into_inner();
        let id = msg.id.clone();
        let longest = self.service.config().max_request_timeout;
        let limits = ElementLimits::of(&self.service);
        admission.count_as(&self.service.metrics_label(&msg.model_name));
        let parsed = admission
            .check(to_request(msg, deadline, longest, &limits))
            .map_err(status)?;
        oip::infer(&self.service, admission, parsed)
            .await
            .map(|answer| Response::new(to_response(answer, id)))
            .map_err(status)
    }
}
