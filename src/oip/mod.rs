//! The Open Inference Protocol (KServe v2), independent of transport: each variant is a model
//! with one version, two alternative inputs (`input`: normalised FP32 NCHW tensors as the ONNX
//! file takes them; `image`: encoded images that the server preprocesses) and two outputs
//! (`logits` as the ONNX file gives them, `probs` their softmax), plus the classification
//! extension. The REST and gRPC front ends translate to and from these types. Uses `serving`
//! and below, never `api`.

pub mod json;
pub mod repository;
pub mod tensor;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::engine::pool::Variant;
use crate::error::{Error, Result};
use crate::pipeline::decode::Resize;
use crate::pipeline::postprocess::{softmax_in_place, top_k};
use crate::serving::{millis, Admission, Images, InferRequest, Service, Timings};
use tracing::Instrument;

/// The one version every model has.
pub const MODEL_VERSION: &str = "1";
/// What the models are, in the protocol's platform vocabulary.
pub const PLATFORM: &str = "onnx_onnxv1";
/// The server's name in its metadata.
pub const SERVER_NAME: &str = "mobilenet-serve";
/// Protocol extensions this server implements.
pub const EXTENSIONS: [&str; 3] = ["classification", "binary_tensor_data", "model_repository"];
/// Input of preprocessed tensors.
pub const INPUT: &str = "input";
/// Input of encoded images.
pub const IMAGE: &str = "image";
/// Output of raw model scores.
pub const LOGITS: &str = "logits";
/// Output of softmax probabilities.
pub const PROBS: &str = "probs";
/// Output parameter asking for the top k classes as strings.
pub const CLASSIFICATION: &str = "classification";
/// Request parameter bounding the request's time, in microseconds (Triton's convention).
pub const TIMEOUT: &str = "timeout";
/// Request parameter: `fast` or `exact` decoding of encoded images (the server's `--resize` when
/// absent).
pub const RESIZE: &str = "resize";

/// One tensor's description in metadata.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub datatype: String,
    /// Dimensions; -1 is the variable batch.
    pub shape: Vec<i64>,
}

/// What `GET /v2/models/{name}` and `ModelMetadata` return.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Available versions.
    pub versions: Vec<String>,
    /// Model format.
    pub platform: String,
    /// Accepted inputs (one per request).
    pub inputs: Vec<TensorMetadata>,
    /// Available outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// What `GET /v2` and `ServerMetadata` return.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    /// Server name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Supported extensions.
    pub extensions: Vec<String>,
}

/// The server's metadata.
pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: SERVER_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

/// Refuses any version but the one there is; empty means the current one.
pub fn check_version(name: &str, version: &str) -> Result<()> {
    if version.is_empty() || version == MODEL_VERSION {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "model `{name}` has no version `{version}` (the only one is `{MODEL_VERSION}`)"
        )))
    }
}

/// Whether model `name` (at `version`) takes requests: the service is ready. Unknown models and
/// versions are errors.
pub fn model_ready(service: &Service, name: &str, version: &str) -> Result<bool> {
    service.variant(name)?;
    check_version(name, version)?;
    Ok(service.is_ready())
}

/// The metadata of model `name` at `version`.
pub fn model_metadata(service: &Service, name: &str, version: &str) -> Result<ModelMetadata> {
    let served = service.variant(name)?;
    let variant = served.variant();
    check_version(name, version)?;
    let r = variant.spec.resolution as i64;
    let channels = variant.model.in_c() as i64;
    let classes = variant.spec.num_classes as i64;
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    };
    Ok(ModelMetadata {
        name: name.into(),
        versions: vec![MODEL_VERSION.into()],
        platform: PLATFORM.into(),
        inputs: vec![
            tensor(INPUT, "FP32", vec![-1, channels, r, r]),
            tensor(IMAGE, "BYTES", vec![-1]),
        ],
        outputs: output_names(variant)
            .iter()
            .map(|n| tensor(n, "FP32", vec![-1, classes]))
            .collect(),
    })
}

/// The outputs a variant offers: `probs` always; `logits` unless the graph ends with a softmax.
fn output_names(variant: &Variant) -> Vec<&'static str> {
    if variant.model.softmax() {
        vec![PROBS]
    } else {
        vec![LOGITS, PROBS]
    }
}

/// An input tensor's elements, as a front end parsed them.
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    /// FP32 elements, row-major.
    Fp32(Vec<f32>),
    /// BYTES elements.
    Bytes(Vec<Bytes>),
}

/// One input tensor of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    /// Tensor name.
    pub name: String,
    /// Declared element type.
    pub datatype: String,
    /// Declared shape.
    pub shape: Vec<i64>,
    /// The elements.
    pub data: InputData,
}

/// One output a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Top k classes as strings instead of the tensor, when set.
    pub classification: Option<i64>,
}

/// An inference request, transport aside.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Model name.
    pub model: String,
    /// Model version ("" for the current one).
    pub version: String,
    /// Input tensors (exactly one is accepted).
    pub inputs: Vec<InputTensor>,
    /// Outputs wanted; empty for all.
    pub outputs: Vec<RequestedOutput>,
    /// The client's time bound.
    pub timeout: Option<Duration>,
    /// How encoded images come down to the model's size (the server's default when `None`).
    pub resize: Option<Resize>,
}

/// An output tensor's elements (in JSON, a flat array of numbers or of strings).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OutputData {
    /// FP32 elements, row-major.
    Fp32(Vec<f32>),
    /// BYTES elements (classification strings).
    Bytes(Vec<String>),
}

impl OutputData {
    /// The protocol's name of the element type.
    pub fn datatype(&self) -> &'static str {
        match self {
            OutputData::Fp32(_) => "FP32",
            OutputData::Bytes(_) => "BYTES",
        }
    }

    /// The elements in the protocol's binary form.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutputData::Fp32(v) => tensor::fp32_to_le(v),
            OutputData::Bytes(v) => tensor::bytes_to_raw(v),
        }
    }
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Shape, batch first.
    pub shape: Vec<i64>,
    /// The elements.
    pub data: OutputData,
}

/// An inference response, transport aside.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The model that answered.
    pub model: String,
    /// Its version.
    pub version: String,
    /// The outputs, in the order asked (or `logits`, `probs`).
    pub outputs: Vec<OutputTensor>,
    /// Where the time went.
    pub timings: Timings,
}

/// Runs an inference request through the service's batcher and builds the outputs it asks
/// for. `admission` counts the request's outcome and timings, refusals of malformed requests
/// included, once; the binding has already labelled it with the model named before parsing
/// the body (see [`Admission::count_as`]), so that a malformed body is counted under it too.
pub async fn infer(
    service: &Service,
    mut admission: Admission,
    request: Request,
) -> Result<Response> {
    let span = admission.span().clone();
    let result = infer_inner(service, &mut admission, request)
        .instrument(span)
        .await;
    admission.settle(result.as_ref().map(|r| &r.timings));
    result
}

async fn infer_inner(
    service: &Service,
    admission: &mut Admission,
    request: Request,
) -> Result<Response> {
    let started = admission.admitted();
    let served = service.variant(&request.model)?;
    let variant = served.variant();
    check_version(&request.model, &request.version)?;
    let resize = request.resize.unwrap_or(service.config().resize);
    let images = images(variant, request.inputs, resize)?;
    let wanted = requested_outputs(variant, request.outputs)?;
    // A client's bound beyond the server's longest is capped rather than refused, as gRPC's
    // grpc-timeout is.
    let longest = service.config().max_request_timeout;
    let answer = service
        .infer(
            admission,
            InferRequest {
                model: served.clone(),
                images,
                timeout: request.timeout.map(|t| t.min(longest)),
            },
        )
        .await?;
    let post_started = Instant::now();
    let outputs = tracing::debug_span!("postprocess").in_scope(|| {
        wanted
            .iter()
            .map(|w| build_output(service, variant, &answer.outputs, w))
            .collect()
    });
    let mut timings = answer.timings;
    let now = Instant::now();
    timings.postprocess = millis(now - post_started);
    timings.total = millis(now - started);
    Ok(Response {
        model: answer.model,
        version: MODEL_VERSION.into(),
        outputs,
        timings,
    })
}

/// How many elements an input tensor may declare: as many images as a request may hold, each
/// as large as the largest variant's input. Checked before any element is decoded, so that a
/// declared size cannot make the server allocate more than a real request would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementLimits {
    /// FP32 elements (`input`).
    pub fp32: usize,
    /// BYTES elements (`image`).
    pub bytes: usize,
}

impl ElementLimits {
    /// The limits of `service`'s configuration and variants.
    pub fn of(service: &Service) -> Self {
        let images = service.config().max_images_per_request;
        ElementLimits {
            fp32: images.saturating_mul(service.largest_input_len()),
            bytes: images,
        }
    }

    /// The element count `shape` declares for `datatype`, refused when over the limit.
    pub fn check(&self, name: &str, datatype: &str, shape: &[i64]) -> Result<usize> {
        let count = tensor::element_count(shape)?;
        let limit = match datatype {
            "FP32" => self.fp32,
            "BYTES" => self.bytes,
            other => return Err(unsupported_datatype(name, other)),
        };
        if count > limit {
            return Err(Error::BadInput(format!(
                "input `{name}` declares {count} elements; a request may hold at most {limit} \
                 ({datatype})"
            )));
        }
        Ok(count)
    }
}

/// The one input tensor as the service's images, after checking its name, type and shape.
fn images(variant: &Variant, inputs: Vec<InputTensor>, resize: Resize) -> Result<Images> {
    let mut inputs = inputs.into_iter();
    let (Some(input), None) = (inputs.next(), inputs.next()) else {
        return Err(Error::BadRequest(format!(
            "exactly one input tensor is expected: `{INPUT}` (FP32) or `{IMAGE}` (BYTES)"
        )));
    };
    let count = tensor::element_count(&input.shape)?;
    let r = variant.spec.resolution as i64;
    let channels = variant.model.in_c() as i64;
    match (input.name.as_str(), input.data) {
        (INPUT, InputData::Fp32(data)) if input.datatype == "FP32" => {
            let ok_shape = input.shape.len() == 4 && input.shape[1..] == [channels, r, r];
            if !ok_shape || input.shape[0] < 1 {
                return Err(Error::BadInput(format!(
                    "input `{INPUT}` of `{}` must have shape [N, {channels}, {r}, {r}] with \
                     N >= 1, got {:?}",
                    variant.spec.name, input.shape
                )));
            }
            check_element_count(INPUT, data.len(), count)?;
            Ok(Images::Nchw {
                data,
                count: input.shape[0] as usize,
            })
        }
        (IMAGE, InputData::Bytes(list)) if input.datatype == "BYTES" => {
            let ok_shape = match input.shape.as_slice() {
                [n] => *n >= 1,
                [n, 1] => *n >= 1,
                _ => false,
            };
            if !ok_shape {
                return Err(Error::BadInput(format!(
                    "input `{IMAGE}` must have shape [N] or [N, 1] with N >= 1, got {:?}",
                    input.shape
                )));
            }
            check_element_count(IMAGE, list.len(), count)?;
            Ok(Images::Encoded {
                images: list,
                resize,
            })
        }
        (INPUT | IMAGE, _) => Err(Error::BadRequest(format!(
            "input `{}` has datatype {}; `{INPUT}` is FP32 and `{IMAGE}` is BYTES",
            input.name, input.datatype
        ))),
        (other, _) => Err(Error::BadRequest(format!(
            "unknown input `{other}`; the inputs are `{INPUT}` (FP32 [N, {channels}, {r}, {r}]) \
             and `{IMAGE}` (BYTES [N], encoded images)"
        ))),
    }
}

/// The error of an input whose datatype this server does not take.
pub fn unsupported_datatype(name: &str, datatype: &str) -> Error {
    Error::BadRequest(format!(
        "input `{name}` has datatype `{datatype}`; this server takes FP32 and BYTES"
    ))
}

/// The `timeout` request parameter (microseconds; 0 means the server's default).
pub fn timeout_from_micros(us: Option<i64>) -> Result<Option<Duration>> {
    match us {
        None | Some(0) => Ok(None),
        Some(us) if us < 0 => Err(Error::BadRequest(format!(
            "the timeout parameter must be positive microseconds, got {us}"
        ))),
        Some(us) => Ok(Some(Duration::from_micros(us as u64))),
    }
}

fn check_element_count(name: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "input `{name}` holds {got} elements but its shape says {expected}"
        )))
    }
}

/// The outputs to build: as asked, checked, or all of them.
fn requested_outputs(
    variant: &Variant,
    requested: Vec<RequestedOutput>,
) -> Result<Vec<RequestedOutput>> {
    let names = output_names(variant);
    if requested.is_empty() {
        return Ok(names
            .iter()
            .map(|n| RequestedOutput {
                name: n.to_string(),
                classification: None,
            })
            .collect());
    }
    let classes = variant.spec.num_classes as i64;
    for (i, r) in requested.iter().enumerate() {
        if !names.contains(&r.name.as_str()) {
            return Err(Error::BadRequest(format!(
                "unknown output `{}`; this model's outputs are {}",
                r.name,
                names.join(", ")
            )));
        }
        if requested[..i].iter().any(|o| o.name == r.name) {
            return Err(Error::BadRequest(format!(
                "output `{}` is requested twice",
                r.name
            )));
        }
        if let Some(k) = r.classification {
            if !(1..=classes).contains(&k) {
                return Err(Error::BadRequest(format!(
                    "classification must be between 1 and {classes}, got {k}"
                )));
            }
        }
    }
    Ok(requested)
}

/// One output over every image: the scores, their softmax, or the top k as
/// "score:index:label" strings (Triton's classification format).
fn build_output(
    service: &Service,
    variant: &Variant,
    rows: &[Vec<f32>],
    wanted: &RequestedOutput,
) -> OutputTensor {
    let n = rows.len() as i64;
    let classes = variant.spec.num_classes;
    let values: Vec<Vec<f32>> = if wanted.name == PROBS && !variant.model.softmax() {
        rows.iter()
            .map(|r| {
                let mut p = r.clone();
                softmax_in_place(&mut p);
                p
            })
            .collect()
    } else {
        rows.to_vec()
    };
    match wanted.classification {
        Some(k) => {
            let k = k as usize;
            let strings = values
                .iter()
                .flat_map(|row| {
                    top_k(row, k).into_iter().map(|(index, score)| {
                        format!("{score:.6}:{index}:{}", service.label(variant, index))
                    })
                })
                .collect();
            OutputTensor {
                name: wanted.name.clone(),
                shape: vec![n, k as i64],
                data: OutputData::Bytes(strings),
            }
        }
        None => OutputTensor {
            name: wanted.name.clone(),
            shape: vec![n, classes as i64],
            data: OutputData::Fp32(values.concat()),
        },
    }
}
