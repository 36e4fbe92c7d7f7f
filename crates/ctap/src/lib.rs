//! CTAP 2.1 messages, canonical CBOR and CTAP-HID framing for Keyward.
//!
//! This crate does no I/O and never reads the clock or a random number generator: the HID state
//! machine is told the time and hands back the reports to send, so it runs the same under the
//! softkey's UDP loop, the pairing tool's uhid endpoint, the fuzzers and the unit tests.
//!
//! - [`cbor`]: the CTAP2 canonical CBOR encoder and a strict decoder.
//! - [`status`]: CTAP status codes, shared by CTAP2 responses and CTAPHID errors.
//! - [`hid`]: CTAP-HID report framing and the channel state machine.
//! - [`ctap2`]: CTAP 2.1 command bytes, request parsing and response building.

pub mod cbor;
pub mod ctap2;
pub mod hid;
pub mod status;
