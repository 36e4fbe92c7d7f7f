//! The strict CBOR decoder: never panics, and whatever it accepts is canonical, so that
//! re-encoding reproduces the input exactly.
#![no_main]

use keyward_ctap::cbor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = cbor::decode(data) {
        assert_eq!(
            cbor::encode(&value),
            data,
            "accepted input must be canonical"
        );
    }
});
