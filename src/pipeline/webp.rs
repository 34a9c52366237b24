//! WebP through libwebp, Google's reference decoder (C, via `libwebp-sys`), which Pillow links too.
//!
//! On still images it gives the same RGB bytes as the pure-Rust `image-webp` in about half the
//! time on lossy files: 35 against 68 ms for a 1080p photo at quality 90. On an animation it
//! gives the first frame on its canvas exactly, where `image-webp`'s compositing was off by one
//! level on opaque pixels.

use image::RgbImage;
use libwebp_sys::{
    VP8StatusCode, WebPAnimDecoder, WebPAnimDecoderOptions, WebPData, WebPDecoderConfig,
    WebPRGBABuffer, WEBP_CSP_MODE,
};

use crate::error::{Error, Result};

/// Peak bytes per canvas pixel of an animation's first frame: libwebp's two RGBA canvases (this
/// frame's and the previous one's), a lossless frame's own ARGB pixels, and our RGB copy. A
/// still image takes at most 7 (lossless: ARGB and RGB), within the `image` crate's budget.
const ANIMATION_BYTES_PER_PIXEL: u64 = 4 + 4 + 4 + 3;

/// Decodes a WebP whose headers gave `width` x `height` (already checked against the limits) to
/// RGB8, dropping any alpha as Pillow's `convert("RGB")` does; an animation gives its first
/// frame, if decoding it takes at most `max_alloc` bytes.
pub fn decode(bytes: &[u8], width: u32, height: u32, max_alloc: u64) -> Result<RgbImage> {
    select_functions_once();
    let config = features(bytes, width, height)?;
    if config.input.has_animation == 0 {
        return still(config, bytes, width, height);
    }
    let need = u64::from(width) * u64::from(height) * ANIMATION_BYTES_PER_PIXEL;
    if need > max_alloc {
        return Err(Error::TooLarge(format!(
            "an animated WebP of {width}x{height} takes about {} MiB to decode, over the {} MiB \
             allowed",
            need >> 20,
            max_alloc >> 20
        )));
    }
    first_frame(bytes, width, height)
}

/// libwebp chooses its SIMD functions on first use, without a lock (this build does not define
/// WEBP_USE_THREAD), so requests decoding their first WebPs at once would race on those
/// pointers. One small lossy file with alpha and one lossless file, decoded before anything
/// else, make that choice once.
fn select_functions_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let rgba: Vec<u8> = (0..16 * 16 * 4).map(|i| (i * 37 % 256) as u8).collect();
        for lossless in [false, true] {
            if let Some(bytes) = encode(&rgba, 16, 16, 4, lossless) {
                if let Ok(config) = features(&bytes, 16, 16) {
                    let _ = still(config, &bytes, 16, 16);
                }
            }
        }
    });
}

/// `pixels` (`channels` 3: RGB, or 4: RGBA; `width` x `height`, rows packed) encoded by libwebp,
/// lossy at quality 90 or lossless; `None` where libwebp refuses.
fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: u32,
    lossless: bool,
) -> Option<Vec<u8>> {
    let fits = u64::from(width) * u64::from(height) * u64::from(channels) <= pixels.len() as u64;
    let (w, h) = (i32::try_from(width).ok()?, i32::try_from(height).ok()?);
    let stride = w.checked_mul(i32::try_from(channels).ok()?)?;
    if !fits || !matches!(channels, 3 | 4) {
        return None;
    }
    let px = pixels.as_ptr();
    let mut out: *mut u8 = std::ptr::null_mut();
    // SAFETY: `pixels` holds `height` rows of `stride` bytes (checked above); libwebp allocates
    // `out`, which WebPFree releases once its bytes are copied.
    unsafe {
        let len = match (lossless, channels) {
            (false, 3) => libwebp_sys::WebPEncodeRGB(px, w, h, stride, 90.0, &mut out),
            (false, _) => libwebp_sys::WebPEncodeRGBA(px, w, h, stride, 90.0, &mut out),
            (true, 3) => libwebp_sys::WebPEncodeLosslessRGB(px, w, h, stride, &mut out),
            (true, _) => libwebp_sys::WebPEncodeLosslessRGBA(px, w, h, stride, &mut out),
        };
        let bytes = (len > 0).then(|| std::slice::from_raw_parts(out, len).to_vec());
        libwebp_sys::WebPFree(out.cast());
        bytes
    }
}

/// The bitstream's features, checked to give the size the `image` crate read.
fn features(bytes: &[u8], width: u32, height: u32) -> Result<WebPDecoderConfig> {
    let mut config = WebPDecoderConfig::new()
        .map_err(|()| Error::Internal("libwebp's ABI version does not match".into()))?;
    // SAFETY: `bytes` is a live slice of the length given, and `config.input` is a plain struct
    // that libwebp fills.
    let status =
        unsafe { libwebp_sys::WebPGetFeatures(bytes.as_ptr(), bytes.len(), &mut config.input) };
    check(status)?;
    if (config.input.width, config.input.height) != (width as i32, height as i32) {
        return Err(Error::Undecodable(format!(
            "the WebP's headers disagree on its size: {width}x{height} against {}x{}",
            config.input.width, config.input.height
        )));
    }
    Ok(config)
}

/// A still image, into a buffer of ours.
fn still(mut config: WebPDecoderConfig, bytes: &[u8], width: u32, height: u32) -> Result<RgbImage> {
    let stride = width as usize * 3;
    let mut pixels = vec![0u8; stride * height as usize];
    config.output.colorspace = WEBP_CSP_MODE::MODE_RGB;
    config.output.is_external_memory = 1;
    config.output.u.RGBA = WebPRGBABuffer {
        rgba: pixels.as_mut_ptr(),
        stride: i32::try_from(stride)
            .map_err(|_| Error::TooLarge(format!("a WebP {width} pixels wide")))?,
        size: pixels.len(),
    };
    // SAFETY: the output buffer is `pixels`, which outlives the call and holds `size` bytes;
    // libwebp checks that `stride` x `height` fits in them before writing, and with external
    // memory WebPFreeDecBuffer releases only libwebp's own scratch.
    let status = unsafe {
        let status = libwebp_sys::WebPDecode(bytes.as_ptr(), bytes.len(), &mut config);
        libwebp_sys::WebPFreeDecBuffer(&mut config.output);
        status
    };
    check(status)?;
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::Internal("the WebP buffer has the wrong size".into()))
}

/// libwebp's animation decoder, deleted on every path out.
struct AnimDecoder(*mut WebPAnimDecoder);

impl Drop for AnimDecoder {
    fn drop(&mut self) {
        // SAFETY: the pointer came from WebPAnimDecoderNew, is not null, and is deleted once.
        unsafe { libwebp_sys::WebPAnimDecoderDelete(self.0) }
    }
}

/// The first frame of an animation, composited on its canvas as libwebp (and Pillow) does.
fn first_frame(bytes: &[u8], width: u32, height: u32) -> Result<RgbImage> {
    let corrupt = || Error::Undecodable("the animated WebP is corrupt or truncated".into());
    let data = WebPData {
        bytes: bytes.as_ptr(),
        size: bytes.len(),
    };
    // SAFETY: `options` is a plain struct that the init call fills; `data` points into `bytes`,
    // which outlives the decoder (dropped at the end of this function).
    let decoder = unsafe {
        let mut options: WebPAnimDecoderOptions = std::mem::zeroed();
        if libwebp_sys::WebPAnimDecoderOptionsInit(&mut options) == 0 {
            return Err(Error::Internal(
                "libwebp's demux ABI version does not match".into(),
            ));
        }
        options.color_mode = WEBP_CSP_MODE::MODE_RGBA;
        options.use_threads = 0;
        libwebp_sys::WebPAnimDecoderNew(&data, &options)
    };
    if decoder.is_null() {
        return Err(corrupt());
    }
    let decoder = AnimDecoder(decoder);
    let mut info = libwebp_sys::WebPAnimInfo::default();
    let mut canvas: *mut u8 = std::ptr::null_mut();
    let mut timestamp = 0;
    // SAFETY: the decoder is live; on success `canvas` points to its own RGBA buffer of
    // canvas_width x canvas_height pixels, valid until the next call on the decoder.
    let rgba = unsafe {
        if libwebp_sys::WebPAnimDecoderGetInfo(decoder.0, &mut info) == 0
            || (info.canvas_width, info.canvas_height) != (width, height)
            || libwebp_sys::WebPAnimDecoderGetNext(decoder.0, &mut canvas, &mut timestamp) == 0
            || canvas.is_null()
        {
            return Err(corrupt());
        }
        std::slice::from_raw_parts(canvas, width as usize * height as usize * 4)
    };
    let rgb = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| Error::Internal("the WebP canvas has the wrong size".into()))
}

fn check(status: VP8StatusCode) -> Result<()> {
    use VP8StatusCode::*;
    match status {
        VP8_STATUS_OK => Ok(()),
        VP8_STATUS_NOT_ENOUGH_DATA => Err(Error::Undecodable("the WebP is truncated".into())),
        VP8_STATUS_UNSUPPORTED_FEATURE => Err(Error::UnsupportedFormat(
            "a WebP feature libwebp does not decode".into(),
        )),
        VP8_STATUS_BITSTREAM_ERROR => {
            Err(Error::Undecodable("the WebP's bitstream is corrupt".into()))
        }
        other => Err(Error::Undecodable(format!("libwebp failed: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A picture with smooth gradients, hard edges and an alpha ramp that is nowhere 0 (libwebp's
    /// lossless encoder may change the colour of fully transparent pixels).
    fn pattern(w: u32, h: u32) -> image::RgbaImage {
        image::RgbaImage::from_fn(w, h, |x, y| {
            let edge = if (x / 13 + y / 7) % 2 == 0 { 200 } else { 40 };
            image::Rgba([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                edge,
                1 + ((x + y) % 255) as u8,
            ])
        })
    }

    /// libwebp's own encoder: lossy at quality 90, or lossless; with alpha or without.
    fn encode(img: &image::RgbaImage, lossless: bool, alpha: bool) -> Vec<u8> {
        let rgb = image::DynamicImage::ImageRgba8(img.clone()).into_rgb8();
        let (pixels, channels) = match alpha {
            true => (img.as_raw(), 4),
            false => (rgb.as_raw(), 3),
        };
        super::encode(pixels, img.width(), img.height(), channels, lossless)
            .expect("libwebp failed to encode")
    }

    fn by_image_webp(bytes: &[u8]) -> RgbImage {
        image::ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::WebP)
            .decode()
            .unwrap()
            .into_rgb8()
    }

    #[test]
    fn libwebp_gives_image_webps_pixels_for_every_kind_of_still_webp() {
        let img = pattern(301, 203);
        for lossless in [false, true] {
            for alpha in [false, true] {
                let bytes = encode(&img, lossless, alpha);
                let ours = decode(&bytes, 301, 203, u64::MAX).unwrap();
                assert_eq!(
                    ours,
                    by_image_webp(&bytes),
                    "lossless {lossless}, alpha {alpha}"
                );
                if lossless {
                    // Alpha is dropped, never blended into the colours.
                    let rgb = image::DynamicImage::ImageRgba8(img.clone()).into_rgb8();
                    assert!(ours == rgb, "alpha {alpha}");
                }
            }
        }
    }

    /// Two lossless frames in an animation container (VP8X with its animation flag, ANIM, one
    /// ANMF per frame), written by hand: libwebp-sys's encoder makes still images only.
    fn animation(frames: &[image::RgbaImage]) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, tag: &[u8; 4], body: &[u8]) {
            out.extend_from_slice(tag);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(0);
            }
        }
        let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
        let (w, h) = frames[0].dimensions();
        let mut body = b"WEBP".to_vec();
        let vp8x = [vec![0x02, 0, 0, 0], u24(w - 1), u24(h - 1)].concat();
        chunk(&mut body, b"VP8X", &vp8x);
        chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
        for frame in frames {
            // A still lossless file is RIFF, its size and WEBP (12 bytes), then one VP8L chunk.
            let still = encode(frame, true, true);
            let header = [u24(0), u24(0), u24(w - 1), u24(h - 1), u24(100), vec![0]].concat();
            chunk(&mut body, b"ANMF", &[header, still[12..].to_vec()].concat());
        }
        [
            b"RIFF".to_vec(),
            (body.len() as u32).to_le_bytes().to_vec(),
            body,
        ]
        .concat()
    }

    #[test]
    fn an_animation_gives_its_first_frame_exactly() {
        let mut first = pattern(40, 30);
        for p in first.pixels_mut() {
            p[3] = 255;
        }
        let second = image::RgbaImage::from_pixel(40, 30, image::Rgba([9, 9, 9, 255]));
        let bytes = animation(&[first.clone(), second]);
        let want = image::DynamicImage::ImageRgba8(first).into_rgb8();
        assert!(decode(&bytes, 40, 30, u64::MAX).unwrap() == want);
        let limits = crate::pipeline::decode::DecodeLimits::default();
        assert!(crate::pipeline::decode::decode(&bytes, &limits).unwrap() == want);
        let cut = decode(&bytes[..bytes.len() - 200], 40, 30, u64::MAX).unwrap_err();
        assert!(matches!(cut, Error::Undecodable(_)), "{cut}");
        // 40 x 30 pixels at 15 bytes each: 18,000 bytes.
        assert!(decode(&bytes, 40, 30, 18_000).is_ok());
        let over = decode(&bytes, 40, 30, 17_999).unwrap_err();
        assert!(matches!(over, Error::TooLarge(_)), "{over}");
    }

    #[test]
    fn broken_webps_are_refused_with_their_reason() {
        let bytes = encode(&pattern(64, 48), false, false);
        let truncated = decode(&bytes[..bytes.len() * 2 / 3], 64, 48, u64::MAX).unwrap_err();
        assert!(
            matches!(&truncated, Error::Undecodable(m) if m.contains("truncated")),
            "{truncated}"
        );
        let wrong_size = decode(&bytes, 64, 49, u64::MAX).unwrap_err();
        assert!(
            matches!(&wrong_size, Error::Undecodable(m) if m.contains("disagree")),
            "{wrong_size}"
        );
        let mut corrupt = bytes.clone();
        for b in &mut corrupt[40..] {
            *b ^= 0xA5;
        }
        match decode(&corrupt, 64, 48, u64::MAX) {
            // Lossy VP8 has no checksum: flipped bits may decode to other pixels.
            Ok(_) => {}
            Err(e) => assert!(matches!(e, Error::Undecodable(_)), "{e}"),
        }
    }
}
