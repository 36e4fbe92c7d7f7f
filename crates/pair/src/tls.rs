//! TLS client configuration: public CA roots, or a pinned server certificate.
//!
//! A Keyward server may run with a generated self-signed certificate. Rather than ever turning
//! verification off, `login`/`activate` accept `--pin sha256:HEX` (the SHA-256 of the server's
//! end-entity certificate, DER) and record it; from then on the tool accepts exactly that
//! certificate (handshake signatures are still verified) and nothing else, CA-signed or not.

use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::state::hex_lower;

/// Accepts only the certificate whose SHA-256 is the pin; remembers what it saw, so the tool can
/// tell the operator which fingerprint the server actually presented.
#[derive(Debug)]
pub struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<String>>,
}

impl PinVerifier {
    /// The fingerprint of the last certificate that did not match the pin.
    pub fn mismatch_seen(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = hex_lower(digest::digest(&digest::SHA256, end_entity.as_ref()).as_ref());
        if fp == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut s) = self.seen.lock() {
                *s = Some(fp);
            }
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts only the pinned certificate, and its verifier (to report
/// mismatches).
pub fn pinned_config(pin: &str) -> Result<(Arc<ClientConfig>, Arc<PinVerifier>), rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinVerifier {
        pin: pin.to_ascii_lowercase(),
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((Arc::new(config), verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_verifier_accepts_only_the_pinned_certificate() {
        let cert = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let pin = hex_lower(digest::digest(&digest::SHA256, cert.as_ref()).as_ref());
        let (_, v) = pinned_config(&pin).expect("config");
        let name = ServerName::try_from("keyward.example.com").expect("name");
        assert!(
            v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert_eq!(v.mismatch_seen(), None);

        let other = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x02]);
        assert!(
            v.verify_server_cert(&other, &[], &name, &[], UnixTime::now())
                .is_err()
        );
        let seen = v.mismatch_seen().expect("mismatch recorded");
        assert_eq!(
            seen,
            hex_lower(digest::digest(&digest::SHA256, other.as_ref()).as_ref())
        );
    }
}
