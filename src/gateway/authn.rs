//! From `Authorization` header and client-certificate thumbprint to a `Principal`, with the
//! issuer's keys and a cache of validated tokens keyed by (token, certificate).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::auth::jwks::KeyStore;
use crate::auth::principal::{principal_from_claims, Principal, PrincipalPolicy};
use crate::auth::token::{self, TokenPolicy};
use crate::error::{Refusal, TokenFailure};
use crate::metrics;

#[derive(Clone)]
struct Cached {
    principal: Principal,
    exp: i64,
}

pub(crate) struct Authenticator {
    keys: Arc<KeyStore>,
    token_policy: TokenPolicy,
    principal_policy: PrincipalPolicy,
    cache: moka::sync::Cache<[u8; 32], Cached>,
}

/// The longest a validated token is trusted from the cache before it is checked again.
const CACHE_TTL: Duration = Duration::from_secs(300);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750).
pub(crate) fn bearer_token(header: Option<&[u8]>) -> Result<&str, TokenFailure> {
    let value = header.ok_or(TokenFailure::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| TokenFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenFailure::Missing);
    }
    let token = token.trim();
    let ok = !token.is_empty()
        && token.len() <= 16 * 1024
        && token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=' | b'+' | b'/')
        });
    if ok {
        Ok(token)
    } else {
        Err(TokenFailure::Malformed)
    }
}

impl Authenticator {
    pub(crate) fn new(
        keys: Arc<KeyStore>,
        token_policy: TokenPolicy,
        principal_policy: PrincipalPolicy,
        max_entries: u64,
    ) -> Self {
        Authenticator {
            keys,
            token_policy,
            principal_policy,
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    pub(crate) async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert_sha256: &[u8],
    ) -> Result<Principal, Refusal> {
        let result = self.authenticate_inner(authorization, cert_sha256).await;
        if let Err(Refusal::Unauthenticated(f)) = &result {
            metrics::TOKEN_FAILURES
                .with_label_values(&[f.as_str()])
                .inc();
        }
        result
    }

    async fn authenticate_inner(
        &self,
        authorization: Option<&[u8]>,
        cert_sha256: &[u8],
    ) -> Result<Principal, Refusal> {
        let token = bearer_token(authorization).map_err(Refusal::Unauthenticated)?;
        let mut hasher = Sha256::new();
        hasher.update(token.as_bytes());
        hasher.update([0u8]);
        hasher.update(cert_sha256);
        let key: [u8; 32] = hasher.finalize().into();
        let leeway = i64::try_from(self.token_policy.leeway_seconds).unwrap_or(0);
        if let Some(hit) = self.cache.get(&key) {
            if hit.exp.saturating_add(leeway) > now() {
                metrics::TOKEN_CACHE.with_label_values(&["hit"]).inc();
                return Ok(hit.principal);
            }
            self.cache.invalidate(&key);
        }
        metrics::TOKEN_CACHE.with_label_values(&["miss"]).inc();
        let header =
            token::read_header(token, &self.token_policy).map_err(Refusal::Unauthenticated)?;
        let kid = header
            .kid
            .as_deref()
            .ok_or(Refusal::Unauthenticated(TokenFailure::UnknownKey))?;
        let vkey = self.keys.key(kid).await.map_err(Refusal::Unauthenticated)?;
        let claims = token::verify(
            token,
            &header,
            &vkey,
            &self.token_policy,
            cert_sha256,
            now(),
        )
        .map_err(Refusal::Unauthenticated)?;
        let principal = principal_from_claims(&claims, &self.principal_policy)?;
        self.cache.insert(
            key,
            Cached {
                principal: principal.clone(),
                exp: claims.exp,
            },
        );
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(Some(b"Bearer a.b.c")).unwrap(), "a.b.c");
        assert_eq!(bearer_token(Some(b"bearer a.b.c")).unwrap(), "a.b.c");
        assert_eq!(bearer_token(None), Err(TokenFailure::Missing));
        assert_eq!(
            bearer_token(Some(b"Basic dXNlcjpwYXNz")),
            Err(TokenFailure::Missing)
        );
        assert_eq!(bearer_token(Some(b"Bearer")), Err(TokenFailure::Malformed));
        assert_eq!(
            bearer_token(Some(b"Bearer a.b.c\"x")),
            Err(TokenFailure::Malformed)
        );
        assert_eq!(
            bearer_token(Some(b"Bearer \xff")),
            Err(TokenFailure::Malformed)
        );
    }
}
