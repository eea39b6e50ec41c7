//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etjanstekort/v1/types.proto",
        "proto/etjanstekort/v1/deregistration_service.proto",
        "proto/etjanstekort/v1/health_care_office_service.proto",
        "proto/etjanstekort/v1/revocation_service.proto",
        "proto/etjanstekort/v1/operations_service.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded set feeds gRPC server reflection.
    std::fs::write(
        out.join("etjanstekort_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
