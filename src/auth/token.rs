//! Access-token validation: JWT signature with an allowed asymmetric algorithm, `iss`, `aud`,
//! `exp`/`nbf`/`iat` with leeway, and the RFC 8705 certificate binding `cnf["x5t#S256"]`.
//!
//! Pure: the caller supplies the key for the token's `kid` and the presented certificate's
//! SHA-256 thumbprint; fetching keys lives in `jwks`.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::error::TokenFailure;

/// The claims eds-proxy reads. A claim of the wrong JSON type makes the token malformed,
/// never silently absent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EdsClaims {
    #[serde(default, deserialize_with = "scope_string")]
    pub scope: String,
    #[serde(default)]
    pub cnf: Option<Confirmation>,
    #[serde(default, rename = "ehmi:eer:device_id")]
    pub device_id: Option<String>,
    #[serde(default, rename = "ehmi:org_context", deserialize_with = "object_only")]
    pub org_context: Option<OrgContext>,
    #[serde(default)]
    pub cpr: Option<String>,
    #[serde(default)]
    pub acr: Option<String>,
    #[serde(default)]
    pub cvr: Option<String>,
    #[serde(default, rename = "priv")]
    pub privileges: Option<Value>,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
}

/// RFC 8705 confirmation claim.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: Option<String>,
}

/// The organisational context a station token is issued for (EDS security page).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OrgContext {
    #[serde(default)]
    pub name: Option<String>,
    pub sor: String,
    pub gln: String,
}

/// serde reads a struct from a JSON array by field order too; a claim that is not a JSON
/// object must make the token malformed instead.
fn object_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<OrgContext>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => serde_json::from_value(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(_) => Err(serde::de::Error::custom(
            "ehmi:org_context must be a JSON object",
        )),
    }
}

/// `scope` is a space-separated string (RFC 8693/9068); some issuers send an array.
fn scope_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scope {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Scope::deserialize(d)? {
        Scope::One(s) => s,
        Scope::Many(v) => v.join(" "),
    })
}

/// What a token is checked against.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_seconds: u64,
}

/// A verification key and what it may verify.
#[derive(Clone)]
pub struct VerificationKey {
    pub key: DecodingKey,
    /// The JWK's own `alg`, if it names one: the token must then use exactly that.
    pub alg: Option<Algorithm>,
}

/// Header facts needed to pick a key, read before any verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Read the header and refuse disallowed algorithms before any key is looked up.
pub fn read_header(token: &str, policy: &TokenPolicy) -> Result<TokenHeader, TokenFailure> {
    if token.split('.').count() != 3 {
        return Err(TokenFailure::Malformed);
    }
    // `alg: none` and unknown names fail to parse into `Algorithm`: both are refused.
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::Json(_) => {
            if header_alg_is_present(token) {
                TokenFailure::Algorithm
            } else {
                TokenFailure::Malformed
            }
        }
        _ => TokenFailure::Malformed,
    })?;
    if !policy.algorithms.contains(&header.alg) || is_symmetric(header.alg) {
        return Err(TokenFailure::Algorithm);
    }
    Ok(TokenHeader {
        alg: header.alg,
        kid: header.kid,
    })
}

fn header_alg_is_present(token: &str) -> bool {
    let Some(part) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.get("alg").is_some())
}

fn is_symmetric(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Verify signature and registered claims, then the certificate binding.
/// `cert_sha256` is the SHA-256 of the presented client certificate (DER); `now` is unix time.
pub fn verify(
    token: &str,
    header: &TokenHeader,
    key: &VerificationKey,
    policy: &TokenPolicy,
    cert_sha256: &[u8],
    now: i64,
) -> Result<EdsClaims, TokenFailure> {
    if key.alg.is_some_and(|a| a != header.alg) {
        return Err(TokenFailure::Algorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.set_issuer(&[&policy.issuer]);
    validation.set_audience(&policy.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = policy.leeway_seconds;
    validation.validate_nbf = true;
    validation.validate_exp = true;
    let data =
        jsonwebtoken::decode::<EdsClaims>(token, &key.key, &validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => TokenFailure::Signature,
                ErrorKind::ExpiredSignature => TokenFailure::Expired,
                ErrorKind::ImmatureSignature => TokenFailure::NotYetValid,
                ErrorKind::InvalidIssuer => TokenFailure::Issuer,
                ErrorKind::InvalidAudience => TokenFailure::Audience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenFailure::Algorithm
                }
                ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_) => TokenFailure::Signature,
                _ => TokenFailure::Malformed,
            }
        })?;
    let claims = data.claims;
    let leeway = i64::try_from(policy.leeway_seconds).unwrap_or(i64::MAX);
    if claims
        .iat
        .is_some_and(|iat| iat > now.saturating_add(leeway))
    {
        return Err(TokenFailure::IssuedInFuture);
    }
    let bound = claims
        .cnf
        .as_ref()
        .and_then(|c| c.x5t_s256.as_deref())
        .ok_or(TokenFailure::MissingBinding)?;
    if !thumbprint_matches(bound, cert_sha256) {
        return Err(TokenFailure::BindingMismatch);
    }
    Ok(claims)
}

/// RFC 8705 says base64url without padding; a spec example uses standard base64, so both
/// alphabets, padded or not, are decoded and compared as bytes.
pub fn thumbprint_matches(claimed: &str, cert_sha256: &[u8]) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if cert_sha256.len() != 32 {
        return false;
    }
    [URL_SAFE_NO_PAD, URL_SAFE, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(claimed).ok())
        .is_some_and(|bytes| bytes == cert_sha256)
}

/// base64url(SHA-256(der)) as RFC 8705 writes it.
pub fn thumbprint_of(cert_der: &[u8]) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der))
}

pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    (!is_symmetric(alg)).then_some(alg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::keys::SigningKey;
    use serde_json::json;
    use sha2::Digest;

    const NOW: i64 = 1_800_000_000;

    fn cert_hash(seed: &str) -> Vec<u8> {
        sha2::Sha256::digest(seed.as_bytes()).to_vec()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "https://issuer.test".into(),
            audiences: vec!["eds".into()],
            algorithms: vec![Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA],
            leeway_seconds: 30,
        }
    }

    struct Fixture {
        key: SigningKey,
        vkey: VerificationKey,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate("k1").unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk()).unwrap();
        let vkey = VerificationKey {
            key: DecodingKey::from_jwk(&jwk).unwrap(),
            alg: Some(Algorithm::ES256),
        };
        Fixture { key, vkey }
    }

    fn claims() -> Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({
            "iss": "https://issuer.test", "aud": "eds", "exp": now + 600, "iat": now, "nbf": now,
            "scope": "EDS user/AuditEvent.rs", "cpr": "0101701234",
            "cnf": {"x5t#S256": b64(&cert_hash("A"))}
        })
    }

    fn check(f: &Fixture, token: &str, cert: &[u8]) -> Result<EdsClaims, TokenFailure> {
        let header = read_header(token, &policy())?;
        verify(
            token,
            &header,
            &f.vkey,
            &policy(),
            cert,
            jsonwebtoken::get_current_timestamp() as i64,
        )
    }

    #[test]
    fn a_good_token_bound_to_the_presented_certificate_passes() {
        let f = fixture();
        let t = f.key.sign(&claims()).unwrap();
        let c = check(&f, &t, &cert_hash("A")).unwrap();
        assert_eq!(c.cpr.as_deref(), Some("0101701234"));
    }

    #[test]
    fn another_certificate_fails_binding() {
        let f = fixture();
        let t = f.key.sign(&claims()).unwrap();
        assert_eq!(
            check(&f, &t, &cert_hash("B")).unwrap_err(),
            TokenFailure::BindingMismatch
        );
    }

    #[test]
    fn missing_cnf_fails() {
        let f = fixture();
        let mut c = claims();
        c.as_object_mut().unwrap().remove("cnf");
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).unwrap_err(),
            TokenFailure::MissingBinding
        );
        let mut c = claims();
        c["cnf"] = json!({"x5t": "abc"});
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).unwrap_err(),
            TokenFailure::MissingBinding
        );
    }

    #[test]
    fn registered_claims_are_enforced() {
        let f = fixture();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let cases: Vec<(&str, Value, TokenFailure)> = vec![
            ("expired", json!({"exp": now - 120}), TokenFailure::Expired),
            (
                "future nbf",
                json!({"nbf": now + 600}),
                TokenFailure::NotYetValid,
            ),
            (
                "future iat",
                json!({"iat": now + 600}),
                TokenFailure::IssuedInFuture,
            ),
            (
                "wrong iss",
                json!({"iss": "https://evil.test"}),
                TokenFailure::Issuer,
            ),
            ("wrong aud", json!({"aud": "other"}), TokenFailure::Audience),
            ("no exp", json!({"exp": null}), TokenFailure::Malformed),
            (
                "string exp",
                json!({"exp": format!("{}", now + 600)}),
                TokenFailure::Malformed,
            ),
        ];
        for (name, patch, expected) in cases {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            let t = f.key.sign(&c).unwrap();
            assert_eq!(
                check(&f, &t, &cert_hash("A")).unwrap_err(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn audience_array_containing_ours_passes() {
        let f = fixture();
        let mut c = claims();
        c["aud"] = json!(["other", "eds"]);
        assert!(check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).is_ok());
    }

    #[test]
    fn leeway_applies() {
        let f = fixture();
        let mut c = claims();
        c["exp"] = json!(jsonwebtoken::get_current_timestamp() as i64 - 10);
        assert!(check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).is_ok());
    }

    fn forge(header: Value, claims: &Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap())
        )
    }

    #[test]
    fn alg_none_and_hmac_are_refused_before_any_key_is_used() {
        let c = claims();
        assert_eq!(
            read_header(
                &forge(json!({"alg": "none", "kid": "k1"}), &c, ""),
                &policy()
            )
            .unwrap_err(),
            TokenFailure::Algorithm
        );
        assert_eq!(
            read_header(
                &forge(json!({"alg": "None", "kid": "k1"}), &c, ""),
                &policy()
            )
            .unwrap_err(),
            TokenFailure::Algorithm
        );
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                alg: Algorithm::HS256,
                kid: Some("k1".into()),
                ..Default::default()
            },
            &c,
            &jsonwebtoken::EncodingKey::from_secret(b"public key bytes"),
        )
        .unwrap();
        assert_eq!(
            read_header(&hs, &policy()).unwrap_err(),
            TokenFailure::Algorithm
        );
        let mut lax = policy();
        lax.algorithms.push(Algorithm::HS256);
        assert_eq!(read_header(&hs, &lax).unwrap_err(), TokenFailure::Algorithm);
    }

    #[test]
    fn rs256_is_refused_unless_configured() {
        let c = claims();
        let t = forge(json!({"alg": "RS256", "kid": "k1"}), &c, "AAAA");
        assert_eq!(
            read_header(&t, &policy()).unwrap_err(),
            TokenFailure::Algorithm
        );
    }

    #[test]
    fn key_algorithm_must_match_header() {
        let f = fixture();
        let t = forge(json!({"alg": "PS256", "kid": "k1"}), &claims(), "AAAA");
        let header = read_header(&t, &policy()).unwrap();
        assert_eq!(
            verify(&t, &header, &f.vkey, &policy(), &cert_hash("A"), NOW).unwrap_err(),
            TokenFailure::Algorithm
        );
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let f = fixture();
        let t = f.key.sign(&claims()).unwrap();
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut c = claims();
        c["cpr"] = json!("9999999999");
        parts[1] = b64(&serde_json::to_vec(&c).unwrap());
        let tampered = parts.join(".");
        assert_eq!(
            check(&f, &tampered, &cert_hash("A")).unwrap_err(),
            TokenFailure::Signature
        );
    }

    #[test]
    fn org_context_must_be_an_object() {
        let f = fixture();
        let mut c = claims();
        c["ehmi:org_context"] = json!(["Org", "111", "222"]);
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).unwrap_err(),
            TokenFailure::Malformed
        );
        c["ehmi:org_context"] = json!({"name": "Org", "sor": "111", "gln": "222"});
        assert!(check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.###.$$$",
            "eyJhbGciOiJFUzI1NiJ9.e30",
        ] {
            assert!(read_header(t, &policy()).is_err(), "{t}");
        }
    }

    #[test]
    fn thumbprint_accepts_both_base64_alphabets() {
        let h = cert_hash("A");
        assert!(thumbprint_matches(&b64(&h), &h));
        assert!(thumbprint_matches(
            &base64::engine::general_purpose::STANDARD.encode(&h),
            &h
        ));
        assert!(!thumbprint_matches(&b64(&cert_hash("B")), &h));
        assert!(!thumbprint_matches("", &h));
        assert!(!thumbprint_matches(&b64(&h), &[]));
    }
}
