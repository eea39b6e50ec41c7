//! Personal data at rest: the keyring of master keys, per-case data keys, AEAD encryption and
//! keyed pseudonyms.
//!
//! A master key (32 random bytes from configuration) is known by its key id: the lowercase hex
//! of the first 8 bytes of HMAC-SHA256(master, "etk key id v1") — not secret, stored with every
//! value it encrypts. Each master key derives, through HKDF-SHA256, an AES-256-GCM key (it wraps
//! the per-case data keys, and sealed the personal data of rows written before m0006) and an
//! HMAC key for the audit chain. Several master keys may be configured: the current one
//! encrypts, every one decrypts, so a new key can be made current while old rows stay readable
//! until `keys reencrypt` has moved them (docs/privacy.md).
//!
//! Each case's personal data is sealed under a random data key of its own, stored only wrapped
//! by a master key: destroying the wrapped key shreds every copy of the data, backups included.
//!
//! A master key's audit chain key must outlive it: the trail of a case is kept for the record
//! period (10 years), longer than a master key should live. `keys export-audit-key` writes one
//! master key's chain key (HKDF output: it cannot decrypt or unwrap anything) to a file, and
//! `audit_chain_key_files` gives it back to the verifier after that master key is destroyed.
//!
//! Pseudonyms, request digests and page tokens use one HMAC key that must not change when the
//! master key rotates (stored pseudonyms would stop matching): it is pinned, either to a key of
//! its own (`pseudonym_key[_file]`) or to one named master key (`pseudonym_key_id`). Plain
//! hashes of personnummer would be brute-forced in minutes (about 10^10 of them), so every
//! digest of personal data here is keyed.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};

use crate::domain::Personnummer;

/// Where the master keys come from (`[privacy]`). The single key (`master_key`, or the file
/// `master_key_file`; the key wins when both are set) and the lists are one keyring.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// File holding a base64 32-byte master key.
    pub master_key_file: Option<PathBuf>,
    /// A base64 master key itself (wins over `master_key_file` when both are set).
    #[serde(default, deserialize_with = "crate::secret::optional")]
    pub master_key: Option<SecretString>,
    /// More key files: during a rotation the old and the new key are both configured.
    #[serde(default)]
    pub master_key_files: Vec<PathBuf>,
    /// More base64 master keys (secrets).
    #[serde(default, deserialize_with = "crate::secret::list")]
    pub master_keys: Vec<SecretString>,
    /// Key id of the master key that encrypts new data; required when there are several.
    #[serde(default)]
    pub current_key: Option<String>,
    /// Key id of the master key whose HMAC key makes pseudonyms (pinned across rotations).
    #[serde(default)]
    pub pseudonym_key_id: Option<String>,
    /// File holding the base64 pseudonym key itself (`keys export-pseudonym-key` writes it).
    #[serde(default)]
    pub pseudonym_key_file: Option<PathBuf>,
    /// The base64 pseudonym key itself (secret; wins over `pseudonym_key_file`).
    #[serde(default, deserialize_with = "crate::secret::optional")]
    pub pseudonym_key: Option<SecretString>,
    /// Audit chain keys of master keys no longer configured, one per file (`keys
    /// export-audit-key` writes them): events chained under a retired master key keep
    /// verifying. A chain key decrypts nothing.
    #[serde(default)]
    pub audit_chain_key_files: Vec<PathBuf>,
}

impl PrivacySettings {
    /// At least one master key must be given; serde cannot say "one of".
    pub fn validate(&self) -> Result<(), String> {
        if self.master_key.is_none()
            && self.master_key_file.is_none()
            && self.master_keys.is_empty()
            && self.master_key_files.is_empty()
        {
            return Err("missing master_key_file or master_key".into());
        }
        Ok(())
    }
}

/// Ciphertext layouts. v1 (before m0006): `1 | nonce | ciphertext+tag`, sealed by a master
/// key's AEAD key, with no key id. v2: `2 | key id (8 bytes) | nonce | ciphertext+tag`.
const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const KEY_ID_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the master key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("ciphertext could not be decrypted (wrong key or corrupted data)")]
    Decrypt,
    #[error("ciphertext was encrypted with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("the system random generator failed")]
    Random,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("privacy: {0}")]
    Keyring(String),
}

/// The key id of a 32-byte key (see the module doc).
pub fn key_id_of(key: &[u8]) -> String {
    hex::encode(key_id_bytes(key))
}

fn key_id_bytes(key: &[u8]) -> [u8; KEY_ID_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), b"etk key id v1");
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&tag.as_ref()[..KEY_ID_LEN]);
    id
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// An AEAD key with its id: seals in the v2 layout.
struct Cipher {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

impl Cipher {
    fn new(id: [u8; KEY_ID_LEN], key: &[u8]) -> Result<Self, VaultError> {
        let aead =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| VaultError::BadKey)?);
        Ok(Self { id, aead })
    }

    fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| VaultError::Random)?;
        let mut buf = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| VaultError::Random)?;
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + buf.len());
        out.push(FORMAT_V2);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens `nonce | ciphertext+tag` (the part after the layout's header).
    fn open_body(&self, context: &str, body: &[u8]) -> Result<Vec<u8>, VaultError> {
        if body.len() < NONCE_LEN {
            return Err(VaultError::Decrypt);
        }
        let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN])
            .map_err(|_| VaultError::Decrypt)?;
        let mut buf = body[NONCE_LEN..].to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| VaultError::Decrypt)?;
        Ok(plain.to_vec())
    }

    fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        match split_v2(sealed)? {
            (id, body) if id == self.id => self.open_body(context, body),
            (id, _) => Err(VaultError::UnknownKey(hex::encode(id))),
        }
    }
}

fn split_v2(sealed: &[u8]) -> Result<([u8; KEY_ID_LEN], &[u8]), VaultError> {
    if sealed.len() < 1 + KEY_ID_LEN || sealed[0] != FORMAT_V2 {
        return Err(VaultError::Decrypt);
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&sealed[1..1 + KEY_ID_LEN]);
    Ok((id, &sealed[1 + KEY_ID_LEN..]))
}

/// The key id a sealed value names (`None` for the v1 layout, which names none).
pub fn sealed_key_id(sealed: &[u8]) -> Option<String> {
    split_v2(sealed).ok().map(|(id, _)| hex::encode(id))
}

/// A case's data key: seals that case's personal data. Exists in memory only; the store
/// keeps it wrapped by a master key (`Vault::new_data_key`, `Vault::open_data_key`).
pub struct DataKey(Cipher);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<key>)")
    }
}

impl DataKey {
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.0.seal(context, plaintext)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.0.open(context, sealed)
    }
}

/// One configured master key and what it derives.
struct MasterKey {
    cipher: Cipher,
    audit: hmac::Key,
    audit_raw: SecretSlice<u8>,
    mac: SecretSlice<u8>,
}

impl MasterKey {
    fn new(master: &[u8]) -> Result<Self, VaultError> {
        if master.len() != 32 {
            return Err(VaultError::BadKey);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"etjanstekort-gateway/v1").extract(master);
        let derive = |info: &'static [u8]| -> Result<Vec<u8>, VaultError> {
            let mut out = vec![0u8; 32];
            prk.expand(&[info], Len(32))
                .and_then(|okm| okm.fill(&mut out))
                .map_err(|_| VaultError::BadKey)?;
            Ok(out)
        };
        let audit = derive(b"etk audit chain v1")?;
        Ok(Self {
            cipher: Cipher::new(key_id_bytes(master), &derive(b"aead")?)?,
            audit: hmac::Key::new(hmac::HMAC_SHA256, &audit),
            audit_raw: SecretSlice::from(audit),
            mac: SecretSlice::from(derive(b"hmac")?),
        })
    }

    fn id(&self) -> String {
        hex::encode(self.cipher.id)
    }
}

/// Which key makes pseudonyms (see the module doc).
#[derive(Debug)]
pub enum PseudonymKey {
    /// The only master key's (allowed only when there is one).
    Default,
    /// The named master key's HMAC key.
    Master(String),
    /// A key of its own: the raw 32 bytes.
    Own(SecretSlice<u8>),
}

/// The first word of an exported audit chain key: `<label> <key id> <base64 chain key>`.
const AUDIT_KEY_LABEL: &str = "etk-audit-chain-key-v1";

/// The audit chain key of a master key that is no longer configured (from its export).
struct RetiredChainKey {
    id: String,
    key: hmac::Key,
    raw: SecretSlice<u8>,
}

/// The keyring. `Debug` never prints key material.
pub struct Vault {
    keys: Vec<MasterKey>,
    retired: Vec<RetiredChainKey>,
    current: usize,
    mac: hmac::Key,
    mac_raw: SecretSlice<u8>,
    rng: SystemRandom,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("current_key", &self.key_id())
            .field(
                "retired_audit_keys",
                &self.retired.iter().map(|r| &r.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn decode_key(text: &str) -> Result<Vec<u8>, VaultError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| VaultError::BadKey)
}

fn read_secret(path: &Path) -> Result<SecretString, VaultError> {
    std::fs::read_to_string(path)
        .map(SecretString::from)
        .map_err(|source| VaultError::Read {
            path: path.display().to_string(),
            source,
        })
}

impl Vault {
    /// A vault of one master key (which also makes the pseudonyms).
    pub fn from_master_key(master: &[u8]) -> Result<Self, VaultError> {
        Self::keyring(&[master], None, PseudonymKey::Default)
    }

    /// Parses a base64 master key (as stored in a key file or environment variable).
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        Self::from_master_key(&decode_key(text)?)
    }

    /// The keyring of several master keys. `current` (a key id) encrypts new data; with more
    /// than one key it must be named, and so must the pseudonym key: a silent default would
    /// change what encrypts or, worse, every pseudonym, on the day a key is added.
    pub fn keyring(
        masters: &[&[u8]],
        current: Option<&str>,
        pseudonym: PseudonymKey,
    ) -> Result<Self, VaultError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for m in masters {
            let key = MasterKey::new(m)?;
            if !keys.iter().any(|k| k.cipher.id == key.cipher.id) {
                keys.push(key);
            }
        }
        let ids = || {
            keys.iter()
                .map(MasterKey::id)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let find = |id: &str| keys.iter().position(|k| k.id() == id.trim().to_lowercase());
        let current = match current {
            Some(id) => find(id).ok_or_else(|| {
                VaultError::Keyring(format!(
                    "current_key {id} is none of the configured master keys ({})",
                    ids()
                ))
            })?,
            None if keys.len() == 1 => 0,
            None if keys.is_empty() => {
                return Err(VaultError::Keyring("no master key configured".into()));
            }
            None => {
                return Err(VaultError::Keyring(format!(
                    "several master keys ({}): name the one that encrypts new data in current_key",
                    ids()
                )));
            }
        };
        let mac_raw: Vec<u8> = match pseudonym {
            PseudonymKey::Own(raw) if raw.expose_secret().len() == 32 => {
                raw.expose_secret().to_vec()
            }
            PseudonymKey::Own(_) => return Err(VaultError::BadKey),
            PseudonymKey::Master(id) => {
                let i = find(&id).ok_or_else(|| {
                    VaultError::Keyring(format!(
                        "pseudonym_key_id {id} is none of the configured master keys ({})",
                        ids()
                    ))
                })?;
                keys[i].mac.expose_secret().to_vec()
            }
            PseudonymKey::Default if keys.len() == 1 => keys[0].mac.expose_secret().to_vec(),
            PseudonymKey::Default => {
                return Err(VaultError::Keyring(
                    "several master keys: pin the pseudonym key with pseudonym_key_id or \
                     pseudonym_key_file (docs/privacy.md)"
                        .into(),
                ));
            }
        };
        Ok(Self {
            keys,
            retired: Vec::new(),
            current,
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac_raw),
            mac_raw: SecretSlice::from(mac_raw),
            rng: SystemRandom::new(),
        })
    }

    /// The keyring as `[privacy]` describes it, key files read.
    pub fn load(s: &PrivacySettings) -> Result<Self, VaultError> {
        let mut texts = Vec::new();
        if let Some(key) = &s.master_key {
            texts.push(key.clone());
        } else if let Some(file) = &s.master_key_file {
            texts.push(read_secret(file)?);
        }
        texts.extend(s.master_keys.iter().cloned());
        for file in &s.master_key_files {
            texts.push(read_secret(file)?);
        }
        let masters = texts
            .iter()
            .map(|t| decode_key(t.expose_secret()).map(SecretSlice::from))
            .collect::<Result<Vec<_>, _>>()?;
        let own = match (&s.pseudonym_key, &s.pseudonym_key_file) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(file)) => Some(read_secret(file)?),
            (None, None) => None,
        };
        let pseudonym = match (own, &s.pseudonym_key_id) {
            (Some(_), Some(_)) => {
                return Err(VaultError::Keyring(
                    "set pseudonym_key_id or a pseudonym key, not both".into(),
                ));
            }
            (Some(text), None) => {
                PseudonymKey::Own(SecretSlice::from(decode_key(text.expose_secret())?))
            }
            (None, Some(id)) => PseudonymKey::Master(id.clone()),
            (None, None) => PseudonymKey::Default,
        };
        let refs: Vec<&[u8]> = masters.iter().map(|m| m.expose_secret()).collect();
        let mut vault = Self::keyring(&refs, s.current_key.as_deref(), pseudonym)?;
        for file in &s.audit_chain_key_files {
            vault
                .add_audit_chain_key(&read_secret(file)?)
                .map_err(|e| VaultError::Keyring(format!("{}: {e}", file.display())))?;
        }
        Ok(vault)
    }

    /// The audit chain key of configured master key `key_id` as `keys export-audit-key` writes
    /// it: `etk-audit-chain-key-v1 <key id> <base64 chain key>`. The chain key is derived from
    /// the master key one way; it verifies and seals audit chains and opens nothing.
    pub fn export_audit_chain_key(&self, key_id: &str) -> Result<SecretString, VaultError> {
        use base64::Engine;
        let id = key_id.trim().to_lowercase();
        let master = self.master(&id).ok_or_else(|| {
            VaultError::Keyring(format!(
                "{id} is none of the configured master keys ({})",
                self.key_ids().join(", ")
            ))
        })?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(master.audit_raw.expose_secret());
        Ok(SecretString::from(format!(
            "{AUDIT_KEY_LABEL} {id} {encoded}\n"
        )))
    }

    /// Accepts an exported audit chain key (`export_audit_chain_key`'s text) of a retired master
    /// key: events and heads chained under it verify. One that names a configured master key
    /// must be that key's (a mislabelled file is refused, not trusted).
    pub fn add_audit_chain_key(&mut self, text: &SecretString) -> Result<(), VaultError> {
        let malformed = || {
            VaultError::Keyring(
                "not an exported audit chain key (`keys export-audit-key` writes one)".into(),
            )
        };
        let words: Vec<&str> = text.expose_secret().split_whitespace().collect();
        let [AUDIT_KEY_LABEL, id, encoded] = words.as_slice() else {
            return Err(malformed());
        };
        let id = id.to_lowercase();
        if id.len() != 2 * KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let raw = decode_key(encoded).map_err(|_| malformed())?;
        if raw.len() != 32 {
            return Err(malformed());
        }
        let known = self
            .master(&id)
            .map(|m| m.audit_raw.expose_secret())
            .or_else(|| {
                self.retired
                    .iter()
                    .find(|r| r.id == id)
                    .map(|r| r.raw.expose_secret())
            });
        match known {
            Some(k) if k == raw.as_slice() => Ok(()),
            Some(_) => Err(VaultError::Keyring(format!(
                "the audit chain key given for {id} is not that key's"
            ))),
            None => {
                self.retired.push(RetiredChainKey {
                    id,
                    key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
                    raw: SecretSlice::from(raw),
                });
                Ok(())
            }
        }
    }

    /// A new random 32-byte key, base64-encoded (dev mode writes its master key with it).
    pub fn generate_base64() -> Result<String, VaultError> {
        use base64::Engine;
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| VaultError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// The current master key's id (the one new data is encrypted under).
    pub fn key_id(&self) -> String {
        self.keys[self.current].id()
    }

    /// Every configured master key's id, the current one first.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids = vec![self.key_id()];
        ids.extend(
            self.keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != self.current)
                .map(|(_, k)| k.id()),
        );
        ids
    }

    /// The current master key's audit chain key.
    pub fn audit_chain_key(&self) -> &hmac::Key {
        &self.keys[self.current].audit
    }

    /// The audit chain key of any configured master key, or of a retired one given by its
    /// export: events chained under a key that is no longer current still verify.
    pub fn audit_chain_key_for(&self, key_id: &str) -> Option<&hmac::Key> {
        self.master(key_id)
            .map(|k| &k.audit)
            .or_else(|| self.retired.iter().find(|r| r.id == key_id).map(|r| &r.key))
    }

    /// The ids of every audit chain key held: the master keys' (the current one first), then
    /// the retired ones'.
    pub fn audit_chain_key_ids(&self) -> Vec<String> {
        let mut ids = self.key_ids();
        ids.extend(self.retired.iter().map(|r| r.id.clone()));
        ids
    }

    /// The pseudonym key, base64: for `keys export-pseudonym-key` only (pinning it to a file
    /// of its own before the first rotation).
    pub fn pseudonym_key_base64(&self) -> SecretString {
        use base64::Engine;
        SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(self.mac_raw.expose_secret()),
        )
    }

    fn master(&self, key_id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id() == key_id)
    }

    /// Encrypts under the current master key with a fresh random nonce; `context` (e.g. the
    /// case id) is bound as associated data, so a ciphertext cannot be moved to another row
    /// unnoticed. The result names the key's id.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.keys[self.current].cipher.seal(context, plaintext)
    }

    /// Decrypts with the key the value names; a v1 value (no key id, before m0006) is tried
    /// with every configured key.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        match sealed.first() {
            Some(&FORMAT_V1) if sealed.len() > 1 => self
                .keys
                .iter()
                .find_map(|k| k.cipher.open_body(context, &sealed[1..]).ok())
                .ok_or(VaultError::Decrypt),
            Some(&FORMAT_V2) => {
                let (id, body) = split_v2(sealed)?;
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.cipher.id == id)
                    .ok_or_else(|| VaultError::UnknownKey(hex::encode(id)))?;
                key.cipher.open_body(context, body)
            }
            _ => Err(VaultError::Decrypt),
        }
    }

    /// A new random data key for a case, and the same key wrapped by the current master key
    /// (bound to `context`) for the row.
    pub fn new_data_key(&self, context: &str) -> Result<(DataKey, Vec<u8>), VaultError> {
        let mut raw = vec![0u8; 32];
        self.rng.fill(&mut raw).map_err(|_| VaultError::Random)?;
        let raw = SecretSlice::from(raw);
        let key = DataKey(Cipher::new(
            key_id_bytes(raw.expose_secret()),
            raw.expose_secret(),
        )?);
        Ok((key, self.seal(context, raw.expose_secret())?))
    }

    /// Unwraps a stored data key (with whichever configured master key wrapped it).
    pub fn open_data_key(&self, context: &str, wrapped: &[u8]) -> Result<DataKey, VaultError> {
        let raw = SecretSlice::from(self.open(context, wrapped)?);
        if raw.expose_secret().len() != 32 {
            return Err(VaultError::Decrypt);
        }
        Ok(DataKey(Cipher::new(
            key_id_bytes(raw.expose_secret()),
            raw.expose_secret(),
        )?))
    }

    /// The wrapped data key re-wrapped by the current master key (the data it seals is
    /// untouched: a rotation rewrites 60 bytes per case, not the case).
    pub fn rewrap_data_key(&self, context: &str, wrapped: &[u8]) -> Result<Vec<u8>, VaultError> {
        let raw = SecretSlice::from(self.open(context, wrapped)?);
        self.seal(context, raw.expose_secret())
    }

    /// Keyed, stable pseudonym of a personnummer: correlates cases of one person without
    /// storing or logging the number.
    pub fn pseudonym(&self, pnr: &Personnummer) -> String {
        self.digest(&[b"pnr:", pnr.expose_digits().as_bytes()])
    }

    /// Keyed digest of several parts (length-prefixed so parts cannot run together).
    pub fn digest(&self, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.mac);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        hex::encode(ctx.sign().as_ref())
    }
}

#[cfg(test)]
mod tests;
