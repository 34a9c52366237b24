//! Requantization: from an int32 accumulator to a uint8 activation.
//!
//! The real-number definition (ONNX `QuantizeLinear` after a `Conv` of dequantized operands) is
//! `q = saturate(round_half_even(v) + zero)` with `v = acc * input_scale * weight_scale /
//! output_scale`, and a fused ReLU/ReLU6 narrowing the saturation range.
//!
//! The arithmetic is single-precision float, as the SIMD tiers compute it eight or sixteen lanes
//! at a time: `m = f32(input_scale * weight_scale / output_scale)` (the quotient taken in f64),
//! then `q = round_half_even(clamp(f32(acc) * m, lo - zero, hi - zero)) + zero`. Clamping before
//! rounding equals rounding before clamping because the bounds are integers, and it keeps the
//! float-to-int conversion in range on every tier.
//!
//! How far that is from the definition: the three roundings (`m`, `f32(acc)` when `|acc| >
//! 2^24`, the product) each change the value by a relative 2^-24 at most, so the computed
//! product is within `|v| * 2^-22` of `v`. The result therefore equals the real-number
//! definition except when `v` lies within `|v| * 2^-22` of a half-integer; there it may be one
//! quantum off. For an unsaturated output (`|v| < 256`) that window is 6.1e-5 of a quantum wide.
//! It is hit more often than that suggests where values sit on ties: a global average pool with
//! equal input and output scales computes `sum / positions`, a near-tie whenever the sum is an
//! odd multiple of `positions / 2`. `tests` checks both statements against exact rational
//! arithmetic, and measures how often such near-ties come out one quantum off.

/// Per output channel requantization into uint8.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requant {
    /// Input scale x weight scale / output scale, per output channel, rounded to f32.
    pub scale: Vec<f32>,
    /// The output's zero point.
    pub zero: u8,
    /// Lowest output value: 0, or higher where a fused ReLU clips.
    pub lo: u8,
    /// Highest output value: 255, or lower where a fused ReLU6 clips.
    pub hi: u8,
}

impl Requant {
    /// Requantizes `acc`, the accumulator of output channel `channel`.
    #[inline(always)]
    pub fn apply(&self, acc: i32, channel: usize) -> u8 {
        requantize(acc, self.scale[channel], self.zero, self.lo, self.hi)
    }

    /// The multiplier `input_scale * weight_scale / output_scale` rounded to f32, as every tier
    /// uses it.
    pub fn multiplier(input_scale: f32, weight_scale: f32, output_scale: f32) -> f32 {
        (f64::from(input_scale) * f64::from(weight_scale) / f64::from(output_scale)) as f32
    }

    /// The multiplier of a global average pool over `positions` values: `input_scale /
    /// (output_scale * positions)` rounded to f32.
    pub fn pool_multiplier(input_scale: f32, output_scale: f32, positions: usize) -> f32 {
        (f64::from(input_scale) / (f64::from(output_scale) * positions as f64)) as f32
    }
}

/// `round_half_even(clamp(f32(acc) * scale, lo - zero, hi - zero)) + zero`: see the module
/// documentation.
#[inline(always)]
pub fn requantize(acc: i32, scale: f32, zero: u8, lo: u8, hi: u8) -> u8 {
    let zero = i32::from(zero);
    let low = (i32::from(lo) - zero) as f32;
    let high = (i32::from(hi) - zero) as f32;
    let v = (acc as f32 * scale).max(low).min(high);
    // In range by the clamp: the sum is within lo..=hi.
    (v.round_ties_even() as i32 + zero) as u8
}

/// ONNX `QuantizeLinear` of one float into uint8: `saturate(round_half_even(x / scale) +
/// zero)`. Used on the model's input, where the division is exact for the zoo's scale of 1/128.
#[inline]
pub fn quantize(x: f32, scale: f32, zero: u8) -> u8 {
    ((x / scale).round_ties_even() + f32::from(zero)).clamp(0.0, 255.0) as u8
}

/// [`quantize`] over a slice.
pub fn quantize_slice(input: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
    assert_eq!(input.len(), out.len(), "quantize lengths");
    for (o, &x) in out.iter_mut().zip(input) {
        *o = quantize(x, scale, zero);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finite positive f32 as `mantissa * 2^exponent`, exactly.
    fn split(x: f32) -> (i128, i32) {
        assert!(x > 0.0 && x.is_finite());
        let bits = x.to_bits();
        let exp = ((bits >> 23) & 0xff) as i32;
        let frac = i128::from(bits & 0x7f_ffff);
        if exp == 0 {
            (frac, -149)
        } else {
            (frac | 0x80_0000, exp - 150)
        }
    }

    /// `num / den` rounded half to even, exactly (`den > 0`).
    fn div_round_half_even(num: i128, den: i128) -> i128 {
        let q = num.div_euclid(den);
        let r = num.rem_euclid(den);
        match (2 * r).cmp(&den) {
            std::cmp::Ordering::Less => q,
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal => q + (q & 1),
        }
    }

    /// The real-number definition, in exact rational arithmetic: `v = acc * sx * sw / so`
    /// rounded half to even, plus `zero`, clamped to `lo..=hi`. Also returns how far `v` is from
    /// the nearest half-integer, as the fraction `distance / den`, and `|v|` as `abs / den`.
    fn exact(acc: i32, sx: f32, sw: f32, so: f32, zero: u8, lo: u8, hi: u8) -> (u8, f64, f64) {
        let (mx, ex) = split(sx);
        let (mw, ew) = split(sw);
        let (mo, eo) = split(so);
        let shift = ex + ew - eo;
        let mut num = i128::from(acc) * mx * mw;
        let mut den = mo;
        if shift >= 0 {
            num <<= shift;
        } else {
            den <<= -shift;
        }
        let rounded = div_round_half_even(num, den);
        let q = (rounded + i128::from(zero)).clamp(i128::from(lo), i128::from(hi)) as u8;
        // Distance of v to the nearest half-integer: |2 num - (2k + 1) den| / (2 den).
        let k = num.div_euclid(den);
        let distance = (2 * num - (2 * k + 1) * den).abs() as f64 / (2 * den) as f64;
        let magnitude = (num.abs() as f64) / den as f64;
        (q, distance, magnitude)
    }

    /// A small deterministic generator (xorshift), so that a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// A scale like real models': `2^-e * (1 + u)`, e in 0..20.
        fn scale(&mut self) -> f32 {
            let e = self.below(20) as i32;
            let u = (self.below(1 << 23) as f32) / (1 << 23) as f32;
            (1.0 + u) * 2f32.powi(-e)
        }
    }

    #[test]
    fn requantization_is_the_real_number_definition_within_its_stated_bound() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut off, mut cases) = (0, 0);
        for _ in 0..1_000_000 {
            let (sx, sw, so) = (rng.scale(), rng.scale(), rng.scale());
            // Accumulators from a few units to beyond 2^24, where f32(acc) rounds too.
            let bits = rng.below(28) as u32;
            let acc = (rng.below(1 << bits.max(1)) as i64 - (1 << bits.max(1) >> 1)) as i32;
            let zero = rng.below(256) as u8;
            let (lo, hi) = if rng.below(2) == 0 {
                (0, 255)
            } else {
                (zero, 255)
            };
            let m = Requant::multiplier(sx, sw, so);
            let got = requantize(acc, m, zero, lo, hi);
            let (want, distance, magnitude) = exact(acc, sx, sw, so, zero, lo, hi);
            cases += 1;
            if got != want {
                off += 1;
                assert_eq!(
                    got.abs_diff(want),
                    1,
                    "acc {acc} scales {sx} {sw} {so}: {got} vs {want}"
                );
                assert!(
                    distance <= magnitude * 2f64.powi(-22),
                    "acc {acc} scales {sx} {sw} {so}: off by one {distance} from a tie, \
                     beyond the bound {}",
                    magnitude * 2f64.powi(-22)
                );
            }
        }
        // Near-ties, as a global average pool makes them (input scale = output scale, the
        // multiplier 1/positions): v = acc / n lands within an f32 rounding of k + 1/2.
        let mut near_ties = 0;
        for n in (2..=256).step_by(2) {
            let sw = 1.0 / n as f32;
            for k in -300..300 {
                let acc = k * n + n / 2;
                let s = rng.scale();
                let m = Requant::multiplier(s, sw, s);
                let got = requantize(acc, m, 128, 0, 255);
                let (want, distance, magnitude) = exact(acc, s, sw, s, 128, 0, 255);
                cases += 1;
                if got != want {
                    near_ties += 1;
                    assert_eq!(got.abs_diff(want), 1, "acc {acc} / {n}: {got} vs {want}");
                    assert!(
                        distance <= magnitude * 2f64.powi(-22),
                        "acc {acc} / {n}: off by one {distance} from a tie, beyond the bound"
                    );
                }
            }
        }
        eprintln!(
            "{off} random and {near_ties} near-tie cases of {cases} one quantum off, all within \
             the bound"
        );
        // The bound is exercised, and off-by-one results are rare away from near-ties.
        assert!(
            near_ties > 0,
            "no near-tie case was off: the test proves nothing"
        );
        assert!(off * 10_000 < cases, "{off} random cases of {cases} differ");
    }

    #[test]
    fn exact_ties_round_to_even_and_saturate() {
        // v = acc * 0.5 exactly: ties at every odd accumulator.
        assert_eq!(requantize(1, 0.5, 0, 0, 255), 0);
        assert_eq!(requantize(3, 0.5, 0, 0, 255), 2);
        assert_eq!(requantize(5, 0.5, 10, 0, 255), 12);
        assert_eq!(requantize(-3, 0.5, 10, 0, 255), 8);
        // Saturation and a fused ReLU's floor at the zero point.
        assert_eq!(requantize(i32::MAX, 1.0, 0, 0, 255), 255);
        assert_eq!(requantize(i32::MIN, 1.0, 0, 0, 255), 0);
        assert_eq!(requantize(-100, 1.0, 50, 50, 255), 50);
        assert_eq!(requantize(100, 1.0, 50, 50, 120), 120);
        // The zoo's input: (pixel - 128) / 128 quantized with 1/128 and 128 is the pixel.
        for p in 0..=255u8 {
            let x = (f32::from(p) - 128.0) / 128.0;
            assert_eq!(quantize(x, 1.0 / 128.0, 128), p);
        }
    }
}
