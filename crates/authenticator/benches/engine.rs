//! In-process engine throughput: makeCredential, getAssertion (allowList, ES256, none
//! attestation) and raw P-256 ECDSA signing with aws-lc-rs in the same run, then the ratio
//! getAssertion / raw signing (goal: ≥ 80 %, which needs the opened-key cache).
//!
//! Criterion times each function on its own, one after the other, so on a loaded machine the
//! two sides of the ratio can see different conditions. The summary lines therefore time
//! getAssertion and raw signing in alternating batches of 200 calls and report the ratio of the
//! totals and the median ratio of the batch pairs; those are the figures to quote.
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

/// Times `a` and `b` in alternating batches of `batch` calls for at least `budget`, so that
/// both see the same machine (load from other processes, frequency changes) and neither gets
/// a warmer cache or a quieter moment than the other. Returns the total seconds of each, the
/// calls made of each, and the ratio of every pair of batches (a's throughput / b's).
fn interleaved(
    budget: Duration,
    batch: u32,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64, u64, Vec<f64>) {
    for _ in 0..batch {
        a();
        b();
    }
    let (mut ta, mut tb, mut n) = (0.0, 0.0, 0u64);
    let mut ratios = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..batch {
            a();
        }
        let da = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..batch {
            b();
        }
        let db = t.elapsed().as_secs_f64();
        ta += da;
        tb += db;
        n += u64::from(batch);
        ratios.push(db / da);
    }
    (ta, tb, n, ratios)
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
    // getAssertion and raw signing interleaved: same key type (P-256), same message size
    // (authData 37 bytes ‖ clientDataHash 32 bytes = 69), same library and RNG argument.
    let (ga_secs, raw_secs, n, mut ratios) = interleaved(
        Duration::from_secs(6),
        200,
        || {
            black_box(engine.process(&ga));
        },
        || {
            black_box(raw.sign(&rng, &message).expect("sign"));
        },
    );
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let ga_us = 1e6 * ga_secs / n as f64;
    let raw_us = 1e6 * raw_secs / n as f64;
    println!(
        "summary: makeCredential {mc_rate:.0}/s; interleaved over {n} calls each: getAssertion \
         {ga_us:.2} µs ({:.0}/s), raw ECDSA P-256 sign {raw_us:.2} µs ({:.0}/s), engine overhead \
         {:.2} µs per getAssertion",
        1e6 / ga_us,
        1e6 / raw_us,
        ga_us - raw_us
    );
    println!(
        "summary: getAssertion / raw signing = {:.1} % (total time), {:.1} % (median of {} batch pairs)",
        100.0 * raw_secs / ga_secs,
        100.0 * median,
        ratios.len()
    );
}
