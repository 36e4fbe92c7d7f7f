//! CTAP2 request decoding and dispatch: arbitrary requests into the real engine with the
//! in-memory store.
//!
//! The input is a sequence of requests, each prefixed by a one-byte length, run against one
//! authenticator so that stateful commands (getNextAssertion, credential management cursors)
//! are reachable. Invariants: nothing panics, every response has a status byte, and a successful
//! response's body is canonical CBOR (what python-fido2's strict mode demands of real keys).
#![no_main]

use keyward_authenticator::memory::{AutoPresence, ManualEnv, MemoryStore, TestProtection};
use keyward_authenticator::{Authenticator, Config, Context, Policy};
use keyward_ctap::cbor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut env = ManualEnv::default();
    let mut store = MemoryStore::new();
    let protection = TestProtection::new();
    let mut presence = AutoPresence::default();
    let mut engine = Authenticator::new(Config::new([0x4B; 16]), &mut env);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (request, tail) = tail.split_at(len);
        rest = tail;
        env.advance(1);
        // The policy flag in the first byte of the stream exercises the delegated-session gate.
        let policy = Policy {
            registration_only: data.first().is_some_and(|b| b & 0x80 != 0),
            preauthorized_uv: false,
        };
        let mut ctx = Context {
            store: &mut store,
            protection: &protection,
            presence: &mut presence,
            env: &mut env,
            policy,
        };
        let response = engine.process(&mut ctx, request);
        let (&status, body) = response
            .split_first()
            .expect("a response always has a status byte");
        if status == 0 && !body.is_empty() {
            cbor::decode(body).expect("successful responses are canonical CBOR");
        } else if status != 0 {
            assert!(body.is_empty(), "an error response carries no body");
        }
    }
});
