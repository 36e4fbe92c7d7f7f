//! In-process engine throughput: makeCredential, getAssertion (allowList, ES256, none
//! attestation) and raw P-256 ECDSA signing with aws-lc-rs in the same run, then the ratio
//! getAssertion / raw signing (goal: ≥ 80 %, which needs the opened-key cache).
//!
//! Run with `cargo bench -p keyward-authenticator --bench engine`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use criterion::Criterion;
use keyward_authenticator::memory::{AutoPresence, MemoryStore, SystemEnv, TestProtection};
use keyward_authenticator::{Authenticator, Config, Context, Policy};
use keyward_ctap::cbor::{self, Value};

const MAKE_CREDENTIAL: u8 = 0x01;
const GET_ASSERTION: u8 = 0x02;

struct Engine {
    auth: Authenticator,
    store: MemoryStore,
    protection: TestProtection,
    presence: AutoPresence,
    env: SystemEnv,
}

impl Engine {
    fn new() -> Self {
        let mut env = SystemEnv::new();
        let auth = Authenticator::new(Config::new([7; 16]), &mut env);
        Self {
            auth,
            store: MemoryStore::new(),
            protection: TestProtection::new(),
            presence: AutoPresence::default(),
            env,
        }
    }

    fn process(&mut self, request: &[u8]) -> Vec<u8> {
        let mut ctx = Context {
            store: &mut self.store,
            protection: &self.protection,
            presence: &mut self.presence,
            env: &mut self.env,
            policy: Policy::default(),
        };
        self.auth.process(&mut ctx, request)
    }
}

fn request(command: u8, params: Value) -> Vec<u8> {
    let mut out = vec![command];
    out.extend_from_slice(&cbor::encode(&params));
    out
}

fn make_credential_request() -> Vec<u8> {
    request(
        MAKE_CREDENTIAL,
        cbor::int_map(vec![
            (1, Value::Bytes(vec![0xCD; 32])),
            (
                2,
                cbor::text_map(vec![("id", Value::text("bench.example"))]),
            ),
            (
                3,
                cbor::text_map(vec![("id", Value::Bytes(b"user".to_vec()))]),
            ),
            (
                4,
                Value::Array(vec![cbor::text_map(vec![
                    ("alg", Value::int(-7)),
                    ("type", Value::text("public-key")),
                ])]),
            ),
        ]),
    )
}

fn get_assertion_request(credential_id: &[u8]) -> Vec<u8> {
    request(
        GET_ASSERTION,
        cbor::int_map(vec![
            (1, Value::text("bench.example")),
            (2, Value::Bytes(vec![0xCD; 32])),
            (
                3,
                Value::Array(vec![cbor::text_map(vec![
                    ("id", Value::Bytes(credential_id.to_vec())),
                    ("type", Value::text("public-key")),
                ])]),
            ),
        ]),
    )
}

/// Operations per second of `f`, timed over at least `budget`.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut engine = Engine::new();
    let mc = make_credential_request();
    let response = engine.process(&mc);
    assert_eq!(response[0], 0, "makeCredential succeeds");
    let credential_id = engine.store.credentials[0].id.clone();
    let ga = get_assertion_request(&credential_id);
    assert_eq!(engine.process(&ga)[0], 0, "getAssertion succeeds");

    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("generate");
    let raw =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("parse");
    let message = [0x5Au8; 69];

    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    criterion.bench_function("makeCredential (ES256, none, non-discoverable)", |b| {
        // A fresh engine per batch keeps the store small, as a real key's would be.
        b.iter_batched_ref(
            Engine::new,
            |engine| black_box(engine.process(&mc)),
            criterion::BatchSize::SmallInput,
        )
    });
    criterion.bench_function("getAssertion (ES256, allowList)", |b| {
        b.iter(|| black_box(engine.process(&ga)))
    });
    criterion.bench_function("raw ECDSA P-256 sign (aws-lc-rs)", |b| {
        b.iter(|| black_box(raw.sign(&rng, &message).expect("sign")))
    });
    criterion.final_summary();

    let budget = Duration::from_secs(2);
    let mut mc_engine = Engine::new();
    let mc_rate = rate(budget, || {
        if mc_engine.store.credentials.len() > 1_000 {
            mc_engine.store.credentials.clear();
        }
        black_box(mc_engine.process(&mc));
    });
    let ga_rate = rate(budget, || {
        black_box(engine.process(&ga));
    });
    let raw_rate = rate(budget, || {
        black_box(raw.sign(&rng, &message).expect("sign"));
    });
    println!(
        "summary: makeCredential {mc_rate:.0}/s, getAssertion {ga_rate:.0}/s, raw ECDSA P-256 sign {raw_rate:.0}/s"
    );
    println!(
        "summary: getAssertion / raw signing = {:.1} %",
        100.0 * ga_rate / raw_rate
    );
}
