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
    // Tests that need PostgreSQL or the real LDAP/SMTP servers are compiled as ignored (and
    // reported as such by the runner, with the reason) unless their servers are configured.
    println!("cargo::rustc-check-cfg=cfg(etk_postgres)");
    println!("cargo::rustc-check-cfg=cfg(etk_real_servers)");
    println!("cargo:rerun-if-env-changed=ETK_TEST_POSTGRES_URL");
    println!("cargo:rerun-if-env-changed=ETK_REQUIRE_REAL_SERVERS");
    if std::env::var("ETK_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        println!("cargo:rustc-cfg=etk_postgres");
    }
    if std::env::var("ETK_REQUIRE_REAL_SERVERS").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-cfg=etk_real_servers");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded set feeds gRPC server reflection. It also carries the well-known types the
    // google.rpc error details import (served next to ours, see `api::error`), so a reflection
    // client can resolve every import; protox has them built in.
    let mut reflected = fds.clone();
    let detail_imports = protox::compile(
        [
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
        ],
        ["proto"],
    )?;
    for file in detail_imports.file {
        if !reflected.file.iter().any(|f| f.name == file.name) {
            reflected.file.push(file);
        }
    }
    std::fs::write(
        out.join("etjanstekort_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&reflected),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
