//! The per-installation attestation CA and the batch certificate it issues, following the FIDO
//! requirements for packed attestation certificates (WebAuthn §8.2.1): X.509 v3; subject C, O,
//! OU = "Authenticator Attestation", CN; basic constraints CA = false; and the non-critical
//! id-fido-gen-ce-aaguid extension carrying the authenticator's AAGUID.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, date_time_ymd,
};
use zeroize::Zeroizing;

use crate::{AttestationKey, Error};

/// id-fido-gen-ce-aaguid (1.3.6.1.4.1.45724.1.1.4).
pub const AAGUID_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 45724, 1, 1, 4];
/// The OU that WebAuthn §8.2.1 prescribes for attestation certificates.
pub const ATTESTATION_OU: &str = "Authenticator Attestation";
/// ISO 3166 "ZZ" (unknown country): a self-hosted installation has no meaningful vendor country,
/// and verifiers only require the attribute to be present.
pub const ATTESTATION_COUNTRY: &str = "ZZ";

/// A self-signed P-256 CA that signs this installation's batch certificates.
#[derive(Clone)]
pub struct AttestationCa {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub pkcs8_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AttestationCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn cert_error(error: rcgen::Error) -> Error {
    Error::Certificate(error.to_string())
}

/// Fixed validity rather than "now": generating certificates must not depend on the host clock,
/// and attestation roots outlive any single device generation.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2024, 1, 1);
    params.not_after = date_time_ymd(2049, 12, 31);
}

/// Generates the installation's attestation CA (self-signed, P-256, CA:true, pathlen 0).
pub fn generate_ca(organisation: &str) -> Result<AttestationCa, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let mut params = CertificateParams::default();
    set_validity(&mut params);
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, ATTESTATION_COUNTRY);
    name.push(DnType::OrganizationName, organisation);
    name.push(DnType::OrganizationalUnitName, ATTESTATION_OU);
    name.push(
        DnType::CommonName,
        format!("{organisation} Keyward Attestation CA"),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok(AttestationCa {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        pkcs8_der: Zeroizing::new(key.serialize_der()),
    })
}

/// Issues a batch attestation certificate and key for `aaguid`, signed by `ca`.
/// The returned chain holds only the batch certificate: the CA is the trust anchor that relying
/// parties configure out of band (its PEM is exported), and WebAuthn verifiers ignore a root sent
/// in x5c anyway.
pub fn issue_batch_certificate(
    ca: &AttestationCa,
    aaguid: [u8; 16],
    organisation: &str,
) -> Result<AttestationKey, Error> {
    let ca_key = KeyPair::try_from(ca.pkcs8_der.as_slice()).map_err(cert_error)?;
    let ca_params =
        CertificateParams::from_ca_cert_der(&ca.cert_der.as_slice().into()).map_err(cert_error)?;
    // rcgen signs with the issuer's parsed name; re-self-signing only rebuilds that handle.
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let mut params = CertificateParams::default();
    set_validity(&mut params);
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, ATTESTATION_COUNTRY);
    name.push(DnType::OrganizationName, organisation);
    name.push(DnType::OrganizationalUnitName, ATTESTATION_OU);
    name.push(DnType::CommonName, "Keyward Batch Attestation");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    // Extension value: OCTET STRING (16 bytes) wrapping the AAGUID.
    let mut value = vec![0x04, 0x10];
    value.extend_from_slice(&aaguid);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            AAGUID_EXTENSION_OID,
            value,
        ));
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(cert_error)?;
    Ok(AttestationKey {
        cert_chain_der: vec![cert.der().to_vec()],
        pkcs8_der: Zeroizing::new(key.serialize_der()),
    })
}
