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
/// id-ce-basicConstraints (2.5.29.19).
const BASIC_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 19];
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
    // FIDO requires basicConstraints with cA false. rcgen's ExplicitNoCa writes the default
    // `cA FALSE` explicitly, which DER forbids (strict parsers refuse the certificate), so the
    // extension is written by hand as an empty SEQUENCE, which means exactly "not a CA".
    params.is_ca = IsCa::NoCa;
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            BASIC_CONSTRAINTS_OID,
            vec![0x30, 0x00],
        ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::oid_registry;
    use x509_parser::prelude::*;

    fn attribute<'a>(
        name: &'a X509Name<'a>,
        oid: &x509_parser::der_parser::Oid<'_>,
    ) -> Option<&'a str> {
        name.iter_attributes()
            .find(|a| a.attr_type() == oid)
            .and_then(|a| a.as_str().ok())
    }

    #[test]
    fn batch_certificate_meets_the_fido_requirements() {
        let aaguid = *b"keyward-aaguid-1";
        let ca = generate_ca("Example Org").expect("ca");
        let batch = issue_batch_certificate(&ca, aaguid, "Example Org").expect("batch");
        assert_eq!(batch.cert_chain_der.len(), 1, "the root is not sent in x5c");
        let (_, cert) = X509Certificate::from_der(&batch.cert_chain_der[0]).expect("der");
        assert_eq!(cert.version(), X509Version::V3);
        let subject = cert.subject();
        assert_eq!(
            attribute(subject, &oid_registry::OID_X509_COUNTRY_NAME),
            Some("ZZ")
        );
        assert_eq!(
            attribute(subject, &oid_registry::OID_X509_ORGANIZATION_NAME),
            Some("Example Org")
        );
        assert_eq!(
            attribute(subject, &oid_registry::OID_X509_ORGANIZATIONAL_UNIT),
            Some("Authenticator Attestation")
        );
        assert!(attribute(subject, &oid_registry::OID_X509_COMMON_NAME).is_some());
        let constraints = cert.basic_constraints().expect("parse").expect("present");
        assert!(!constraints.value.ca);
        // DER: the default cA FALSE must not be encoded, so the value is an empty SEQUENCE.
        let bc_oid = x509_parser::der_parser::oid!(2.5.29.19);
        let bc = cert
            .extensions()
            .iter()
            .find(|e| e.oid == bc_oid)
            .expect("basicConstraints");
        assert_eq!(bc.value, [0x30, 0x00]);
        let aaguid_oid = x509_parser::der_parser::oid!(1.3.6.1.4.1.45724.1.1.4);
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == aaguid_oid)
            .expect("AAGUID extension");
        assert!(!ext.critical);
        assert_eq!(ext.value, [&[0x04, 0x10][..], &aaguid].concat());

        // Signed by the CA, whose subject is the batch certificate's issuer.
        let (_, root) = X509Certificate::from_der(&ca.cert_der).expect("ca der");
        assert_eq!(cert.issuer(), root.subject());
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
        UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_ASN1,
            &root.public_key().subject_public_key.data,
        )
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .expect("CA signature");
        assert!(
            root.basic_constraints()
                .expect("parse")
                .expect("present")
                .value
                .ca
        );
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        // The batch key is a P-256 PKCS#8 key that aws-lc-rs can use.
        crate::crypto::SigningKey::from_pkcs8(-7, &batch.pkcs8_der).expect("batch key");
        assert!(
            !format!("{batch:?}").contains("pkcs8"),
            "Debug hides the key"
        );
    }
}
