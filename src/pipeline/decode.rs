//! Encoded bytes -> RGB8 pixels, with byte and pixel limits checked before any large allocation.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use super::{jpeg_structure, scaled_jpeg, webp};
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

/// How an image comes down to the model's input size.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// A JPEG whose shorter side is at least four times the resize target is decoded at 1/2,
    /// 1/4 or 1/8 of its size in the DCT domain (keeping at least twice the target), then
    /// resized like `exact` from there; anything else as `exact`.
    #[default]
    Fast,
    /// The full image, then Pillow's antialiased resize: bit-exact with the reference pipeline.
    Exact,
}

impl std::str::FromStr for Resize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(Resize::Fast),
            "exact" => Ok(Resize::Exact),
            other => Err(Error::BadRequest(format!(
                "resize must be `fast` or `exact`, not `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for Resize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resize::Fast => "fast",
            Resize::Exact => "exact",
        })
    }
}

/// Decodes an image (format sniffed from its bytes), applies its EXIF orientation and converts it
/// to 8-bit RGB: grayscale is replicated, alpha dropped, 16-bit scaled, CMYK converted, and an
/// animation gives its first frame. The full image: [`Resize::Exact`].
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    decode_for(bytes, limits, Resize::Exact, 0)
}

/// [`decode`], but with [`Resize::Fast`] a large JPEG comes at the smallest of 1/2, 1/4 and 1/8
/// of its size whose shorter side keeps [`scaled_jpeg::MARGIN`] times `short_target` (the
/// resize's target). Both limits apply to the full size, before anything is decoded.
pub fn decode_for(
    bytes: &[u8],
    limits: &DecodeLimits,
    resize: Resize,
    short_target: usize,
) -> Result<RgbImage> {
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
    if format == ImageFormat::Jpeg {
        let structure = jpeg_structure::read(bytes);
        if !structure.complete {
            // The JPEG decoders fill a truncated scan with gray and succeed: refuse instead of
            // classifying a partial picture.
            return Err(Error::Undecodable(
                "the JPEG is truncated (no end-of-image marker after its last scan)".into(),
            ));
        }
        if structure.scans > jpeg_structure::MAX_SCANS {
            return Err(Error::Undecodable(format!(
                "the JPEG has {} scans, more than the {} decoded here (encoders write about 10)",
                structure.scans,
                jpeg_structure::MAX_SCANS
            )));
        }
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut io_limits = image::Limits::default();
    // Room for the largest accepted image at 16-bit RGBA plus the decoder's own buffers.
    let max_alloc = limits.max_pixels.saturating_mul(8).saturating_add(64 << 20);
    io_limits.max_alloc = Some(max_alloc);
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
    let upright_rgb = |mut img: DynamicImage| {
        img.apply_orientation(orientation);
        into_rgb8(img)
    };
    if resize == Resize::Fast && format == ImageFormat::Jpeg {
        let target = u32::try_from(short_target).unwrap_or(u32::MAX);
        let denominator = scaled_jpeg::denominator_for(w, h, target);
        if denominator > 1 {
            if let Some(small) = scaled_jpeg::decode(bytes, denominator) {
                return upright_rgb(DynamicImage::ImageRgb8(small));
            }
        }
    }
    if format == ImageFormat::WebP {
        return upright_rgb(DynamicImage::ImageRgb8(webp::decode(
            bytes, w, h, max_alloc,
        )?));
    }
    upright_rgb(DynamicImage::from_decoder(decoder).map_err(map_image_error)?)
}

/// `DynamicImage::into_rgb8` with the 8-bit layouts done here: `image` 0.25 converts them
/// through its colour-space-aware path, in floats with a rounding per channel, which was 63% of
/// the time of a 12 MP grayscale JPEG (`perf`). The same bytes: grey replicated, alpha dropped.
fn into_rgb8(img: DynamicImage) -> Result<RgbImage> {
    let (w, h) = (img.width(), img.height());
    let (src, channels): (&[u8], usize) = match &img {
        DynamicImage::ImageLuma8(i) => (i.as_raw(), 1),
        DynamicImage::ImageLumaA8(i) => (i.as_raw(), 2),
        DynamicImage::ImageRgba8(i) => (i.as_raw(), 4),
        _ => return Ok(img.into_rgb8()),
    };
    let mut rgb = vec![0u8; src.len() / channels * 3];
    for (out, px) in rgb.chunks_exact_mut(3).zip(src.chunks_exact(channels)) {
        match channels {
            4 => out.copy_from_slice(&px[..3]),
            _ => out.fill(px[0]),
        }
    }
    RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| Error::Internal(format!("a {w}x{h} image has the wrong buffer size")))
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

    /// A 1200x900 picture with detail at every scale, encoded by libjpeg (mozjpeg) as
    /// grayscale, CMYK or (from RGB) YCbCr, progressive or baseline.
    fn big_jpeg(space: mozjpeg::ColorSpace, progressive: bool) -> Vec<u8> {
        use mozjpeg::ColorSpace::{JCS_CMYK, JCS_GRAYSCALE, JCS_RGB};
        let (w, h) = (1200usize, 900usize);
        let (input, channels) = match space {
            JCS_CMYK => (JCS_CMYK, 4),
            JCS_GRAYSCALE => (JCS_GRAYSCALE, 1),
            _ => (JCS_RGB, 3),
        };
        let mut pixels = Vec::with_capacity(w * h * channels);
        for y in 0..h {
            for x in 0..w {
                let r = (x * 255 / w) as u8;
                let g = (y * 255 / h) as u8;
                let b = if (x / 37 + y / 23) % 2 == 0 { 220 } else { 30 };
                let rgbk = [r, g, b, 255 - r];
                match channels {
                    1 => pixels.push(r / 2 + b / 2),
                    n => pixels.extend_from_slice(&rgbk[..n]),
                }
            }
        }
        let mut c = mozjpeg::Compress::new(input);
        c.set_size(w, h);
        c.set_color_space(space);
        c.set_quality(90.0);
        if progressive {
            c.set_progressive_mode();
        }
        let mut started = c.start_compress(Vec::new()).unwrap();
        started.write_scanlines(&pixels).unwrap();
        started.finish().unwrap()
    }

    /// Mean absolute difference of two images after the same downscale to 146 px high.
    fn difference(a: &RgbImage, b: &RgbImage) -> f64 {
        let small = |i: &RgbImage| {
            let w = (i.width() as f64 * 146.0 / i.height() as f64).round() as u32;
            image::imageops::resize(i, w, 146, image::imageops::FilterType::Triangle)
        };
        let (a, b) = (small(a), small(b));
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: f64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
            .sum();
        sum / a.as_raw().len() as f64
    }

    #[test]
    fn fast_decodes_large_jpegs_at_a_reduced_scale_and_the_same_picture() {
        use mozjpeg::ColorSpace::{JCS_YCbCr, JCS_GRAYSCALE};
        let limits = DecodeLimits::default();
        for (space, progressive) in [
            (JCS_YCbCr, false),
            (JCS_YCbCr, true),
            (JCS_GRAYSCALE, false),
        ] {
            let jpeg = big_jpeg(space, progressive);
            let exact = decode_for(&jpeg, &limits, Resize::Exact, 146).unwrap();
            let fast = decode_for(&jpeg, &limits, Resize::Fast, 146).unwrap();
            assert_eq!(exact.dimensions(), (1200, 900));
            // 900 / 2 = 450 keeps twice 146; 900 / 4 = 225 would not.
            assert_eq!(fast.dimensions(), (600, 450), "{space:?} {progressive}");
            let diff = difference(&exact, &fast);
            assert!(diff < 2.0, "{space:?} progressive {progressive}: {diff}");
            // A target the image is not four times larger than: decoded in full, as exact.
            let near = decode_for(&jpeg, &limits, Resize::Fast, 256).unwrap();
            assert_eq!(near, exact);
        }
    }

    #[test]
    fn fast_falls_back_to_the_full_decode_where_libjpeg_gives_no_rgb() {
        let cmyk = big_jpeg(mozjpeg::ColorSpace::JCS_CMYK, false);
        let limits = DecodeLimits::default();
        let exact = decode_for(&cmyk, &limits, Resize::Exact, 146).unwrap();
        let fast = decode_for(&cmyk, &limits, Resize::Fast, 146).unwrap();
        assert_eq!(fast, exact);
    }

    #[test]
    fn fast_applies_the_exif_orientation_and_the_limits_first() {
        let jpeg = big_jpeg(mozjpeg::ColorSpace::JCS_YCbCr, false);
        // An APP1 EXIF segment after SOI: one IFD entry, orientation 6 (rotate 90 clockwise).
        let mut exif =
            b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0".to_vec();
        let len = (exif.len() + 2) as u16;
        exif.splice(0..0, [0xFF, 0xE1, (len >> 8) as u8, len as u8]);
        let mut rotated = jpeg[..2].to_vec();
        rotated.extend(exif);
        rotated.extend(&jpeg[2..]);
        let limits = DecodeLimits::default();
        let exact = decode_for(&rotated, &limits, Resize::Exact, 146).unwrap();
        let fast = decode_for(&rotated, &limits, Resize::Fast, 146).unwrap();
        assert_eq!(
            (exact.dimensions(), fast.dimensions()),
            ((900, 1200), (450, 600))
        );
        assert!(difference(&exact, &fast) < 2.0);

        let tight = DecodeLimits {
            max_pixels: 1200 * 900 - 1,
            ..limits
        };
        let refused = decode_for(&jpeg, &tight, Resize::Fast, 146).unwrap_err();
        assert!(matches!(refused, Error::TooLarge(_)), "{refused}");
    }

    /// A progressive JPEG whose last scan is repeated until it has `scans` scans: each repeat
    /// costs a few bytes and a pass over every block.
    fn with_scans(scans: usize) -> Vec<u8> {
        let jpeg = big_jpeg(mozjpeg::ColorSpace::JCS_YCbCr, true);
        let last = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let end = jpeg.len() - 2;
        let have = jpeg_structure::read(&jpeg).scans;
        let mut out = jpeg[..end].to_vec();
        for _ in have..scans {
            out.extend_from_slice(&jpeg[last..end]);
        }
        out.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(jpeg_structure::read(&out).scans, scans);
        out
    }

    #[test]
    fn a_jpeg_with_more_scans_than_the_limit_is_refused_before_decoding() {
        let limits = DecodeLimits::default();
        let at_limit = with_scans(jpeg_structure::MAX_SCANS);
        let over = with_scans(jpeg_structure::MAX_SCANS + 1);
        for resize in [Resize::Exact, Resize::Fast] {
            let ok = decode_for(&at_limit, &limits, resize, 146);
            assert!(ok.is_ok(), "{resize}: {}", ok.unwrap_err());
            let err = decode_for(&over, &limits, resize, 146).unwrap_err();
            assert!(
                matches!(&err, Error::Undecodable(m) if m.contains("101 scans")),
                "{resize}: {err}"
            );
        }
    }

    #[test]
    fn the_8_bit_conversions_to_rgb_give_image_s_bytes() {
        let (w, h) = (37u32, 23u32);
        let bytes = |n: u32| {
            (0..w * h * n)
                .map(|i| (i * 97 % 256) as u8)
                .collect::<Vec<_>>()
        };
        let images = [
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, bytes(1)).unwrap()),
            DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, bytes(2)).unwrap()),
            DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, bytes(4)).unwrap()),
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, bytes(3)).unwrap()),
            DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(w, h, |x, y| {
                image::Luma([(x * 1000 + y * 7) as u16])
            })),
        ];
        for img in images {
            let color = img.color();
            assert!(
                into_rgb8(img.clone()).unwrap() == img.into_rgb8(),
                "{color:?}"
            );
        }
    }

    #[test]
    fn bytes_after_the_end_marker_are_tolerated() {
        let mut jpeg = tiny_jpeg();
        jpeg.extend_from_slice(b"trailing padding some cameras write");
        assert!(decode(&jpeg, &DecodeLimits::default()).is_ok());
    }
}
