//! Whole-model latency of the 8-bit engine against our FP32 engine on the same variants, one
//! thread, batch 1, side by side in one run: `cargo bench --bench int8`. The models come from
//! the zoo (`MODELS_DIR`, default `../shared/models`, its `int8/` for the quantized files).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use mobilenet_serve::engine::import::{import_bytes, import_quantized_bytes};
use mobilenet_serve::engine::model::{Model, Nhwc};
use mobilenet_serve::engine::quant::QuantModel;
use mobilenet_serve::kernels::{KernelSet, Tier};

const VARIANTS: [(&str, usize); 3] = [
    ("mobilenet_v1_1.0_224", 224),
    ("mobilenet_v1_0.5_160", 160),
    ("mobilenet_v1_0.25_128", 128),
];

fn zoo() -> PathBuf {
    std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

fn models(c: &mut Criterion) {
    let best = KernelSet::for_tier(*Tier::supported().last().expect("a tier")).expect("tier");
    let mut group = c.benchmark_group("model");
    group.sample_size(20);
    for (name, rho) in VARIANTS {
        let float = std::fs::read(zoo().join(format!("{name}.onnx"))).expect("float model");
        let quant =
            std::fs::read(zoo().join(format!("int8/{name}_quant.onnx"))).expect("int8 model");
        let fp32 = Model::new(import_bytes(&float).expect("import"), best);
        let plan = import_quantized_bytes(&quant).expect("import");
        let input: Vec<f32> = (0..rho * rho * 3)
            .map(|i| ((i * 7919) % 256) as f32 / 128.0 - 1.0)
            .collect();
        group.bench_function(BenchmarkId::new(name, format!("fp32-{}", best.tier)), |b| {
            b.iter(|| fp32.run(&input, 1, rho, rho).expect("run"))
        });
        for tier in Tier::supported() {
            let int8 = QuantModel::new(plan.clone(), KernelSet::for_tier(tier).expect("tier"));
            group.bench_function(BenchmarkId::new(name, format!("int8-{tier}")), |b| {
                b.iter(|| int8.run(Nhwc::new(&input, 1, rho, rho)).expect("run"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
