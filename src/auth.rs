//! Who is calling, and what they may do.
//!
//! Callers are identified only by their verified client certificate: the HSA-id in the subject
//! `serialNumber` (OID 2.5.4.5), as on the national service platform. A principals file maps
//! HSA-ids to one role and a set of care units. Anything not granted is denied.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::HsaId;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    CareProvider,
    HealthCareOffice,
    TjansteidService,
    Operator,
    /// The record keeper (arkivansvarig): may export a case's audit record with its personal
    /// data in clear (`ExportAuditRecord`, purpose record keeper), which operators may not.
    RecordKeeper,
}

impl Role {
    /// The name the principals file uses (serde and strum agree on snake_case).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// An authenticated caller and its grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub hsa_id: HsaId,
    pub role: Role,
    /// The care provider the caller acts for; cases belong to it. Defaults to `hsa_id`.
    pub care_provider: HsaId,
    pub care_units: HashSet<HsaId>,
}

impl Principal {
    pub fn holds_unit(&self, unit: &HsaId) -> bool {
        self.care_units.contains(unit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principals: Vec<PrincipalEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    /// A label for people reading the file.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    hsa_id: HsaId,
    role: Role,
    #[serde(default)]
    care_provider_hsa_id: Option<HsaId>,
    #[serde(default)]
    care_units: Vec<HsaId>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no verified client certificate on the connection")]
    NoCertificate,
    #[error("the client certificate's subject has no valid HSA-id in serialNumber (2.5.4.5)")]
    NoHsaId,
    #[error("the client certificate (serial number {serial}) is revoked by its CA")]
    Revoked { serial: String },
    #[error(
        "the revocation status of the client certificate (serial number {serial}) cannot be established: its CA's CRL is stale or missing"
    )]
    RevocationUnknown { serial: String },
    #[error("principal {0} is not granted access")]
    UnknownPrincipal(HsaId),
    #[error("principal {principal} has role {has} but this call requires role {needs}")]
    WrongRole {
        principal: HsaId,
        has: &'static str,
        needs: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    #[error("cannot read principals file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid principals file {path}: {message}")]
    Parse { path: String, message: String },
}

/// Where the principals are listed (`[auth]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// TOML file mapping client-certificate HSA-ids to a role and care units.
    pub principals_file: PathBuf,
}

/// The principals in force: replaced as a whole when the file is reloaded, read by every call
/// (so a principal removed from the file is refused on its next call, on any connection).
#[derive(Debug, Default)]
pub struct Principals(std::sync::RwLock<std::sync::Arc<Authorizer>>);

impl Principals {
    pub fn new(authorizer: Authorizer) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(authorizer)))
    }

    pub fn current(&self) -> std::sync::Arc<Authorizer> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, authorizer: Authorizer) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(authorizer);
    }
}

/// One version of the principals file.
#[derive(Debug, Default, Clone)]
pub struct Authorizer {
    principals: HashMap<HsaId, Principal>,
}

impl Authorizer {
    pub fn load(path: &Path) -> Result<Self, PrincipalsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PrincipalsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| PrincipalsError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: PrincipalsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut principals = HashMap::new();
        for e in file.principals {
            let p = Principal {
                care_provider: e.care_provider_hsa_id.unwrap_or_else(|| e.hsa_id.clone()),
                hsa_id: e.hsa_id.clone(),
                role: e.role,
                care_units: e.care_units.into_iter().collect(),
            };
            if principals.insert(e.hsa_id.clone(), p).is_some() {
                return Err(format!("principal {} is listed twice", e.hsa_id));
            }
        }
        Ok(Self { principals })
    }

    /// Resolves the caller from its verified certificate chain (leaf first) and checks its role.
    pub fn authorize(
        &self,
        peer_certs: Option<&[impl AsRef<[u8]>]>,
        needs: Role,
    ) -> Result<&Principal, AuthError> {
        self.authorize_any(peer_certs, needs, &[])
    }

    /// Like `authorize`, also admitting the roles in `or` (`needs` is the one a denial names).
    pub fn authorize_any(
        &self,
        peer_certs: Option<&[impl AsRef<[u8]>]>,
        needs: Role,
        or: &[Role],
    ) -> Result<&Principal, AuthError> {
        let leaf = peer_certs
            .and_then(|c| c.first())
            .ok_or(AuthError::NoCertificate)?;
        let hsa_id = hsa_id_from_certificate(leaf.as_ref()).ok_or(AuthError::NoHsaId)?;
        let principal = self
            .principals
            .get(&hsa_id)
            .ok_or(AuthError::UnknownPrincipal(hsa_id))?;
        if principal.role != needs && !or.contains(&principal.role) {
            return Err(AuthError::WrongRole {
                principal: principal.hsa_id.clone(),
                has: principal.role.as_str(),
                needs: needs.as_str(),
            });
        }
        Ok(principal)
    }
}

/// The HSA-id in the subject `serialNumber` of a DER certificate, if there is a valid one.
pub fn hsa_id_from_certificate(der: &[u8]) -> Option<HsaId> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut values = cert
        .subject()
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER);
    let value = values.next()?.as_str().ok()?;
    // Two serialNumber attributes would make the identity ambiguous: refuse.
    if values.next().is_some() {
        return None;
    }
    HsaId::parse(value).ok()
}

#[cfg(test)]
mod role_names {
    use super::Role;

    /// `as_str` is written into principals files that serde reads back.
    #[test]
    fn as_str_is_the_principals_file_name() {
        for role in [
            Role::CareProvider,
            Role::HealthCareOffice,
            Role::TjansteidService,
            Role::Operator,
        ] {
            let parsed: Role = serde_json::from_value(serde_json::json!(role.as_str())).unwrap();
            assert_eq!(parsed, role);
        }
        assert_eq!(Role::TjansteidService.as_str(), "tjansteid_service");
    }
}
