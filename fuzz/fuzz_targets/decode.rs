#![no_main]
// Body and contract: mobilenet_serve::fuzzing::decode_and_preprocess.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _accepted = mobilenet_serve::fuzzing::decode_and_preprocess(data);
});
