//! Compiles `postbox/v1/postbox.proto` with protox (a protobuf compiler in
//! Rust), so that a fresh machine needs no system `protoc`. The encoded
//! descriptor set is kept for gRPC server reflection.

use prost::Message;

const PROTO: &str = "postbox/v1/postbox.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("postbox_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Payloads, keys and header values as `bytes::Bytes`: slices of the
        // receive buffer or of a mapped segment, not copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
