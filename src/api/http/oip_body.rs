//! The body of the Open Inference Protocol's REST inference: the JSON request and response,
//! and the binary tensor data extension (`Inference-Header-Content-Length`: the JSON part, then
//! the tensors' raw bytes).

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::timing::server_timing;
use crate::api::errors::oip_error;
use crate::error::Error;
use crate::oip::{
    self, json, tensor, ElementLimits, InputData, InputTensor, OutputData, RequestedOutput,
};

/// The binary extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The length of the JSON part, when the binary extension is used.
pub fn json_length(headers: &HeaderMap) -> Result<Option<usize>, Error> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "the {HEADER_LENGTH} header must be a byte count, got {value:?}"
            ))
        })
}

/// The JSON part of an inference request.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "42",
    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                "parameters": {"binary_data_size": 4321}}],
    "outputs": [{"name": "probs", "parameters": {"classification": 5}}],
    "parameters": {"timeout": 2000000}
}))]
pub struct RestRequest {
    /// Echoed in the response.
    id: Option<String>,
    /// Some clients repeat the model's name in the body; it must agree with the path.
    model_name: Option<String>,
    /// Must agree with the path's version, when both are given.
    model_version: Option<String>,
    /// `timeout` (microseconds) and `binary_data_output` (boolean).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    /// One input: `input` (FP32 [N,3,R,R], normalised NCHW) or `image` (BYTES [N] or [N,1],
    /// encoded images).
    inputs: Vec<RestInput>,
    /// The outputs wanted (`logits`, `probs`); all of them when empty.
    #[serde(default)]
    outputs: Vec<RestOutput>,
}

/// An input tensor.
#[derive(Debug, Deserialize, ToSchema)]
struct RestInput {
    /// `input` or `image`.
    name: String,
    /// Dimensions, batch first.
    shape: Vec<i64>,
    /// `FP32` for `input`, `BYTES` for `image`.
    datatype: String,
    /// `binary_data_size`: the element bytes follow the JSON part.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    /// The elements, flat or nested in row-major order; absent with `binary_data_size`.
    /// Left unparsed until the shape is checked (see [`json::flatten`]).
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<Box<RawValue>>,
}

/// A requested output.
#[derive(Debug, Deserialize, ToSchema)]
struct RestOutput {
    /// `logits` or `probs`.
    name: String,
    /// `binary_data` (boolean) and `classification` (the top k as "score:index:label").
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

/// An inference response's JSON part.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "model_name": "mobilenet_v1_0.5_160", "model_version": "1", "id": "42",
    "outputs": [{"name": "probs", "datatype": "BYTES", "shape": [1, 2],
                 "data": ["0.912:207:golden retriever", "0.051:208:Labrador retriever"]}]
}))]
pub struct RestResponse {
    /// The model that answered.
    model_name: String,
    /// Its version.
    model_version: String,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// In the order asked.
    outputs: Vec<RestOutputTensor>,
}

/// An output tensor: its elements in `data`, or in the binary part (`parameters`).
#[derive(Debug, Serialize, ToSchema)]
struct RestOutputTensor {
    /// `logits` or `probs`.
    name: String,
    /// `FP32`, or `BYTES` for classification strings.
    #[schema(value_type = String)]
    datatype: &'static str,
    /// Dimensions, batch first.
    shape: Vec<i64>,
    /// The elements, flat in row-major order.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData>,
    /// `binary_data_size` when the elements are in the binary part.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryDataSize>,
}

/// Where an output's elements are.
#[derive(Debug, Serialize, ToSchema)]
struct BinaryDataSize {
    /// Their byte count in the binary part.
    binary_data_size: usize,
}

/// A parsed request, with what the response needs from it.
#[derive(Debug)]
pub struct Parsed {
    /// The request for the protocol.
    pub request: oip::Request,
    /// The client's id, echoed in the response.
    pub id: Option<String>,
    /// Per output (in the order of the response), whether it goes in the binary part.
    pub binary: BinaryOutputs,
}

/// Which outputs are answered in binary.
#[derive(Debug)]
pub struct BinaryOutputs {
    /// Per requested output, in order.
    each: Vec<bool>,
    /// For all outputs when none are named (`binary_data_output`).
    default: bool,
}

impl BinaryOutputs {
    fn for_output(&self, i: usize) -> bool {
        self.each.get(i).copied().unwrap_or(self.default)
    }
}

/// Parses an infer body: the JSON request, then the binary part (after `header_len` bytes) cut
/// into the inputs that declare a `binary_data_size`.
pub fn parse_request(
    model: String,
    version: String,
    body: &Bytes,
    header_len: Option<usize>,
    limits: &ElementLimits,
) -> Result<Parsed, Error> {
    let (json_part, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(Error::BadRequest(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
        None => (body.clone(), Bytes::new()),
    };
    let rest: RestRequest = serde_json::from_slice(&json_part)
        .map_err(|e| Error::BadRequest(format!("invalid inference request JSON: {e}")))?;
    if let Some(named) = rest.model_name.as_deref() {
        if named != model {
            return Err(Error::BadRequest(format!(
                "the body names model `{named}` but the path `{model}`"
            )));
        }
    }
    let version = match (rest.model_version.as_deref(), version.as_str()) {
        (Some(body_v), path_v) if !path_v.is_empty() && body_v != path_v => {
            return Err(Error::BadRequest(format!(
                "the body names version `{body_v}` but the path `{path_v}`"
            )))
        }
        (Some(body_v), "") => body_v.to_string(),
        _ => version,
    };
    let mut inputs = Vec::with_capacity(rest.inputs.len());
    for input in rest.inputs {
        inputs.push(parse_input(input, &mut binary, limits)?);
    }
    if !binary.is_empty() {
        return Err(Error::BadRequest(format!(
            "{} bytes of binary data follow the inputs' declared binary_data_size",
            binary.len()
        )));
    }
    let default_binary = flag(&rest.parameters, "binary_data_output")?.unwrap_or(false);
    let mut outputs = Vec::with_capacity(rest.outputs.len());
    let mut each = Vec::with_capacity(rest.outputs.len());
    for o in rest.outputs {
        each.push(flag(&o.parameters, "binary_data")?.unwrap_or(default_binary));
        outputs.push(RequestedOutput {
            classification: integer(&o.parameters, oip::CLASSIFICATION)?,
            name: o.name,
        });
    }
    let timeout = oip::timeout_from_micros(integer(&rest.parameters, oip::TIMEOUT)?)?;
    let resize = text(&rest.parameters, oip::RESIZE)?
        .map(str::parse)
        .transpose()?;
    Ok(Parsed {
        request: oip::Request {
            model,
            version,
            inputs,
            outputs,
            timeout,
            resize,
        },
        id: rest.id,
        binary: BinaryOutputs {
            each,
            default: default_binary,
        },
    })
}

/// One input, its elements from the binary part (consumed in order) or from JSON `data`; the
/// element count its shape declares is checked against `limits` before any is decoded.
fn parse_input(
    input: RestInput,
    binary: &mut Bytes,
    limits: &ElementLimits,
) -> Result<InputTensor, Error> {
    let count = limits.check(&input.name, &input.datatype, &input.shape)?;
    let size = integer(&input.parameters, "binary_data_size")?;
    let fp32 = input.datatype == "FP32";
    let data = match (size, input.data) {
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest(format!(
                "input `{}` has both data and binary_data_size",
                input.name
            )))
        }
        (Some(size), None) => {
            let size = usize::try_from(size).ok().filter(|s| *s <= binary.len());
            let Some(size) = size else {
                return Err(Error::BadRequest(format!(
                    "input `{}`: binary_data_size is negative or beyond the {} bytes left in the \
                     body",
                    input.name,
                    binary.len()
                )));
            };
            let raw = binary.split_to(size);
            if fp32 {
                InputData::Fp32(tensor::fp32_from_le(&raw)?)
            } else {
                InputData::Bytes(tensor::bytes_from_raw(&raw, count)?)
            }
        }
        (None, Some(data)) if fp32 => InputData::Fp32(json::flatten(&data, count)?),
        (None, Some(data)) => InputData::Bytes(json::flatten(&data, count)?),
        (None, None) => {
            return Err(Error::BadRequest(format!(
                "input `{}` has neither data nor binary_data_size",
                input.name
            )))
        }
    };
    Ok(InputTensor {
        name: input.name,
        datatype: input.datatype,
        shape: input.shape,
        data,
    })
}

fn flag(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, Error> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::BadRequest(format!(
            "parameter `{key}` must be a boolean, got {other}"
        ))),
    }
}

fn text<'a>(params: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Error> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::BadRequest(format!(
            "parameter `{key}` must be a string, got {other}"
        ))),
    }
}

fn integer(params: &Map<String, Value>, key: &str) -> Result<Option<i64>, Error> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            Error::BadRequest(format!("parameter `{key}` must be an integer, got {v}"))
        }),
    }
}

/// The response: all JSON, or, when an output asked for binary, the JSON part followed by the
/// binary outputs in order and the header giving the JSON part's length.
pub fn infer_response(
    answer: oip::Response,
    id: Option<String>,
    binary: &BinaryOutputs,
) -> Response {
    let mut tail: Vec<u8> = Vec::new();
    let outputs = answer
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, out)| {
            let mut tensor = RestOutputTensor {
                name: out.name,
                datatype: out.data.datatype(),
                shape: out.shape,
                data: None,
                parameters: None,
            };
            if binary.for_output(i) {
                let raw = out.data.to_raw();
                tensor.parameters = Some(BinaryDataSize {
                    binary_data_size: raw.len(),
                });
                tail.extend_from_slice(&raw);
            } else {
                tensor.data = Some(out.data);
            }
            tensor
        })
        .collect();
    let head = RestResponse {
        model_name: answer.model,
        model_version: answer.version,
        id,
        outputs,
    };
    let head = match serde_json::to_vec(&head) {
        Ok(h) => h,
        Err(e) => return oip_error(Error::Internal(format!("response JSON: {e}"))),
    };
    let timing = server_timing(&answer.timings);
    let mut response = if tail.is_empty() {
        ([(CONTENT_TYPE, "application/json")], head).into_response()
    } else {
        let json_len = head.len();
        let mut body = head;
        body.extend_from_slice(&tail);
        let mut r = ([(CONTENT_TYPE, "application/octet-stream")], body).into_response();
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(json_len));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    const LIMITS: ElementLimits = ElementLimits { fp32: 64, bytes: 4 };

    fn body(json: &str, binary: &[u8]) -> (Bytes, Option<usize>) {
        let mut b = json.as_bytes().to_vec();
        b.extend_from_slice(binary);
        (Bytes::from(b), Some(json.len()))
    }

    #[test]
    fn binary_inputs_are_cut_in_order_and_must_add_up() {
        let raw = tensor::bytes_to_raw(&[b"ab".as_slice(), b"cde"]);
        let json = json!({
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                        "parameters": {"binary_data_size": raw.len()}}],
            "parameters": {"binary_data_output": true, "timeout": 2500},
        })
        .to_string();
        let json = json.as_str();
        let (b, n) = body(json, &raw);
        let p = parse_request("m".into(), String::new(), &b, n, &LIMITS).unwrap();
        assert_eq!(
            p.request.inputs[0].data,
            InputData::Bytes(vec![Bytes::from("ab"), Bytes::from("cde")])
        );
        assert_eq!(p.request.timeout, Some(Duration::from_micros(2500)));
        assert!(p.binary.for_output(0) && p.binary.default);
        // One byte too many, one too few.
        let (b, n) = body(json, &[raw.as_slice(), b"x"].concat());
        assert!(parse_request("m".into(), String::new(), &b, n, &LIMITS).is_err());
        let (b, n) = body(json, &raw[..10]);
        assert!(parse_request("m".into(), String::new(), &b, n, &LIMITS).is_err());
    }

    #[test]
    fn json_data_may_be_nested_and_must_match_the_datatype() {
        let ok = r#"{"id":"7","inputs":[{"name":"input","shape":[1,2,2],"datatype":"FP32","data":[[1,2],[3.5,-4]]}],"outputs":[{"name":"probs","parameters":{"classification":3,"binary_data":false}}]}"#;
        let p = parse_request("m".into(), "1".into(), &Bytes::from(ok), None, &LIMITS).unwrap();
        assert_eq!(
            p.request.inputs[0].data,
            InputData::Fp32(vec![1.0, 2.0, 3.5, -4.0])
        );
        assert_eq!(p.request.outputs[0].classification, Some(3));
        assert!(!p.binary.for_output(0));
        assert_eq!(p.id.as_deref(), Some("7"));
        let bad = ok.replace("3.5", "\"x\"");
        assert!(
            parse_request("m".into(), String::new(), &Bytes::from(bad), None, &LIMITS).is_err()
        );
        let wrong_model = ok.replace("\"id\"", "\"model_name\":\"other\",\"id\"");
        assert!(parse_request(
            "m".into(),
            String::new(),
            &Bytes::from(wrong_model),
            None,
            &LIMITS
        )
        .is_err());
    }

    #[test]
    fn declared_sizes_over_the_limits_are_refused_before_decoding() {
        let big = r#"{"inputs":[{"name":"input","shape":[65],"datatype":"FP32","data":[0]}]}"#;
        let e = parse_request("m".into(), String::new(), &Bytes::from(big), None, &LIMITS);
        assert!(e.unwrap_err().to_string().contains("at most 64"));
        let many =
            r#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["a","b","c"]}]}"#;
        let e = parse_request("m".into(), String::new(), &Bytes::from(many), None, &LIMITS);
        assert!(e.unwrap_err().to_string().contains("more than the 2"));
    }

    #[test]
    fn header_length_beyond_the_body_is_refused() {
        let b = Bytes::from_static(b"{}");
        assert!(parse_request("m".into(), String::new(), &b, Some(3), &LIMITS).is_err());
    }
}
