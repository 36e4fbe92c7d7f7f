//! The Keyward security key engine: a CTAP 2.1 authenticator over storage and key-protection traits
