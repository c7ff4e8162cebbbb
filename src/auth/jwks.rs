//! The issuer's signing keys: a JWKS read from a file or fetched over HTTPS, cached, refreshed
//! when a token names an unknown `kid` (no more often than the configured floor), refreshed
//! when older than its maximum age, and kept as they are while the source is unreachable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::DecodingKey;

use super::token::VerificationKey;
use crate::error::TokenFailure;
use crate::metrics;

/// Refresh floor while no key set was ever loaded.
const EMPTY_RETRY: Duration = Duration::from_secs(2);

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWK Set file, read on each refresh.
    File(PathBuf),
    /// An HTTPS endpoint serving the JWK Set.
    Url {
        /// The JWKS URL (`token.jwks_url`).
        url: String,
        /// The client it is fetched with (TLS roots of `token.jwks_ca`).
        client: reqwest::Client,
    },
}

struct Snapshot {
    keys: HashMap<String, VerificationKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// The issuer's verification keys by `kid`, loaded from a `JwksSource` and refreshed when a
/// token names an unknown key or the set is older than `max_age` (never more often than
/// `refresh_floor`). Errors keep the keys loaded last.
pub struct KeyStore {
    source: JwksSource,
    refresh_floor: Duration,
    max_age: Duration,
    state: RwLock<Snapshot>,
    refreshing: tokio::sync::Mutex<()>,
}

impl KeyStore {
    /// A store with no keys yet; the first `key` or `refresh_if_allowed` loads them.
    pub fn new(source: JwksSource, refresh_floor: Duration, max_age: Duration) -> Arc<Self> {
        Arc::new(KeyStore {
            source,
            refresh_floor,
            max_age,
            state: RwLock::new(Snapshot {
                keys: HashMap::new(),
                fetched_at: None,
                last_attempt: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The key for `kid`, refreshing the set if it is unknown or stale.
    pub async fn key(&self, kid: &str) -> Result<VerificationKey, TokenFailure> {
        let (found, stale) = self.lookup(kid);
        if let Some(key) = found.as_ref().filter(|_| !stale) {
            return Ok(key.clone());
        }
        self.refresh_if_allowed().await;
        match self.lookup(kid).0.or(found) {
            Some(k) => Ok(k),
            None if self.is_empty() => Err(TokenFailure::KeysUnavailable),
            None => Err(TokenFailure::UnknownKey),
        }
    }

    fn lookup(&self, kid: &str) -> (Option<VerificationKey>, bool) {
        let Ok(state) = self.state.read() else {
            return (None, true);
        };
        let stale = state.fetched_at.is_none_or(|t| t.elapsed() > self.max_age);
        (state.keys.get(kid).cloned(), stale)
    }

    fn is_empty(&self) -> bool {
        self.state.read().map(|s| s.keys.is_empty()).unwrap_or(true)
    }

    /// Seconds since the last successful load, if any.
    pub fn age_seconds(&self) -> Option<f64> {
        self.state
            .read()
            .ok()
            .and_then(|s| s.fetched_at)
            .map(|t| t.elapsed().as_secs_f64())
    }

    /// Refresh unless another refresh ran within the floor; concurrent callers wait for one.
    pub async fn refresh_if_allowed(&self) {
        let _guard = self.refreshing.lock().await;
        // Until keys were loaded once, retry sooner: the proxy may start before its issuer.
        let floor = if self.is_empty() {
            self.refresh_floor.min(EMPTY_RETRY)
        } else {
            self.refresh_floor
        };
        let recently = self
            .state
            .read()
            .ok()
            .and_then(|s| s.last_attempt)
            .is_some_and(|t| t.elapsed() < floor);
        if recently {
            return;
        }
        if let Ok(mut s) = self.state.write() {
            s.last_attempt = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                metrics::JWKS_REFRESHES.with_label_values(&["ok"]).inc();
                if let Ok(mut s) = self.state.write() {
                    s.keys = keys;
                    s.fetched_at = Some(Instant::now());
                }
            }
            Err(e) => {
                // Old keys stay: an issuer outage must not lock out every caller at once.
                metrics::JWKS_REFRESHES.with_label_values(&["error"]).inc();
                log::warn!("JWKS refresh failed, keeping previous keys: {e}");
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, VerificationKey>, String> {
        let text = match &self.source {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
            JwksSource::Url { url, client } => {
                // `without_url`: an operator's JWKS URL may carry credentials in its query.
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("JWKS endpoint answered {}", resp.status()));
                }
                resp.text().await.map_err(|e| e.without_url().to_string())?
            }
        };
        parse_jwks(&text)
    }
}

/// Keys by `kid`. Keys without a `kid`, symmetric keys and keys meant for encryption are
/// skipped: a token must name its key, and only signature keys verify tokens.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, VerificationKey>, String> {
    // Strict: a key with a member twice is not a key this proxy guesses at.
    let set: JwkSet = crate::fhir::strict_json::parse_into(text.as_bytes())
        .map_err(|e| format!("JWKS is not valid: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if let Some((kid, key)) = usable_key(jwk) {
            keys.insert(kid, key);
        }
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk) -> Option<(String, VerificationKey)> {
    use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<jsonwebtoken::Algorithm>().ok());
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, VerificationKey { key, alg }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::keys::SigningKey;

    fn jwks_file(tag: &str, keys: &[&SigningKey]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("eds-jwks-{tag}-{}.json", std::process::id()));
        let set = serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        std::fs::write(&path, set.to_string()).unwrap();
        path
    }

    #[tokio::test]
    async fn unknown_kid_triggers_a_refresh_but_not_more_often_than_the_floor() {
        let a = SigningKey::generate("a").unwrap();
        let b = SigningKey::generate("b").unwrap();
        let path = jwks_file("floor", &[&a]);
        let store = KeyStore::new(
            JwksSource::File(path.clone()),
            Duration::from_millis(300),
            Duration::from_secs(3600),
        );
        assert!(store.key("a").await.is_ok());
        assert_eq!(store.key("b").await.err(), Some(TokenFailure::UnknownKey));
        jwks_file("floor", &[&a, &b]);
        // Within the floor: the rotated set is not fetched yet.
        assert_eq!(store.key("b").await.err(), Some(TokenFailure::UnknownKey));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(store.key("b").await.is_ok());
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn keys_survive_an_unreachable_source() {
        let a = SigningKey::generate("a").unwrap();
        let path = jwks_file("down", &[&a]);
        let store = KeyStore::new(
            JwksSource::File(path.clone()),
            Duration::from_millis(0),
            Duration::from_millis(1),
        );
        assert!(store.key("a").await.is_ok());
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Stale and the source is gone: the old key still verifies.
        assert!(store.key("a").await.is_ok());
    }

    #[tokio::test]
    async fn no_keys_at_all_is_reported_as_unavailable() {
        let store = KeyStore::new(
            JwksSource::File(PathBuf::from("/nonexistent/jwks.json")),
            Duration::from_secs(30),
            Duration::from_secs(3600),
        );
        assert_eq!(
            store.key("a").await.err(),
            Some(TokenFailure::KeysUnavailable)
        );
    }

    #[test]
    fn symmetric_encryption_and_kid_less_keys_are_skipped() {
        let a = SigningKey::generate("a").unwrap();
        let mut no_kid = a.jwk();
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut enc = a.jwk();
        enc["kid"] = serde_json::json!("enc");
        enc["use"] = serde_json::json!("enc");
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"});
        let text = serde_json::json!({"keys": [a.jwk(), no_kid, enc, oct]}).to_string();
        let keys = parse_jwks(&text).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["a"]);
    }
}
