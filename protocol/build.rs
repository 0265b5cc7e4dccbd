//! Compiles the `.proto` files with `protox` (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/specie/v1/coin.proto",
        "proto/specie/v1/pay.proto",
        "proto/specie/v1/reconcile.proto",
        "proto/specie/v1/negotiate.proto",
        "proto/specie/v1/update.proto",
        "proto/specie/v1/escrow.proto",
        "proto/specie/v1/sagas.proto",
        "proto/specie/v1/envelope.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
