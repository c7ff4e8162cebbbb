//! Token signatures verified with `ring` (the library rustls and Pingora already link), as
//! jsonwebtoken's crypto provider.
//!
//! jsonwebtoken's `rust_crypto` backend took 350–420 µs per ES256 verification on a token-cache
//! miss (issue 10). Only the signature arithmetic moves here: jsonwebtoken still parses the
//! token, checks the header's `alg` against the validation's allow-list and the key's family,
//! and validates `exp`/`nbf`/`iss`/`aud`; `auth::token::verify` keeps every other rule (the
//! allow-list of asymmetric algorithms, the JWK's own `alg`, the RFC 8705 binding). Signing
//! (development tools only) and JWK helpers stay with `rust_crypto`.
//!
//! Key formats are jsonwebtoken's own (`DecodingKey`): an EC key is the uncompressed SEC1
//! point, an RSA key PKCS#1 `RSAPublicKey` DER or its (n, e) components, which is what ring's
//! verifiers take (RFC 7518 §3.3–3.5). EdDSA stays with `rust_crypto` (faster there).
//! ring refuses RSA moduli under 2048 bits (RFC 7518 §3.3 requires at least 2048).

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature as ring_sig;

/// jsonwebtoken's provider with ring's verifiers (see the module documentation).
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .ed_pub_components_from_private_key,
        compute_digest: rust_crypto::DEFAULT_PROVIDER.key_utils.compute_digest,
    },
};

/// Make [`PROVIDER`] jsonwebtoken's provider for this process. Call once at startup, before
/// any token is verified; a second call (or one after a verification) changes nothing.
pub fn install() {
    // Err only if a provider is already installed: then that one stays, which is what the
    // documentation above asks of callers anyway.
    let _ = PROVIDER.install_default();
}

/// A ring verifier for one algorithm and key.
struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

/// The verifier for `alg` with `key`. HMAC (never accepted by `auth::token`) and anything ring
/// does not do stay with `rust_crypto`. A key of another family than the algorithm's is
/// `InvalidKeyFormat`, as with jsonwebtoken's own providers.
fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let family = match alg {
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => AlgorithmFamily::Rsa,
        // EdDSA stays with rust_crypto (ed25519-dalek): measured faster than ring's Ed25519
        // here (35 vs 45 µs, 0.39M vs 0.57M instructions per verification). HMAC (never
        // accepted by `auth::token`) stays there too.
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let rsa: &'static ring_sig::RsaParameters = match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let alg: &'static dyn ring_sig::VerificationAlgorithm = match self.alg {
                    Algorithm::ES256 => &ring_sig::ECDSA_P256_SHA256_FIXED,
                    _ => &ring_sig::ECDSA_P384_SHA384_FIXED,
                };
                let DecodingKeyKind::SecretOrDer(bytes) = self.key.kind() else {
                    return Err(signature::Error::new());
                };
                return ring_sig::UnparsedPublicKey::new(alg, bytes)
                    .verify(msg, sig)
                    .map_err(|_| signature::Error::new());
            }
            Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
            _ => return Err(signature::Error::new()),
        };
        match self.key.kind() {
            DecodingKeyKind::SecretOrDer(der) => ring_sig::UnparsedPublicKey::new(rsa, der)
                .verify(msg, sig)
                .map_err(|_| signature::Error::new()),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                ring_sig::RsaPublicKeyComponents { n, e }
                    .verify(rsa, msg, sig)
                    .map_err(|_| signature::Error::new())
            }
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    const RSA_PEM: &str = include_str!("../../tests/fixtures/keys/test-rsa-2048.pem");

    /// (algorithm, signing key, verification key) for every algorithm the proxy accepts.
    fn keys() -> Vec<(Algorithm, EncodingKey, DecodingKey)> {
        let ec = crate::dev::keys::SigningKey::generate("k").unwrap();
        let ec_jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(ec.jwk()).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let rsa_pub = {
            let (n, e) = (rust_crypto::DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_private_key)(&pem_der(
                RSA_PEM,
                "RSA PRIVATE KEY",
            ))
            .unwrap();
            DecodingKey::from_rsa_raw_components(&n, &e)
        };
        vec![
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).unwrap(),
                DecodingKey::from_jwk(&ec_jwk).unwrap(),
            ),
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_der(&ed.serialize_der()),
                DecodingKey::from_ed_der(ed.public_key_raw()),
            ),
            (
                Algorithm::PS256,
                EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
                rsa_pub.clone(),
            ),
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
                rsa_pub,
            ),
        ]
    }

    fn pem_der(pem: &str, label: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(pem.contains(label));
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    /// ring and rust_crypto agree on every accepted algorithm: good signatures pass, a
    /// changed message, a changed signature and another algorithm's key fail.
    #[test]
    fn ring_verifies_as_rust_crypto_does() {
        for (alg, signing, verifying) in keys() {
            let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0".to_vec();
            let sig = (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&alg, &signing)
                .unwrap()
                .try_sign(&msg)
                .unwrap();
            let ring = new_verifier(&alg, &verifying).unwrap();
            let rc = (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&alg, &verifying).unwrap();
            assert!(ring.verify(&msg, &sig).is_ok(), "{alg:?}");
            assert!(rc.verify(&msg, &sig).is_ok(), "{alg:?}");
            let mut other = msg.clone();
            other[3] ^= 1;
            assert!(ring.verify(&other, &sig).is_err(), "{alg:?}");
            assert!(rc.verify(&other, &sig).is_err(), "{alg:?}");
            let mut bad = sig.clone();
            bad[5] ^= 1;
            assert!(ring.verify(&msg, &bad).is_err(), "{alg:?}");
            assert!(rc.verify(&msg, &bad).is_err(), "{alg:?}");
            assert!(ring.verify(&msg, &Vec::new()).is_err(), "{alg:?}");
        }
        // A key of another family is refused as jsonwebtoken's providers refuse it.
        let all = keys();
        for (alg, _, _) in &all {
            for (other, _, key) in &all {
                let same_family = matches!(
                    (alg, other),
                    (
                        Algorithm::PS256 | Algorithm::RS256,
                        Algorithm::PS256 | Algorithm::RS256
                    )
                ) || alg == other;
                if !same_family {
                    assert!(matches!(
                        new_verifier(alg, key).err().map(|e| e.into_kind()),
                        Some(ErrorKind::InvalidKeyFormat)
                    ));
                }
            }
        }
        // HMAC stays with rust_crypto (and auth::token never lets it through).
        assert!(new_verifier(&Algorithm::HS256, &DecodingKey::from_secret(b"k")).is_ok());
    }
}
