//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and
//! keeps the encoded descriptor set so servers can offer gRPC reflection.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["etcd/kv.proto", "etcd/rpc.proto", "skiff/peer.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
