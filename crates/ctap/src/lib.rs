//! CTAP 2.1 messages, canonical CBOR and CTAP-HID framing for Keyward (no I/O)
