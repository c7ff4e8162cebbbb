//! DEVELOPMENT ONLY: a CA, a server certificate and client certificates (ECDSA P-256), as
//! `eds-proxy dev pki --out DIR` writes them and the tests use them.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
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

    fn sign(&self, mut params: CertificateParams) -> Result<CertifiedKey, rcgen::Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }
}
