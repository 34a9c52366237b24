//! The bodies of the cargo-fuzz targets in `fuzz/`. They live in the library so that they reach
//! the crate-private parsers, and so that `tests/fuzz_regressions.rs` replays the regression
//! corpus through exactly the code the fuzzer ran.
//!
//! Each function takes arbitrary bytes and returns whether they were accepted. Refusing them
//! with an [`Error`](crate::Error) is correct; a panic, a hang, an abort or an allocation
//! beyond the limits is a bug. Where an input is accepted, the function also checks what the
//! accepted value promises.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use bytes::Bytes;
use prost::Message;

use crate::api::grpc::oip as oip_grpc;
use crate::api::http::{classifier, oip_body};
use crate::engine::import::import_any;
use crate::engine::network::Network;
use crate::kernels::{KernelSet, Tier, TierChoice};
use crate::oip::{ElementLimits, InputData};
use crate::pipeline::decode::{decode, decode_for, DecodeLimits, Resize};
use crate::pipeline::preprocess::{preprocess, Normalization};

/// A target's body: takes the fuzzer's bytes, returns whether they were accepted.
pub type TargetFn = fn(&[u8]) -> bool;

/// The fuzz targets, by the name of their file in `fuzz/fuzz_targets/` and of their
/// regression directory in `fuzz/regressions/`.
pub const TARGETS: [(&str, TargetFn); 5] = [
    ("decode", decode_and_preprocess),
    ("classify_body", classify_body),
    ("oip_rest", oip_rest_request),
    ("oip_grpc", oip_grpc_request),
    ("import", import_and_run),
];

/// Decode limits smaller than the server's defaults, so that a large but legal image does not
/// slow the fuzzer down; the checks are the same code.
const LIMITS: DecodeLimits = DecodeLimits {
    max_bytes: 1 << 20,
    max_pixels: 4_000_000,
};

/// As many images per request (32), each as large as the largest variant's input, as the
/// default configuration allows.
const ELEMENTS: ElementLimits = ElementLimits {
    fp32: 32 * 3 * 224 * 224,
    bytes: 32,
};

/// Decodes the bytes as an image and preprocesses it at one of the four resolutions (chosen by
/// the input's length, so that the image bytes stay untouched).
pub fn decode_and_preprocess(data: &[u8]) -> bool {
    let Ok(img) = decode(data, &LIMITS) else {
        return false;
    };
    assert!(
        img.width() > 0 && img.height() > 0,
        "decoded an empty image"
    );
    assert!(
        u64::from(img.width()) * u64::from(img.height()) <= LIMITS.max_pixels,
        "decoded beyond the pixel limit"
    );
    // The scaled decode (libjpeg, in C) on every JPEG at least 64 px on its shorter side: what
    // the full decode takes, it takes too (falling back to it where libjpeg fails), no larger.
    let scaled = decode_for(data, &LIMITS, Resize::Fast, 16)
        .unwrap_or_else(|e| panic!("the full decode succeeded, the fast one failed: {e}"));
    assert!(
        scaled.width() <= img.width() && scaled.height() <= img.height(),
        "the scaled decode is larger"
    );
    let rho = [224, 192, 160, 128][data.len() % 4];
    let run = |tier| {
        preprocess(&img, rho, Normalization::default(), tier)
            .unwrap_or_else(|e| panic!("a decoded image failed to preprocess on {tier}: {e}"))
    };
    let tier = *Tier::supported().last().unwrap_or(&Tier::Scalar);
    let tensor = run(tier);
    assert_eq!(tensor.len(), rho * rho * 3, "wrong tensor size");
    // The scalar tier is the specification: the resize is exact on every tier, so only the
    // normalization's rounding may differ.
    let reference = run(Tier::Scalar);
    assert!(
        tensor
            .iter()
            .zip(&reference)
            .all(|(a, b)| (a - b).abs() <= 1e-6),
        "{tier} preprocessed differently from the scalar tier"
    );
    // One ulp of slack: 255 / 127.5 - 1 is exactly 1 only as long as it is not computed fused.
    let bound = 1.0 + f32::EPSILON;
    assert!(
        tensor.iter().all(|v| v.abs() <= bound),
        "a value outside [-1, 1]"
    );
    true
}

/// A `/classify` request: the first line is the `content-type`, the second the query string,
/// the rest the body. Parses the query and reads the body as raw bytes, JSON or multipart.
pub fn classify_body(data: &[u8]) -> bool {
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let content_type = lines.next().unwrap_or_default();
    let query = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let body = Bytes::copy_from_slice(lines.next().unwrap_or_default());
    let mut request = Request::new(Body::from(body));
    if let Ok(value) = HeaderValue::from_bytes(content_type) {
        request.headers_mut().insert(CONTENT_TYPE, value);
    }
    let parsed = block_on(classifier::parse_classify(
        LIMITS.max_bytes,
        Some(&query),
        request,
    ));
    let Ok((request, _)) = parsed else {
        return false;
    };
    assert!(
        !request.images.is_empty(),
        "accepted a request without images"
    );
    let total: usize = request.images.iter().map(Bytes::len).sum();
    assert!(total <= data.len(), "images larger than the request");
    true
}

/// An OIP REST infer body. The first four bytes, if they read as a little-endian length that
/// fits the rest, are the `Inference-Header-Content-Length` (the binary extension).
pub fn oip_rest_request(data: &[u8]) -> bool {
    let (header_len, body) = match data.split_first_chunk::<4>() {
        Some((len, rest)) => {
            let len = u32::from_le_bytes(*len) as usize;
            (Some(len).filter(|n| *n <= rest.len()), rest)
        }
        None => (None, data),
    };
    let body = Bytes::copy_from_slice(body);
    let parsed = oip_body::parse_request(
        "mobilenet_v1_1.0_224".into(),
        String::new(),
        &body,
        header_len,
        &ELEMENTS,
    );
    parsed.map(|p| check_inputs(&p.request)).is_ok()
}

/// An OIP gRPC `ModelInferRequest`, as protobuf bytes.
pub fn oip_grpc_request(data: &[u8]) -> bool {
    let Ok(msg) = oip_grpc::pb::ModelInferRequest::decode(data) else {
        return false;
    };
    let parsed = oip_grpc::to_request(msg, None, Duration::from_secs(60), &ELEMENTS);
    parsed.map(|r| check_inputs(&r)).is_ok()
}

/// Imports the bytes as a model of any kind the pool takes (ONNX float or QDQ, TFLite float or
/// uint8); a model that imports is bound to the best kernels of this machine and run on one
/// small image, as the pool would run it.
pub fn import_and_run(data: &[u8]) -> bool {
    let Ok(imported) = import_any(data) else {
        return false;
    };
    let Ok(kernels) = KernelSet::select(TierChoice::Auto) else {
        return false;
    };
    let network = Network::new(imported, kernels);
    let [h, w] = network.fixed_size().map(|d| d.unwrap_or(16));
    // A huge declared input is refused by the pool's consistency check, not run here.
    if h.saturating_mul(w) > 64 * 64 {
        return false;
    }
    let Ok(footprint) = network.footprint(1, h, w) else {
        return false;
    };
    if footprint.values.max(footprint.bytes).max(footprint.patches) > 1 << 24 {
        return false;
    }
    let input = vec![0.5; h * w * network.in_c()];
    let Ok(out) = network.run(&input, 1, h, w) else {
        return false;
    };
    assert!(!out.is_empty(), "a model that ran gave no output");
    true
}

/// What an accepted OIP request promises: no input holds more elements than the limits allow.
fn check_inputs(request: &crate::oip::Request) {
    for input in &request.inputs {
        let (n, limit) = match &input.data {
            InputData::Fp32(v) => (v.len(), ELEMENTS.fp32),
            InputData::Bytes(v) => (v.len(), ELEMENTS.bytes),
        };
        assert!(
            n <= limit,
            "an input of {n} elements over the limit of {limit}"
        );
    }
}

/// Runs a future to completion on a runtime kept for the thread: the parsers are async only
/// because they read bodies.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().build().ok();
    }
    RUNTIME.with(|rt| match rt {
        Some(rt) => rt.block_on(future),
        None => panic!("no tokio runtime for the fuzz target"),
    })
}
