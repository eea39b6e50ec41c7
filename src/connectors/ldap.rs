//! KIV over LDAP: an employment is its own entry carrying the person's identity number and the
//! employing unit's HSA-id, below the person's entry. A look-up keeps the employment entry
//! whole, and of the person entry above it (when that lies below `base_dn`) only what the card
//! check reads: `hsaIdentity` and `userCertificate;binary`. Removal and restore touch the
//! employment entry only. Each operation opens a connection (StartTLS or LDAPS through
//! rustls), binds, acts and unbinds — the rate is a few operations per case, and a fresh
//! connection never carries a broken one's state into a retry.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use ldap3::{
    LdapConnAsync, LdapConnSettings, LdapError, Mod, Scope, SearchEntry, SearchResult, ldap_escape,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::Instrument;
use tracing::field::Empty;

use super::{ConnectorError, Kiv};
use crate::domain::{
    BASE64_SUFFIX as BINARY, Employment, HsaId, PersonEntry, Personnummer, Timestamp,
};

/// What the card check reads from the person entry above an employment (see
/// [`crate::connectors::card_certs::kiv_card_certificates`]).
const PERSON_ATTRIBUTES: [&str; 2] = ["hsaIdentity", "userCertificate"];

/// How the gateway removes an employment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    /// Delete the entry.
    #[default]
    Delete,
    /// Keep the entry and set its end date to now.
    EndDate,
}

/// `[kiv] kind = "ldap"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSettings {
    /// `ldap://host:port` (StartTLS unless `allow_plain`) or `ldaps://host:port`.
    pub url: String,
    /// Where employment entries are searched (subtree).
    pub base_dn: String,
    /// Bind as this DN; none: anonymous.
    #[serde(default)]
    pub bind: Option<LdapBind>,
    /// Object class of employment entries; none: any entry with the two attributes.
    #[serde(default)]
    pub object_class: Option<String>,
    #[serde(default = "person_attribute")]
    pub person_attribute: String,
    #[serde(default = "unit_attribute")]
    pub unit_attribute: String,
    #[serde(default = "end_date_attribute")]
    pub end_date_attribute: String,
    #[serde(default)]
    pub removal: Removal,
    /// PEM bundle of CAs for the directory's certificate; none: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Plain `ldap://` without StartTLS; for tests only.
    #[serde(default)]
    pub allow_plain: bool,
    /// Bounds a whole operation (connect, bind, act).
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A simple bind: both or neither.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapBind {
    pub dn: String,
    #[serde(deserialize_with = "crate::secret::required")]
    pub password: SecretString,
}

fn person_attribute() -> String {
    "hsaPersonIdentityNumber".into()
}

fn unit_attribute() -> String {
    "vgrOrgRel".into()
}

fn end_date_attribute() -> String {
    "hsaEndDate".into()
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug)]
pub struct LdapKiv {
    s: LdapSettings,
    tls: Arc<rustls::ClientConfig>,
    /// The directory's host and port, for the client spans.
    server: (String, u16),
}

/// Host and port of an `ldap://` or `ldaps://` URL (default ports 389 and 636).
fn server_of(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ldap", url));
    let default = if scheme.eq_ignore_ascii_case("ldaps") {
        636
    } else {
        389
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let port = |p: &str| p.parse().unwrap_or(default);
    if let Some((host, tail)) = authority.strip_prefix('[').and_then(|r| r.split_once(']')) {
        return (
            host.to_owned(),
            tail.strip_prefix(':').map_or(default, port),
        );
    }
    match authority.rsplit_once(':') {
        Some((host, p)) => (host.to_owned(), port(p)),
        None => (authority.to_owned(), default),
    }
}

/// Result codes worth retrying: the server is busy, unavailable or timed out.
fn retryable_rc(rc: u32) -> bool {
    matches!(rc, 3 | 51 | 52 | 80 | 81 | 85 | 91)
}

/// The names of the result codes an operator is likely to meet.
fn rc_name(rc: u32) -> &'static str {
    match rc {
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        13 => "confidentialityRequired",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        48 => "inappropriateAuthentication",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "",
    }
}

fn classify(what: &str, e: LdapError) -> ConnectorError {
    match e {
        LdapError::LdapResult { result } => {
            // Server diagnostics can quote DNs, names and values ("best match of: 'cn=Anna…'"):
            // only the code and its name are kept for the audit trail and the log.
            let msg = match rc_name(result.rc) {
                "" => format!("{what}: LDAP result {}", result.rc),
                name => format!("{what}: LDAP result {} {name}", result.rc),
            };
            if retryable_rc(result.rc) {
                ConnectorError::Retryable(msg)
            } else {
                ConnectorError::Terminal(msg)
            }
        }
        // Everything below the protocol — sockets, TLS handshakes, timeouts — may heal.
        other => ConnectorError::Retryable(super::redact(&format!("{what}: {other}"))),
    }
}

/// The operation's result code (`ok` lists codes that count as success too), recorded on its
/// client span with the outcome.
fn check(
    span: &tracing::Span,
    what: &str,
    r: Result<ldap3::LdapResult, LdapError>,
    ok: &[u32],
) -> Result<u32, ConnectorError> {
    let rc = match &r {
        Ok(res) => Some(res.rc),
        Err(LdapError::LdapResult { result }) => Some(result.rc),
        Err(_) => None,
    };
    if let Some(rc) = rc {
        // i64: tracing-opentelemetry exports unsigned integers as strings.
        span.record("ldap.result_code", i64::from(rc));
    }
    let out = r.map_err(|e| classify(what, e)).and_then(|r| {
        if r.rc == 0 || ok.contains(&r.rc) {
            Ok(r.rc)
        } else {
            Err(classify(what, LdapError::LdapResult { result: r }))
        }
    });
    if let Err(e) = &out {
        super::record_failure(span, e);
    }
    out
}

/// `yyyyMMddHHmmssZ`, as KIV writes dates.
pub fn kiv_time(t: Timestamp) -> String {
    let d = t.to_utc().unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

impl LdapKiv {
    /// Checks the settings and reads the CA bundle; connects only when used.
    pub fn new(settings: LdapSettings) -> Result<Self, String> {
        let u = &settings.url;
        if !(u.starts_with("ldap://") || u.starts_with("ldaps://")) {
            return Err(format!(
                "ldap.url must start with ldap:// or ldaps://, got {u:?}"
            ));
        }
        for (name, v) in [
            ("ldap.base_dn", &settings.base_dn),
            ("ldap.person_attribute", &settings.person_attribute),
            ("ldap.unit_attribute", &settings.unit_attribute),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{name} is required"));
            }
        }
        if settings.removal == Removal::EndDate && settings.end_date_attribute.trim().is_empty() {
            return Err("ldap.end_date_attribute is required with removal = \"end_date\"".into());
        }
        let ca = super::read_optional(settings.ca_file.as_deref(), "ldap.ca_file")?;
        let tls = Arc::new(super::tls_client_config(ca.as_deref())?);
        let server = server_of(&settings.url);
        Ok(Self {
            s: settings,
            tls,
            server,
        })
    }

    /// A client span for one LDAP operation: the server, the operation and its result code —
    /// never a DN, filter or value (they carry the personnummer). None when `traced` is false:
    /// readiness probes run every few seconds outside any case and would flood the traces.
    fn op_span(&self, op: &'static str, traced: bool) -> tracing::Span {
        if !traced {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "ldap",
            otel.name = %format_args!("ldap {op}"),
            otel.kind = "client",
            "server.address" = %self.server.0,
            "server.port" = i64::from(self.server.1),
            "ldap.operation" = op,
            "ldap.result_code" = Empty,
            otel.status_code = Empty,
            "error.type" = Empty,
        )
    }

    /// Connects (StartTLS unless plain) and binds; `traced`: with client spans.
    async fn connect(&self, traced: bool) -> Result<ldap3::Ldap, ConnectorError> {
        let starttls = self.s.url.starts_with("ldap://") && !self.s.allow_plain;
        let settings = LdapConnSettings::new()
            .set_config(self.tls.clone())
            .set_starttls(starttls)
            .set_conn_timeout(self.s.timeout);
        let span = self.op_span("connect", traced);
        let (conn, mut ldap) = match LdapConnAsync::with_settings(settings, &self.s.url)
            .instrument(span.clone())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let e = classify("connect", e);
                super::record_failure(&span, &e);
                return Err(e);
            }
        };
        ldap3::drive!(conn);
        if let Some(bind) = &self.s.bind {
            let span = self.op_span("bind", traced);
            let r = ldap
                .simple_bind(&bind.dn, bind.password.expose_secret())
                .instrument(span.clone())
                .await;
            check(&span, "bind", r, &[])?;
        }
        Ok(ldap)
    }

    fn filter(&self, person: &Personnummer, unit: &HsaId) -> String {
        let digits = person.expose_digits();
        let mut f = format!(
            "(&({}={})({}={}))",
            self.s.person_attribute,
            ldap_escape(digits.as_str()),
            self.s.unit_attribute,
            ldap_escape(unit.as_str())
        );
        if let Some(class) = &self.s.object_class {
            f = format!("(&(objectClass={}){f})", ldap_escape(class.as_str()));
        }
        f
    }

    async fn find(
        &self,
        ldap: &mut ldap3::Ldap,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<Option<Employment>, ConnectorError> {
        let span = self.op_span("search", true);
        let r = ldap
            .search(
                &self.s.base_dn,
                Scope::Subtree,
                &self.filter(person, unit),
                vec!["*"],
            )
            .instrument(span.clone())
            .await;
        let (entries, res) = match r {
            Ok(SearchResult(entries, res)) => (entries, Ok(res)),
            Err(e) => (Vec::new(), Err(e)),
        };
        check(&span, "search", res, &[])?;
        let mut found: Vec<Employment> = entries
            .into_iter()
            .map(|e| {
                let (dn, attributes) = snapshot_of(SearchEntry::construct(e));
                Employment {
                    dn,
                    attributes,
                    person: None,
                }
            })
            .collect();
        if found.len() > 1 {
            return Err(ConnectorError::Terminal(format!(
                "{} employment entries match the person at the unit; an operator must decide",
                found.len()
            )));
        }
        let found = found.pop();
        // In end-date mode an entry whose end date has passed is no longer an employment.
        if self.s.removal == Removal::EndDate
            && let Some(e) = &found
            && e.attributes
                .get(&self.s.end_date_attribute)
                .and_then(|v| v.first())
                .is_some_and(|end| end.as_str() <= kiv_time(crate::clock::now()).as_str())
        {
            return Ok(None);
        }
        Ok(found)
    }

    /// The person entry above an employment entry: its [`PERSON_ATTRIBUTES`], when it lies
    /// below `base_dn` (the search base is a container, never a person) and has any of them.
    /// A parent that is gone (noSuchObject) is no person entry.
    async fn person_of(
        &self,
        ldap: &mut ldap3::Ldap,
        employment_dn: &str,
    ) -> Result<Option<PersonEntry>, ConnectorError> {
        let Some(parent) = parent_dn(employment_dn) else {
            return Ok(None);
        };
        if !strictly_below(parent, &self.s.base_dn) {
            return Ok(None);
        }
        let span = self.op_span("search", true);
        let r = ldap
            .search(
                parent,
                Scope::Base,
                "(objectClass=*)",
                PERSON_ATTRIBUTES.to_vec(),
            )
            .instrument(span.clone())
            .await;
        let (entries, res) = match r {
            Ok(SearchResult(entries, res)) => (entries, Ok(res)),
            Err(e) => (Vec::new(), Err(e)),
        };
        check(&span, "search person", res, &[32])?;
        Ok(entries.into_iter().next().and_then(|e| {
            let (dn, attributes) = snapshot_of(SearchEntry::construct(e));
            (!attributes.is_empty()).then_some(PersonEntry { dn, attributes })
        }))
    }

    /// Connects and binds: for readiness checks.
    pub async fn probe(&self) -> Result<(), ConnectorError> {
        let mut ldap = self.connect(false).await?;
        let _ = ldap.unbind().await;
        Ok(())
    }
}

/// An entry's DN and attributes as a snapshot keeps them: binary values base64 under the
/// attribute's name + [`BINARY`].
fn snapshot_of(e: SearchEntry) -> (String, BTreeMap<String, Vec<String>>) {
    let mut attributes: BTreeMap<String, Vec<String>> = e.attrs.into_iter().collect();
    for (name, values) in e.bin_attrs {
        attributes.insert(
            format!("{name}{BINARY}"),
            values
                .iter()
                .map(|v| base64::engine::general_purpose::STANDARD.encode(v))
                .collect(),
        );
    }
    (e.dn, attributes)
}

/// The RDNs of a DN (split at commas not escaped by a backslash), each trimmed.
fn rdns(dn: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in dn.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                out.push(dn[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = dn[start..].trim();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    out
}

/// The DN of an entry's parent; none for a single RDN.
fn parent_dn(dn: &str) -> Option<&str> {
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => return Some(dn[i + 1..].trim()).filter(|p| !p.is_empty()),
            _ => {}
        }
    }
    None
}

/// Whether `dn` names an entry strictly below `base` (RDNs compared without regard to case
/// or to spaces around `=`).
fn strictly_below(dn: &str, base: &str) -> bool {
    let norm = |rdn: &str| -> String {
        rdn.split('+')
            .map(|ava| match ava.split_once('=') {
                Some((t, v)) => format!("{}={}", t.trim(), v.trim()),
                None => ava.trim().to_owned(),
            })
            .collect::<Vec<_>>()
            .join("+")
            .to_lowercase()
    };
    let (d, b) = (rdns(dn), rdns(base));
    d.len() > b.len()
        && d[d.len() - b.len()..]
            .iter()
            .zip(&b)
            .all(|(x, y)| norm(x) == norm(y))
}

fn values_of(name: &str, values: &[String]) -> Result<(Vec<u8>, HashSet<Vec<u8>>), ConnectorError> {
    match name.strip_suffix(BINARY) {
        Some(plain) => {
            let decoded = values
                .iter()
                .map(|v| base64::engine::general_purpose::STANDARD.decode(v))
                .collect::<Result<HashSet<_>, _>>()
                .map_err(|_| {
                    ConnectorError::Terminal(format!(
                        "snapshot attribute {plain} is not valid base64"
                    ))
                })?;
            Ok((plain.as_bytes().to_vec(), decoded))
        }
        None => Ok((
            name.as_bytes().to_vec(),
            values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        )),
    }
}

#[async_trait]
impl Kiv for LdapKiv {
    fn name(&self) -> &'static str {
        "ldap"
    }

    async fn lookup(
        &self,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<Option<Employment>, ConnectorError> {
        self.bounded("lookup", async {
            let mut ldap = self.connect(true).await?;
            let r = async {
                let Some(mut employment) = self.find(&mut ldap, person, unit).await? else {
                    return Ok(None);
                };
                employment.person = self.person_of(&mut ldap, &employment.dn).await?;
                Ok(Some(employment))
            }
            .await;
            let _ = ldap.unbind().await;
            r
        })
        .await
    }

    async fn remove(
        &self,
        _key: &str,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<(), ConnectorError> {
        self.bounded("remove", self.remove_inner(person, unit))
            .await
    }

    async fn restore(&self, _key: &str, snapshot: &Employment) -> Result<(), ConnectorError> {
        self.bounded("restore", self.restore_inner(snapshot)).await
    }

    async fn probe(&self) -> Result<(), ConnectorError> {
        self.bounded("probe", LdapKiv::probe(self)).await
    }
}

impl LdapKiv {
    /// Bounds a whole operation (connect, bind, act) by the configured timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ConnectorError>>,
    ) -> Result<T, ConnectorError> {
        tokio::time::timeout(self.s.timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectorError::Retryable(format!(
                    "{what}: timed out after {:?}",
                    self.s.timeout
                )))
            })
    }

    async fn remove_inner(
        &self,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<(), ConnectorError> {
        let mut ldap = self.connect(true).await?;
        let result = async {
            let Some(entry) = self.find(&mut ldap, person, unit).await? else {
                return Ok(()); // Already gone: removal is idempotent.
            };
            match self.s.removal {
                // 32 noSuchObject: someone removed it between our search and delete.
                Removal::Delete => {
                    let span = self.op_span("delete", true);
                    let r = ldap.delete(&entry.dn).instrument(span.clone()).await;
                    check(&span, "delete", r, &[32]).map(|_| ())
                }
                Removal::EndDate => {
                    let now = kiv_time(crate::clock::now());
                    let m = vec![Mod::Replace(
                        self.s.end_date_attribute.clone(),
                        HashSet::from([now]),
                    )];
                    let span = self.op_span("modify", true);
                    let r = ldap.modify(&entry.dn, m).instrument(span.clone()).await;
                    check(&span, "modify", r, &[32]).map(|_| ())
                }
            }
        }
        .await;
        let _ = ldap.unbind().await;
        result
    }

    async fn restore_inner(&self, snapshot: &Employment) -> Result<(), ConnectorError> {
        let mut ldap = self.connect(true).await?;
        let result = async {
            let attrs = snapshot
                .attributes
                .iter()
                .map(|(k, v)| values_of(k, v))
                .collect::<Result<Vec<_>, _>>()?;
            // 68 entryAlreadyExists: it is there, so restoring succeeded (idempotent).
            let span = self.op_span("add", true);
            let r = ldap.add(&snapshot.dn, attrs).instrument(span.clone()).await;
            let rc = check(&span, "add", r, &[68])?;
            if rc == 68 && self.s.removal == Removal::EndDate {
                // The entry survived with an end date set: put the end date back as it was.
                let before: HashSet<String> = snapshot
                    .attributes
                    .get(&self.s.end_date_attribute)
                    .map(|v| v.iter().cloned().collect())
                    .unwrap_or_default();
                let m = vec![Mod::Replace(self.s.end_date_attribute.clone(), before)];
                let span = self.op_span("modify", true);
                let r = ldap.modify(&snapshot.dn, m).instrument(span.clone()).await;
                check(&span, "modify", r, &[16])?;
            }
            Ok(())
        }
        .await;
        let _ = ldap.unbind().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiv_time_format() {
        assert_eq!(
            kiv_time(Timestamp(1_790_000_000 * 1_000_000)),
            "20260921141320Z"
        );
        assert_eq!(kiv_time(Timestamp(0)), "19700101000000Z");
    }

    #[test]
    fn server_texts_lose_addresses_and_numbers() {
        assert_eq!(
            super::super::redact(
                "send: permanent error (550): 5.1.1 <p8@x.se>: Recipient rejected"
            ),
            "send: permanent error (550): 5.1.1 <address>: Recipient rejected"
        );
        assert_eq!(
            super::super::redact("no such entry cn=P19121212,ou=Personal 191212121212"),
            "no such entry cn=P<number>,ou=Personal <number>"
        );
        // A birth date must not survive next to a masked form: the whole number goes.
        assert_eq!(
            super::super::redact("id 19121212-1212 and 121212 1212."),
            "id <number> and <number>."
        );
        // However the groups are separated, and with an extra digit in front.
        assert_eq!(
            super::super::redact("ref 1912x12x12=1212, 1191212121212"),
            "ref <number>, 1<number>"
        );
        assert_eq!(super::super::redact("code 550 5.1.1"), "code 550 5.1.1");
    }

    #[test]
    fn the_server_is_read_from_the_url() {
        let s = |h: &str, p: u16| (h.to_owned(), p);
        assert_eq!(server_of("ldap://kiv.example.se"), s("kiv.example.se", 389));
        assert_eq!(
            server_of("ldaps://kiv.example.se/"),
            s("kiv.example.se", 636)
        );
        assert_eq!(server_of("ldap://127.0.0.1:3890"), s("127.0.0.1", 3890));
        assert_eq!(server_of("LDAPS://[::1]:6360/dc=x"), s("::1", 6360));
        assert_eq!(server_of("ldap://[::1]"), s("::1", 389));
    }

    #[test]
    fn the_person_entry_is_the_parent_below_the_base() {
        assert_eq!(
            parent_dn("cn=SE1-S1,cn=P19121212,ou=Personal,o=VGR"),
            Some("cn=P19121212,ou=Personal,o=VGR")
        );
        assert_eq!(
            parent_dn(r"cn=Andersson\, Anna,cn=P1, ou=Personal,o=VGR"),
            Some("cn=P1, ou=Personal,o=VGR")
        );
        assert_eq!(parent_dn("o=VGR"), None);
        let base = "ou=Personal,o=VGR";
        assert!(strictly_below("cn=P19121212,ou=Personal,o=VGR", base));
        assert!(strictly_below("CN=P1, OU = personal , O=vgr", base));
        assert!(strictly_below(r"cn=A\,B,ou=Personal,o=VGR", base));
        // The base itself (employments directly under it) and entries elsewhere are no person.
        assert!(!strictly_below("ou=Personal,o=VGR", base));
        assert!(!strictly_below("cn=P1,ou=Other,o=VGR", base));
        assert!(!strictly_below("o=VGR", base));
        assert!(!strictly_below(
            r"cn=P1\,ou=Personal,o=VGR",
            "ou=Personal,o=VGR,c=SE"
        ));
    }

    #[test]
    fn result_codes_are_classified() {
        for rc in [51, 52, 80, 3] {
            assert!(retryable_rc(rc), "{rc}");
        }
        for rc in [49, 50, 34, 65, 32, 53] {
            assert!(!retryable_rc(rc), "{rc}");
        }
    }
}
