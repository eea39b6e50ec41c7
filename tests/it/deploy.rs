//! What deploys the gateway and cannot be built here (no container engine): the `Dockerfile`,
//! `.dockerignore` and the `check-config` subcommand the chart's CI check feeds its rendered
//! configuration to. These tests keep them true to the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_etjanstekort-gateway");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The binary with no `ETK_` setting of this process leaking in.
fn gateway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("ETK_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run the gateway")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The logical lines of the Dockerfile (continuations joined), comments dropped.
fn dockerfile() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn instructions<'a>(lines: &'a [String], keyword: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(keyword).map(str::trim))
        .collect()
}

/// `["a", "b"]` (exec form) as its words.
fn exec_form(s: &str) -> Vec<String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not in exec form: {s}"));
    inner
        .split(',')
        .map(|w| w.trim().trim_matches('"').to_owned())
        .collect()
}

#[test]
fn the_image_is_built_with_the_pinned_toolchain_and_cis_build_command() {
    let lines = dockerfile();
    let from = instructions(&lines, "FROM ");
    assert_eq!(from.len(), 2, "a build and a runtime stage: {from:?}");
    let channel = read("rust-toolchain.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("channel = ")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .expect("rust-toolchain.toml names a channel");
    assert!(
        from[0].starts_with(&format!("rust:{channel}-")),
        "the build stage must use rust-toolchain.toml's {channel}: {}",
        from[0]
    );
    // Distroless: no shell in the runtime stage.
    assert!(from[1].starts_with("gcr.io/distroless/"), "{}", from[1]);

    // The build command is the one CI runs (.ci/run), in release.
    let ci = read(".ci/run");
    let ci_build = ci
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo build "))
        .expect(".ci/run builds the binary");
    let run = instructions(&lines, "RUN ").join(" ");
    let docker_build = run
        .split("&&")
        .map(|part| {
            // Drop the RUN options (--mount=…) in front of the command.
            let start = part.find("cargo build").unwrap_or(part.len());
            part[start..].trim()
        })
        .find(|c| c.starts_with("cargo build"))
        .expect("the Dockerfile builds with cargo build");
    assert_eq!(
        docker_build.replace(" --release", ""),
        ci_build,
        "the image must build what CI builds (plus --release)"
    );
    assert!(docker_build.contains("--release") && docker_build.contains("--locked"));
}

#[test]
fn the_image_runs_the_gateway_unprivileged_without_a_healthcheck() {
    let lines = dockerfile();
    let runtime = {
        let start = lines
            .iter()
            .rposition(|l| l.starts_with("FROM "))
            .expect("FROM");
        &lines[start..]
    };
    let user = instructions(runtime, "USER ");
    assert_eq!(user.len(), 1, "{user:?}");
    let uid: u32 = user[0]
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("a numeric uid, for runAsNonRoot");
    assert_ne!(uid, 0, "not root");
    assert!(instructions(runtime, "HEALTHCHECK").is_empty());

    let entrypoint = exec_form(instructions(runtime, "ENTRYPOINT ")[0]);
    let bin_name = Path::new(BIN).file_name().expect("name").to_owned();
    assert_eq!(entrypoint.len(), 1, "{entrypoint:?}");
    assert_eq!(
        Path::new(&entrypoint[0]).file_name(),
        Some(bin_name.as_os_str()),
        "ENTRYPOINT is the gateway binary"
    );
    let copied = instructions(runtime, "COPY ").join(" ");
    assert!(
        copied.ends_with(&entrypoint[0]),
        "the binary is copied to the ENTRYPOINT's path: {copied}"
    );
    // The default command is a subcommand the binary has.
    let cmd = exec_form(instructions(runtime, "CMD ")[0]);
    let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    args.push("--help");
    let o = gateway(&args, &[]);
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
}

/// The top-level entries `.dockerignore` lets into the build context (an allow-list: `*`, then
/// `!name` per entry; other patterns only exclude below them).
fn context_entries() -> Vec<String> {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "an allow-list starts with *");
    let mut allowed = Vec::new();
    for p in &patterns[1..] {
        match p.strip_prefix('!') {
            Some(name) => {
                assert!(!name.contains(['/', '*', '?']), "a top-level name: {p}");
                allowed.push(name.to_owned());
            }
            None => assert!(
                p.contains('/') && allowed.iter().any(|a| p.starts_with(&format!("{a}/"))),
                "only exclusions below an allowed entry: {p}"
            ),
        }
    }
    allowed
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// Files the build reads by name: the protos build.rs compiles and what `include_str!` /
/// `include_bytes!` embed outside test modules.
fn named_build_inputs() -> Vec<PathBuf> {
    let root = repo();
    let mut out = Vec::new();
    for word in read("build.rs").split('"') {
        if word.starts_with("proto/") && word.ends_with(".proto") {
            out.push(PathBuf::from(word));
        }
    }
    let mut stack = vec![root.join("src"), root.join("migrations/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("source");
            let live = source.split("#[cfg(test)]").next().unwrap_or_default();
            for macro_ in ["include_str!(\"", "include_bytes!(\""] {
                for (i, _) in live.match_indices(macro_) {
                    let rest = &live[i + macro_.len()..];
                    let rel = &rest[..rest.find('"').expect("closing quote")];
                    let file = path.parent().expect("dir").join(rel);
                    let file = std::fs::canonicalize(&file)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    out.push(file.strip_prefix(&root).expect("in the repo").to_owned());
                }
            }
        }
    }
    assert!(out.len() >= 2, "protos and the embedded defaults: {out:?}");
    out
}

fn host_triple() -> String {
    let o = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host")
}

#[test]
fn the_build_context_holds_everything_the_release_build_reads() {
    let allowed = context_entries();
    let context = tempfile::tempdir().expect("dir");
    for name in &allowed {
        let from = repo().join(name);
        assert!(from.exists(), ".dockerignore lets in {name}, which is gone");
        copy_tree(&from, &context.path().join(name));
    }
    for input in named_build_inputs() {
        assert!(
            context.path().join(&input).exists(),
            "{} is read by the build but .dockerignore keeps it out",
            input.display()
        );
    }
    // The workspace's manifests (members, bench targets, lock file) resolve in the context alone.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let o = Command::new(cargo)
        // The host's packages only: the others are not in this machine's offline cache.
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host_triple()])
        .arg("--manifest-path")
        .arg(context.path().join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", context.path().join("target"))
        .output()
        .expect("cargo metadata");
    assert!(o.status.success(), "{}", text(&o));
    // Every target the manifests declare (the bench is declared explicitly) has its source.
    let metadata: serde_json::Value = serde_json::from_slice(&o.stdout).expect("metadata JSON");
    let members = metadata["workspace_members"].as_array().expect("members");
    let mut targets = 0;
    for package in metadata["packages"].as_array().expect("packages") {
        if !members.contains(&package["id"]) {
            continue;
        }
        for target in package["targets"].as_array().expect("targets") {
            let src = target["src_path"].as_str().expect("src_path");
            assert!(
                Path::new(src).exists(),
                "{src} is a build target but .dockerignore keeps it out"
            );
            targets += 1;
        }
    }
    assert!(targets >= 3, "lib, bin, build script: {targets}");
    // cargo metadata drops a declared target whose file is missing; cargo build fails on it.
    for manifest in ["Cargo.toml", "migrations/Cargo.toml"] {
        let path = context.path().join(manifest);
        let dir = path.parent().expect("dir");
        let m: toml::Table =
            toml::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("TOML");
        for (kind, default_dir) in [("bench", "benches"), ("bin", "src/bin"), ("test", "tests")] {
            for t in m.get(kind).and_then(|v| v.as_array()).into_iter().flatten() {
                let src = match t.get("path").and_then(|p| p.as_str()) {
                    Some(p) => dir.join(p),
                    None => dir.join(format!(
                        "{default_dir}/{}.rs",
                        t.get("name").and_then(|n| n.as_str()).expect("name")
                    )),
                };
                assert!(
                    src.exists(),
                    "{manifest} declares {kind} {}, which .dockerignore keeps out",
                    src.display()
                );
            }
        }
    }
}

const COMPLETE: &str = r#"
[server]
listen = "0.0.0.0:50051"
[tls]
cert = "/etc/etjanstekort-gateway/tls/tls.crt"
key = "/etc/etjanstekort-gateway/tls/tls.key"
client_ca = "/etc/etjanstekort-gateway/client-ca/ca.pem"
[auth]
principals_file = "/etc/etjanstekort-gateway/principals/principals.toml"
[privacy]
master_key_file = "/etc/etjanstekort-gateway/master-key/master.key"
[admin]
listen = "0.0.0.0:9464"
"#;

#[test]
fn check_config_accepts_a_complete_configuration_and_names_every_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, COMPLETE).expect("write");
    let path = file.to_str().expect("utf-8");
    let db = ("ETK_DATABASE__URL", "postgres://gw:s3cret-pw@db/gateway");

    // The files it names need not exist: only the configuration is checked.
    let o = gateway(&["check-config", "--config", path], &[db]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("configuration valid"), "{}", text(&o));
    // ETK_CONFIG names the file as for serve.
    let o = gateway(&["check-config"], &[db, ("ETK_CONFIG", path)]);
    assert!(o.status.success(), "{}", text(&o));

    // Without the database URL and with a wrong duration: both named, exit 1.
    std::fs::write(&file, format!("{COMPLETE}\n[engine]\nlease = 30\n")).expect("write");
    let o = gateway(&["check-config", "--config", path], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    for part in ["database.url", "engine.lease"] {
        assert!(said.contains(part), "{part} not named: {said}");
    }
    // A misspelt key (a chart value rendered under the wrong name) is refused by name.
    std::fs::write(&file, format!("{COMPLETE}\n[api]\nnope = 1\n")).expect("write");
    let o = gateway(&["check-config", "--config", path], &[db]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("api.nope"), "{}", text(&o));

    // A secret in a wrong place is named by key, never echoed.
    std::fs::write(&file, COMPLETE).expect("write");
    let o = gateway(
        &["check-config", "--config", path],
        &[
            db,
            ("ETK_KIV__KIND", "ldap"),
            ("ETK_KIV__BIND__PASSWORD", "20242024"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains("20242024") && !text(&o).contains("s3cret-pw"));

    let o = gateway(
        &["check-config", "--config", "/nonexistent/gateway.toml"],
        &[db],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("/nonexistent/gateway.toml"),
        "{}",
        text(&o)
    );
}
