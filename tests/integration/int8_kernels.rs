//! Every integer kernel tier against the scalar reference, bit for bit, over random shapes,
//! strides, pads, zero points and scales; and the stem's im2col + GEMM against the direct
//! convolution.

use mobilenet_serve::kernels::int8::requant::quantize_slice;
use mobilenet_serve::kernels::int8::{generic, Int8Kernels, QuantLayer, Requant};
use mobilenet_serve::kernels::{ConvGeometry, GemmShape, KernelSet, Tier};
use proptest::prelude::*;

/// Every set of integer kernels this CPU runs: each tier's own, and those a tier does not
/// choose here (the emulated dot products on a CPU without VNNI).
fn tiers() -> Vec<Int8Kernels> {
    let mut all = Int8Kernels::supported();
    for t in Tier::supported() {
        let chosen = KernelSet::for_tier(t).unwrap().int8;
        assert!(
            all.iter().any(|k| k.name == chosen.name),
            "{t} chooses {}, which is not among the supported sets",
            chosen.name
        );
    }
    all.retain(|k| k.name != "scalar");
    all
}

/// The integer kernel sets run here are those `/proc/cpuinfo`'s flags allow: a detection that
/// missed one would test fewer, one that claimed too many would crash on an illegal instruction.
#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn the_int8_kernel_sets_agree_with_the_cpu_flags() {
    let flags = crate::common::cpu_flags();
    let has = |f: &str| flags.iter().any(|g| g == f);
    let mut want = vec!["scalar"];
    if has("avx2") {
        want.extend(["avx2", "avx2+vnni-emulated"]);
        if has("avx_vnni") {
            want.push("avx-vnni");
        }
    }
    if has("avx512_vnni") && has("avx512vl") && has("avx2") {
        want.push("avx512-vnni");
    }
    let names: Vec<_> = Int8Kernels::supported().iter().map(|k| k.name).collect();
    eprintln!("int8 kernel sets on this CPU: {}", names.join(", "));
    assert_eq!(names, want);
}

/// Deterministic values from a seed.
fn values(len: usize, seed: u64, lo: i64, hi: i64) -> Vec<i64> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (x % (hi - lo + 1) as u64) as i64
        })
        .collect()
}

/// A requantization with per-channel scales that keep most outputs inside 0..=255, a
/// ReLU6-like range and a random zero point inside it. A zero point outside the range (above
/// `hi`, say) saturated every output of some one-row cases, which the comparison then could not
/// see through (proptest found m = 1, k = 26, n = 42).
fn requant(n: usize, seed: u64, taps: usize) -> Requant {
    let spread = 1.0 / (taps as f32 * 2000.0);
    let lo = values(1, seed + 2, 0, 40)[0];
    let hi = values(1, seed + 3, 200, 255)[0];
    Requant {
        scale: values(n, seed, 1, 100)
            .into_iter()
            .map(|v| v as f32 * spread)
            .collect(),
        zero: values(1, seed + 1, lo, hi)[0] as u8,
        lo: lo as u8,
        hi: hi as u8,
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    values(len, seed, 0, 255)
        .into_iter()
        .map(|v| v as u8)
        .collect()
}

/// 8-bit weights minus a zero point: the centred weights of a quantized layer. All of them
/// lie within -255..=255, and each column (any set of them) spans at most 255 values.
fn weights(len: usize, seed: u64) -> Vec<i16> {
    let zero = values(1, seed ^ 0x5eed, 0, 255)[0];
    values(len, seed, 0, 255)
        .into_iter()
        .map(|v| (v - zero) as i16)
        .collect()
}

fn biases(len: usize, seed: u64) -> Vec<i32> {
    values(len, seed, -20_000, 20_000)
        .into_iter()
        .map(|v| v as i32)
        .collect()
}

/// Biases that cancel the mean of `sum (a - zero) w` for activations spread over 0..=255, plus
/// a little noise: centred weights need not average 0, and without this most outputs of a deep
/// GEMM would saturate and hide differences.
fn centring_biases(w: &[i16], k: usize, n: usize, zero: u8, seed: u64) -> Vec<i32> {
    let noise = values(n, seed, -2_000, 2_000);
    (0..n)
        .map(|j| {
            let column: i64 = (0..k).map(|p| i64::from(w[p * n + j])).sum();
            (noise[j] - column * (127 - i64::from(zero))) as i32
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn gemm_tiers_match_the_reference(m in 1usize..40, k in 1usize..70, n in 1usize..50,
                                      zero in any::<u8>(), seed in any::<u64>()) {
        let s = GemmShape { m, k, n };
        let (a, w, rq) = (bytes(m * k, seed), weights(k * n, seed + 1), requant(n, seed + 3, k));
        let bias = centring_biases(&w, k, n, zero, seed + 2);
        let layer = QuantLayer { weights: &w, bias: &bias, input_zero: zero, requant: &rq };
        let mut want = vec![0u8; m * n];
        generic::gemm(&s, &a, &layer, &mut want);
        for t in tiers() {
            let packed = (t.pack_gemm)(k, n, &w);
            let mut got = vec![0u8; m * n];
            (t.gemm)(&s, &a, &QuantLayer { weights: &packed, ..layer }, &mut got);
            prop_assert_eq!(&got, &want, "{} {:?}", t.name, s);
        }
        // Not all saturated: the comparison sees real values.
        prop_assert!(want.iter().any(|&v| v != rq.lo && v != rq.hi) || n < 4 || m * n < 32);
    }

    #[test]
    fn depthwise_tiers_match_the_reference(h in 1usize..12, w in 1usize..12, c in 1usize..40,
                                           k in prop::sample::select(vec![1usize, 3, 5]),
                                           stride in 1usize..3, pad in 0usize..3,
                                           batch in 1usize..3, zero in any::<u8>(),
                                           seed in any::<u64>()) {
        let out_h = (h + 2 * pad).saturating_sub(k) / stride + 1;
        let out_w = (w + 2 * pad).saturating_sub(k) / stride + 1;
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let g = ConvGeometry { batch, in_h: h, in_w: w, in_c: c, out_h, out_w, out_c: c,
                               kh: k, kw: k, stride_h: stride, stride_w: stride,
                               pad_top: pad, pad_left: pad };
        let (x, wt, bias, rq) = (bytes(g.input_len(), seed), weights(k * k * c, seed + 1),
                                 biases(c, seed + 2), requant(c, seed + 3, k * k));
        let layer = QuantLayer { weights: &wt, bias: &bias, input_zero: zero, requant: &rq };
        let mut want = vec![0u8; g.output_len()];
        generic::depthwise(&g, &x, &layer, &mut want);
        for t in tiers() {
            let packed = (t.pack_depthwise)(k * k, c, &wt);
            let mut got = vec![0u8; g.output_len()];
            (t.depthwise)(&g, &x, &QuantLayer { weights: &packed, ..layer }, &mut got);
            prop_assert_eq!(&got, &want, "{} {:?}", t.name, g);
        }
    }

    #[test]
    fn the_stem_as_im2col_and_gemm_and_each_tiers_dense_match_the_direct_convolution(
        h in 1usize..20, w in 1usize..20, cin in 1usize..5, cout in 1usize..40,
        stride in 1usize..3, pad in 0usize..2, zero in any::<u8>(), seed in any::<u64>(),
        batch in 1usize..3) {
        let k = 3;
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let g = ConvGeometry { batch, in_h: h, in_w: w, in_c: cin,
                               out_h: (h + 2 * pad - k) / stride + 1,
                               out_w: (w + 2 * pad - k) / stride + 1, out_c: cout,
                               kh: k, kw: k, stride_h: stride, stride_w: stride,
                               pad_top: pad, pad_left: pad };
        let patch = k * k * cin;
        let (x, wt, bias, rq) = (bytes(g.input_len(), seed), weights(patch * cout, seed + 1),
                                 biases(cout, seed + 2), requant(cout, seed + 3, patch));
        let layer = QuantLayer { weights: &wt, bias: &bias, input_zero: zero, requant: &rq };
        let mut want = vec![0u8; g.output_len()];
        generic::dense_conv(&g, &x, &layer, &mut want);
        let pixels = batch * g.out_h * g.out_w;
        let mut patches = vec![0u8; pixels * patch];
        generic::im2col(&g, &x, zero, &mut patches);
        for t in tiers() {
            let packed = (t.pack_gemm)(patch, cout, &wt);
            let mut got = vec![0u8; g.output_len()];
            let s = GemmShape { m: pixels, k: patch, n: cout };
            (t.gemm)(&s, &patches, &QuantLayer { weights: &packed, ..layer }, &mut got);
            prop_assert_eq!(&got, &want, "{} {:?}", t.name, g);
            // A tier's direct dense convolution, on the same packing.
            if let Some(dense) = t.dense {
                let mut direct = vec![0u8; g.output_len()];
                dense(&g, &x, &QuantLayer { weights: &packed, ..layer }, &mut direct);
                prop_assert_eq!(&direct, &want, "{} dense {:?}", t.name, g);
            }
        }
    }
}

#[test]
fn input_quantization_tiers_match_the_reference() {
    // Ties, saturation both ways, infinities and NaN among ordinary values.
    let mut input: Vec<f32> = (-600..600).map(|i| i as f32 / 256.0).collect();
    input.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e30,
        -1e30,
        0.5 / 128.0,
    ]);
    for (scale, zero) in [
        (1.0 / 128.0, 128),
        (0.0123, 0),
        (0.5, 255),
        (1.0 / 255.0, 7),
    ] {
        let mut want = vec![0u8; input.len()];
        quantize_slice(&input, scale, zero, &mut want);
        for t in tiers() {
            let mut got = vec![0u8; input.len()];
            (t.quantize)(&input, scale, zero, &mut got);
            assert_eq!(got, want, "{} with scale {scale}, zero {zero}", t.name);
        }
    }
}
