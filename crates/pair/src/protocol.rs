//! The relay protocol, from the one definition both ends share (`keyward-relay-protocol`).

pub use keyward_relay_protocol::*;
