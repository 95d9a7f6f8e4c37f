//! Compiles the node's gRPC service with the pure-Rust `protox` compiler (no system `protoc`).
//! The wire types of `chainql.proto` come from the `chainql` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../chainql/proto");
    let descriptors = protox::compile(["node.proto"], ["../chainql/proto"])?;
    tonic_prost_build::configure()
        .extern_path(".chainql.v1", "::chainql::wire")
        .compile_fds(descriptors)?;
    Ok(())
}
