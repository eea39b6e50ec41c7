//! Development PKI and identities for `serve --dev`: a TEST CA, a server certificate for
//! `localhost`/`127.0.0.1`, client certificates whose subject `serialNumber` carries a
//! synthetic HSA-id, the matching principals file, and a master key — created once in the
//! data directory and reused on later starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::Serialize;

use crate::auth::Role;

/// Synthetic test organisation number (Luhn-valid, third digit ≥ 2): never a real owner.
pub const TEST_ORG: &str = "SE1655999991";

/// One development client identity.
#[derive(Clone, Debug)]
pub struct DevClient {
    pub name: &'static str,
    pub hsa_id: String,
    pub role: Role,
    pub care_units: Vec<String>,
}

pub fn unit_a() -> String {
    format!("{TEST_ORG}-S000000000011")
}

pub fn unit_b() -> String {
    format!("{TEST_ORG}-S000000000021")
}

pub fn dev_clients() -> Vec<DevClient> {
    let c = |name, suffix: &str, role, care_units| DevClient {
        name,
        hsa_id: format!("{TEST_ORG}-{suffix}"),
        role,
        care_units,
    };
    vec![
        c(
            "provider-a",
            "E000000000001",
            Role::CareProvider,
            vec![unit_a()],
        ),
        c(
            "provider-b",
            "E000000000002",
            Role::CareProvider,
            vec![unit_b()],
        ),
        c(
            "office",
            "H000000000001",
            Role::HealthCareOffice,
            vec![unit_a(), unit_b()],
        ),
        c("tjansteid", "T000000000001", Role::TjansteidService, vec![]),
        c("operator", "O000000000001", Role::Operator, vec![]),
        c("record-keeper", "R000000000001", Role::RecordKeeper, vec![]),
    ]
}

/// A CA that can issue certificates (dev mode, tests).
#[derive(Debug)]
pub struct DevCa {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A PEM certificate and key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    pub fn generate(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "etjanstekort-gateway TEST");
        params.distinguished_name = dn;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA (its certificate parameters and key) to issue more certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
        })
    }

    pub fn issue_server(&self, names: &[&str]) -> Result<IssuedCert, rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        self.sign(params)
    }

    /// A client (function) certificate whose subject `serialNumber` is `serial_number`.
    pub fn issue_client(
        &self,
        common_name: &str,
        serial_number: Option<&str>,
    ) -> Result<IssuedCert, rcgen::Error> {
        self.issue_client_with(common_name, serial_number, &[])
    }

    /// `issue_client` naming CRL distribution points (URIs).
    pub fn issue_client_with(
        &self,
        common_name: &str,
        serial_number: Option<&str>,
        crl_urls: &[String],
    ) -> Result<IssuedCert, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        if !crl_urls.is_empty() {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: crl_urls.to_vec(),
            }];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(sn) = serial_number {
            params.distinguished_name.push(
                DnType::CustomDnType(vec![2, 5, 4, 5]),
                DnValue::PrintableString(sn.try_into()?),
            );
        }
        self.sign(params)
    }

    /// A CRL (PEM) signed by this CA listing the given serial numbers (DER integer bytes, as
    /// in the certificates), valid from `this_update` until `next_update`.
    pub fn crl(
        &self,
        revoked: &[Vec<u8>],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<String, rcgen::Error> {
        let at = time::OffsetDateTime::from;
        let number = this_update
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(this_update),
            next_update: at(next_update),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(serial),
                    revocation_time: at(this_update),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Paths of the dev environment inside the data directory.
#[derive(Clone, Debug)]
pub struct DevPaths {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The dev CA's CRL (empty; renewed on start when it nears its nextUpdate).
    pub crl: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub principals: PathBuf,
    pub master_key: PathBuf,
    pub identities: PathBuf,
    pub database: PathBuf,
}

impl DevPaths {
    pub fn new(dir: &Path) -> Self {
        let certs = dir.join("certs");
        Self {
            dir: dir.to_owned(),
            ca: certs.join("ca.pem"),
            crl: certs.join("ca.crl.pem"),
            server_cert: certs.join("server.pem"),
            server_key: certs.join("server.key"),
            principals: dir.join("principals.toml"),
            master_key: dir.join("master.key"),
            identities: dir.join("dev-identities.json"),
            database: dir.join("etjanstekort.sqlite"),
        }
    }
}

#[derive(Serialize)]
struct Identities {
    ca: String,
    clients: std::collections::BTreeMap<String, IdentityEntry>,
}

#[derive(Serialize)]
struct IdentityEntry {
    cert: String,
    key: String,
    hsa_id: String,
    role: Role,
    care_units: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("dev environment in {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("dev certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("dev master key: {0}")]
    Key(#[from] crate::privacy::VaultError),
}

/// Creates the dev environment unless `dev-identities.json` already exists (written last,
/// so an interrupted first start is redone). Returns its paths and whether it was created.
pub fn ensure(dir: &Path) -> Result<(DevPaths, bool), DevError> {
    let paths = DevPaths::new(dir);
    let io = |source| DevError::Io {
        dir: dir.display().to_string(),
        source,
    };
    if paths.identities.exists() {
        renew_crl(&paths).map_err(io)?;
        return Ok((paths, false));
    }
    std::fs::create_dir_all(dir.join("certs")).map_err(io)?;
    let ca = DevCa::generate("etjanstekort-gateway TEST dev CA")?;
    write(&paths.ca, &ca.cert_pem, false).map_err(io)?;
    write(&dir.join("certs/ca.key"), &ca.key_pem, true).map_err(io)?;
    let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
    write(&paths.server_cert, &server.cert_pem, false).map_err(io)?;
    write(&paths.server_key, &server.key_pem, true).map_err(io)?;

    let mut principals = String::from(
        "# Principals for dev mode: client-certificate HSA-id -> role and care units.\n",
    );
    let mut clients = std::collections::BTreeMap::new();
    for c in dev_clients() {
        let issued = ca.issue_client(&format!("{} (TEST)", c.name), Some(&c.hsa_id))?;
        let cert = format!("certs/{}.pem", c.name);
        let key = format!("certs/{}.key", c.name);
        write(&dir.join(&cert), &issued.cert_pem, false).map_err(io)?;
        write(&dir.join(&key), &issued.key_pem, true).map_err(io)?;
        let units = c
            .care_units
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        principals.push_str(&format!(
            "\n[[principals]]\nname = \"{}\"\nhsa_id = \"{}\"\nrole = \"{}\"\ncare_units = [{units}]\n",
            c.name,
            c.hsa_id,
            c.role.as_str()
        ));
        clients.insert(
            c.name.to_owned(),
            IdentityEntry {
                cert,
                key,
                hsa_id: c.hsa_id.clone(),
                role: c.role,
                care_units: c.care_units.clone(),
            },
        );
    }
    write(&paths.principals, &principals, false).map_err(io)?;
    let now = SystemTime::now();
    write(
        &paths.crl,
        &ca.crl(&[], now, now + DEV_CRL_VALIDITY)?,
        false,
    )
    .map_err(io)?;
    write(
        &paths.master_key,
        &crate::privacy::Vault::generate_base64()?,
        true,
    )
    .map_err(io)?;
    let json = serde_json::to_string_pretty(&Identities {
        ca: "certs/ca.pem".into(),
        clients,
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    write(&paths.identities, &json, false).map_err(io)?;
    Ok((paths, true))
}

/// How long the dev CRL is valid; it is renewed on a start within its last week.
const DEV_CRL_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// Writes a fresh empty dev CRL when there is none or it expires within a week (a data
/// directory kept for months must not lock its own clients out as stale).
fn renew_crl(paths: &DevPaths) -> std::io::Result<()> {
    use x509_parser::prelude::FromDer;
    let soon = SystemTime::now() + Duration::from_secs(7 * 86_400);
    let current = std::fs::read(&paths.crl).ok().and_then(|pem| {
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&block.contents)
                .ok()?;
        let next = crl.next_update()?.timestamp();
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(next).ok()?))
    });
    if current.is_some_and(|next| next > soon) {
        return Ok(());
    }
    let key = std::fs::read_to_string(paths.dir.join("certs/ca.key"))?;
    let cert = std::fs::read_to_string(&paths.ca)?;
    let ca = DevCa::from_pem(&cert, &key).map_err(std::io::Error::other)?;
    let now = SystemTime::now();
    let pem = ca
        .crl(&[], now, now + DEV_CRL_VALIDITY)
        .map_err(std::io::Error::other)?;
    write(&paths.crl, &pem, false)
}

fn write(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_update(path: &Path) -> SystemTime {
        use x509_parser::prelude::FromDer;
        let pem = std::fs::read(path).expect("crl");
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&block.contents)
                .expect("crl");
        let secs = crl.next_update().expect("next update").timestamp();
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
    }

    /// A data directory from before CRLs, or with a CRL near its end, gets a fresh one; a
    /// current one is left alone.
    #[test]
    fn the_dev_crl_is_written_and_renewed_before_it_goes_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, created) = ensure(dir.path()).expect("created");
        assert!(created);
        let first = next_update(&paths.crl);
        assert!(first > SystemTime::now() + Duration::from_secs(29 * 86_400));

        let written = std::fs::read(&paths.crl).expect("crl");
        ensure(dir.path()).expect("again");
        assert_eq!(std::fs::read(&paths.crl).expect("crl"), written, "kept");

        std::fs::remove_file(&paths.crl).expect("rm");
        ensure(dir.path()).expect("again");
        assert!(paths.crl.exists(), "written for an older data directory");

        let ca = DevCa::from_pem(
            &std::fs::read_to_string(&paths.ca).expect("ca"),
            &std::fs::read_to_string(dir.path().join("certs/ca.key")).expect("key"),
        )
        .expect("ca");
        let now = SystemTime::now();
        let ending = ca
            .crl(
                &[],
                now - Duration::from_secs(86_400),
                now + Duration::from_secs(86_400),
            )
            .expect("crl");
        std::fs::write(&paths.crl, ending).expect("write");
        ensure(dir.path()).expect("again");
        assert!(
            next_update(&paths.crl) > now + Duration::from_secs(29 * 86_400),
            "renewed"
        );
    }
}
