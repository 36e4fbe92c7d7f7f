use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;

fn binding(n: u128) -> KeyBinding {
    KeyBinding {
        org_id: Uuid::from_u128(1),
        key_id: Uuid::from_u128(n),
    }
}

fn aad(cred: &[u8]) -> SealAad<'_> {
    SealAad {
        org_id: Uuid::from_u128(1),
        user_id: Uuid::from_u128(2),
        key_id: Uuid::from_u128(10),
        credential_id: cred,
        key_version: 1,
    }
}

fn env_source(current: &str, next: Option<&str>) -> KekSource {
    KekSource::Env {
        current: Zeroizing::new(current.to_owned()),
        next: next.map(|n| Zeroizing::new(n.to_owned())),
    }
}

#[test]
fn data_key_round_trip_through_wrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::open(KekSource::KeyFile(dir.path().join("vault.key"))).expect("open");
    let (wrapped, v) = vault.new_data_key(&binding(10)).expect("new");
    assert_eq!(v, 1);
    let dk = vault.unwrap(&binding(10), &wrapped, v).expect("unwrap");
    let sealed = dk.seal(&aad(b"c1"), b"priv").expect("seal");

    // Reopening (a server restart) gives the same data key.
    drop(vault);
    let vault = Vault::open(KekSource::KeyFile(dir.path().join("vault.key"))).expect("reopen");
    let dk2 = vault.unwrap(&binding(10), &wrapped, v).expect("unwrap");
    assert_eq!(&dk2.open(&aad(b"c1"), &sealed).expect("open")[..], b"priv");
    assert_eq!(dk.pin_verifier(&[3; 16]), dk2.pin_verifier(&[3; 16]));
}

#[test]
fn wrapped_key_is_bound_to_its_row_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::open(KekSource::KeyFile(dir.path().join("vault.key"))).expect("open");
    let (wrapped, v) = vault.new_data_key(&binding(10)).expect("new");
    assert!(matches!(
        vault.unwrap(&binding(11), &wrapped, v),
        Err(VaultError::Integrity)
    ));
    let other_org = KeyBinding {
        org_id: Uuid::from_u128(5),
        key_id: Uuid::from_u128(10),
    };
    assert!(matches!(
        vault.unwrap(&other_org, &wrapped, v),
        Err(VaultError::Integrity)
    ));
    assert!(matches!(
        vault.unwrap(&binding(10), &wrapped, 9),
        Err(VaultError::UnknownKekVersion(9))
    ));
    let mut bad = wrapped.clone();
    bad[20] ^= 0x80;
    assert!(matches!(
        vault.unwrap(&binding(10), &bad, v),
        Err(VaultError::Integrity)
    ));
}

#[test]
fn a_different_kek_cannot_unwrap() {
    let a = Vault::open(env_source(&STANDARD.encode([1u8; 32]), None)).expect("a");
    let b = Vault::open(env_source(&STANDARD.encode([2u8; 32]), None)).expect("b");
    let (wrapped, v) = a.new_data_key(&binding(1)).expect("new");
    assert!(matches!(
        b.unwrap(&binding(1), &wrapped, v),
        Err(VaultError::Integrity)
    ));
    assert!(a.unwrap(&binding(1), &wrapped, v).is_ok());
}

#[test]
fn env_rotation_needs_next_and_rewraps() {
    let cur = STANDARD.encode([1u8; 32]);
    let next = STANDARD.encode([2u8; 32]);
    let old = Vault::open(env_source(&cur, None)).expect("old");
    assert!(matches!(old.prepare_rotation(), Err(VaultError::Config(_))));
    let (wrapped, v1) = old.new_data_key(&binding(1)).expect("new");
    let dk = old.unwrap(&binding(1), &wrapped, v1).expect("unwrap");

    let both = Vault::open(env_source(&cur, Some(&next))).expect("both");
    assert_eq!(both.prepare_rotation().expect("prepare"), 2);
    let (w2, v2) = both
        .rewrap(&binding(1), &wrapped, v1)
        .expect("rewrap")
        .expect("changed");
    assert_eq!(v2, 2);
    assert!(both.rewrap(&binding(1), &w2, v2).expect("noop").is_none());

    // After the operator moves NEXT to KEK (with its version), the new KEK alone opens it.
    let after = Vault::open(env_source(&format!("2:{next}"), None)).expect("after");
    let dk2 = after.unwrap(&binding(1), &w2, v2).expect("unwrap v2");
    assert_eq!(
        dk.pin_verifier(&[9; 16]),
        dk2.pin_verifier(&[9; 16]),
        "rotation must keep the data key"
    );
    assert!(matches!(
        after.unwrap(&binding(1), &wrapped, v1),
        Err(VaultError::UnknownKekVersion(1))
    ));

    // NEXT with a version not above the current one is a configuration error.
    assert!(Vault::open(env_source(&format!("3:{cur}"), Some(&format!("2:{next}")))).is_err());
}

#[test]
fn key_file_rotation_is_seen_by_a_running_vault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.key");
    let server = Vault::open(KekSource::KeyFile(path.clone())).expect("server");
    let (w1, v1) = server.new_data_key(&binding(1)).expect("new");
    let dk = server.unwrap(&binding(1), &w1, v1).expect("unwrap");

    // `keyward vault rotate` in another process.
    let rotator = Vault::open(KekSource::KeyFile(path.clone())).expect("rotator");
    assert_eq!(rotator.prepare_rotation().expect("prepare"), 2);
    let (w2, v2) = rotator
        .rewrap(&binding(1), &w1, v1)
        .expect("rewrap")
        .expect("changed");

    // The server unwraps the rewrapped row (reloading the file) and wraps new keys under v2.
    let dk2 = server.unwrap(&binding(1), &w2, v2).expect("server sees v2");
    assert_eq!(dk.pin_verifier(&[1; 16]), dk2.pin_verifier(&[1; 16]));
    let (_, vnew) = server
        .new_data_key(&binding(2))
        .expect("new after rotation");
    assert_eq!(vnew, 2);

    rotator.finish_rotation().expect("finish");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "old version retired"
    );
    let fresh = Vault::open(KekSource::KeyFile(path)).expect("fresh");
    assert!(fresh.unwrap(&binding(1), &w2, v2).is_ok());
    assert!(matches!(
        fresh.unwrap(&binding(1), &w1, v1),
        Err(VaultError::UnknownKekVersion(1))
    ));
}

#[test]
fn secrets_round_trip_bind_context_and_rotate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::open(KekSource::KeyFile(dir.path().join("vault.key"))).expect("open");
    let blob = vault
        .seal_secret("directory/a/client_secret", b"s3cr3t")
        .expect("seal");
    assert!(!blob.windows(6).any(|w| w == b"s3cr3t"));
    assert_eq!(
        &vault
            .open_secret("directory/a/client_secret", &blob)
            .expect("open")[..],
        b"s3cr3t"
    );
    assert!(matches!(
        vault.open_secret("directory/b/client_secret", &blob),
        Err(VaultError::Integrity)
    ));
    assert!(
        vault
            .open_secret("directory/a/client_secret", &blob[..8])
            .is_err()
    );
    assert!(
        vault
            .open_secret("directory/a/client_secret", b"garbage")
            .is_err()
    );

    assert!(
        vault
            .rewrap_secret("directory/a/client_secret", &blob)
            .expect("noop")
            .is_none()
    );
    vault.prepare_rotation().expect("prepare");
    let blob2 = vault
        .rewrap_secret("directory/a/client_secret", &blob)
        .expect("rewrap")
        .expect("changed");
    assert_eq!(Vault::secret_kek_version(&blob2).expect("version"), 2);
    vault.finish_rotation().expect("finish");
    assert_eq!(
        &vault
            .open_secret("directory/a/client_secret", &blob2)
            .expect("open")[..],
        b"s3cr3t"
    );
    assert!(
        vault
            .open_secret("directory/a/client_secret", &blob)
            .is_err(),
        "v1 is retired"
    );
}

#[test]
fn settings_choose_the_source() {
    let dir = Path::new("/data");
    let src = KekSource::from_settings(dir, |_| None).expect("default");
    assert!(matches!(src, KekSource::KeyFile(ref p) if p == Path::new("/data/vault.key")));
    let src =
        KekSource::from_settings(dir, |n| (n == ENV_KEK).then(|| "x".to_owned())).expect("env");
    assert!(matches!(src, KekSource::Env { next: None, .. }));
    // PKCS#11 without its token and PIN is refused rather than half-configured.
    assert!(
        KekSource::from_settings(dir, |n| (n == ENV_PKCS11_MODULE)
            .then(|| "/m.so".to_owned()))
        .is_err()
    );
    let src = KekSource::from_settings(dir, |n| match n {
        ENV_PKCS11_MODULE => Some("/m.so".into()),
        ENV_PKCS11_TOKEN => Some("t".into()),
        ENV_PKCS11_PIN => Some("1234".into()),
        _ => None,
    })
    .expect("pkcs11");
    assert!(
        !format!("{src:?}").contains("1234"),
        "Debug must not show the PIN"
    );
    let env = env_source("secret-value", Some("next-secret"));
    assert!(
        !format!("{env:?}").contains("secret"),
        "Debug must not show the KEK"
    );
}
