//! Verifying a Firefox Accounts OAuth token (SPEC 3.4): locally against the configured JWKs or
//! the FxA server's JWKS (fetched and cached), else by FxA's remote verify endpoint.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::TokenserverError;
use super::oauth::{Jwk, LocalOutcome, VerifiedToken, has_sync_scope, verify_locally};

/// How long fetched keys are trusted before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(3600);
/// A token no cached key accepts triggers a refetch (key rotation), at most this often (FxA publishes its next key ahead of use).
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(5);
/// After a failed fetch, requests use what is cached (or FxA's verify endpoint) this long
/// instead of each waiting on FxA again.
const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Fetched keys and when; when the last fetch failed.
#[derive(Default)]
struct KeyCache {
    keys: Option<(Instant, Vec<Jwk>)>,
    failed_at: Option<Instant>,
}

pub struct FxaVerifier {
    configured: Vec<Jwk>,
    server_url: String,
    agent: ureq::Agent,
    /// Keys fetched from `<server>/v1/jwks` and when.
    fetched: Mutex<KeyCache>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// `POST /v1/verify` answer; every field must have this shape.
#[derive(Deserialize)]
struct RemoteVerified {
    user: String,
    scope: Vec<String>,
    generation: Option<i64>,
}

/// An HTTP answer: status and body text.
type Reply = (u16, String);

impl FxaVerifier {
    pub fn new(configured: Vec<Jwk>, server_url: &str, timeout_secs: u64) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(timeout_secs.max(1))))
            .http_status_as_error(false)
            .build();
        FxaVerifier {
            configured,
            server_url: server_url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            fetched: Mutex::new(KeyCache::default()),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenserverError> {
        if !self.configured.is_empty() {
            return match verify_locally(token, &self.configured) {
                LocalOutcome::Verified(v) => Ok(v),
                LocalOutcome::Rejected(e) => Err(e),
                LocalOutcome::Undecidable => self.verify_remotely(token).await,
            };
        }
        let keys = self.fetched_keys(false).await;
        let outcome = match verify_locally(token, &keys) {
            // Perhaps signed with a key FxA published after we fetched ours.
            LocalOutcome::Rejected(_) => verify_locally(token, &self.fetched_keys(true).await),
            other => other,
        };
        match outcome {
            LocalOutcome::Verified(v) => Ok(v),
            LocalOutcome::Rejected(e) => Err(e),
            LocalOutcome::Undecidable => self.verify_remotely(token).await,
        }
    }

    /// The cached key set, fetched when missing or stale (`refresh`: when older than
    /// `JWKS_MIN_REFRESH`). A failed fetch keeps the old keys (none: remote verification) and
    /// is not retried for `JWKS_RETRY_AFTER_FAILURE`.
    async fn fetched_keys(&self, refresh: bool) -> Vec<Jwk> {
        let mut cache = self.fetched.lock().await;
        let cached = cache
            .keys
            .as_ref()
            .map(|(_, k)| k.clone())
            .unwrap_or_default();
        if let Some((at, _)) = &cache.keys {
            let max_age = if refresh { JWKS_MIN_REFRESH } else { JWKS_TTL };
            if at.elapsed() < max_age {
                return cached;
            }
        }
        if cache
            .failed_at
            .is_some_and(|at| at.elapsed() < JWKS_RETRY_AFTER_FAILURE)
        {
            return cached;
        }
        let url = format!("{}/v1/jwks", self.server_url);
        let keys = match self.request(url, None).await {
            Ok((200..=299, body)) => serde_json::from_str::<JwkSet>(&body)
                .map(|set| {
                    // Keys we cannot use (other types, missing fields) are skipped, not fatal.
                    set.keys
                        .into_iter()
                        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
                        .collect::<Vec<_>>()
                })
                .ok(),
            _ => None,
        };
        match keys {
            Some(keys) => {
                *cache = KeyCache {
                    keys: Some((Instant::now(), keys.clone())),
                    failed_at: None,
                };
                keys
            }
            None => {
                slog_scope::warn!("cannot fetch FxA JWKS"; "server" => &self.server_url);
                cache.failed_at = Some(Instant::now());
                cached
            }
        }
    }

    /// FxA's verify endpoint: anything but a 2xx with the documented shape and the Sync scope
    /// is 401; an FxA that cannot be reached in time is 503 (the client retries).
    async fn verify_remotely(&self, token: &str) -> Result<VerifiedToken, TokenserverError> {
        let url = format!("{}/v1/verify", self.server_url);
        let body = serde_json::json!({ "token": token }).to_string();
        let (status, text) = self.request(url, Some(body)).await.map_err(|e| {
            slog_scope::warn!("FxA verify failed"; "error" => e);
            TokenserverError::unavailable()
        })?;
        if !(200..300).contains(&status) {
            return Err(TokenserverError::invalid_credentials());
        }
        let verified: RemoteVerified =
            serde_json::from_str(&text).map_err(|_| TokenserverError::invalid_credentials())?;
        if !has_sync_scope(&verified.scope) {
            return Err(TokenserverError::invalid_credentials());
        }
        Ok(VerifiedToken {
            fxa_uid: verified.user,
            generation: verified.generation.filter(|g| *g != 0),
        })
    }

    /// GET (no body) or POST JSON, on a blocking thread; the agent enforces the timeout.
    async fn request(&self, url: String, json: Option<String>) -> Result<Reply, String> {
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let response = match json {
                None => agent.get(&url).call(),
                Some(body) => agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(body),
            };
            let mut response = response.map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let text = response
                .body_mut()
                .read_to_string()
                .map_err(|e| format!("{url}: {e}"))?;
            Ok((status, text))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
