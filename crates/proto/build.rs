//! Compiles `proto/runnel/**.proto` with protox (pure Rust): no system `protoc` needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [root.join("runnel/v1/runnel.proto"), root.join("runnel/v1/internal.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        // Record payloads are carried as `bytes::Bytes`: decoding slices the request buffer
        // instead of copying each key and value.
        .bytes(".runnel")
        .compile_fds(fds)?;
    Ok(())
}
