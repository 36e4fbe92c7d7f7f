//! The relay protocol's wire types, from the one definition both ends share
//! (`keyward-relay-protocol`, with its OpenAPI schemas).

pub use keyward_relay_protocol::*;
