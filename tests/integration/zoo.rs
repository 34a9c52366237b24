//! The real model zoo: every variant against tract, golden ImageNet images, batching, the
//! catalogue rules and the command line. The zoo comes from MODELS_DIR (else ../shared/models);
//! when it is missing these tests fail with a message, they do not skip.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use mobilenet_serve::commands::dataset::read_labels;
use mobilenet_serve::engine::crosscheck::{
    compare, image_inputs, random_inputs, reference_outputs, REL_TOLERANCE,
};
use mobilenet_serve::engine::model::Nhwc;
use mobilenet_serve::engine::network::Precision;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::engine::reference::ModelFiles;
use mobilenet_serve::engine::team::Team;
use mobilenet_serve::engine::workspace::Workspace;
use mobilenet_serve::kernels::{KernelSet, Tier};
use mobilenet_serve::pipeline::postprocess::argmax;
use mobilenet_serve::Error;

fn options() -> LoadOptions {
    LoadOptions {
        variants: None,
        resolution: None,
        kernels: KernelSet::scalar(),
    }
}

/// The zoo with the scalar kernels (the first tier).
fn zoo() -> &'static ModelPool {
    &zoo_per_tier()[0]
}

/// The float grid at the top of the zoo and the 8-bit grid in its `int8/` folder: 16 variants
/// each, from 13 files each.
#[test]
fn the_zoo_loads_16_variants_per_precision_from_13_files_each() {
    let pool = zoo();
    assert_eq!(pool.variants().len(), 32);
    for precision in Precision::ALL {
        let grid: Vec<_> = pool
            .variants()
            .iter()
            .filter(|v| v.spec.precision == precision)
            .collect();
        assert_eq!(grid.len(), 16, "{precision}");
        assert!(grid.iter().all(|v| v.model.precision() == precision));
        let alpha1: Vec<_> = grid.iter().filter(|v| v.spec.alpha == 1.0).collect();
        assert_eq!(alpha1.len(), 4);
        assert!(
            alpha1
                .iter()
                .all(|v| Arc::ptr_eq(&v.model, &alpha1[0].model)),
            "one file must be loaded once"
        );
    }
    for v in pool.variants() {
        let macs = v
            .model
            .mult_adds(v.spec.resolution, v.spec.resolution)
            .unwrap();
        // The int8 manifest copies the float 0.75_224 count, whose classifier has 1000 classes,
        // for a graph with 1001: the graph is one class of 768 channels more. Any other
        // difference is ours.
        let manifest_slip = if v.spec.name == "mobilenet_v1_0.75_224_quant" {
            768
        } else {
            0
        };
        assert_eq!(
            Some(macs),
            v.spec.mult_adds.map(|m| m + manifest_slip),
            "{}: mult-adds from the graph vs the manifest",
            v.spec.name
        );
        assert_eq!(
            Some(v.model.params() as u64),
            v.spec.params,
            "{}: parameters",
            v.spec.name
        );
    }
}

/// The zoo once per kernel tier this CPU supports, slowest (scalar) first; loaded once for the
/// whole test binary.
fn zoo_per_tier() -> &'static [ModelPool] {
    static POOLS: OnceLock<Vec<ModelPool>> = OnceLock::new();
    POOLS.get_or_init(|| {
        Tier::supported()
            .into_iter()
            .map(|t| {
                let opts = LoadOptions {
                    kernels: KernelSet::for_tier(t).unwrap(),
                    ..options()
                };
                ModelPool::load(&common::zoo_dir(), &opts).expect("load the zoo")
            })
            .collect()
    })
}

#[test]
fn every_variant_matches_tract_on_random_and_real_inputs_with_every_tier() {
    let images = mobilenet_serve::commands::dataset::image_files(&common::imagenet_dir()).unwrap();
    let pools = zoo_per_tier();
    let mut protos = ModelFiles::default();
    for (i, first) in pools[0].variants().iter().enumerate() {
        // tract's outputs depend on the graph only: computed once, compared with every tier.
        let proto = protos.get(&pools[0], first).unwrap();
        let mut inputs = random_inputs(2, first.input_len(), 42);
        inputs.extend(image_inputs(&images[..2], first).unwrap());
        let expected = reference_outputs(first, proto, &inputs).unwrap();
        for v in pools.iter().map(|p| &p.variants()[i]) {
            assert_eq!(v.spec.name, first.spec.name);
            let c = compare(v, &inputs, &expected).unwrap();
            let tier = v.model.kernels().tier;
            assert!(
                c.passed(),
                "{} on {tier}: rel diff {} (limit {REL_TOLERANCE}), top-1 {}/{}",
                c.name,
                c.max_rel_diff,
                c.top1_agree,
                c.inputs
            );
        }
    }
}

#[test]
fn golden_images_get_their_labels_from_1_0_224() {
    let pool = zoo();
    let v = pool.get("mobilenet_v1_1.0_224").unwrap();
    let dir = common::imagenet_dir();
    let labels = read_labels(&dir).unwrap();
    let golden = [
        ("ILSVRC2012_val_00000347.JPEG", "canoe"),
        ("ILSVRC2012_val_00000361.JPEG", "tiger beetle"),
        ("ILSVRC2012_val_00001050.JPEG", "llama"),
        ("ILSVRC2012_val_00001699.JPEG", "electric locomotive"),
        ("ILSVRC2012_val_00002383.JPEG", "peacock"),
    ];
    let files: Vec<_> = golden.iter().map(|(f, _)| dir.join(f)).collect();
    let inputs = image_inputs(&files, v).unwrap();
    let r = v.spec.resolution;
    let out = v.model.run(&inputs.concat(), inputs.len(), r, r).unwrap();
    for ((file, name), scores) in golden.iter().zip(out.chunks_exact(v.model.classes())) {
        let truth = labels
            .iter()
            .find(|l| l.path.ends_with(file))
            .unwrap()
            .class;
        let top = argmax(scores);
        assert_eq!(pool.class_of(v, top), Some(truth), "{file}");
        assert_eq!(pool.label(v, top), *name, "{file}");
    }
}

#[test]
fn batched_outputs_equal_single_image_outputs_with_every_tier() {
    let files = mobilenet_serve::commands::dataset::image_files(&common::imagenet_dir()).unwrap();
    for pool in zoo_per_tier() {
        for name in ["mobilenet_v1_0.25_128", "mobilenet_v1_0.75_224"] {
            let v = pool.get(name).unwrap();
            let inputs = image_inputs(&files[..5], v).unwrap();
            let (r, k) = (v.spec.resolution, v.model.classes());
            let batched = v.model.run(&inputs.concat(), inputs.len(), r, r).unwrap();
            for (i, input) in inputs.iter().enumerate() {
                let single = v.model.run(input, 1, r, r).unwrap();
                assert_eq!(
                    &batched[i * k..(i + 1) * k],
                    single.as_slice(),
                    "{name} image {i}"
                );
            }
        }
    }
}

#[test]
fn runs_split_across_threads_equal_single_thread_runs_with_every_tier() {
    let teams = [2, 3].map(|t| Team::new(t, "zoo", || {}).unwrap());
    for pool in zoo_per_tier() {
        for name in ["mobilenet_v1_0.25_128", "mobilenet_v1_1.0_160"] {
            let v = pool.get(name).unwrap();
            let r = v.spec.resolution;
            // Batches below, at and above the team sizes: bands of rows, of whole images, and
            // (6: a multiple of both teams, twice their size or more) whole images through the
            // per-image prefix, each on one thread.
            for batch in [1, 2, 5, 6] {
                let input = random_inputs(batch, v.input_len(), 11).concat();
                let alone = v.model.run(&input, batch, r, r).unwrap();
                for team in &teams {
                    let (mut ws, mut out) = (Workspace::new(), Vec::new());
                    v.model
                        .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)
                        .unwrap();
                    assert!(
                        out.iter()
                            .zip(&alone)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name} on {}, batch {batch}, {} threads",
                        v.model.kernels().tier,
                        team.threads()
                    );
                }
            }
        }
    }
}

/// Runs fuse each depthwise with the pointwise after it where activations outweigh weights;
/// profiled runs time layers alone and never fuse. Both must give the same bits.
#[test]
fn fused_runs_equal_layer_by_layer_runs_with_every_tier() {
    let team = Team::new(2, "zoo", || {}).unwrap();
    for pool in zoo_per_tier() {
        for name in ["mobilenet_v1_0.25_128", "mobilenet_v1_1.0_160"] {
            let v = pool.get(name).unwrap();
            let r = v.spec.resolution;
            for batch in [1, 3] {
                let input = random_inputs(batch, v.input_len(), 12).concat();
                let fused = v.model.run(&input, batch, r, r).unwrap();
                for t in [&Team::single(), &team] {
                    let (mut ws, mut alone) = (Workspace::new(), Vec::new());
                    let model = v.model.as_float().expect("a float variant");
                    model
                        .run_profiled(t, &mut ws, Nhwc::new(&input, batch, r, r), &mut alone)
                        .unwrap();
                    assert!(
                        alone
                            .iter()
                            .zip(&fused)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name} on {}, batch {batch}, {} threads",
                        v.model.kernels().tier,
                        t.threads()
                    );
                }
            }
        }
    }
}

#[test]
fn wrong_input_sizes_are_errors_not_panics() {
    let pool = zoo();
    let v = pool.get("mobilenet_v1_0.25_128").unwrap();
    assert!(matches!(
        v.model.run(&[0.0; 10], 1, 128, 128),
        Err(Error::BadInput(_))
    ));
    assert!(matches!(
        v.model.run(&[], 0, 128, 128),
        Err(Error::BadInput(_))
    ));
    assert!(matches!(
        v.model.run(&[0.0; 3], 1, 1, 1),
        Ok(_) | Err(Error::BadInput(_))
    ));
    assert!(
        matches!(pool.get("mobilenet_v1_2.0_224"), Err(Error::UnknownModel { known, .. }) if known.contains("mobilenet_v1_0.25_128"))
    );
}

fn link(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(from, to).unwrap();
}

#[test]
fn without_a_manifest_variants_are_derived_from_the_graph() {
    let zoo = common::zoo_dir();
    let dir = tempfile::tempdir().unwrap();
    link(
        &zoo.join("mobilenet_v1_0.25_128.onnx"),
        &dir.path().join("some_export.onnx"),
    );
    // The zoo's inputs are symbolic: the resolution must be given.
    let err = ModelPool::load(dir.path(), &options()).unwrap_err();
    assert!(err.to_string().contains("--resolution"), "{err}");
    let pool = ModelPool::load(
        dir.path(),
        &LoadOptions {
            resolution: Some(160),
            ..options()
        },
    )
    .unwrap();
    let [v] = pool.variants() else {
        panic!("one variant expected")
    };
    assert_eq!(v.spec.name, "mobilenet_v1_0.25_160");
    assert_eq!(
        (
            v.spec.alpha,
            v.spec.resolution,
            v.spec.num_classes,
            v.spec.label_offset
        ),
        (0.25, 160, 1001, 1)
    );
    assert_eq!(pool.label(v, 0), "background");
}

#[test]
fn a_manifest_that_contradicts_its_graph_is_refused() {
    let zoo = common::zoo_dir();
    let dir = tempfile::tempdir().unwrap();
    link(
        &zoo.join("mobilenet_v1_0.5_128.onnx"),
        &dir.path().join("m.onnx"),
    );
    let manifest = |alpha: f32, classes: usize| {
        format!(
            r#"[{{"name":"x","alpha":{alpha},"resolution":128,"file":"m.onnx","num_classes":{classes},"label_offset":1}}]"#
        )
    };
    std::fs::write(dir.path().join("manifest.json"), manifest(0.5, 1001)).unwrap();
    ModelPool::load(dir.path(), &options()).expect("a true manifest loads");
    std::fs::write(dir.path().join("manifest.json"), manifest(0.75, 1001)).unwrap();
    assert!(ModelPool::load(dir.path(), &options())
        .unwrap_err()
        .to_string()
        .contains("alpha"));
    std::fs::write(dir.path().join("manifest.json"), manifest(0.5, 1002)).unwrap();
    assert!(ModelPool::load(dir.path(), &options())
        .unwrap_err()
        .to_string()
        .contains("classes"));
    std::fs::write(dir.path().join("manifest.json"), "{ not json").unwrap();
    assert!(matches!(
        ModelPool::load(dir.path(), &options()),
        Err(Error::Catalog(_))
    ));
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"))
        .args(args)
        .env("MODELS_DIR", common::zoo_dir())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_verify_prints_the_summary_line() {
    let (ok, out, err) = cli(&[
        "verify",
        "--variants",
        "mobilenet_v1_0.25_128,mobilenet_v1_0.5_160",
        "--count",
        "2",
    ]);
    assert!(ok, "{out}{err}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("verified 2 variants: max rel diff "),
        "{last}"
    );
    assert!(last.ends_with(", top-1 agreement 4/4"), "{last}");
    // An 8-bit variant is compared in quanta of its output.
    let (ok, out, err) = cli(&[
        "verify",
        "--variants",
        "mobilenet_v1_0.25_128_quant",
        "--images",
        common::imagenet_dir().to_str().unwrap(),
        "--count",
        "20",
    ]);
    assert!(ok, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("mobilenet_v1_0.25_128_quant"))
        .unwrap();
    assert!(
        line.contains("within 1 quantum") && line.ends_with(" ok"),
        "{line}"
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("verified 1 variants: ") && last.contains("int8 logits within 1 quantum"),
        "{last}"
    );
    let (ok, _, err) = cli(&["verify", "--variants", "nope"]);
    assert!(!ok && err.contains("unknown model `nope`"), "{err}");
}

#[test]
fn cli_models_and_eval() {
    let (ok, out, _) = cli(&["models"]);
    assert!(ok);
    assert!(
        out.contains("mobilenet_v1_0.75_160") && out.contains("32 variants"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("eval.json"), dir.path().join("eval.svg"));
    let data = common::imagenet_dir();
    let (ok, out, err) = cli(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--variants",
        "mobilenet_v1_0.25_128,mobilenet_v1_0.5_128",
        "--limit",
        "40",
        "--batch",
        "4",
        "--jobs",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let variants = report["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for v in variants {
        assert_eq!(v["images"], 40);
        let (t1, t5) = (v["top1"].as_f64().unwrap(), v["top5"].as_f64().unwrap());
        // Far above chance (0.1%) and consistent; the exact figure is measured by `eval`.
        assert!(t1 > 25.0 && t5 >= t1 && t5 <= 100.0, "{v}");
    }
    assert_eq!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .matches("<circle")
            .count(),
        2
    );
}

#[test]
fn cli_classify_in_process_prints_a_table_or_json_and_fails_on_a_bad_file() {
    let dir = common::imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    let first = labels.lines().find(|l| !l.starts_with('#')).unwrap();
    let image = dir.join(first.split('\t').next().unwrap());
    let class: usize = first.split('\t').nth(1).unwrap().parse().unwrap();
    let image = image.to_str().unwrap();
    let (ok, out, err) = cli(&["classify", image, "--model", "mobilenet_v1_1.0_224"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("(mobilenet_v1_1.0_224, "), "{out}");
    assert_eq!(out.lines().count(), 6, "a heading and five classes: {out}");
    let (ok, out, _) = cli(&[
        "classify",
        image,
        "--alpha",
        "1.0",
        "--resolution",
        "224",
        "--top-k",
        "1",
        "--json",
    ]);
    assert!(ok);
    let answers: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The sample's first image is one the full-size model gets right.
    assert_eq!(answers[0]["predictions"][0]["index"], class, "{out}");
    let not_an_image = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    let (ok, out, _) = cli(&[
        "classify",
        image,
        &not_an_image,
        "--model",
        "mobilenet_v1_0.25_128",
    ]);
    assert!(!ok, "a file that is no image fails the command");
    assert!(
        out.contains("Cargo.toml  error: cannot decode image"),
        "{out}"
    );
    let (ok, _, err) = cli(&["classify", image, "--alpha", "0.5"]);
    assert!(!ok && err.contains("alpha"), "{err}");
}
