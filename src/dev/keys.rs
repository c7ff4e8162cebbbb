//! DEVELOPMENT ONLY: an ES256 token-signing key, its JWKS, and token minting.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

/// An ES256 (ECDSA P-256, RFC 7518 §3.4) token-signing key.
pub struct SigningKey {
    /// The `kid` put in token headers and the JWK.
    pub kid: String,
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    encoding: EncodingKey,
    public_raw: Vec<u8>,
}

impl SigningKey {
    /// A fresh key called `kid`.
    ///
    /// Errors: key generation or encoding failed.
    pub fn generate(kid: &str) -> Result<Self, String> {
        let pair = KeyPair::generate().map_err(|e| e.to_string())?;
        Self::from_pem(kid, &pair.serialize_pem())
    }

    /// Load a PKCS#8 P-256 private key.
    pub fn from_pem(kid: &str, pem: &str) -> Result<Self, String> {
        let pair = KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            kid: kid.to_string(),
            private_pem: pem.to_string(),
            encoding,
            public_raw: pair.public_key_raw().to_vec(),
        })
    }

    /// The public key as a JWK (`kty: EC`, `crv: P-256`).
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let x = self.public_raw.get(1..33).unwrap_or_default();
        let y = self.public_raw.get(33..65).unwrap_or_default();
        json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": self.kid, "alg": "ES256", "use": "sig"})
    }

    /// A JWK Set (RFC 7517 §5) holding the public key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk()]})
    }

    /// Sign `claims` as an ES256 JWT with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }
}
