//! Criterion micro-benchmarks of every kernel on every tier this CPU runs, at the shapes of
//! MobileNet v1 1.0_224 (and the small end of the grid), reported as throughput in FLOP (2 per
//! mult-add) so that a regression shows as a drop in GFLOP/s.
//!
//! `cargo bench --bench kernels` (all), or e.g. `cargo bench --bench kernels -- gemm/avx512`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use mobilenet_serve::kernels::{Clamp, ConvGeometry, GemmShape, KernelSet, Tier};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tiers() -> Vec<KernelSet> {
    Tier::supported()
        .into_iter()
        .map(|t| KernelSet::for_tier(t).expect("supported tier"))
        .collect()
}

/// Pointwise convolutions of 1.0_224 (pixels, in, out), the FC at batch 8, and the stem's GEMMs
/// after im2col (1.0_224 and 0.25_128).
const GEMMS: [(usize, usize, usize); 11] = [
    (12544, 32, 64),
    (3136, 64, 128),
    (3136, 128, 128),
    (784, 128, 256),
    (784, 256, 256),
    (196, 256, 512),
    (196, 512, 512),
    (49, 1024, 1024),
    (8, 1024, 1000),
    (12544, 27, 32),
    (4096, 27, 8),
];

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    for t in tiers() {
        for &(m, k, n) in &GEMMS {
            let a = values(m * k, 1);
            let packed = (t.pack_gemm_b)(k, n, &values(k * n, 2));
            let bias = values(n, 3);
            let mut out = vec![0.0; m * n];
            let shape = GemmShape { m, k, n };
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            group.bench_function(
                BenchmarkId::new(t.tier.to_string(), format!("{m}x{k}x{n}")),
                |b| b.iter(|| (t.gemm)(&shape, &a, &packed, &bias, Clamp::RELU6, &mut out)),
            );
        }
    }
    group.finish();
}

/// A 3x3 convolution over `size x size x c` with `stride`, SAME-style padding of 1.
fn geometry(size: usize, c: usize, out_c: usize, stride: usize) -> ConvGeometry {
    let out = size.div_ceil(stride);
    ConvGeometry {
        batch: 1,
        in_h: size,
        in_w: size,
        in_c: c,
        out_h: out,
        out_w: out,
        out_c,
        kh: 3,
        kw: 3,
        stride_h: stride,
        stride_w: stride,
        pad_top: usize::from(stride == 1),
        pad_left: usize::from(stride == 1),
    }
}

/// Depthwise layers of 1.0_224 (input size, channels, stride).
const DEPTHWISE: [(usize, usize, usize); 6] = [
    (112, 32, 1),
    (112, 64, 2),
    (56, 128, 1),
    (28, 256, 1),
    (14, 512, 1),
    (7, 1024, 1),
];

fn depthwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("depthwise");
    for t in tiers() {
        for &(size, ch, stride) in &DEPTHWISE {
            let g = geometry(size, ch, ch, stride);
            let input = values(g.input_len(), 4);
            let weights = values(9 * ch, 5);
            let bias = values(ch, 6);
            let mut out = vec![0.0; g.output_len()];
            group.throughput(Throughput::Elements((2 * 9 * g.output_len()) as u64));
            group.bench_function(
                BenchmarkId::new(t.tier.to_string(), format!("{size}x{size}x{ch}/s{stride}")),
                |b| b.iter(|| (t.depthwise)(&g, &input, &weights, &bias, Clamp::RELU6, &mut out)),
            );
        }
    }
    group.finish();
}

/// The stem: 3x3 stride 2 from RGB to 32 (1.0) and 8 (0.25) channels, at 224 and 128.
fn stem(c: &mut Criterion) {
    let mut group = c.benchmark_group("stem");
    for t in tiers() {
        for (size, out_c) in [(224, 32), (128, 8)] {
            let g = geometry(size, 3, out_c, 2);
            let input = values(g.input_len(), 7);
            let packed = (t.pack_gemm_b)(27, out_c, &values(27 * out_c, 8));
            let bias = values(out_c, 9);
            let mut out = vec![0.0; g.output_len()];
            group.throughput(Throughput::Elements((2 * 27 * g.output_len()) as u64));
            group.bench_function(
                BenchmarkId::new(t.tier.to_string(), format!("{size}x{size}x3->{out_c}")),
                |b| b.iter(|| (t.dense_conv)(&g, &input, &packed, &bias, Clamp::RELU6, &mut out)),
            );
        }
    }
    group.finish();
}

fn pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("global_avg_pool");
    for t in tiers() {
        let input = values(49 * 1024, 10);
        let mut out = vec![0.0; 1024];
        group.throughput(Throughput::Bytes((input.len() * 4) as u64));
        group.bench_function(BenchmarkId::new(t.tier.to_string(), "7x7x1024"), |b| {
            b.iter(|| (t.global_avg_pool)(1, 49, 1024, &input, &mut out))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = gemm, depthwise, stem, pool
}
criterion_main!(benches);
