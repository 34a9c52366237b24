//! Encoded bytes -> RGB8 pixels, with byte and pixel limits checked before any large allocation.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Bounds on what a client may make us decode (decompression bombs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest encoded size accepted, in bytes.
    pub max_bytes: usize,
    /// Largest decoded size accepted, in pixels (width x height).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 20 << 20,
            max_pixels: 40_000_000,
        }
    }
}

/// Formats this build decodes.
pub const SUPPORTED_FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Bmp,
    ImageFormat::Gif,
];

/// Decodes an image (format sniffed from its bytes), applies its EXIF orientation and converts it
/// to 8-bit RGB: grayscale is replicated, alpha dropped, 16-bit scaled, CMYK converted, and an
/// animation gives its first frame.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::Undecodable("the body is empty".into()));
    }
    if bytes.len() > limits.max_bytes {
        return Err(Error::TooLarge(format!(
            "{} bytes exceeds the limit of {} bytes",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| Error::Undecodable("not a recognised image format".into()))?;
    if !SUPPORTED_FORMATS.contains(&format) {
        return Err(Error::UnsupportedFormat(format!(
            "{format:?} (supported: JPEG, PNG, WebP, BMP, GIF)"
        )));
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a truncated scan with gray and succeeds: refuse instead of
        // classifying a partial picture.
        return Err(Error::Undecodable(
            "the JPEG is truncated (no end-of-image marker after its last scan)".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut io_limits = image::Limits::default();
    // Room for the largest accepted image at 16-bit RGBA plus the decoder's own buffers.
    io_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(io_limits);
    let decoder = reader.into_decoder().map_err(map_image_error)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Undecodable(format!("the image is {w}x{h}")));
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(Error::TooLarge(format!(
            "{w}x{h} = {} pixels exceeds the limit of {} pixels",
            u64::from(w) * u64::from(h),
            limits.max_pixels
        )));
    }
    let mut decoder = decoder;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Whether an end-of-image marker (FF D9) follows the last start-of-scan (FF DA). Inside
/// entropy-coded data an FF byte is always followed by 00 or a restart marker, so these pairs
/// are real markers; an EXIF thumbnail's own markers come before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn map_image_error(e: ImageError) -> Error {
    match e {
        ImageError::Limits(l) => Error::TooLarge(l.to_string()),
        ImageError::Unsupported(u) => Error::UnsupportedFormat(u.to_string()),
        other => Error::Undecodable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_jpeg() -> Vec<u8> {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, 7])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_complete_jpeg_decodes() {
        let img = decode(&tiny_jpeg(), &DecodeLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (16, 16));
    }

    #[test]
    fn a_truncated_jpeg_is_refused_wherever_it_is_cut() {
        let jpeg = tiny_jpeg();
        for cut in 2..jpeg.len() - 1 {
            let err = decode(&jpeg[..cut], &DecodeLimits::default()).unwrap_err();
            assert!(matches!(err, Error::Undecodable(_)), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn bytes_after_the_end_marker_are_tolerated() {
        let mut jpeg = tiny_jpeg();
        jpeg.extend_from_slice(b"trailing padding some cameras write");
        assert!(decode(&jpeg, &DecodeLimits::default()).is_ok());
    }
}
