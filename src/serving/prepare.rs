//! Preparing a request's images on the blocking pool: decode and preprocess encoded images, or
//! reorder preprocessed NCHW tensors into the engine's NHWC layout.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::admission::Admission;
use super::request::Images;
use crate::engine::pool::Variant;
use crate::error::{Error, Result};
use crate::kernels::Tier;
use crate::pipeline::decode::{decode_for, DecodeLimits, Resize};
use crate::pipeline::preprocess::{preprocess, resize_target, Normalization};

/// A request's images as the engine takes them, and the time it took to get them so.
#[derive(Debug)]
pub struct Prepared {
    /// One NHWC input per image, at the variant's resolution.
    pub inputs: Vec<Vec<f32>>,
    /// Decoding every image.
    pub decode: Duration,
    /// Resizing, cropping and normalising every image (or reordering tensors).
    pub preprocess: Duration,
}

/// Prepares `images` for `variant` on the blocking pool, so that the async workers keep serving.
pub async fn prepare(
    admission: &Admission,
    variant: &Variant,
    images: Images,
    limits: DecodeLimits,
) -> Result<Prepared> {
    let rho = variant.spec.resolution;
    let channels = variant.model.in_c();
    let norm = variant.spec.normalization;
    let tier = variant.model.kernels().tier;
    // The decode keeps the request's admission slot even if the client goes away and the
    // handler is dropped: abandoned decodes cannot pile up beyond the in-flight limit.
    let slot = admission.slot()?;
    let span = tracing::debug_span!("prepare", images = images.len());
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _span = span.enter();
        match images {
            Images::Encoded { images, resize } => {
                decode_all(&images, &limits, resize, rho, norm, tier)
            }
            Images::Nchw { data, count } => {
                let t0 = Instant::now();
                let inputs = nchw_to_nhwc(&data, count, channels, rho)?;
                Ok(Prepared {
                    inputs,
                    decode: Duration::ZERO,
                    preprocess: t0.elapsed(),
                })
            }
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("decoding stopped: {e}")))?
}

/// Decodes and preprocesses every image; an error names the image when there are several.
fn decode_all(
    images: &[Bytes],
    limits: &DecodeLimits,
    resize: Resize,
    rho: usize,
    norm: Normalization,
    tier: Tier,
) -> Result<Prepared> {
    let mut prepared = Prepared {
        inputs: Vec::with_capacity(images.len()),
        decode: Duration::ZERO,
        preprocess: Duration::ZERO,
    };
    for (i, bytes) in images.iter().enumerate() {
        let which = |e: Error| {
            if images.len() == 1 {
                e
            } else {
                prefix_image_error(i, e)
            }
        };
        let t0 = Instant::now();
        let rgb = decode_for(bytes, limits, resize, resize_target(rho)).map_err(which)?;
        let t1 = Instant::now();
        prepared
            .inputs
            .push(preprocess(&rgb, rho, norm, tier).map_err(which)?);
        prepared.decode += t1 - t0;
        prepared.preprocess += t1.elapsed();
    }
    Ok(prepared)
}

/// Splits `count` NCHW images into the engine's per-image NHWC inputs, refusing a wrong element
/// count and non-finite values (they would come out as NaN scores: a silent wrong answer).
fn nchw_to_nhwc(data: &[f32], count: usize, channels: usize, rho: usize) -> Result<Vec<Vec<f32>>> {
    let plane = rho * rho;
    let per_image = channels * plane;
    if data.len() != count * per_image {
        return Err(Error::BadInput(format!(
            "{} elements for {count} images of {channels}x{rho}x{rho} ({} expected)",
            data.len(),
            count * per_image
        )));
    }
    if let Some(at) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::BadInput(format!(
            "element {at} is {}; inputs must be finite",
            data[at]
        )));
    }
    Ok(data
        .chunks_exact(per_image.max(1))
        .map(|image| {
            let mut nhwc = vec![0.0; per_image];
            for (c, src) in image.chunks_exact(plane.max(1)).enumerate() {
                for (p, &v) in src.iter().enumerate() {
                    nhwc[p * channels + c] = v;
                }
            }
            nhwc
        })
        .collect())
}

fn prefix_image_error(i: usize, e: Error) -> Error {
    match e {
        Error::Undecodable(m) => Error::Undecodable(format!("image {i}: {m}")),
        Error::UnsupportedFormat(m) => Error::UnsupportedFormat(format!("image {i}: {m}")),
        Error::TooLarge(m) => Error::TooLarge(format!("image {i}: {m}")),
        Error::BadInput(m) => Error::BadInput(format!("image {i}: {m}")),
        other => other,
    }
}
