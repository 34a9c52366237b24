//! Image bytes -> model input -> labelled predictions, as pure functions: decode (a JPEG's
//! markers checked first: [`jpeg_structure`]; large JPEGs at a reduced scale where asked:
//! [`scaled_jpeg`]; WebP through libwebp: [`webp`]), preprocess (resize, crop, normalise),
//! postprocess (softmax, top-k). Uses `kernels` (for its SIMD choice) and `error` only.

pub mod decode;
pub mod jpeg_structure;
pub mod postprocess;
pub mod preprocess;
pub mod scaled_jpeg;
pub mod webp;
