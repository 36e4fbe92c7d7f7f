//! Shared fixtures of the key-operation tests and benchmark: an organisation, a user and a key
//! on a test database, and the few CTAP2 requests the tests send, encoded by hand with the
//! protocol crate's CBOR so the engine is exercised exactly as a relayed message would.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use keyward_authenticator::{Config, Policy};
use keyward_ctap::cbor::{self, Value, int_map, text_map};
use keyward_server::keyops::KeyOps;
use keyward_store::{NewUser, Store};
use keyward_vault::{KekSource, Vault};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const RP_ID: &str = "login.example.com";
pub const AAGUID: [u8; 16] = *b"keyward-test-key";

/// Server-side automated provisioning: UV authorised by the server.
pub const AUTOMATED: Policy = Policy {
    registration_only: false,
    preauthorized_uv: true,
};
/// The key's own user (no PIN token needed for a UP-only assertion).
pub const USER: Policy = Policy {
    registration_only: false,
    preauthorized_uv: false,
};

pub struct Fixture {
    pub ops: Arc<KeyOps>,
    pub vault: Arc<Vault>,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
}

/// A vault on a key file in `dir` (created on first use, like a server's first start).
pub fn vault_in(dir: &Path) -> Arc<Vault> {
    Arc::new(Vault::open(KekSource::KeyFile(dir.join("vault.key"))).expect("open vault"))
}

/// Creates an organisation with `users` users and a key each; the fixture names the first.
pub async fn setup(store: &Store, vault: Arc<Vault>, users: usize) -> (Fixture, Vec<(Uuid, Uuid)>) {
    let ops = Arc::new(KeyOps::new(
        store.clone(),
        vault.clone(),
        Config::new(AAGUID),
    ));
    let mut tx = store.begin().await.expect("begin");
    let org = tx
        .insert_organisation(&format!("org-{}", Uuid::new_v4()))
        .await
        .expect("org");
    let mut user_ids = Vec::new();
    for i in 0..users {
        let user = NewUser {
            upn: format!("user{i}@example.com"),
            email: None,
            display_name: Some(format!("User {i}")),
            source: "api".into(),
            external_id: None,
        };
        user_ids.push(tx.insert_user(org.id, &user).await.expect("user").id);
    }
    tx.commit().await.expect("commit");
    let mut keys = Vec::new();
    for user_id in user_ids {
        let key = ops
            .create_key(org.id, user_id, "admin:test")
            .await
            .expect("create key");
        keys.push((user_id, key.id));
    }
    let (user_id, key_id) = keys[0];
    (
        Fixture {
            ops,
            vault,
            org_id: org.id,
            user_id,
            key_id,
        },
        keys,
    )
}

pub fn client_data_hash(tag: &str) -> Vec<u8> {
    Sha256::digest(tag.as_bytes()).to_vec()
}

/// authenticatorMakeCredential for ES256.
pub fn make_credential(rp_id: &str, user_handle: &[u8], discoverable: bool) -> Vec<u8> {
    let params = int_map(vec![
        (1, Value::bytes(client_data_hash("make"))),
        (
            2,
            text_map(vec![
                ("id", Value::text(rp_id)),
                ("name", Value::text("Example")),
            ]),
        ),
        (
            3,
            text_map(vec![
                ("id", Value::bytes(user_handle)),
                ("name", Value::text("alice@example.com")),
            ]),
        ),
        (
            4,
            Value::Array(vec![text_map(vec![
                ("alg", Value::int(-7)),
                ("type", Value::text("public-key")),
            ])]),
        ),
        (7, text_map(vec![("rk", Value::Bool(discoverable))])),
    ]);
    let mut req = vec![0x01];
    req.extend(cbor::encode(&params));
    req
}

/// authenticatorGetAssertion for one credential, user presence only.
pub fn get_assertion(rp_id: &str, credential_id: &[u8], tag: &str) -> Vec<u8> {
    let params = int_map(vec![
        (1, Value::text(rp_id)),
        (2, Value::bytes(client_data_hash(tag))),
        (
            3,
            Value::Array(vec![text_map(vec![
                ("id", Value::bytes(credential_id)),
                ("type", Value::text("public-key")),
            ])]),
        ),
    ]);
    let mut req = vec![0x02];
    req.extend(cbor::encode(&params));
    req
}

/// The authenticator data of a successful makeCredential / getAssertion response.
pub fn auth_data(response: &[u8]) -> Vec<u8> {
    assert_eq!(
        response.first(),
        Some(&0x00),
        "CTAP status {:02x?}",
        response.first()
    );
    let map = cbor::decode(&response[1..]).expect("response CBOR");
    // makeCredential: authData is key 2 (fmt is 1); getAssertion: key 2 as well.
    map.map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData")
        .to_vec()
}

/// The credential id in a makeCredential response's attested credential data.
pub fn credential_id(response: &[u8]) -> Vec<u8> {
    let ad = auth_data(response);
    assert!(ad[32] & 0x40 != 0, "AT flag");
    let len = usize::from(u16::from_be_bytes([ad[53], ad[54]]));
    ad[55..55 + len].to_vec()
}

/// The signature counter of a response.
pub fn sign_count(response: &[u8]) -> u32 {
    let ad = auth_data(response);
    u32::from_be_bytes([ad[33], ad[34], ad[35], ad[36]])
}

/// Makes one credential on the fixture's key and returns its id.
pub async fn enrol(f: &Fixture, key_id: Uuid, discoverable: bool) -> Vec<u8> {
    let resp = f
        .ops
        .ctap(
            f.org_id,
            key_id,
            "admin:test",
            AUTOMATED,
            make_credential(RP_ID, key_id.as_bytes(), discoverable),
        )
        .await
        .expect("makeCredential");
    credential_id(&resp)
}
