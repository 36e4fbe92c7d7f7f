//! No private key, PIN or PIN hash is stored in the clear (design.md invariants 2, 5 and 7).
//!
//! Creates a key through `KeyOps`, sets a known PIN, makes a credential, then scans the raw
//! database (the SQLite file and its WAL; with PostgreSQL, a `pg_dump`) for the private key and
//! the PIN hash. The private key is recovered the legitimate way, by opening the sealed blob with
//! the vault, which the test holds. A positive control (the credential id, stored in the clear)
//! proves the scan can find what is there.

mod keyops_common;

use keyward_store::testing;
use keyward_vault::{KeyBinding, SealAad};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use keyops_common::*;

// Letters outside 0-9a-f, so the PIN cannot turn up by chance inside hex text of the dump.
const PIN: &str = "zebra-7731";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The raw 32-byte P-256 scalar inside a PKCS#8 ECPrivateKey: `02 01 01 04 20 <d>`.
fn p256_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = pkcs8
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("ECPrivateKey in PKCS#8");
    pkcs8[at + marker.len()..at + marker.len() + 32].to_vec()
}

fn needles(bytes: &[u8]) -> [Vec<u8>; 2] {
    [bytes.to_vec(), hex::encode(bytes).into_bytes()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_holds_no_private_key_pin_or_pin_hash() {
    for db in testing::all().await {
        let dir = tempfile::tempdir().expect("tempdir");
        let (f, _) = setup(&db.store, vault_in(dir.path()), 1).await;
        f.ops
            .set_pin(
                f.org_id,
                f.key_id,
                "admin:test",
                &Zeroizing::new(PIN.to_owned()),
                true,
            )
            .await
            .expect("set PIN");
        let cred_id = enrol(&f, f.key_id, true).await;

        // Recover the private key through the vault, as only a holder of the KEK can.
        let rec = db
            .store
            .key_by_id(f.org_id, f.key_id)
            .await
            .expect("key")
            .expect("exists");
        let mut tx = db.store.begin_key(f.org_id, f.key_id).await.expect("begin");
        let cred = tx
            .credential(&cred_id)
            .await
            .expect("read")
            .expect("credential stored");
        drop(tx);
        let data_key = f
            .vault
            .unwrap(
                &KeyBinding {
                    org_id: f.org_id,
                    key_id: f.key_id,
                },
                &rec.wrapped_dek,
                rec.kek_version,
            )
            .expect("unwrap data key");
        let aad = SealAad {
            org_id: f.org_id,
            user_id: f.user_id,
            key_id: f.key_id,
            credential_id: &cred_id,
            key_version: 1,
        };
        let pkcs8 = data_key
            .open(&aad, &cred.sealed_private_key)
            .expect("open sealed private key");
        let scalar = p256_scalar(&pkcs8);
        // The row binding holds: the same blob does not open as another credential's.
        let other = SealAad {
            credential_id: b"another-credential",
            ..aad
        };
        assert!(data_key.open(&other, &cred.sealed_private_key).is_err());

        let pin_hash16 = Sha256::digest(PIN.as_bytes())[..16].to_vec();
        let raw_pin_verifier = rec.pin_verifier.clone().expect("PIN set");
        assert_ne!(
            &raw_pin_verifier[..16],
            &pin_hash16[..],
            "verifier must be keyed, not the bare hash"
        );

        let bytes = db.bytes_on_disk();
        assert!(
            contains(&bytes, &cred_id) || contains(&bytes, hex::encode(&cred_id).as_bytes()),
            "positive control: the scan must see the credential id"
        );
        for (what, secret) in [
            ("PKCS#8 private key", pkcs8.to_vec()),
            ("private scalar", scalar),
            ("PIN hash", pin_hash16),
            ("PIN", PIN.as_bytes().to_vec()),
        ] {
            for needle in needles(&secret) {
                assert!(
                    !contains(&bytes, &needle),
                    "{what} found in the {:?} database",
                    db.backend()
                );
            }
        }
    }
}
