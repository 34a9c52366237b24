//! Every kernel tier against a naive implementation written straight from the ONNX definitions
//! (NCHW, OIHW weights, explicit padding), over random shapes, strides and pads.

use crate::common;

use mobilenet_serve::kernels::{AlignedVec, Clamp, ConvGeometry, GemmShape, KernelSet, Tier};
use proptest::prelude::*;

/// Every kernel tier this machine can run (the scalar reference is always there).
fn tiers() -> Vec<KernelSet> {
    // Forcing a tier this CPU lacks must be an error, not undefined behaviour.
    for t in Tier::ALL.into_iter().filter(|t| !t.is_supported()) {
        assert!(KernelSet::for_tier(t).is_err());
    }
    Tier::supported()
        .into_iter()
        .map(|t| KernelSet::for_tier(t).unwrap())
        .collect()
}

/// The tiers whose instructions this CPU has, read from the kernel's `/proc/cpuinfo` flags (which
/// Linux clears when the OS does not save a feature's registers): a second source of truth for
/// the run-time detection.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn tiers_from_cpuinfo() -> Vec<Tier> {
    let flags = crate::common::cpu_flags();
    let has = |f: &str| flags.iter().any(|g| g == f);
    let mut tiers = vec![Tier::Scalar];
    if has("avx2") && has("fma") {
        tiers.push(Tier::Avx2);
        if has("avx512f") && has("avx512vl") {
            tiers.push(Tier::Avx512);
        }
    }
    tiers
}

#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn detection_agrees_with_the_cpu_flags() {
    // The property tests run every tier `Tier::supported()` lists: a detection that missed one
    // would silently test fewer, and one that claimed too many would crash on an illegal
    // instruction. A tier this CPU lacks (AVX-512 on AMD Zen 3, say) cannot run here at all and
    // no emulator of it is at hand; `.ci/run` prints which tiers that leaves untested.
    assert_eq!(
        Tier::supported(),
        tiers_from_cpuinfo(),
        "run-time detection against /proc/cpuinfo"
    );
}

#[test]
fn required_tiers_are_here() {
    // A machine meant to test a tier says so (REQUIRE_KERNEL_TIERS=avx2,avx512), and then a CPU
    // without it fails the run instead of testing fewer tiers.
    let Ok(required) = std::env::var("REQUIRE_KERNEL_TIERS") else {
        return;
    };
    let here: Vec<String> = Tier::supported().iter().map(|t| t.to_string()).collect();
    for name in required.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        assert!(
            here.iter().any(|h| h == name),
            "REQUIRE_KERNEL_TIERS names {name}, but this CPU runs only {here:?}"
        );
    }
}

/// ONNX Conv, NCHW, one image: out[o][y][x] = b[o] + sum in[g*cg+i][y*s+ky-pt][x*s+kx-pl] * w[o][i][ky][kx].
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    input: &[f32],
    c: usize,
    h: usize,
    w: usize,
    weights: &[f32],
    bias: &[f32],
    m: usize,
    group: usize,
    k: (usize, usize),
    s: (usize, usize),
    pads: [usize; 4],
) -> (Vec<f32>, usize, usize) {
    let (kh, kw) = k;
    let oh = (h + pads[0] + pads[2] - kh) / s.0 + 1;
    let ow = (w + pads[1] + pads[3] - kw) / s.1 + 1;
    let cg = c / group;
    let mg = m / group;
    let mut out = vec![0.0f32; m * oh * ow];
    for o in 0..m {
        let g = o / mg;
        for y in 0..oh {
            for x in 0..ow {
                let mut acc = bias[o] as f64;
                for i in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (y * s.0 + ky) as isize - pads[0] as isize;
                            let ix = (x * s.1 + kx) as isize - pads[1] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = input[((g * cg + i) * h + iy as usize) * w + ix as usize];
                            acc += v as f64 * weights[((o * cg + i) * kh + ky) * kw + kx] as f64;
                        }
                    }
                }
                out[(o * oh + y) * ow + x] = acc as f32;
            }
        }
    }
    (out, oh, ow)
}

fn nchw_to_nhwc(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for ch in 0..c {
        for y in 0..h {
            for xx in 0..w {
                out[(y * w + xx) * c + ch] = x[(ch * h + y) * w + xx];
            }
        }
    }
    out
}

fn assert_close(ours: &[f32], want: &[f32], what: &str) {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

fn clamp_of(k: u8) -> Clamp {
    [Clamp::NONE, Clamp::RELU, Clamp::RELU6][k as usize % 3]
}

#[derive(Debug, Clone)]
struct ConvCase {
    batch: usize,
    c: usize,
    m: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    s: (usize, usize),
    pads: [usize; 4],
    act: u8,
    seed: u64,
}

fn conv_case(depthwise: bool) -> impl Strategy<Value = ConvCase> {
    // Depthwise runs several channel vectors at once: give it room for full blocks and tails.
    let channels = if depthwise { 1usize..80 } else { 1usize..20 };
    (
        1usize..3,
        channels,
        // Output channels: one vector and more, and the narrow widths of AVX-512 (8, 17-24).
        1usize..30,
        1usize..4,
        1usize..4,
        1usize..4,
        1usize..4,
        [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        any::<u8>(),
        any::<u64>(),
        1usize..12,
        1usize..12,
    )
        .prop_map(
            move |(batch, c, m, kh, kw, sh, sw, pads, act, seed, h, w)| ConvCase {
                batch,
                c,
                m: if depthwise { c } else { m },
                h: h + kh,
                w: w + kw,
                k: (kh, kw),
                s: (sh, sw),
                pads,
                act,
                seed,
            },
        )
}

/// Runs one conv case through `kernel` (dense or depthwise layout) and the naive reference.
fn check_conv(case: &ConvCase, depthwise: bool) {
    let ConvCase {
        batch,
        c,
        m,
        h,
        w,
        k,
        s,
        pads,
        ..
    } = *case;
    let act = clamp_of(case.act);
    let cg = if depthwise { 1 } else { c };
    let group = if depthwise { c } else { 1 };
    let weights = common::random_vec(m * cg * k.0 * k.1, case.seed, 1.0);
    let bias = common::random_vec(m, case.seed ^ 1, 1.0);
    let images: Vec<Vec<f32>> = (0..batch)
        .map(|b| common::random_vec(c * h * w, case.seed ^ (2 + b as u64), 3.0))
        .collect();
    let mut want = Vec::new();
    let (mut oh, mut ow) = (0, 0);
    for img in &images {
        let (o, a, b) = naive_conv(img, c, h, w, &weights, &bias, m, group, k, s, pads);
        (oh, ow) = (a, b);
        want.extend(
            nchw_to_nhwc(&o, m, oh, ow)
                .into_iter()
                .map(|v| act.apply(v)),
        );
    }
    let input: Vec<f32> = images
        .iter()
        .flat_map(|i| nchw_to_nhwc(i, c, h, w))
        .collect();
    // Pack OIHW into the kernels' layouts, output channel fastest.
    let mut packed = vec![0.0; weights.len()];
    for o in 0..m {
        for i in 0..cg {
            for y in 0..k.0 {
                for x in 0..k.1 {
                    let from = ((o * cg + i) * k.0 + y) * k.1 + x;
                    let to = if depthwise {
                        (y * k.1 + x) * m + o
                    } else {
                        ((y * k.1 + x) * c + i) * m + o
                    };
                    packed[to] = weights[from];
                }
            }
        }
    }
    let g = ConvGeometry {
        batch,
        in_h: h,
        in_w: w,
        in_c: c,
        out_h: oh,
        out_w: ow,
        out_c: m,
        kh: k.0,
        kw: k.1,
        stride_h: s.0,
        stride_w: s.1,
        pad_top: pads[0],
        pad_left: pads[1],
    };
    for t in tiers() {
        let tier_packed = if depthwise {
            AlignedVec::new()
        } else {
            (t.pack_gemm_b)(k.0 * k.1 * c, m, &packed)
        };
        let run = |g: &ConvGeometry, input: &[f32], out: &mut [f32]| {
            if depthwise {
                (t.depthwise)(g, input, &packed, &bias, act, out);
            } else {
                (t.dense_conv)(g, input, &tier_packed, &bias, act, out);
            }
        };
        let mut out = vec![f32::NAN; g.output_len()];
        run(&g, &input, &mut out);
        let what = format!(
            "{} {} {case:?}",
            t.tier,
            if depthwise { "depthwise" } else { "dense" }
        );
        assert_close(&out, &want, &what);
        // Row bands, as a layer is split between threads: two bands cut at a random row, and
        // one band per row. Each output value is computed the same way, so exactly equal.
        let cut = 1 + case.seed as usize % oh;
        let (in_image, row_len) = (h * w * c, ow * m);
        let cuts: Vec<std::ops::Range<usize>> = [0..cut, cut..oh]
            .into_iter()
            .chain((0..oh).map(|r| r..r + 1))
            .filter(|r| !r.is_empty())
            .collect();
        for rows in cuts {
            let (band, in_rows) = g.row_band(rows.clone());
            for b in 0..batch {
                let image = &input[b * in_image..(b + 1) * in_image];
                let mut got = vec![f32::NAN; band.output_len()];
                run(
                    &band,
                    &image[in_rows.start * w * c..in_rows.end * w * c],
                    &mut got,
                );
                let full = &out[(b * oh + rows.start) * row_len..(b * oh + rows.end) * row_len];
                assert!(
                    got.iter()
                        .zip(full)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "rows {rows:?} of image {b}: {what}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dense_conv_matches_naive(case in conv_case(false)) {
        check_conv(&case, false);
    }

    #[test]
    fn depthwise_matches_naive(case in conv_case(true)) {
        check_conv(&case, true);
    }

    #[test]
    fn gemm_matches_naive(m in 1usize..60, k in 1usize..90, n in 1usize..100, act in any::<u8>(), seed in any::<u64>()) {
        let a = common::random_vec(m * k, seed, 2.0);
        let b = common::random_vec(k * n, seed ^ 1, 2.0);
        let bias = common::random_vec(n, seed ^ 2, 2.0);
        let act = clamp_of(act);
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let acc: f64 = bias[j] as f64 + (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>();
                want[i * n + j] = act.apply(acc as f32);
            }
        }
        for t in tiers() {
            let mut c = vec![f32::NAN; m * n];
            let packed = (t.pack_gemm_b)(k, n, &b);
            (t.gemm)(&GemmShape { m, k, n }, &a, &packed, &bias, act, &mut c);
            assert_close(&c, &want, &format!("{} gemm {m}x{k}x{n}", t.tier));
        }
    }

    #[test]
    fn global_avg_pool_matches_naive(batch in 1usize..4, pos in 1usize..60, c in 1usize..40, seed in any::<u64>()) {
        let x = common::random_vec(batch * pos * c, seed, 5.0);
        let mut want = vec![0.0f32; batch * c];
        for b in 0..batch {
            for ch in 0..c {
                want[b * c + ch] = ((0..pos).map(|p| x[(b * pos + p) * c + ch] as f64).sum::<f64>() / pos as f64) as f32;
            }
        }
        for t in tiers() {
            let mut out = vec![f32::NAN; batch * c];
            (t.global_avg_pool)(batch, pos, c, &x, &mut out);
            assert_close(&out, &want, &format!("{} pool", t.tier));
        }
    }
}

/// Large shapes cross the GEMM's row blocks, panel edges and row tails at once; every tier must
/// agree with the scalar reference there too.
#[test]
fn gemm_large_shapes_match_the_reference() {
    // (1000, 600, 84): several L2 blocks of rows, the last one short, and a last panel of 20
    // columns, whose tiles are taller than the full panel's on AVX-512.
    for (m, k, n) in [
        (2000, 300, 70),
        (49, 1024, 1001),
        (12544, 32, 64),
        (1000, 600, 84),
    ] {
        let a = common::random_vec(m * k, 11, 1.0);
        let b = common::random_vec(k * n, 12, 0.1);
        let bias = common::random_vec(n, 13, 1.0);
        let shape = GemmShape { m, k, n };
        let scalar = KernelSet::scalar();
        let mut want = vec![0.0; m * n];
        (scalar.gemm)(
            &shape,
            &a,
            &(scalar.pack_gemm_b)(k, n, &b),
            &bias,
            Clamp::RELU6,
            &mut want,
        );
        for t in tiers() {
            let mut c = vec![f32::NAN; m * n];
            (t.gemm)(
                &shape,
                &a,
                &(t.pack_gemm_b)(k, n, &b),
                &bias,
                Clamp::RELU6,
                &mut c,
            );
            assert_close(&c, &want, &format!("{} gemm {m}x{k}x{n}", t.tier));
        }
    }
}

/// A kernel far larger than MobileNet's, with asymmetric pads and strides.
#[test]
fn dense_conv_with_a_large_kernel_matches_naive() {
    let case = ConvCase {
        batch: 2,
        c: 3,
        m: 5,
        h: 13,
        w: 11,
        k: (9, 8),
        s: (2, 1),
        pads: [3, 2, 4, 1],
        act: 2,
        seed: 99,
    };
    check_conv(&case, false);
}

/// Every width from 1 to 33 output channels through the stem's geometry (RGB, 3x3, stride 2,
/// TensorFlow's asymmetric SAME padding: the direct path, specialised for its row stride), and
/// as many channels through depthwise layers of stride 1 and 2: one vector and more, and the
/// narrow widths that AVX-512 runs on 8-lane vectors (8, 17-24) where that pays on this CPU.
#[test]
fn stems_and_depthwise_layers_of_every_width_match_naive() {
    for width in 1..=33 {
        let stem = ConvCase {
            batch: 2,
            c: 3,
            m: width,
            h: 19,
            w: 57,
            k: (3, 3),
            s: (2, 2),
            pads: [0, 0, 1, 1],
            act: 2,
            seed: width as u64,
        };
        check_conv(&stem, false);
        for (s, pads) in [((1, 1), [1, 1, 1, 1]), ((2, 2), [0, 0, 1, 1])] {
            let depthwise = ConvCase {
                c: width,
                m: width,
                h: 9,
                w: 21,
                s,
                pads,
                ..stem
            };
            check_conv(&depthwise, true);
        }
    }
}
