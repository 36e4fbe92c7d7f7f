//! The Keyward security key engine: a CTAP 2.1 authenticator over storage and key-protection
//! traits.
//!
//! The engine does no I/O and never reads the clock or the RNG directly: persistent state goes
//! through [`Store`], key material through [`KeyProtection`], presence through [`Presence`], time
//! and randomness through [`Env`]. Volatile ("power-cycle") state lives in [`Authenticator`]; a new
//! `Authenticator` (or [`Authenticator::power_cycle`]) is a re-plug.

pub mod attestation;
pub mod memory;
mod types;

pub use types::*;
