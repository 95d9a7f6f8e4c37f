//! Compiles the node's gRPC service with the pure-Rust `protox` compiler (no system `protoc`).
//! The wire types of `chainql.proto` come from the `chainql` crate. The compiled descriptors,
//! comments included, are kept for gRPC reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../chainql/proto");
    let descriptors = protox::compile(["node.proto", "validator.proto"], ["../chainql/proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("chainql_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .extern_path(".chainql.v1", "::chainql::wire")
        .extern_path(".chainql.consensus.v1", "::chainql::wire::consensus")
        // A proposal's block goes to every peer: shared bytes, not a copy per peer.
        .bytes(".chainql.validator.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
