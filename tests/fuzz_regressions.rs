//! Replays the fuzz regression corpus (`fuzz/regressions/<target>/`) through the same bodies the
//! fuzzer runs (`mobilenet_serve::fuzzing`): every input that once crashed a target must now be
//! refused or accepted without a panic, and every seed must be accepted, or the fuzzer would
//! start from inputs that never reach the code behind the parser.

use std::fs;
use std::path::{Path, PathBuf};

use mobilenet_serve::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("regressions").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_its_fuzz_binary_and_a_corpus() {
    let mut dirs: Vec<String> = fs::read_dir(fuzz_dir().join("regressions"))
        .expect("fuzz/regressions")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(dirs, names, "one regression directory per target, no other");
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = fs::read_to_string(&source).expect("the target's source");
        assert!(
            text.contains("mobilenet_serve::fuzzing::"),
            "{name}.rs must call its body in mobilenet_serve::fuzzing"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] of fuzz/Cargo.toml"
        );
        assert!(!inputs(name).is_empty(), "{name} has no inputs");
    }
}

#[test]
fn the_corpus_replays_without_a_panic_and_every_seed_is_accepted() {
    for (name, body) in TARGETS {
        for file in inputs(name) {
            let data = fs::read(&file).expect("an input");
            let label = file.display().to_string();
            let accepted = std::panic::catch_unwind(|| body(&data))
                .unwrap_or_else(|_| panic!("{label} panicked the {name} target"));
            let seed = file
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
            assert!(
                accepted || !seed,
                "{label}: a seed the {name} target refuses"
            );
        }
    }
}
