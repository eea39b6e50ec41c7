//! Real servers for the connector tests: OpenLDAP `slapd` (Debian package `slapd`) and an SMTP
//! server (Python `aiosmtpd`, with STARTTLS), both on loopback, both installed by `.ci/run`.
//! The tests that use them are compiled as ignored unless `ETK_REQUIRE_REAL_SERVERS=1` (see
//! `build.rs`); a test that runs and finds a server missing fails, it never passes silently.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etjanstekort_gateway::devcerts::DevCa;

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
pub const LDAP_ADMIN: &str = "cn=admin,o=VGR";
pub const LDAP_PASSWORD: &str = "test-secret-not-for-production";

/// Fails the test: a test that asked for a real server must not pass without one.
fn unavailable(what: &str) -> ! {
    panic!("{what} is not installed (`bash .ci/run` installs it)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PKI for the servers: their certificates are issued for 127.0.0.1 and localhost.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let ca = DevCa::generate("etjanstekort-gateway TEST servers CA").expect("ca");
        let server = ca
            .issue_server(&["127.0.0.1", "localhost"])
            .expect("server cert");
        Self {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: server.cert_pem,
            key_pem: server.key_pem,
        }
    }
}

fn uid_gid(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn effective_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                chown_tree(&p, uid, gid);
            } else {
                let _ = std::os::unix::fs::chown(&p, Some(uid), Some(gid));
            }
        }
    }
}

/// OpenLDAP on a loopback port with StartTLS, the test HSA schema and `o=VGR`.
pub struct Slapd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ca_pem: String,
    child: Option<Child>,
    /// Runs as this unprivileged user when the tests run as root.
    user: Option<(u32, u32)>,
}

impl Slapd {
    pub fn start() -> Self {
        if !Path::new(SLAPD).exists() {
            unavailable("slapd");
        }
        let pki = Pki::new();
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).expect("data dir");
        std::fs::write(d.join("ca.pem"), &pki.ca_pem).expect("write");
        std::fs::write(d.join("server.pem"), &pki.cert_pem).expect("write");
        std::fs::write(d.join("server.key"), &pki.key_pem).expect("write");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ldap");
        let conf = std::fs::read_to_string(root.join("slapd.conf.template"))
            .expect("template")
            .replace("{DIR}", &d.display().to_string())
            .replace("{SCHEMA}", &root.join("hsa.schema").display().to_string())
            .replace("{PASSWORD}", LDAP_PASSWORD);
        std::fs::write(d.join("slapd.conf"), conf).expect("write");
        let out = Command::new(SLAPADD)
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(root.join("base.ldif"))
            .output()
            .expect("slapadd");
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // slapd refuses to be root's business here: run it as the package's unprivileged user.
        let user = if effective_uid() == Some(0) {
            uid_gid("openldap")
        } else {
            None
        };
        if let Some((uid, gid)) = user {
            chown_tree(d, uid, gid);
        }
        let mut me = Self {
            port: free_port(),
            ca_pem: pki.ca_pem,
            dir,
            child: None,
            user,
        };
        me.resume();
        me
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Stops the server (an outage); `resume` brings it back on the same port and data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn resume(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(SLAPD);
        cmd.arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            .arg("-d")
            .arg("0")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.user.is_some() {
            cmd.args(["-u", "openldap", "-g", "openldap"]);
        }
        let mut child = cmd.spawn().expect("spawn slapd");
        wait_for_port(self.port, &mut child, "slapd");
        self.child = Some(child);
    }

    pub async fn admin(&self) -> ldap3::Ldap {
        let tls = etjanstekort_gateway::connectors::tls_client_config(Some(self.ca_pem.as_bytes()))
            .expect("tls");
        let settings = ldap3::LdapConnSettings::new()
            .set_config(std::sync::Arc::new(tls))
            .set_starttls(true);
        let (conn, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, &self.url())
            .await
            .expect("connect");
        ldap3::drive!(conn);
        ldap.simple_bind(LDAP_ADMIN, LDAP_PASSWORD)
            .await
            .expect("bind")
            .success()
            .expect("bind ok");
        ldap
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// aiosmtpd with STARTTLS required, writing messages to a directory.
pub struct SmtpServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ca_pem: String,
    child: Option<Child>,
}

impl SmtpServer {
    pub fn start() -> Self {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            unavailable("python3 with aiosmtpd");
        }
        let pki = Pki::new();
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("server.pem"), &pki.cert_pem).expect("write");
        std::fs::write(dir.path().join("server.key"), &pki.key_pem).expect("write");
        std::fs::create_dir_all(dir.path().join("mail")).expect("mail dir");
        let mut me = Self {
            port: free_port(),
            ca_pem: pki.ca_pem,
            dir,
            child: None,
        };
        me.resume();
        me
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn resume(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--cert")
            .arg(self.dir.path().join("server.pem"))
            .arg("--key")
            .arg(self.dir.path().join("server.key"))
            .arg("--out")
            .arg(self.mail_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn SMTP server");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        assert!(
            line.starts_with("READY"),
            "SMTP server did not start: {line:?}"
        );
        self.child = Some(child);
    }

    /// Fault injection: these recipients refused permanently (550).
    pub fn reject_addresses(&self, addresses: &[&str]) {
        std::fs::write(self.mail_dir().join("REJECT"), addresses.join("\n")).expect("write");
    }

    /// Fault injection: the reply to DATA is held for `seconds` (0 ends it).
    pub fn stall(&self, seconds: f64) {
        let f = self.mail_dir().join("STALL");
        if seconds > 0.0 {
            std::fs::write(f, seconds.to_string()).expect("write");
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Fault injection: every recipient refused permanently (550) while set.
    pub fn set_rejecting(&self, on: bool) {
        let f = self.mail_dir().join("REJECT");
        if on {
            std::fs::write(f, "").expect("write");
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Received messages (raw), oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.mail_dir())
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
