//! The FHIR listener's TLS material as one reloadable snapshot: the server certificate and
//! key, and the client-certificate verifier (client CA bundle and CRLs, RFC 5280 §6.3).
//!
//! Pingora 0.9.1 builds the listener's rustls `ServerConfig` once, but takes a certificate
//! resolver (`TlsSettings::set_cert_resolver`) and a client verifier
//! (`set_client_cert_verifier`) as trait objects. Both given here read the current
//! [`ListenerTls`] at each handshake, so a reload (SIGHUP) changes what the next handshake
//! sees without a new listener; handshakes under way finish with what they started with.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::config::{self, ListenConfig};
use crate::metrics;

/// What the FHIR listener presents and accepts, loaded from `[listen]`.
pub struct ListenerTls {
    /// The server certificate chain and its key (`listen.server_cert`, `listen.server_key`).
    pub cert: Arc<CertifiedKey>,
    /// WebPKI verification against `listen.client_ca`, with `listen.client_crls`.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The CA subjects named in the CertificateRequest (RFC 8446 §4.2.4). rustls asks for a
    /// slice borrowed from the verifier, which outlives any one snapshot: kept for the life of
    /// the process, and only a changed list is kept again (`hints_for`).
    pub hints: &'static [DistinguishedName],
    /// How many CRLs the verifier checks (for the reload log line).
    pub crl_count: usize,
    /// This snapshot's number, unique in the process and growing with each load: a connection
    /// verified under another one is verified again ([`still_accepted`]).
    pub generation: u64,
}

/// The last snapshot number handed out; 0 is no snapshot.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// PEM certificates of `path`. Errors: unreadable, a broken PEM block, or none at all.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A certificate chain and the private key that belongs to it. Errors: unreadable files, no
/// key, a key rustls cannot sign with, or a key that is not the first certificate's.
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = read_certs(cert)?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    pingora::tls::install_default_crypto_provider();
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    Ok(ck)
}

/// The client verifier: chains to `listen.client_ca`, not revoked by `listen.client_crls`.
/// Errors: unreadable or unparseable CA or CRL files (each CRL is parsed here).
fn client_verifier(l: &ListenConfig) -> Result<(Arc<dyn ClientCertVerifier>, usize), String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    let cas = read_certs(&l.client_ca)?;
    for cert in &cas {
        roots
            .add(cert.clone())
            .map_err(|e| format!("listen.client_ca: {e}"))?;
    }
    let mut crls = Vec::new();
    for path in &l.client_crls {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        crls.extend(config::crl_ders(&bytes).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    if !crls.is_empty() {
        every_ca_has_a_crl(&cas, &crls)?;
    }
    let count = crls.len();
    // Defaults kept on purpose: the whole chain is checked, and a certificate whose issuer
    // has no CRL here fails (unknown revocation status is not "not revoked").
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .with_crls(crls)
        .build()
        .map_err(|e| format!("listen.client_ca / listen.client_crls: {e}"))?;
    Ok((verifier, count))
}

/// With CRLs configured, the revocation status of a client certificate is known only from a
/// CRL of its issuer, and unknown status fails the handshake: a CA of the bundle without a CRL
/// (a CRL file of another CA, say) would refuse every one of its clients. Errors: the first
/// such CA, by subject.
fn every_ca_has_a_crl(
    cas: &[CertificateDer<'static>],
    crls: &[rustls::pki_types::CertificateRevocationListDer<'static>],
) -> Result<(), String> {
    let issuers: Vec<Vec<u8>> = crls
        .iter()
        .filter_map(|c| x509_parser::parse_x509_crl(c.as_ref()).ok())
        .map(|(_, crl)| crl.issuer().as_raw().to_vec())
        .collect();
    for ca in cas {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            return Err("listen.client_ca: a certificate does not parse".into());
        };
        if !issuers
            .iter()
            .any(|i| i.as_slice() == cert.subject().as_raw())
        {
            return Err(format!(
                "listen.client_crls: no CRL issued by the client CA {} (with CRLs configured every client CA needs its own, or each of its clients fails the handshake)",
                cert.subject()
            ));
        }
    }
    Ok(())
}

fn same_names(a: &[DistinguishedName], b: &[DistinguishedName]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_ref() == y.as_ref())
}

/// `new` if it differs from `previous`, kept for the rest of the process (see
/// [`ListenerTls::hints`]); otherwise `previous` again, so reloads that keep the client CA
/// keep nothing new.
fn hints_for(
    new: &[DistinguishedName],
    previous: Option<&'static [DistinguishedName]>,
) -> &'static [DistinguishedName] {
    match previous {
        Some(p) if same_names(p, new) => p,
        _ => Box::leak(new.to_vec().into_boxed_slice()),
    }
}

/// Load `[listen]`'s certificate, key, client CA and CRLs; `previous` is the snapshot being
/// replaced, if any. Errors name the file that does not load.
pub fn load(l: &ListenConfig, previous: Option<&ListenerTls>) -> Result<ListenerTls, String> {
    let cert = Arc::new(certified_key(&l.server_cert, &l.server_key)?);
    let (verifier, crl_count) = client_verifier(l)?;
    let hints = hints_for(verifier.root_hint_subjects(), previous.map(|p| p.hints));
    Ok(ListenerTls {
        cert,
        verifier,
        hints,
        crl_count,
        generation: GENERATION.fetch_add(1, Ordering::SeqCst) + 1,
    })
}

/// A client's certificate chain as its connection's handshake presented it, and the snapshot
/// (`ListenerTls::generation`) under which it was last found acceptable. Kept with the
/// connection (the TLS digest's extension, [`RecordPeer`]): a reload that revokes the
/// certificate or withdraws its CA then reaches connections already open
/// ([`still_accepted`]), not only the next handshake.
pub struct PeerChain {
    chain: Vec<CertificateDer<'static>>,
    verified: AtomicU64,
}

/// Whether `chain` verifies under `tls` now.
fn verifies(tls: &ListenerTls, chain: &[CertificateDer<'static>]) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    tls.verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .is_ok()
}

/// Whether the client certificate of a connection is still accepted by the TLS snapshot in
/// force: free while no reload happened since it was last checked, else verified again (CA
/// bundle and CRLs) and remembered. `None` (no chain recorded) is not accepted.
pub fn still_accepted(live: &SharedTls, peer: Option<&PeerChain>) -> bool {
    let Some(peer) = peer else {
        return false;
    };
    let tls = live.load();
    if peer.verified.load(Ordering::SeqCst) == tls.generation {
        return true;
    }
    let ok = verifies(&tls, &peer.chain);
    if ok {
        peer.verified.store(tls.generation, Ordering::SeqCst);
    }
    ok
}

/// The FHIR listener's post-handshake callback: keeps the client's chain with the connection
/// as a [`PeerChain`], verified under the snapshot now in force. Verified here again because
/// the handshake's own check is not enough: a reload may have come between the two, and a
/// resumed TLS session (rustls' session cache outlives reloads) presents the chain of its
/// first handshake without any check at all.
pub struct RecordPeer(pub SharedTls);

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for RecordPeer {
    async fn handshake_complete_callback(
        &self,
        ssl: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let chain = ssl.peer_cert_chain_der()?.to_vec();
        let tls = self.0.load();
        let verified = if verifies(&tls, &chain) {
            tls.generation
        } else {
            0
        };
        Some(Arc::new(PeerChain {
            chain,
            verified: AtomicU64::new(verified),
        }))
    }
}

/// The live listener TLS snapshot, shared by the resolver, the verifier and the reload.
pub type SharedTls = Arc<ArcSwap<ListenerTls>>;

/// `ResolvesServerCert` that presents the current snapshot's certificate.
pub struct CurrentCert(pub SharedTls);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().cert.clone())
    }
}

/// `ClientCertVerifier` that verifies with the current snapshot and counts rejections by
/// reason (`eds_proxy_tls_handshake_failures_total`).
pub struct CurrentClientVerifier(pub SharedTls);

impl fmt::Debug for CurrentClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentClientVerifier")
    }
}

/// The metric label of a rejected client certificate.
pub fn rejection_reason(e: &TlsError) -> &'static str {
    match e {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
            _ => "bad_certificate",
        },
        TlsError::InvalidCertRevocationList(_) => "bad_crl",
        _ => "other",
    }
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.load().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let result = self
            .0
            .load()
            .verifier
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            metrics::TLS_HANDSHAKE_FAILURES
                .with_label_values(&[rejection_reason(e)])
                .inc();
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_hints_are_not_kept_again() {
        let a = vec![DistinguishedName::from(vec![1, 2, 3])];
        let first = hints_for(&a, None);
        assert!(same_names(first, &a));
        assert!(std::ptr::eq(hints_for(&a, Some(first)), first));
        let b = vec![DistinguishedName::from(vec![4])];
        let second = hints_for(&b, Some(first));
        assert!(same_names(second, &b) && !same_names(second, first));
    }

    #[test]
    fn rejection_reasons_name_revocation_and_expiry() {
        let r = |c| rejection_reason(&TlsError::InvalidCertificate(c));
        assert_eq!(r(CertificateError::Revoked), "revoked");
        assert_eq!(
            r(CertificateError::UnknownRevocationStatus),
            "unknown_revocation_status"
        );
        assert_eq!(r(CertificateError::Expired), "expired");
        assert_eq!(r(CertificateError::UnknownIssuer), "unknown_issuer");
        assert_eq!(r(CertificateError::BadEncoding), "bad_certificate");
        assert_eq!(rejection_reason(&TlsError::DecryptError), "other");
    }
}
