//! Microsoft Graph client for Keyward: tokens, users import, passkey provisioning, Temporary Access Pass
