use super::*;

fn vault() -> Vault {
    Vault::from_master_key(&[7u8; 32]).unwrap()
}

/// A value as releases before m0006 sealed it: `1 | nonce | ciphertext+tag`, no key id.
fn seal_v1(v: &Vault, context: &str, plain: &[u8]) -> Vec<u8> {
    let sealed = v.seal(context, plain).unwrap();
    let mut out = vec![FORMAT_V1];
    out.extend_from_slice(&sealed[1 + KEY_ID_LEN..]);
    out
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
fn the_key_id_is_the_agreed_hmac_and_is_named_in_every_value() {
    let v = vault();
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]),
        b"etk key id v1",
    );
    assert_eq!(v.key_id(), hex::encode(&tag.as_ref()[..8]));
    assert_eq!(v.key_id().len(), 16);
    let sealed = v.seal("c", b"x").unwrap();
    assert_eq!(sealed_key_id(&sealed), Some(v.key_id()));
    assert_eq!(sealed_key_id(&seal_v1(&v, "c", b"x")), None);
}

#[test]
fn a_rotated_keyring_reads_old_values_and_seals_with_the_new_key() {
    let old = vault();
    let old_id = old.key_id();
    let sealed_old = old.seal("c", b"old").unwrap();
    let legacy = seal_v1(&old, "c", b"legacy");
    let new_id = key_id_of(&[8u8; 32]);
    let ring = Vault::keyring(
        &[&[7u8; 32], &[8u8; 32]],
        Some(&new_id),
        PseudonymKey::Master(old_id.clone()),
    )
    .unwrap();
    assert_eq!(ring.key_id(), new_id);
    assert_eq!(ring.key_ids(), vec![new_id.clone(), old_id.clone()]);
    assert_eq!(ring.open("c", &sealed_old).unwrap(), b"old");
    assert_eq!(ring.open("c", &legacy).unwrap(), b"legacy");
    let fresh = ring.seal("c", b"new").unwrap();
    assert_eq!(sealed_key_id(&fresh), Some(new_id.clone()));
    // The old key alone cannot read what the new one sealed, and says which key is missing.
    assert!(matches!(old.open("c", &fresh), Err(VaultError::UnknownKey(id)) if id == new_id));
    // Old events' audit chain keys stay available.
    assert!(ring.audit_chain_key_for(&old_id).is_some());
    assert!(ring.audit_chain_key_for("0000000000000000").is_none());
}

#[test]
fn several_keys_need_a_named_current_key_and_a_pinned_pseudonym_key() {
    let both: [&[u8]; 2] = [&[7u8; 32], &[8u8; 32]];
    let e = Vault::keyring(&both, None, PseudonymKey::Master(key_id_of(&[7u8; 32])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("current_key"), "{e}");
    let e = Vault::keyring(&both, Some(&key_id_of(&[8u8; 32])), PseudonymKey::Default)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pseudonym"), "{e}");
    let e = Vault::keyring(&both, Some("00"), PseudonymKey::Default)
        .unwrap_err()
        .to_string();
    assert!(e.contains("current_key 00"), "{e}");
    // The same key given twice is one key.
    assert!(Vault::keyring(&[&[7u8; 32], &[7u8; 32]], None, PseudonymKey::Default).is_ok());
}

#[test]
fn pseudonyms_survive_rotation_when_pinned() {
    let pnr = Personnummer::parse("19121212-1212", crate::clock::now().utc_date()).unwrap();
    let before = vault().pseudonym(&pnr);
    let new_id = key_id_of(&[8u8; 32]);
    let pinned_to_old = Vault::keyring(
        &[&[7u8; 32], &[8u8; 32]],
        Some(&new_id),
        PseudonymKey::Master(key_id_of(&[7u8; 32])),
    )
    .unwrap();
    assert_eq!(pinned_to_old.pseudonym(&pnr), before);
    // Exported to a key of its own, the old master key can go.
    let exported = vault().pseudonym_key_base64();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(exported.expose_secret())
        .unwrap();
    let new_only = Vault::keyring(&[&[8u8; 32]], None, PseudonymKey::Own(raw.into())).unwrap();
    assert_eq!(new_only.pseudonym(&pnr), before);
    assert_ne!(
        Vault::from_master_key(&[8u8; 32]).unwrap().pseudonym(&pnr),
        before
    );
}

#[test]
fn data_keys_are_wrapped_bound_and_rewrapped() {
    let v = vault();
    let (key, wrapped) = v.new_data_key("case-1/key").unwrap();
    let sealed = key.seal("case-1", b"Tolvan").unwrap();
    let again = v.open_data_key("case-1/key", &wrapped).unwrap();
    assert_eq!(again.open("case-1", &sealed).unwrap(), b"Tolvan");
    assert!(v.open_data_key("case-2/key", &wrapped).is_err());
    // Another case's data key does not open this case's data.
    let (other, _) = v.new_data_key("case-2/key").unwrap();
    assert!(other.open("case-1", &sealed).is_err());
    let new_id = key_id_of(&[8u8; 32]);
    let ring = Vault::keyring(
        &[&[7u8; 32], &[8u8; 32]],
        Some(&new_id),
        PseudonymKey::Master(v.key_id()),
    )
    .unwrap();
    let rewrapped = ring.rewrap_data_key("case-1/key", &wrapped).unwrap();
    assert_eq!(sealed_key_id(&rewrapped), Some(new_id));
    let new_only = Vault::from_master_key(&[8u8; 32]).unwrap();
    let moved = new_only.open_data_key("case-1/key", &rewrapped).unwrap();
    assert_eq!(moved.open("case-1", &sealed).unwrap(), b"Tolvan");
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

#[test]
fn debug_prints_no_key_material() {
    let v = vault();
    let text = format!("{v:?}");
    assert!(text.contains(&v.key_id()), "{text}");
    let (k, _) = v.new_data_key("c").unwrap();
    assert_eq!(format!("{k:?}"), "DataKey(<key>)");
}

#[test]
fn the_settings_make_one_keyring() {
    use base64::Engine;
    let b64 = |k: [u8; 32]| SecretString::from(base64::engine::general_purpose::STANDARD.encode(k));
    let dir = std::env::temp_dir().join(format!("etk-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("third.key");
    std::fs::write(&file, b64([9u8; 32]).expose_secret()).unwrap();
    let mut s = PrivacySettings {
        master_key: Some(b64([7u8; 32])),
        // Ignored: the key wins over the file, as before.
        master_key_file: Some(dir.join("absent.key")),
        master_keys: vec![b64([8u8; 32])],
        master_key_files: vec![file],
        current_key: Some(key_id_of(&[9u8; 32])),
        pseudonym_key_id: Some(key_id_of(&[7u8; 32])),
        ..PrivacySettings::default()
    };
    let v = Vault::load(&s).unwrap();
    assert_eq!(v.key_id(), key_id_of(&[9u8; 32]));
    assert_eq!(v.key_ids().len(), 3);
    let pnr = Personnummer::parse("19121212-1212", crate::clock::now().utc_date()).unwrap();
    assert_eq!(v.pseudonym(&pnr), vault().pseudonym(&pnr));
    // A pseudonym key of its own and a master key's id at once is ambiguous.
    s.pseudonym_key = Some(b64([1u8; 32]));
    assert!(
        Vault::load(&s)
            .unwrap_err()
            .to_string()
            .contains("not both")
    );
    s.pseudonym_key_id = None;
    let own = Vault::load(&s).unwrap();
    assert_ne!(own.pseudonym(&pnr), vault().pseudonym(&pnr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_exported_audit_chain_key_outlives_its_master_key() {
    let mut old = vault();
    let old_id = old.key_id();
    let exported = old.export_audit_chain_key(&old_id.to_uppercase()).unwrap();
    let sign = |k: &hmac::Key| hmac::sign(k, b"event").as_ref().to_vec();
    let made_by_old = sign(old.audit_chain_key());
    // The export is the chain key alone: neither the master key nor anything it derives to
    // decrypt or to make pseudonyms.
    let text = exported.expose_secret();
    assert!(text.starts_with(&format!("etk-audit-chain-key-v1 {old_id} ")));
    use base64::Engine;
    for secret in [[7u8; 32].to_vec(), old.keys[0].mac.expose_secret().to_vec()] {
        assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(secret)));
    }
    assert!(old.export_audit_chain_key("0123456789abcdef").is_err());

    // The new key alone does not know the old chain; given the export, it does.
    let mut new = Vault::from_master_key(&[8u8; 32]).unwrap();
    assert!(new.audit_chain_key_for(&old_id).is_none());
    new.add_audit_chain_key(&exported).unwrap();
    assert_eq!(sign(new.audit_chain_key_for(&old_id).unwrap()), made_by_old);
    assert_eq!(
        new.audit_chain_key_ids(),
        vec![new.key_id(), old_id.clone()]
    );
    // It encrypts and decrypts nothing: the old key's data stays unreadable.
    let sealed = old.seal("case-1", b"Tolvan").unwrap();
    assert!(matches!(
        new.open("case-1", &sealed),
        Err(VaultError::UnknownKey(_))
    ));
    // Given twice: the same key is accepted again, another key under that id is not.
    new.add_audit_chain_key(&exported).unwrap();
    let other = Vault::from_master_key(&[9u8; 32]).unwrap();
    let forged = other
        .export_audit_chain_key(&other.key_id())
        .unwrap()
        .expose_secret()
        .replace(&other.key_id(), &old_id);
    assert!(
        new.add_audit_chain_key(&SecretString::from(forged.clone()))
            .is_err()
    );
    // Mislabelled as a configured master key: refused too.
    assert!(
        old.add_audit_chain_key(&SecretString::from(forged))
            .is_err()
    );
    for bad in [
        String::new(),
        format!("etk-audit-chain-key-v1 {old_id}"),
        format!("etk-audit-chain-key-v2 {old_id} AAAA"),
        format!("etk-audit-chain-key-v1 nothex {}", "A".repeat(44)),
        format!("etk-audit-chain-key-v1 {old_id} QUJD"),
    ] {
        assert!(new.add_audit_chain_key(&SecretString::from(bad)).is_err());
    }

    // From files, as `[privacy]` names them.
    let dir = std::env::temp_dir().join(format!("etk-chain-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("old.audit-key");
    std::fs::write(&file, exported.expose_secret()).unwrap();
    let b64 = |k: [u8; 32]| SecretString::from(base64::engine::general_purpose::STANDARD.encode(k));
    let mut s = PrivacySettings {
        master_key: Some(b64([8u8; 32])),
        audit_chain_key_files: vec![file.clone()],
        ..PrivacySettings::default()
    };
    let loaded = Vault::load(&s).unwrap();
    assert_eq!(
        sign(loaded.audit_chain_key_for(&old_id).unwrap()),
        made_by_old
    );
    std::fs::write(&file, b"not a key").unwrap();
    let err = Vault::load(&s).unwrap_err().to_string();
    assert!(err.contains("old.audit-key"), "{err}");
    s.audit_chain_key_files = vec![dir.join("absent")];
    assert!(Vault::load(&s).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
