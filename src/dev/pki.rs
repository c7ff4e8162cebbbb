//! DEVELOPMENT ONLY: a CA, a server certificate and client certificates (ECDSA P-256), as
//! `eds-proxy dev pki --out DIR` writes them and the tests use them.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its serial number (big-endian), what a CRL names it by.
    pub serial: Vec<u8>,
}

impl CertifiedKey {
    /// base64url(SHA-256(DER)): the RFC 8705 `x5t#S256` of this certificate.
    pub fn thumbprint(&self) -> String {
        crate::auth::token::thumbprint_of(&self.cert_der)
    }

    /// Write `DIR/NAME.crt` and `DIR/NAME.key`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert_pem)?;
        std::fs::write(dir.join(format!("{name}.key")), &self.key_pem)
    }
}

/// A development CA (ECDSA P-256) that issues server and client certificates.
pub struct CertificateAuthority {
    ca_cert: Certificate,
    ca_key: KeyPair,
    /// The CA's own certificate and key.
    pub cert: CertifiedKey,
}

impl CertificateAuthority {
    /// A fresh self-signed CA called `common_name`.
    ///
    /// Errors: rcgen failed to generate the key or certificate.
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "eds-proxy development");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let certified = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            serial: Vec::new(),
        };
        Ok(CertificateAuthority {
            ca_cert: cert,
            ca_key: key,
            cert: certified,
        })
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<CertifiedKey, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A TLS client certificate whose subject is `common_name` in `organisation`.
    pub fn client(
        &self,
        common_name: &str,
        organisation: &str,
    ) -> Result<CertifiedKey, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, organisation);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A CRL (PEM) of this CA that revokes `revoked` (RFC 5280 §5), valid from 2024 to 2099.
    ///
    /// Errors: rcgen failed to sign it.
    pub fn crl(&self, revoked: &[&CertifiedKey]) -> Result<String, rcgen::Error> {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&c.serial),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.ca_cert, &self.ca_key)?.pem()
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertifiedKey, rcgen::Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        // A positive 16-byte serial unique to the key, so a CRL can name the certificate.
        let mut serial: Vec<u8> = Sha256::digest(key.public_key_der())
            .iter()
            .take(16)
            .copied()
            .collect();
        if let Some(first) = serial.first_mut() {
            *first = (*first & 0x7f) | 0x01;
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            serial,
        })
    }
}
