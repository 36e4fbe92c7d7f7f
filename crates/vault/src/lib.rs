//! Key protection for Keyward: per-key data keys sealed under a key-encryption key
