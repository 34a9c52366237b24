//! RGB8 image -> normalised NHWC f32 model input.
//!
//! Follows the evaluation convention of the TF-slim / torchvision model zoos: resize so that the
//! shorter side is `round(rho / 0.875)` with PIL's antialiased bilinear filter, center-crop
//! `rho x rho`, then `x * scale + offset`. The resize reproduces Pillow's `Image.resize(...,
//! BILINEAR)` exactly: the same filter support, the same 22-bit fixed-point coefficients and the
//! same two passes (horizontal first) with rounding to 8 bits in between. Only the cropped window
//! is computed: every output pixel depends only on its own coefficients, so that is exact too.

use image::RgbImage;

use crate::error::{Error, Result};
use crate::kernels::Tier;

/// Affine map from 8-bit pixel values to model input: `x * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Multiplier (1/127.5 for MobileNet's [-1, 1] range).
    pub scale: f32,
    /// Added after scaling.
    pub offset: f32,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            scale: 1.0 / 127.5,
            offset: -1.0,
        }
    }
}

/// Where the crop lands: the resized size and the crop's top-left corner in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropPlan {
    /// Width after resizing.
    pub resized_w: usize,
    /// Height after resizing.
    pub resized_h: usize,
    /// First column of the crop in the resized image.
    pub left: usize,
    /// First row of the crop in the resized image.
    pub top: usize,
}

/// The shorter side an image is resized to for a `rho x rho` input: `round(rho / 0.875)`, with
/// Python's rounding (146 for 128, 256 for 224).
pub fn resize_target(rho: usize) -> usize {
    (rho as f64 / 0.875).round_ties_even() as usize
}

/// Resize and crop geometry for a `w x h` image and a `rho x rho` model input (torchvision's
/// `Resize(round(rho / 0.875))` + `CenterCrop(rho)` arithmetic, Python rounding included).
pub fn crop_plan(w: usize, h: usize, rho: usize) -> CropPlan {
    let short_target = resize_target(rho);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let long_target = (short_target as f64 * long as f64 / short as f64) as usize;
    let (resized_w, resized_h) = if w <= h {
        (short_target, long_target)
    } else {
        (long_target, short_target)
    };
    let center = |size: usize| {
        ((size as f64 - rho as f64) / 2.0)
            .round_ties_even()
            .max(0.0) as usize
    };
    CropPlan {
        resized_w,
        resized_h,
        left: center(resized_w),
        top: center(resized_h),
    }
}

/// Preprocesses one image into a new `rho x rho x 3` NHWC buffer, with the instructions of
/// kernel tier `tier` (the engine's: `--kernels` chooses both). Every tier gives the same values.
pub fn preprocess(img: &RgbImage, rho: usize, norm: Normalization, tier: Tier) -> Result<Vec<f32>> {
    let mut out = vec![0.0; rho * rho * 3];
    preprocess_into(img, rho, norm, tier, &mut out)?;
    Ok(out)
}

/// Preprocesses one image into `out` (`rho * rho * 3` values, NHWC); see [`preprocess`].
pub fn preprocess_into(
    img: &RgbImage,
    rho: usize,
    norm: Normalization,
    tier: Tier,
    out: &mut [f32],
) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 || rho == 0 {
        return Err(Error::BadInput(format!(
            "cannot preprocess a {w}x{h} image to {rho}x{rho}"
        )));
    }
    if out.len() != rho * rho * 3 {
        return Err(Error::BadInput(format!(
            "output buffer holds {} values, need {}",
            out.len(),
            rho * rho * 3
        )));
    }
    let plan = crop_plan(w, h, rho);
    let cols = Taps::new(w, plan.resized_w, plan.left, rho);
    let rows = Taps::new(h, plan.resized_h, plan.top, rho);
    let src = img.as_raw();
    // The vector tiers' resampler needs AVX2 only; the scalar tier runs the baseline build.
    #[cfg(target_arch = "x86_64")]
    if tier != Tier::Scalar && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { resample_avx2(src, w, &cols, &rows, rho, norm, out) };
        return Ok(());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = tier;
    resample(src, w, &cols, &rows, rho, norm, out);
    Ok(())
}

/// [`resample`] compiled for AVX2, whose 8-lane 32-bit multiplies the vertical pass vectorises
/// with (baseline x86-64 has no 32-bit vector multiply).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2(
    src: &[u8],
    w: usize,
    cols: &Taps,
    rows: &Taps,
    rho: usize,
    norm: Normalization,
    out: &mut [f32],
) {
    resample(src, w, cols, rows, rho, norm, out)
}

/// The two resize passes and the normalisation, writing `rho x rho x 3` values into `out`.
#[inline(always)]
fn resample(
    src: &[u8],
    w: usize,
    cols: &Taps,
    rows: &Taps,
    rho: usize,
    norm: Normalization,
    out: &mut [f32],
) {
    // Horizontal pass over just the input rows the vertical pass reads. Integer sums do not
    // depend on their order, so the loops below are free to go channel- and row-wise and still
    // match Pillow bit for bit.
    let (first_row, last_row) = rows.input_span();
    let row_len = rho * 3;
    let mut mid = vec![0u8; (last_row - first_row) * row_len];
    for (y, mid_row) in (first_row..last_row).zip(mid.chunks_exact_mut(row_len)) {
        let line = &src[y * w * 3..(y + 1) * w * 3];
        for (x, px) in mid_row.chunks_exact_mut(3).enumerate() {
            let (start, k) = cols.of(x);
            let window = &line[start * 3..(start + k.len()) * 3];
            let mut acc = [ROUNDING; 3];
            for (p, &kv) in window.chunks_exact(3).zip(k) {
                acc[0] += i32::from(p[0]) * kv;
                acc[1] += i32::from(p[1]) * kv;
                acc[2] += i32::from(p[2]) * kv;
            }
            px.copy_from_slice(&acc.map(clip8));
        }
    }
    // Vertical pass a whole row at a time (contiguous, so it vectorises), then normalise into
    // the model's input.
    let mut acc = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, k) = rows.of(y);
        acc.fill(ROUNDING);
        for (t, &kv) in k.iter().enumerate() {
            let offset = (start - first_row + t) * row_len;
            for (a, &m) in acc.iter_mut().zip(&mid[offset..offset + row_len]) {
                *a += i32::from(m) * kv;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = f32::from(clip8(a)) * norm.scale + norm.offset;
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the value and 2 spare.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Fixed-point filter taps of a window of output positions along one axis.
struct Taps {
    /// First input index read by each output position.
    start: Vec<usize>,
    /// Taps of each output position, `ksize` slots each (unused slots are zero).
    weights: Vec<i32>,
    /// Number of taps used by each output position.
    len: Vec<usize>,
    ksize: usize,
}

impl Taps {
    /// Taps for outputs `first..first + count` of an `in_size -> out_size` bilinear resize.
    fn new(in_size: usize, out_size: usize, first: usize, count: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        // Bilinear has support 1; downscaling widens it by the scale (that is the antialiasing).
        let support = filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut taps = Taps {
            start: Vec::with_capacity(count),
            weights: vec![0; count * ksize],
            len: Vec::with_capacity(count),
            ksize,
        };
        let mut pre = vec![0.0f64; ksize];
        for (i, xx) in (first..first + count).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) conversion truncates toward zero, as Pillow relies on.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, p) in pre.iter_mut().enumerate().take(n) {
                let arg = (x as f64 + xmin as f64 - center + 0.5) / filterscale;
                *p = triangle(arg);
                total += *p;
            }
            for (x, &p) in pre.iter().enumerate().take(n) {
                let k = if total != 0.0 { p / total } else { p };
                let fixed = k * f64::from(1u32 << PRECISION_BITS);
                taps.weights[i * ksize + x] = if k < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            taps.start.push(xmin);
            taps.len.push(n);
        }
        taps
    }

    /// First input index and taps of output position `i` (relative to the window).
    fn of(&self, i: usize) -> (usize, &[i32]) {
        (
            self.start[i],
            &self.weights[i * self.ksize..i * self.ksize + self.len[i]],
        )
    }

    /// Half-open range of input indices read by the whole window.
    fn input_span(&self) -> (usize, usize) {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = self
            .start
            .iter()
            .zip(&self.len)
            .map(|(s, l)| s + l)
            .max()
            .unwrap_or(0);
        (first, last.max(first))
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_plan_follows_torchvision() {
        // 500x375 landscape to 224: short side 256, long int(256*500/375) = 341, left round(58.5) = 58.
        assert_eq!(
            crop_plan(500, 375, 224),
            CropPlan {
                resized_w: 341,
                resized_h: 256,
                left: 58,
                top: 16
            }
        );
        assert_eq!(crop_plan(227, 227, 192).resized_w, 219);
        assert_eq!(crop_plan(227, 227, 160).resized_w, 183);
        assert_eq!(crop_plan(227, 227, 128).resized_w, 146);
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([10, 128, 255]));
        let out = preprocess(&img, 128, Normalization::default(), Tier::Scalar).unwrap();
        for px in out.chunks_exact(3) {
            assert_eq!(
                px,
                [10.0 / 127.5 - 1.0, 128.0 / 127.5 - 1.0, 255.0 / 127.5 - 1.0]
            );
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_build_matches_the_baseline_build() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 99u32;
        for (w, h, rho) in [
            (227, 227, 128),
            (500, 375, 224),
            (97, 301, 160),
            (40, 30, 192),
        ] {
            let img = RgbImage::from_fn(w, h, |_, _| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
            });
            let plan = crop_plan(w as usize, h as usize, rho);
            let cols = Taps::new(w as usize, plan.resized_w, plan.left, rho);
            let rows = Taps::new(h as usize, plan.resized_h, plan.top, rho);
            let norm = Normalization::default();
            let mut base = vec![0.0; rho * rho * 3];
            let mut fast = vec![1.0; rho * rho * 3];
            resample(img.as_raw(), w as usize, &cols, &rows, rho, norm, &mut base);
            // SAFETY: AVX2 support was checked above.
            unsafe { resample_avx2(img.as_raw(), w as usize, &cols, &rows, rho, norm, &mut fast) };
            assert_eq!(base, fast, "{w}x{h} -> {rho}");
        }
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (inp, out) in [(227, 256), (500, 256), (10_000, 219), (1, 146)] {
            let t = Taps::new(inp, out, 0, out.min(300));
            for i in 0..t.start.len() {
                let s: i32 = t.of(i).1.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.ksize as i32,
                    "{inp}->{out} at {i}: {s}"
                );
            }
        }
    }

    #[test]
    fn tiny_and_extreme_images_do_not_panic() {
        for (w, h) in [(1, 1), (10_000, 1), (1, 3000), (2, 2)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
            let out = preprocess(&img, 96, Normalization::default(), Tier::Scalar).unwrap();
            assert_eq!(out.len(), 96 * 96 * 3);
        }
    }
}
