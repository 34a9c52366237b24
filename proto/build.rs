//! Generates the gRPC code from proto/ with protox (a protobuf compiler in Rust), so that neither
//! this build nor the container build needs a system `protoc`. Also writes the encoded file
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(["mobilenet.proto", "inference.proto"])?;
    std::fs::write(
        out.join("mobilenet_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // One file at a time: the inference service decodes with its own codec, which checks what
    // a request would cost decoded before prost builds it (src/api/grpc/budget.rs).
    let single = |file: &str| -> Result<_, Box<dyn std::error::Error>> {
        let mut compiler = protox::Compiler::new(["proto"])?;
        compiler.include_source_info(true).open_files([file])?;
        Ok(compiler.file_descriptor_set())
    };
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(single("mobilenet.proto")?)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::api::grpc::budget::BudgetCodec")
        .compile_fds(single("inference.proto")?)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
