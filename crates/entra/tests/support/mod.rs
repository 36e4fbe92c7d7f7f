//! Test support: a simulator per test, clients for it, and a software P-256 authenticator that
//! builds registrations and assertions byte for byte as a CTAP key would.

#![allow(dead_code)]

use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_entra::{
    ClientCredential, CreationOptions, EntraConfig, GraphClient, Registration, RetryPolicy, Secret,
};
use keyward_graph_sim::{RunningSim, SimConfig};
use sk_cbor::Value;

pub const AAGUID: [u8; 16] = *b"keyward-softkey1";

pub async fn sim(users: usize) -> RunningSim {
    keyward_graph_sim::spawn(SimConfig {
        users,
        ..SimConfig::default()
    })
    .await
    .expect("simulator binds loopback")
}

/// The `n`th regular user (id, UPN) in listing order, skipping the consenting admin.
pub fn user(sim: &RunningSim, n: usize) -> Option<(String, String)> {
    let admin = sim
        .control
        .simulator()
        .config()
        .consenting_admin
        .to_lowercase();
    (0..sim.control.user_count())
        .filter_map(|i| sim.control.nth_user(i))
        .filter(|(_, upn)| upn.to_lowercase() != admin)
        .nth(n)
}

/// Fast retries so tests that inject faults stay quick.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(5),
    }
}

pub fn config(sim: &RunningSim, credential: ClientCredential) -> EntraConfig {
    let cfg = sim.control.simulator().config();
    EntraConfig::new(cfg.tenant_id.clone(), cfg.client_id.clone(), credential)
        .with_authority_url(sim.url())
        .with_graph_url(sim.url())
        .with_retry(fast_retry())
}

pub fn client(sim: &RunningSim) -> GraphClient {
    let secret = sim.control.simulator().config().client_secret.clone();
    GraphClient::new(config(sim, ClientCredential::Secret(Secret::new(secret))))
        .expect("valid config")
}

/// A software authenticator holding one P-256 credential.
pub struct SoftKey {
    pub key: EcdsaKeyPair,
    pub credential_id: Vec<u8>,
    pub counter: u32,
}

pub enum Attest {
    None,
    PackedSelf,
    /// Packed with an attestation certificate chain (x5c) and its P-256 key.
    PackedFull {
        x5c: Vec<Vec<u8>>,
        key: EcdsaKeyPair,
    },
}

/// An attestation certificate as FIDO requires it (OU "Authenticator Attestation", not a CA,
/// the AAGUID extension), self-signed, with its key.
pub fn attestation_cert(aaguid: [u8; 16]) -> (Vec<u8>, EcdsaKeyPair) {
    use rcgen::{CertificateParams, CustomExtension, DnType, IsCa, KeyPair as RcKey};
    let key = RcKey::generate().expect("P-256 key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CountryName, "SE");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Keyward Test");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "Authenticator Attestation");
    params
        .distinguished_name
        .push(DnType::CommonName, "Keyward Test Batch");
    params.is_ca = IsCa::ExplicitNoCa;
    let mut ext = vec![0x04, 0x10];
    ext.extend_from_slice(&aaguid);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 45724, 1, 1, 4],
            ext,
        ));
    let cert = params.self_signed(&key).expect("certificate");
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der())
        .expect("PKCS#8");
    (cert.der().to_vec(), signer)
}

fn cbor(v: Value) -> Vec<u8> {
    let mut out = Vec::new();
    sk_cbor::writer::write(v, &mut out).expect("encodes");
    out
}

fn text(s: &str) -> Value {
    Value::text_string(s.to_string())
}

impl SoftKey {
    pub fn new() -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("P-256 key");
        let mut credential_id = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut credential_id).expect("rng");
        SoftKey {
            key,
            credential_id,
            counter: 0,
        }
    }

    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.public_key().as_ref();
        cbor(Value::map(vec![
            (Value::integer(1), Value::integer(2)),
            (Value::integer(3), Value::integer(-7)),
            (Value::integer(-1), Value::integer(1)),
            (
                Value::integer(-2),
                Value::byte_string(point[1..33].to_vec()),
            ),
            (
                Value::integer(-3),
                Value::byte_string(point[33..65].to_vec()),
            ),
        ]))
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key
            .sign(&SystemRandom::new(), msg)
            .expect("signs")
            .as_ref()
            .to_vec()
    }

    /// authData for makeCredential with the given flags.
    pub fn make_auth_data(&self, rp_id: &str, flags: u8) -> Vec<u8> {
        let mut ad = digest::digest(&digest::SHA256, rp_id.as_bytes())
            .as_ref()
            .to_vec();
        ad.push(flags);
        ad.extend_from_slice(&self.counter.to_be_bytes());
        ad.extend_from_slice(&AAGUID);
        ad.extend_from_slice(&(self.credential_id.len() as u16).to_be_bytes());
        ad.extend_from_slice(&self.credential_id);
        ad.extend_from_slice(&self.cose_key());
        ad
    }

    /// A registration for `options`, made the way the server's provisioning job makes it.
    pub fn register(&self, options: &CreationOptions, attest: Attest) -> Registration {
        let request = options.authenticator_request().expect("ES256 offered");
        let client_data_json = options.client_data_json();
        self.registration_with(&client_data_json, &request.rp_id, 0x45, attest)
    }

    /// A registration from explicit parts, for tests that break one of them.
    pub fn registration_with(
        &self,
        client_data_json: &[u8],
        rp_id: &str,
        flags: u8,
        attest: Attest,
    ) -> Registration {
        let auth_data = self.make_auth_data(rp_id, flags);
        let cdh = digest::digest(&digest::SHA256, client_data_json);
        let fmt = match attest {
            Attest::None => "none",
            Attest::PackedSelf | Attest::PackedFull { .. } => "packed",
        };
        let mut signed = auth_data.clone();
        signed.extend_from_slice(cdh.as_ref());
        let stmt = match &attest {
            Attest::None => Value::map(vec![]),
            Attest::PackedSelf => Value::map(vec![
                (text("alg"), Value::integer(-7)),
                (text("sig"), Value::byte_string(self.sign(&signed))),
            ]),
            Attest::PackedFull { x5c, key } => {
                let sig = key
                    .sign(&SystemRandom::new(), &signed)
                    .expect("signs")
                    .as_ref()
                    .to_vec();
                let chain = x5c.iter().map(|c| Value::byte_string(c.clone())).collect();
                Value::map(vec![
                    (text("alg"), Value::integer(-7)),
                    (text("sig"), Value::byte_string(sig)),
                    (text("x5c"), Value::array(chain)),
                ])
            }
        };
        let attestation_object = cbor(Value::map(vec![
            (text("fmt"), text(fmt)),
            (text("attStmt"), stmt),
            (text("authData"), Value::byte_string(auth_data)),
        ]));
        Registration {
            display_name: "Keyward".into(),
            credential_id: self.credential_id.clone(),
            client_data_json: client_data_json.to_vec(),
            attestation_object,
            client_extension_results: serde_json::json!({"credProtect": 1, "hmac-secret": true}),
        }
    }

    /// A sign-in assertion for the simulator's `/_sim/signin` check.
    pub fn assert(
        &mut self,
        user: &str,
        challenge: &[u8],
        step: u32,
    ) -> keyward_graph_sim::SigninAssertion {
        self.counter += step;
        let client_data = format!(
            "{{\"type\":\"webauthn.get\",\"challenge\":\"{}\",\"origin\":\"https://login.microsoft.com\",\"crossOrigin\":false}}",
            URL_SAFE_NO_PAD.encode(challenge)
        );
        let mut ad = digest::digest(&digest::SHA256, b"login.microsoft.com")
            .as_ref()
            .to_vec();
        ad.push(0x05);
        ad.extend_from_slice(&self.counter.to_be_bytes());
        let mut signed = ad.clone();
        signed.extend_from_slice(digest::digest(&digest::SHA256, client_data.as_bytes()).as_ref());
        keyward_graph_sim::SigninAssertion {
            user: user.to_string(),
            id: URL_SAFE_NO_PAD.encode(&self.credential_id),
            client_data_json: URL_SAFE_NO_PAD.encode(client_data.as_bytes()),
            authenticator_data: URL_SAFE_NO_PAD.encode(&ad),
            signature: URL_SAFE_NO_PAD.encode(self.sign(&signed)),
            user_handle: None,
        }
    }
}
