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
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

struct Snapshot {
    keys: HashMap<String, VerificationKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

pub struct KeyStore {
    source: JwksSource,
    refresh_floor: Duration,
    max_age: Duration,
    state: RwLock<Snapshot>,
    refreshing: tokio::sync::Mutex<()>,
}

impl KeyStore {
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
                let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("JWKS endpoint answered {}", resp.status()));
                }
                resp.text().await.map_err(|e| e.to_string())?
            }
        };
        parse_jwks(&text)
    }
}

/// Keys by `kid`. Keys without a `kid`, symmetric keys and keys meant for encryption are
/// skipped: a token must name its key, and only signature keys verify tokens.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, VerificationKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("JWKS is not valid: {e}"))?;
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
