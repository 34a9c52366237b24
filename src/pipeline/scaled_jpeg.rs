//! JPEG decoding at 1/2, 1/4 or 1/8 of the size, in the DCT domain: libjpeg-turbo's scaled
//! inverse DCT (through mozjpeg, its fork) computes 4x4, 2x2 or 1x1 pixels from each 8x8 block
//! of coefficients. For an image far larger than the model's input, that skips most of the
//! IDCT, upsampling and colour conversion, and the memory, of the pixels a resize would throw
//! away. The entropy decoding of every coefficient remains: it is what a 12 MP photo still costs.

use std::panic::AssertUnwindSafe;

use image::RgbImage;
use mozjpeg::ColorSpace;

/// The scales libjpeg offers below 1, as denominators, smallest image first.
const DENOMINATORS: [u32; 3] = [8, 4, 2];

/// The decoded image's shorter side is at least this many times the resize target, so that our
/// antialiased resize still does at least half of the reduction. Measured on val1300 upscaled 4x
/// (tests/large_images): covering the target only (1/4 for 0.25_128 and 0.5_160) agreed with
/// `exact` on 95.9-97.5% of the top-1 classes; twice the target, on 98.9-100%.
pub const MARGIN: u32 = 2;

/// The largest of 8, 4 and 2 such that a `w x h` image decoded at 1/denominator still has a
/// shorter side of at least [`MARGIN`] times `short_target`; 1 when none does.
pub fn denominator_for(w: u32, h: u32, short_target: u32) -> u32 {
    let short = w.min(h);
    let need = short_target.saturating_mul(MARGIN);
    DENOMINATORS
        .into_iter()
        .find(|d| short.div_ceil(*d) >= need)
        .unwrap_or(1)
}

/// Decodes the complete JPEG `bytes` at 1/`denominator` of its size (each side rounded up), as
/// RGB. `None` where libjpeg cannot give RGB (CMYK and YCCK files) or fails: the caller then
/// decodes in full, and reports that decoder's error if it fails too.
pub fn decode(bytes: &[u8], denominator: u32) -> Option<RgbImage> {
    let numerator = u8::try_from(8 / denominator.clamp(1, 8)).ok()?;
    let run = || -> std::io::Result<Option<RgbImage>> {
        let mut jpeg = mozjpeg::Decompress::new_mem(bytes)?;
        if !matches!(
            jpeg.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB
        ) {
            return Ok(None);
        }
        jpeg.scale(numerator);
        let mut started = jpeg.rgb()?;
        // libjpeg's dimensions are JDIMENSION (32-bit).
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok(RgbImage::from_raw(w, h, pixels))
    };
    // libjpeg's fatal errors unwind (mozjpeg's error manager) without the panic hook.
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(image)) => image,
        Ok(Err(_)) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_scale_that_keeps_twice_the_target() {
        // 0.25_128's resize target is round(128 / 0.875) = 146, 1.0_224's 256.
        assert_eq!(denominator_for(4032, 3024, 146), 8); // 378 >= 292
        assert_eq!(denominator_for(4032, 3024, 256), 4); // 756 >= 512 > 378
        assert_eq!(denominator_for(1000, 600, 146), 2); // 300 >= 292 > 150
        assert_eq!(denominator_for(584, 4000, 146), 2);
        assert_eq!(denominator_for(582, 4000, 146), 1); // ceil(582 / 2) = 291 < 292
        assert_eq!(denominator_for(500, 375, 256), 1);
    }
}
