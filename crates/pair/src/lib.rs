//! `keyward-pair`: makes a Keyward security key appear on this PC as a local FIDO device.
//!
//! The tool logs in to a Keyward server with a device key ([`state`], [`enroll`]), keeps one
//! authenticated WebSocket to the server's relay ([`relay`], protocol in [`protocol`]), terminates
//! CTAP-HID locally ([`endpoint`]) and exposes it over UDP ([`run`], the design's UDP HID contract)
//! or as a Linux HID device (`uhid`).
//! It holds no database code and no key material other than its own device key: every CTAP
//! operation runs on the server.

pub mod cbor_peek;
pub mod endpoint;
pub mod enroll;
#[cfg(feature = "ctap-hid")]
pub mod hid;
pub mod protocol;
pub mod relay;
pub mod run;
pub mod state;
pub mod tls;
#[cfg(target_os = "linux")]
pub mod uhid;
