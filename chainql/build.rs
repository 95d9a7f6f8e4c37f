//! Compiles the wire types with the pure-Rust `protox` compiler: no system `protoc` is needed.
//! `consensus.proto` is compiled first; `chainql.proto` refers to its commit certificate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile(["proto/consensus.proto"], ["proto"])?)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .extern_path(".chainql.consensus.v1", "crate::wire::consensus")
        .compile_fds(protox::compile(["proto/chainql.proto"], ["proto"])?)?;
    Ok(())
}
