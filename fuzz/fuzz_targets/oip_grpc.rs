#![no_main]
// Body and contract: mobilenet_serve::fuzzing::oip_grpc_request.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _accepted = mobilenet_serve::fuzzing::oip_grpc_request(data);
});
