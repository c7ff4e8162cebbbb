//! The one error type for refused or failed requests, and its mapping to an HTTP status and
//! a FHIR OperationOutcome. Every refusal anywhere in the proxy ends up here.

use serde_json::json;

/// Why a token was not accepted. The names are the `reason` label of the token metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// No `Authorization: Bearer` token (RFC 6750 §2.1).
    Missing,
    /// Not a well-formed JWS compact serialisation with JSON header and claims (RFC 7515 §7.1),
    /// or a claim of the wrong JSON type.
    Malformed,
    /// The `alg` is absent, not accepted by configuration, symmetric, or not the key's own `alg`
    /// (RFC 8725 §3.1).
    Algorithm,
    /// No key in the issuer's JWK Set has the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (RFC 7519 §4.1.4), beyond the leeway.
    Expired,
    /// `nbf` is in the future (RFC 7519 §4.1.5), beyond the leeway.
    NotYetValid,
    /// `iat` is in the future (RFC 7519 §4.1.6), beyond the leeway.
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` names none of the configured audiences.
    Audience,
    /// No `cnf` `x5t#S256` certificate binding (RFC 8705 §3.1).
    MissingBinding,
    /// `cnf.x5t#S256` is not the thumbprint of the presented client certificate (RFC 8705 §3.1).
    BindingMismatch,
    /// No key of the issuer could be loaded yet, so no token can be checked (a 401 too;
    /// `/readyz` answers 503 meanwhile).
    KeysUnavailable,
    /// The protected header names extensions (`crit`, RFC 7515 §4.1.11) or asks for processing
    /// the proxy does not implement (`b64: false` RFC 7797, nested JWT `cty`): must be refused.
    CriticalHeader,
    /// `typ` names something other than a JWT access token (RFC 8725 §3.11, RFC 9068 §2.1).
    TokenType,
    /// `exp − iat` (or `exp − now`) exceeds the configured `token.max_lifetime_seconds`.
    LifetimeTooLong,
}

impl TokenFailure {
    /// The failure's name: the `reason` label of `eds_proxy_token_failures_total` and of the
    /// access log.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFailure::Missing => "missing",
            TokenFailure::Malformed => "malformed",
            TokenFailure::Algorithm => "algorithm",
            TokenFailure::UnknownKey => "unknown_key",
            TokenFailure::Signature => "signature",
            TokenFailure::Expired => "expired",
            TokenFailure::NotYetValid => "not_yet_valid",
            TokenFailure::IssuedInFuture => "issued_in_future",
            TokenFailure::Issuer => "issuer",
            TokenFailure::Audience => "audience",
            TokenFailure::MissingBinding => "missing_cnf",
            TokenFailure::BindingMismatch => "cnf_mismatch",
            TokenFailure::KeysUnavailable => "keys_unavailable",
            TokenFailure::CriticalHeader => "crit",
            TokenFailure::TokenType => "typ",
            TokenFailure::LifetimeTooLong => "lifetime_too_long",
        }
    }

    /// The `error_description` of the 401's `WWW-Authenticate` and the OperationOutcome text.
    pub fn description(self) -> &'static str {
        match self {
            TokenFailure::Missing => "no bearer access token",
            TokenFailure::Malformed => "the access token is not a well-formed JWT",
            TokenFailure::Algorithm => "the token's signing algorithm is not accepted",
            TokenFailure::UnknownKey => "the token is signed with an unknown key",
            TokenFailure::Signature => "the token signature is invalid",
            TokenFailure::Expired => "the token has expired",
            TokenFailure::NotYetValid => "the token is not valid yet",
            TokenFailure::IssuedInFuture => "the token is issued in the future",
            TokenFailure::Issuer => "the token is from an untrusted issuer",
            TokenFailure::Audience => "the token is not issued for this service",
            TokenFailure::MissingBinding => "the token is not bound to a client certificate (cnf)",
            TokenFailure::BindingMismatch => {
                "the token is bound to another client certificate than the one presented"
            }
            TokenFailure::KeysUnavailable => "the issuer's signing keys are unavailable",
            TokenFailure::CriticalHeader => {
                "the token header requires processing this service does not support (crit)"
            }
            TokenFailure::TokenType => "the token is not a JWT access token (typ)",
            TokenFailure::LifetimeTooLong => "the token's lifetime exceeds the accepted maximum",
        }
    }
}

/// A request the proxy refuses, or could not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no valid, certificate-bound access token.
    Unauthenticated(TokenFailure),
    /// 403: authenticated, but not allowed to do this.
    Forbidden(String),
    /// 400: the query or body is not acceptable.
    Invalid(String),
    /// 404: not there, or not the caller's (never tell which).
    NotFound,
    /// 405: method not allowed on a path the proxy knows.
    MethodNotAllowed(String),
    /// 413: request body above the configured limit.
    TooLarge(usize),
    /// 414: the request target is longer than the configured limit.
    UriTooLong(usize),
    /// 431: the request headers together are larger than the configured limit.
    HeadersTooLarge(usize),
    /// 415: only FHIR JSON (or form-encoded search) bodies are accepted.
    UnsupportedMediaType(String),
    /// 502: the FHIR server could not be reached or answered something the proxy rejects.
    BadGateway(String),
    /// 504: the FHIR server did not answer in time.
    GatewayTimeout,
}

impl Refusal {
    /// A 403 with this text.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Refusal::Forbidden(msg.into())
    }
    /// A 400 with this text.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Refusal::Invalid(msg.into())
    }

    /// The HTTP status code this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::Invalid(_) => 400,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::TooLarge(_) => 413,
            Refusal::UriTooLong(_) => 414,
            Refusal::HeadersTooLarge(_) => 431,
            Refusal::UnsupportedMediaType(_) => 415,
            Refusal::BadGateway(_) => 502,
            Refusal::GatewayTimeout => 504,
        }
    }

    /// FHIR `IssueType` code (<https://hl7.org/fhir/R4/codesystem-issue-type.html>).
    pub fn issue_code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "login",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Invalid(_) => "invalid",
            Refusal::NotFound => "not-found",
            Refusal::MethodNotAllowed(_) => "not-supported",
            Refusal::TooLarge(_) => "too-costly",
            Refusal::UriTooLong(_) | Refusal::HeadersTooLarge(_) => "too-long",
            Refusal::UnsupportedMediaType(_) => "not-supported",
            Refusal::BadGateway(_) => "transient",
            Refusal::GatewayTimeout => "timeout",
        }
    }

    /// Short label for metrics and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(f) => f.as_str(),
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Invalid(_) => "invalid",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::TooLarge(_) => "too_large",
            Refusal::UriTooLong(_) => "uri_too_long",
            Refusal::HeadersTooLarge(_) => "headers_too_large",
            Refusal::UnsupportedMediaType(_) => "unsupported_media_type",
            Refusal::BadGateway(_) => "bad_gateway",
            Refusal::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The text of the OperationOutcome's issue (`diagnostics`); never carries a token, a body or
    /// a CPR number.
    pub fn message(&self) -> String {
        match self {
            Refusal::Unauthenticated(f) => f.description().to_string(),
            Refusal::Forbidden(m)
            | Refusal::Invalid(m)
            | Refusal::MethodNotAllowed(m)
            | Refusal::UnsupportedMediaType(m)
            | Refusal::BadGateway(m) => m.clone(),
            Refusal::NotFound => "resource not found".to_string(),
            Refusal::TooLarge(limit) => format!("request body exceeds {limit} bytes"),
            Refusal::UriTooLong(limit) => format!("request URL exceeds {limit} bytes"),
            Refusal::HeadersTooLarge(limit) => format!("request headers exceed {limit} bytes"),
            Refusal::GatewayTimeout => "the FHIR server did not answer in time".to_string(),
        }
    }

    /// Extra response headers this refusal requires (RFC 6750 for 401).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Refusal::Unauthenticated(TokenFailure::Missing) => {
                vec![("WWW-Authenticate", "Bearer".to_string())]
            }
            Refusal::Unauthenticated(f) => vec![(
                "WWW-Authenticate",
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    f.description()
                ),
            )],
            Refusal::MethodNotAllowed(_) => vec![("Allow", "GET, POST".to_string())],
            _ => Vec::new(),
        }
    }

    /// The answer body: a FHIR OperationOutcome (JSON) with one issue of severity `error`.
    pub fn outcome_json(&self) -> Vec<u8> {
        operation_outcome("error", self.issue_code(), &self.message())
    }
}

/// A FHIR OperationOutcome with a single issue, serialised as JSON.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Vec<u8> {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_maps_to_status_and_outcome() {
        let cases = [
            (
                Refusal::Unauthenticated(TokenFailure::Expired),
                401,
                "login",
            ),
            (Refusal::forbidden("x"), 403, "forbidden"),
            (Refusal::invalid("x"), 400, "invalid"),
            (Refusal::NotFound, 404, "not-found"),
            (Refusal::MethodNotAllowed("x".into()), 405, "not-supported"),
            (Refusal::TooLarge(10), 413, "too-costly"),
            (Refusal::UriTooLong(10), 414, "too-long"),
            (Refusal::HeadersTooLarge(10), 431, "too-long"),
            (
                Refusal::UnsupportedMediaType("x".into()),
                415,
                "not-supported",
            ),
            (Refusal::BadGateway("x".into()), 502, "transient"),
            (Refusal::GatewayTimeout, 504, "timeout"),
        ];
        for (r, status, code) in cases {
            assert_eq!(r.status(), status);
            let v: serde_json::Value = serde_json::from_slice(&r.outcome_json()).unwrap();
            assert_eq!(v["resourceType"], "OperationOutcome");
            assert_eq!(v["issue"][0]["code"], code);
        }
    }

    #[test]
    fn invalid_token_carries_rfc6750_header() {
        let h = Refusal::Unauthenticated(TokenFailure::BindingMismatch).headers();
        assert!(h[0]
            .1
            .starts_with("Bearer error=\"invalid_token\", error_description="));
    }
}
