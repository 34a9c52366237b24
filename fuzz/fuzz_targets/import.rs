#![no_main]
// Body and contract: mobilenet_serve::fuzzing::import_and_run.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _accepted = mobilenet_serve::fuzzing::import_and_run(data);
});
