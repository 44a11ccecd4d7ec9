//! Compiles the protocol with a pure-Rust protobuf compiler: no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        [
            "weft/proxy/v1/identity.proto",
            "weft/proxy/v1/destination.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(files)?;
    Ok(())
}
