//! Personal data at rest: AEAD encryption of the sensitive fields and keyed pseudonyms.
//!
//! One 32-byte master key (a secret from configuration) derives, through HKDF-SHA256,
//! an AES-256-GCM key for encryption and an HMAC-SHA256 key for pseudonyms and request
//! fingerprints. Plain hashes of personnummer would be brute-forced in minutes (the space
//! is about 10^10), so every digest of personal data here is keyed.

use std::fmt;
use std::path::PathBuf;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use crate::domain::Personnummer;

/// Where the master key comes from (`[privacy]`): a file holding it, or the key itself.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// File holding the base64 32-byte master key.
    pub master_key_file: Option<PathBuf>,
    /// The base64 key itself (wins over the file when both are set).
    #[serde(default, deserialize_with = "crate::secret::optional")]
    pub master_key: Option<secrecy::SecretString>,
}

impl PrivacySettings {
    /// One of the two sources must be given; serde cannot say "one of".
    pub fn validate(&self) -> Result<(), String> {
        if self.master_key.is_none() && self.master_key_file.is_none() {
            return Err("missing master_key_file or master_key".into());
        }
        Ok(())
    }
}

/// Ciphertext layout version byte, so keys or algorithms can rotate later.
const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the master key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("ciphertext could not be decrypted (wrong key or corrupted data)")]
    Decrypt,
    #[error("the system random generator failed")]
    Random,
}

/// Holds the derived keys. `Debug` never prints key material.
pub struct Vault {
    aead: LessSafeKey,
    mac: hmac::Key,
    /// Keys the audit chain (`storage::audit`); its own HKDF branch.
    chain: hmac::Key,
    /// Names the master key without revealing it (`key_id`).
    key_id: String,
    rng: SystemRandom,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault(<keys>)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Vault {
    pub fn from_master_key(master: &[u8]) -> Result<Self, VaultError> {
        if master.len() != 32 {
            return Err(VaultError::BadKey);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"etjanstekort-gateway/v1").extract(master);
        let derive = |info: &'static [u8]| -> Result<[u8; 32], VaultError> {
            let mut out = [0u8; 32];
            prk.expand(&[info], Len(32))
                .and_then(|okm| okm.fill(&mut out))
                .map_err(|_| VaultError::BadKey)?;
            Ok(out)
        };
        let enc = derive(b"aead")?;
        let mac = derive(b"hmac")?;
        let chain = derive(b"etk audit chain v1")?;
        let id = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, master), b"etk key id v1");
        let aead =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &enc).map_err(|_| VaultError::BadKey)?);
        Ok(Self {
            aead,
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac),
            chain: hmac::Key::new(hmac::HMAC_SHA256, &chain),
            key_id: hex::encode(&id.as_ref()[..8]),
            rng: SystemRandom::new(),
        })
    }

    /// Parses a base64 master key (as stored in a key file or environment variable).
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| VaultError::BadKey)?;
        Self::from_master_key(&key)
    }

    /// A new random master key, base64-encoded (dev mode writes it to its data directory).
    pub fn generate_base64() -> Result<String, VaultError> {
        use base64::Engine;
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| VaultError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// Names the master key: lowercase hex of the first 8 bytes of
    /// HMAC-SHA256(master, "etk key id v1"). Stored with what the key made (audit events), so
    /// the right key is found again after a rotation; reveals nothing of the key.
    pub fn key_id(&self) -> String {
        self.key_id.clone()
    }

    /// The HMAC-SHA256 key of the audit chain, derived from the master key (HKDF info
    /// "etk audit chain v1"). Only `storage::audit` uses it.
    pub fn audit_chain_key(&self) -> &hmac::Key {
        &self.chain
    }

    /// Encrypts with a fresh random nonce; `context` (e.g. the case id) is bound as
    /// associated data, so a ciphertext cannot be moved to another row unnoticed.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let mut buf = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| VaultError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT_V1 {
            return Err(VaultError::Decrypt);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| VaultError::Decrypt)?;
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| VaultError::Decrypt)?;
        Ok(plain.to_vec())
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
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::from_master_key(&[7u8; 32]).unwrap()
    }

    #[test]
    fn seal_round_trips_and_binds_context() {
        let v = vault();
        let sealed = v.seal("case-1", b"191212121212").unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"191212121212"));
        assert_eq!(v.open("case-1", &sealed).unwrap(), b"191212121212");
        assert!(v.open("case-2", &sealed).is_err());
        let other = Vault::from_master_key(&[8u8; 32]).unwrap();
        assert!(other.open("case-1", &sealed).is_err());
    }

    #[test]
    fn key_id_names_the_master_key_and_chain_key_is_its_own() {
        let v = vault();
        // The contract: hex of the first 8 bytes of HMAC-SHA256(master, "etk key id v1").
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]),
            b"etk key id v1",
        );
        assert_eq!(v.key_id(), hex::encode(&expected.as_ref()[..8]));
        assert_eq!(v.key_id().len(), 16);
        assert_ne!(
            v.key_id(),
            Vault::from_master_key(&[8u8; 32]).unwrap().key_id()
        );
        // The chain key is neither the pseudonym key nor the master key.
        let tag = |k: &hmac::Key| hex::encode(hmac::sign(k, b"x").as_ref());
        assert_ne!(tag(v.audit_chain_key()), tag(&v.mac));
        assert_ne!(
            tag(v.audit_chain_key()),
            tag(&hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]))
        );
    }

    #[test]
    fn pseudonym_is_keyed_and_stable() {
        let pnr = Personnummer::parse("19121212-1212", crate::clock::now().utc_date()).unwrap();
        let a = vault().pseudonym(&pnr);
        assert_eq!(a, vault().pseudonym(&pnr));
        assert_ne!(
            a,
            Vault::from_master_key(&[8u8; 32]).unwrap().pseudonym(&pnr)
        );
        assert!(!a.contains("1212121212"));
    }
}
