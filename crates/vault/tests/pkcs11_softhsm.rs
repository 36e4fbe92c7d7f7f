//! The PKCS#11 KEK source against a real SoftHSM2 token.
//!
//! SoftHSM reads its configuration (`SOFTHSM2_CONF`) when the module is initialised, and setting
//! an environment variable inside a running multi-threaded test process is unsound. So the outer
//! test prepares a token in a temporary directory and re-runs this test binary, filtered to the
//! inner test, with `SOFTHSM2_CONF` set in the child's environment.
//!
//! Without SoftHSM2 installed the test skips loudly, except under `CI`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use keyward_vault::{KekSource, KeyBinding, Pkcs11Config, SealAad, Vault, VaultError};
use uuid::Uuid;
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "keyward-test";
const PIN: &str = "246810";
const DIR_VAR: &str = "KEYWARD_TEST_SOFTHSM_DIR";

fn config() -> Pkcs11Config {
    Pkcs11Config {
        module: PathBuf::from(MODULE),
        token_label: TOKEN.to_owned(),
        pin: Zeroizing::new(PIN.to_owned()),
        key_label: "keyward-kek".to_owned(),
    }
}

#[test]
fn pkcs11_kek_on_softhsm() {
    let util_ok = Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !util_ok || !Path::new(MODULE).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("SoftHSM2 is required under CI: apt-get install -y softhsm2");
        }
        eprintln!(
            "\n!!! SKIPPED pkcs11_kek_on_softhsm: SoftHSM2 is not installed (apt-get install -y softhsm2) !!!\n"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("tokens dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "13579",
            "--pin",
            PIN,
        ])
        .output()
        .expect("run softhsm2-util");
    assert!(
        init.status.success(),
        "init-token failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .env("SOFTHSM2_CONF", &conf)
        .env(DIR_VAR, dir.path())
        .args([
            "--exact",
            "pkcs11_inner",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run inner test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner test failed:\n{stdout}\n{stderr}"
    );
}

/// Runs only as the child of [`pkcs11_kek_on_softhsm`], which prepares the token.
#[test]
#[ignore = "run by pkcs11_kek_on_softhsm with SOFTHSM2_CONF set"]
fn pkcs11_inner() {
    if std::env::var_os(DIR_VAR).is_none() {
        eprintln!("pkcs11_inner only runs under pkcs11_kek_on_softhsm");
        return;
    }
    let b = KeyBinding {
        org_id: Uuid::from_u128(1),
        key_id: Uuid::from_u128(2),
    };
    let aad = SealAad {
        org_id: b.org_id,
        user_id: Uuid::from_u128(3),
        key_id: b.key_id,
        credential_id: b"cred",
        key_version: 1,
    };

    // First start generates KEK version 1 on the token.
    let vault = Vault::open(KekSource::Pkcs11(config())).expect("open token vault");
    assert_eq!(vault.source_kind(), "pkcs11");
    assert_eq!(vault.current_version(), 1);
    let (wrapped, v1) = vault.new_data_key(&b).expect("wrap on token");
    assert_eq!(v1, 1);
    let dk = vault.unwrap(&b, &wrapped, v1).expect("unwrap on token");
    let sealed = dk.seal(&aad, b"private").expect("seal");
    let other = KeyBinding {
        org_id: b.org_id,
        key_id: Uuid::from_u128(99),
    };
    assert!(
        matches!(
            vault.unwrap(&other, &wrapped, v1),
            Err(VaultError::Integrity)
        ),
        "row binding on the token"
    );
    let mut tampered = wrapped.clone();
    tampered[15] ^= 1;
    assert!(matches!(
        vault.unwrap(&b, &tampered, v1),
        Err(VaultError::Integrity)
    ));
    let secret = vault
        .seal_secret("directory/x/client_secret", b"graph-secret")
        .expect("seal secret");
    drop(vault);

    // A restart finds the same KEK (no second version 1).
    let vault = Vault::open(KekSource::Pkcs11(config())).expect("reopen");
    assert_eq!(vault.current_version(), 1);
    assert_eq!(
        &vault
            .unwrap(&b, &wrapped, v1)
            .expect("unwrap")
            .open(&aad, &sealed)
            .expect("open")[..],
        b"private"
    );

    // A wrong PIN is refused.
    let mut bad = config();
    bad.pin = Zeroizing::new("000000".to_owned());
    drop(vault);
    let err = Vault::open(KekSource::Pkcs11(bad)).expect_err("wrong PIN accepted");
    assert!(matches!(err, VaultError::Pkcs11(_)));
    assert!(!err.to_string().contains("000000"), "error shows the PIN");

    // Rotation: a new object `keyward-kek-v2`, rewrap, then the old object is destroyed.
    let vault = Vault::open(KekSource::Pkcs11(config())).expect("reopen");
    assert_eq!(vault.prepare_rotation().expect("rotate"), 2);
    let (w2, v2) = vault
        .rewrap(&b, &wrapped, v1)
        .expect("rewrap")
        .expect("changed");
    assert_eq!(v2, 2);
    let secret2 = vault
        .rewrap_secret("directory/x/client_secret", &secret)
        .expect("rewrap secret")
        .expect("changed");
    vault.finish_rotation().expect("finish");
    assert!(matches!(
        vault.unwrap(&b, &wrapped, v1),
        Err(VaultError::UnknownKekVersion(1))
    ));
    let dk2 = vault.unwrap(&b, &w2, v2).expect("unwrap v2");
    assert_eq!(
        &dk2.open(&aad, &sealed).expect("same data key")[..],
        b"private"
    );
    assert_eq!(
        &vault
            .open_secret("directory/x/client_secret", &secret2)
            .expect("secret")[..],
        b"graph-secret"
    );
    drop(vault);

    // After a restart only version 2 remains.
    let vault = Vault::open(KekSource::Pkcs11(config())).expect("reopen");
    assert_eq!(vault.current_version(), 2);
    assert!(vault.unwrap(&b, &w2, v2).is_ok());
}
