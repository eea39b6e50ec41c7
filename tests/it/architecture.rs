//! Architecture invariants checked on the source itself.

use std::path::Path;

/// `domain` knows nothing of gRPC, SQL or I/O, and reads no clock: checked on its source.
#[test]
fn the_domain_imports_no_io_and_reads_no_clock() {
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain"),
        &mut files,
    );
    assert!(files.len() > 3, "found the domain's sources");
    let forbidden = [
        "tonic",
        "prost",
        "sea_orm",
        "sqlx",
        "tokio",
        "std::fs",
        "std::net",
        "std::env",
        "std::process",
        "SystemTime",
        "Instant::now",
        "now_utc",
        "now_local",
        "Uuid::now_v7",
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions {word}: the domain must stay pure",
                f.display()
            );
        }
    }
}
