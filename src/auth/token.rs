//! Access-token validation: JWT signature with an allowed asymmetric algorithm, `iss`, `aud`,
//! `exp`/`nbf`/`iat` with leeway, a maximum lifetime, and the RFC 8705 certificate binding
//! `cnf["x5t#S256"]`.
//!
//! Header rules (`check_header_members`, before any key is looked up):
//! - `crit` (RFC 7515 §4.1.11): the proxy understands no extension, so a well-formed `crit`
//!   is refused as `CriticalHeader`; one that is not a non-empty array of strings, or that
//!   names a registered header parameter, is `Malformed` as the RFC says.
//! - `b64` (RFC 7797) changes what is signed: refused (`CriticalHeader`) whatever its value,
//!   since RFC 7797 §6 requires it to be listed in `crit` anyway. Nested JWTs (`cty: JWT`,
//!   RFC 7519 §5.2) likewise. `zip` and `enc` belong to JWE (RFC 7516): `Malformed` in a JWS.
//! - `typ`: absent, `JWT` (RFC 7519 §5.1) or `at+jwt` (RFC 9068 §2.1), each optionally with the
//!   `application/` prefix, compared case-insensitively (media types, RFC 7515 §4.1.9).
//!   Anything else is another kind of JWT (ID token, logout token, DPoP proof…) signed by
//!   someone the proxy may trust, and is refused as `TokenType` (RFC 8725 §3.11).
//! - Header member names must be unique (RFC 7515 §4 allows refusing duplicates; two readers
//!   that keep different duplicates would disagree about `alg`, `kid` or `crit`).
//! - `jku`, `x5u`, `jwk` and `x5c` are never used: the key is always the issuer's, looked up
//!   by `kid` in the configured JWKS (RFC 8725 §3.10). They are ignored, not refused.
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
    /// The `scope` claim as one space-separated string (RFC 9068 §2.2.3); empty if absent.
    #[serde(default, deserialize_with = "scope_string")]
    pub scope: String,
    /// The `cnf` claim: the certificate binding (RFC 8705 §3.1).
    #[serde(default)]
    pub cnf: Option<Confirmation>,
    /// `ehmi:eer:device_id`: a station's EER device id (EDS security page, "Calls to the Token
    /// Endpoint").
    #[serde(default, rename = "ehmi:eer:device_id")]
    pub device_id: Option<String>,
    /// `ehmi:org_context`: the organisation a station token is issued for.
    #[serde(default, rename = "ehmi:org_context", deserialize_with = "object_only")]
    pub org_context: Option<OrgContext>,
    /// `cpr`: a citizen's CPR number. Personal data, never logged.
    #[serde(default)]
    pub cpr: Option<String>,
    /// `acr`: the authentication's NSIS assurance level (a URI).
    #[serde(default)]
    pub acr: Option<String>,
    /// `cvr`: a user's organisation's CVR number.
    #[serde(default)]
    pub cvr: Option<String>,
    /// `priv`: the user's OIO-BPP privilege list, JSON or base64 XML (`auth::privileges`).
    #[serde(default, rename = "priv")]
    pub privileges: Option<Value>,
    /// `exp` (RFC 7519 §4.1.4), seconds since the epoch; required.
    pub exp: i64,
    /// `iat` (RFC 7519 §4.1.6), seconds since the epoch.
    #[serde(default)]
    pub iat: Option<i64>,
    /// Read for the lifetime rule only (jsonwebtoken checks `nbf` against the clock).
    #[serde(default)]
    pub nbf: Option<i64>,
}

/// RFC 8705 confirmation claim.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    /// `x5t#S256`: base64url SHA-256 thumbprint of the DER client certificate the token is
    /// bound to.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: Option<String>,
}

/// The organisational context a station token is issued for (EDS security page).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OrgContext {
    /// `name`: the organisation's name (informative only).
    #[serde(default)]
    pub name: Option<String>,
    /// `sor`: the organisation's SOR code.
    pub sor: String,
    /// `gln`: the location number (GLN).
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
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audiences: Vec<String>,
    /// Accepted JWS algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_seconds: u64,
    /// Longest accepted lifetime, `exp − iat` (see `check_lifetime`).
    pub max_lifetime_seconds: u64,
}

/// A verification key and what it may verify.
#[derive(Clone)]
pub struct VerificationKey {
    /// The public key.
    pub key: DecodingKey,
    /// The JWK's own `alg`, if it names one: the token must then use exactly that.
    pub alg: Option<Algorithm>,
}

/// Header facts needed to pick a key, read before any verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The JWS `alg` of the protected header (RFC 7515 §4.1.1).
    pub alg: Algorithm,
    /// The `kid` of the protected header (RFC 7515 §4.1.4), naming the key in the JWK Set.
    pub kid: Option<String>,
}

/// Read the header and refuse disallowed algorithms before any key is looked up.
pub fn read_header(token: &str, policy: &TokenPolicy) -> Result<TokenHeader, TokenFailure> {
    if token.split('.').count() != 3 {
        return Err(TokenFailure::Malformed);
    }
    // Before `decode_header`: it reads `crit`, `typ` and `cty` into typed fields and would
    // report a wrong type there as an algorithm failure.
    check_header_members(&header_members(token)?)?;
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

/// The JOSE header as a JSON object, refusing duplicate member names at its top level.
/// A header that is not base64url JSON is left to `decode_header`, which sorts it into
/// `Malformed` or `Algorithm`; duplicates and non-objects are `Malformed` here.
fn header_members(token: &str) -> Result<serde_json::Map<String, Value>, TokenFailure> {
    let part = token.split('.').next().unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part) else {
        return Ok(serde_json::Map::new());
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    match serde::Deserializer::deserialize_any(&mut de, UniqueObject) {
        Ok(Some(map)) => de.end().map(|()| map).map_err(|_| TokenFailure::Malformed),
        Ok(None) => Err(TokenFailure::Malformed),
        // Not JSON at all: `decode_header` names the failure as before.
        Err(e) if !e.is_data() => Ok(serde_json::Map::new()),
        Err(_) => Err(TokenFailure::Malformed),
    }
}

/// Reads a JSON object whose member names are unique; `None` for any other JSON value.
struct UniqueObject;

impl<'de> serde::de::Visitor<'de> for UniqueObject {
    type Value = Option<serde_json::Map<String, Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object with unique member names")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom("duplicate header member"));
            }
            out.insert(k, v);
        }
        Ok(Some(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Header parameters registered by RFC 7515 §4.1 and RFC 7516 §4.1: `crit` may not name them.
const REGISTERED_HEADER_PARAMETERS: &[&str] = &[
    "alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "enc", "zip",
];

/// The header rules of the module documentation, over the decoded header members.
pub(crate) fn check_header_members(
    header: &serde_json::Map<String, Value>,
) -> Result<(), TokenFailure> {
    if let Some(crit) = header.get("crit") {
        let names = crit
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or(TokenFailure::Malformed)?;
        for name in names {
            let name = name.as_str().ok_or(TokenFailure::Malformed)?;
            if REGISTERED_HEADER_PARAMETERS.contains(&name) {
                return Err(TokenFailure::Malformed);
            }
        }
        // Well-formed, but every extension it names is one this proxy does not understand.
        return Err(TokenFailure::CriticalHeader);
    }
    if header.contains_key("zip") || header.contains_key("enc") {
        return Err(TokenFailure::Malformed);
    }
    if header.contains_key("b64") {
        return Err(TokenFailure::CriticalHeader);
    }
    match header.get("cty") {
        None => {}
        Some(Value::String(cty)) if is_media_type(cty, "jwt") => {
            return Err(TokenFailure::CriticalHeader)
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(TokenFailure::Malformed),
    }
    match header.get("typ") {
        None => Ok(()),
        Some(Value::String(t)) if is_media_type(t, "jwt") || is_media_type(t, "at+jwt") => Ok(()),
        Some(Value::String(_)) => Err(TokenFailure::TokenType),
        Some(_) => Err(TokenFailure::Malformed),
    }
}

/// `value` names the media type `application/<subtype>`, with or without the prefix
/// (RFC 7515 §4.1.9), case-insensitively (RFC 2045 §5.1).
fn is_media_type(value: &str, subtype: &str) -> bool {
    let bare = match value.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => value.get(12..).unwrap_or_default(),
        _ => value,
    };
    bare.eq_ignore_ascii_case(subtype)
}

/// The maximum-lifetime rule, pure: `exp − iat ≤ max` when `iat` is present, and always
/// `exp − now ≤ max + leeway` (without `iat` the remaining validity is all the proxy can
/// see; the leeway absorbs the issuer's clock running ahead of ours). With `iat ≤ now +
/// leeway` (checked before) the second bound follows from the first, so both together never
/// refuse a token the first accepts. Arithmetic saturates: absurd values are refused.
pub(crate) fn check_lifetime(
    exp: i64,
    iat: Option<i64>,
    now: i64,
    max_lifetime_seconds: u64,
    leeway_seconds: u64,
) -> Result<(), TokenFailure> {
    let max = i64::try_from(max_lifetime_seconds).unwrap_or(i64::MAX);
    let leeway = i64::try_from(leeway_seconds).unwrap_or(i64::MAX);
    if iat.is_some_and(|iat| exp.saturating_sub(iat) > max) {
        return Err(TokenFailure::LifetimeTooLong);
    }
    if exp.saturating_sub(now) > max.saturating_add(leeway) {
        return Err(TokenFailure::LifetimeTooLong);
    }
    Ok(())
}

/// The claims set read once more, strictly, after the signature verified: a duplicate member
/// name at any depth (`priv` entries, `ehmi:org_context`, `cnf`) is refused, since two JSON
/// readers may keep different ones (RFC 7519 §4 lets a parser reject duplicates; this one
/// does), and `iss` must be a single string (RFC 7519 §4.1.1: a StringOrURI, never an array).
///
/// Errors: [`TokenFailure::Malformed`].
pub(crate) fn check_payload_members(token: &str) -> Result<(), TokenFailure> {
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .ok_or(TokenFailure::Malformed)?;
    let claims = crate::fhir::strict_json::parse(&payload).map_err(|_| TokenFailure::Malformed)?;
    match claims.get("iss") {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(TokenFailure::Malformed),
    }
}

/// Read with the same duplicate-refusing reader as the header rules (never a lenient
/// `Value` parse): a header that passed them has each member once.
fn header_alg_is_present(token: &str) -> bool {
    header_members(token).is_ok_and(|members| members.contains_key("alg"))
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
    check_payload_members(token)?;
    // Every start the token names (`iat`, `nbf`) bounds its lifetime, as does the clock.
    for start in [claims.iat, claims.nbf] {
        check_lifetime(
            claims.exp,
            start,
            now,
            policy.max_lifetime_seconds,
            policy.leeway_seconds,
        )?;
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
pub(crate) fn thumbprint_matches(claimed: &str, cert_sha256: &[u8]) -> bool {
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

/// The accepted algorithm called `name` (RFC 7518 §3.1); `None` for unknown names and for
/// symmetric (HMAC) algorithms, which a shared-key issuer could use to forge tokens.
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
            max_lifetime_seconds: 3600,
        }
    }

    struct Fixture {
        key: SigningKey,
        vkey: VerificationKey,
    }

    fn fixture() -> Fixture {
        // The provider the server installs (auth::ring_verify): these tests are its oracle.
        #[cfg(feature = "server")]
        crate::auth::ring_verify::install();
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
            assert_eq!(
                read_header(t, &policy()).map(|_| ()),
                Err(TokenFailure::Malformed),
                "{t}"
            );
        }
    }

    #[test]
    fn crit_and_processing_headers_are_refused() {
        let c = claims();
        let base = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let cases: Vec<(&str, Value, TokenFailure)> = vec![
            (
                "crit naming an extension",
                json!({"crit": ["exp"], "exp": 1}),
                TokenFailure::CriticalHeader,
            ),
            (
                "crit naming b64",
                json!({"crit": ["b64"], "b64": false}),
                TokenFailure::CriticalHeader,
            ),
            (
                "crit naming an absent extension",
                json!({"crit": ["x-ext"]}),
                TokenFailure::CriticalHeader,
            ),
            ("crit empty", json!({"crit": []}), TokenFailure::Malformed),
            (
                "crit a string",
                json!({"crit": "b64"}),
                TokenFailure::Malformed,
            ),
            (
                "crit with a number",
                json!({"crit": ["b64", 1]}),
                TokenFailure::Malformed,
            ),
            ("crit null", json!({"crit": null}), TokenFailure::Malformed),
            (
                "crit naming alg",
                json!({"crit": ["alg"]}),
                TokenFailure::Malformed,
            ),
            (
                "crit naming kid",
                json!({"crit": ["x-ext", "kid"]}),
                TokenFailure::Malformed,
            ),
            (
                "b64 false without crit",
                json!({"b64": false}),
                TokenFailure::CriticalHeader,
            ),
            (
                "b64 true",
                json!({"b64": true}),
                TokenFailure::CriticalHeader,
            ),
            (
                "nested JWT",
                json!({"cty": "JWT"}),
                TokenFailure::CriticalHeader,
            ),
            (
                "nested JWT, media type",
                json!({"cty": "application/jwt"}),
                TokenFailure::CriticalHeader,
            ),
            ("cty a number", json!({"cty": 1}), TokenFailure::Malformed),
            ("zip", json!({"zip": "DEF"}), TokenFailure::Malformed),
            ("enc", json!({"enc": "A256GCM"}), TokenFailure::Malformed),
            (
                "typ of an ID token",
                json!({"typ": "id_token+jwt"}),
                TokenFailure::TokenType,
            ),
            (
                "typ of a logout token",
                json!({"typ": "logout+jwt"}),
                TokenFailure::TokenType,
            ),
            (
                "typ of a DPoP proof",
                json!({"typ": "dpop+jwt"}),
                TokenFailure::TokenType,
            ),
            ("typ JOSE", json!({"typ": "JOSE"}), TokenFailure::TokenType),
            ("typ empty", json!({"typ": ""}), TokenFailure::TokenType),
            ("typ a number", json!({"typ": 1}), TokenFailure::Malformed),
        ];
        for (name, patch, expected) in cases {
            let mut header = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                header[k] = v.clone();
            }
            assert_eq!(
                read_header(&forge(header, &c, "AAAA"), &policy()),
                Err(expected),
                "{name}"
            );
        }
        for typ in [
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("AT+JWT"),
            Some("application/at+jwt"),
            Some("Application/JWT"),
            None,
        ] {
            let mut header = base.clone();
            match typ {
                Some(t) => header["typ"] = json!(t),
                None => {
                    header.as_object_mut().unwrap().remove("typ");
                }
            }
            assert!(
                read_header(&forge(header, &c, "AAAA"), &policy()).is_ok(),
                "{typ:?}"
            );
        }
        // jku, x5u, jwk and x5c are ignored, never refused nor used: the key comes by kid.
        let header = json!({"alg": "ES256", "kid": "k1", "jku": "https://evil.example/j", "x5u": "https://evil.example/c"});
        let h = read_header(&forge(header, &c, "AAAA"), &policy()).unwrap();
        assert_eq!(h.kid.as_deref(), Some("k1"));
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        let payload = b64(&serde_json::to_vec(&claims()).unwrap());
        for header in [
            r#"{"alg":"ES256","kid":"k1","kid":"k2"}"#,
            r#"{"alg":"ES256","crit":["x"],"kid":"k1","crit":["y"]}"#,
            r#"{"alg":"none","kid":"k1","alg":"ES256"}"#,
        ] {
            let t = format!("{}.{payload}.AAAA", b64(header.as_bytes()));
            assert_eq!(
                read_header(&t, &policy()),
                Err(TokenFailure::Malformed),
                "{header}"
            );
        }
        // Not an object at all.
        let t = format!("{}.{payload}.AAAA", b64(br#"["alg","ES256"]"#));
        assert_eq!(read_header(&t, &policy()), Err(TokenFailure::Malformed));
        // Trailing bytes after the object.
        let t = format!("{}.{payload}.AAAA", b64(br#"{"alg":"ES256","kid":"k1"} x"#));
        assert_eq!(read_header(&t, &policy()), Err(TokenFailure::Malformed));
    }

    #[test]
    fn a_signed_token_with_crit_is_refused() {
        let f = fixture();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        header.crit = Some(vec!["x-ext".into()]);
        let t = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_ec_pem(f.key.private_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            check(&f, &t, &cert_hash("A")),
            Err(TokenFailure::CriticalHeader)
        );
    }

    #[test]
    fn lifetime_rule() {
        const MAX: u64 = 3600;
        const LEEWAY: u64 = 30;
        let now = NOW;
        let max = MAX as i64;
        type Case = (&'static str, i64, Option<i64>, Result<(), TokenFailure>);
        let cases: Vec<Case> = vec![
            ("exactly the maximum", now + max, Some(now), Ok(())),
            (
                "one second over",
                now + max + 1,
                Some(now),
                Err(TokenFailure::LifetimeTooLong),
            ),
            (
                "ten years",
                now + 10 * 365 * 86_400,
                Some(now),
                Err(TokenFailure::LifetimeTooLong),
            ),
            (
                "old iat, long total even though little remains",
                now + 60,
                Some(now - max),
                Err(TokenFailure::LifetimeTooLong),
            ),
            (
                "issued a little ahead of our clock",
                now + LEEWAY as i64 + max,
                Some(now + LEEWAY as i64),
                Ok(()),
            ),
            (
                "no iat, exactly max + leeway ahead",
                now + max + LEEWAY as i64,
                None,
                Ok(()),
            ),
            (
                "no iat, one second more",
                now + max + LEEWAY as i64 + 1,
                None,
                Err(TokenFailure::LifetimeTooLong),
            ),
            ("no iat, short", now + 60, None, Ok(())),
            ("exp before iat", now, Some(now + 10), Ok(())),
            (
                "extreme exp",
                i64::MAX,
                Some(i64::MIN),
                Err(TokenFailure::LifetimeTooLong),
            ),
            (
                "extreme exp without iat",
                i64::MAX,
                None,
                Err(TokenFailure::LifetimeTooLong),
            ),
        ];
        for (name, exp, iat, expected) in cases {
            assert_eq!(
                check_lifetime(exp, iat, now, MAX, LEEWAY),
                expected,
                "{name}"
            );
        }
        // Configured limits beyond i64 saturate instead of wrapping.
        assert_eq!(
            check_lifetime(now + 5, None, now, u64::MAX, u64::MAX),
            Ok(())
        );
        assert_eq!(
            check_lifetime(i64::MAX, Some(i64::MIN), now, MAX, u64::MAX),
            Err(TokenFailure::LifetimeTooLong)
        );
        assert_eq!(check_lifetime(now + 5, Some(now), now, u64::MAX, 0), Ok(()));
    }

    #[test]
    fn a_long_lived_token_is_refused() {
        let f = fixture();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut c = claims();
        c["exp"] = json!(now + 10 * 365 * 86_400);
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")),
            Err(TokenFailure::LifetimeTooLong)
        );
        c.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")),
            Err(TokenFailure::LifetimeTooLong)
        );
        c["exp"] = json!(now + 3600);
        c["iat"] = json!(now);
        assert!(check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).is_ok());
    }

    #[test]
    fn duplicate_claims_are_malformed() {
        let f = fixture();
        let c = claims();
        let text = c.to_string();
        // A second cvr after the first: one reader might keep either.
        let dup = format!(
            r#"{{"cvr":"11111111",{}, "cvr":"22222222"}}"#,
            &text[1..text.len() - 1]
        );
        let header = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(dup.as_bytes())
        );
        let k = jsonwebtoken::EncodingKey::from_ec_pem(f.key.private_pem.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, Algorithm::ES256).unwrap();
        assert_eq!(
            check(&f, &format!("{input}.{sig}"), &cert_hash("A")),
            Err(TokenFailure::Malformed)
        );
    }

    /// Sign `payload` (raw JSON text, duplicates and all) with the fixture's key.
    fn sign_raw(f: &Fixture, payload: &str) -> String {
        let header = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.as_bytes())
        );
        let k = jsonwebtoken::EncodingKey::from_ec_pem(f.key.private_pem.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    }

    #[test]
    fn nested_duplicates_and_an_issuer_array_are_malformed() {
        let f = fixture();
        let text = claims().to_string();
        let inner = &text[1..text.len() - 1];
        for extra in [
            // Which CVR does the role belong to? A first-wins reader says 11111111.
            r#""priv":[{"scope":"urn:dk:gov:saml:cvrNumberIdentifier:11111111","privileges":["r"],"scope":"urn:dk:gov:saml:cvrNumberIdentifier:12345678"}]"#,
            r#""ehmi:org_context":{"sor":"A","gln":"G","sor":"B"}"#,
            r#""x":{"y":{"z":1,"z":2}}"#,
        ] {
            assert_eq!(
                check(
                    &f,
                    &sign_raw(&f, &format!("{{{inner},{extra}}}")),
                    &cert_hash("A")
                ),
                Err(TokenFailure::Malformed),
                "{extra}"
            );
        }
        let mut c = claims();
        let iss = c["iss"].clone();
        c["iss"] = json!(["https://evil.example", iss]);
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")),
            Err(TokenFailure::Malformed)
        );
        assert_eq!(check_payload_members("a.b"), Err(TokenFailure::Malformed));
    }

    #[test]
    fn not_before_bounds_the_lifetime_too() {
        let f = fixture();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iat");
        c["nbf"] = json!(now - 365 * 86_400);
        c["exp"] = json!(now + 600);
        assert_eq!(
            check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")),
            Err(TokenFailure::LifetimeTooLong)
        );
        c["nbf"] = json!(now - 60);
        assert!(check(&f, &f.key.sign(&c).unwrap(), &cert_hash("A")).is_ok());
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
