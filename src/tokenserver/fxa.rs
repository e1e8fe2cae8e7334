//! Verifying a Firefox Accounts OAuth token (SPEC 3.4): JWTs locally against the configured
//! JWKs or the FxA server's JWKS (fetched and cached), other tokens by FxA's remote verify
//! endpoint. No lock is held across a network call: one JWKS fetch at a time, while other
//! requests use the cached keys (or fail fast); `/v1/verify` is behind a circuit breaker, a
//! negative cache and a bound on calls in flight (`fxa_guard`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::TokenserverError;
use super::fxa_guard::{Breaker, NegativeCache, is_jwt_shaped, is_opaque_token_shaped};
use super::oauth::{Jwk, LocalOutcome, VerifiedToken, has_sync_scope, verify_locally};

/// How long fetched keys are trusted before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(3600);
/// A token no cached key accepts triggers a refetch (key rotation), at most this often (FxA publishes its next key ahead of use).
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(5);
/// After a failed fetch, requests use what is cached this long instead of each waiting on FxA
/// again.
const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Calls to `/v1/verify` in flight at once; more are refused at once (503).
const MAX_REMOTE_IN_FLIGHT: usize = 16;

/// Fetched keys and when; when the last fetch failed; whether a fetch is under way.
#[derive(Default)]
struct KeyCache {
    keys: Option<(Instant, Vec<Jwk>)>,
    failed_at: Option<Instant>,
    fetching: bool,
}

/// What a request does about the key cache.
enum KeyPlan {
    Use(Vec<Jwk>),
    Fetch(Vec<Jwk>),
    /// No keys at all yet and another request is fetching them: wait for that fetch.
    Wait(tokio::sync::watch::Receiver<u64>),
}

/// `/v1/verify`'s protections.
#[derive(Default)]
struct RemoteGuard {
    breaker: Breaker,
    refused: NegativeCache,
}

pub struct FxaVerifier {
    configured: Vec<Jwk>,
    server_url: String,
    agent: ureq::Agent,
    /// Keys fetched from `<server>/v1/jwks`; locked only to read or swap, never across a call.
    fetched: Mutex<KeyCache>,
    /// Bumped after each fetch, for requests waiting on the first keys.
    fetches: tokio::sync::watch::Sender<u64>,
    timeout: Duration,
    remote: Mutex<RemoteGuard>,
    remote_slots: Semaphore,
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
    /// `connect_timeout_secs` bounds connecting to FxA, `timeout_secs` a whole exchange.
    pub fn new(
        configured: Vec<Jwk>,
        server_url: &str,
        timeout_secs: u64,
        connect_timeout_secs: u64,
    ) -> Self {
        let timeout = Duration::from_secs(timeout_secs.max(1));
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(
                Duration::from_secs(connect_timeout_secs.max(1)).min(timeout),
            ))
            .http_status_as_error(false)
            .build();
        FxaVerifier {
            configured,
            server_url: server_url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            fetched: Mutex::new(KeyCache::default()),
            fetches: tokio::sync::watch::Sender::new(0),
            timeout,
            remote: Mutex::new(RemoteGuard::default()),
            remote_slots: Semaphore::new(MAX_REMOTE_IN_FLIGHT),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenserverError> {
        if !is_jwt_shaped(token) {
            // Opaque tokens only FxA can check; garbage is refused without asking it.
            if !is_opaque_token_shaped(token) {
                return Err(TokenserverError::invalid_credentials().because("oauth: malformed"));
            }
            return self.verify_remotely(token).await;
        }
        if !self.configured.is_empty() {
            return decide(verify_locally(token, &self.configured));
        }
        let keys = self.fetched_keys(false).await;
        let outcome = match verify_locally(token, &keys) {
            // Perhaps signed with a key FxA published after we fetched ours.
            LocalOutcome::Rejected(_) => verify_locally(token, &self.fetched_keys(true).await),
            other => other,
        };
        decide(outcome)
    }

    /// The cached key set, fetched when missing or stale (`refresh`: when older than
    /// `JWKS_MIN_REFRESH`). Only one request fetches; the others meanwhile use what is cached
    /// (when nothing is, they wait for that fetch, at most the FxA timeout). A failed fetch
    /// keeps the old keys and is not retried for `JWKS_RETRY_AFTER_FAILURE`.
    async fn fetched_keys(&self, refresh: bool) -> Vec<Jwk> {
        let plan = {
            let mut cache = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
            let cached = cache
                .keys
                .as_ref()
                .map(|(_, k)| k.clone())
                .unwrap_or_default();
            let max_age = if refresh { JWKS_MIN_REFRESH } else { JWKS_TTL };
            let fresh = cache
                .keys
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < max_age);
            let backing_off = cache
                .failed_at
                .is_some_and(|at| at.elapsed() < JWKS_RETRY_AFTER_FAILURE);
            if cache.fetching && cache.keys.is_none() {
                KeyPlan::Wait(self.fetches.subscribe())
            } else if fresh || backing_off || cache.fetching {
                KeyPlan::Use(cached)
            } else {
                cache.fetching = true;
                KeyPlan::Fetch(cached)
            }
        };
        let cached = match plan {
            KeyPlan::Use(keys) => return keys,
            KeyPlan::Wait(mut fetched) => {
                let _ = tokio::time::timeout(self.timeout, fetched.changed()).await;
                let cache = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
                return cache
                    .keys
                    .as_ref()
                    .map(|(_, k)| k.clone())
                    .unwrap_or_default();
            }
            KeyPlan::Fetch(cached) => cached,
        };
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
        let mut cache = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        cache.fetching = false;
        let keys = match keys {
            Some(keys) => {
                cache.keys = Some((Instant::now(), keys.clone()));
                cache.failed_at = None;
                keys
            }
            None => {
                slog_scope::warn!("cannot fetch FxA JWKS"; "server" => &self.server_url);
                cache.failed_at = Some(Instant::now());
                cached
            }
        };
        drop(cache);
        self.fetches.send_modify(|n| *n += 1);
        keys
    }

    /// FxA's verify endpoint: anything but a 2xx with the documented shape and the Sync scope
    /// is 401; an FxA that cannot be reached in time is 503 (the client retries). Refused
    /// tokens are remembered for a minute; after repeated failures the circuit opens and
    /// requests are answered 503 at once; at most `MAX_REMOTE_IN_FLIGHT` calls run at once.
    async fn verify_remotely(&self, token: &str) -> Result<VerifiedToken, TokenserverError> {
        {
            let guard = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if guard.refused.is_refused(token, now) {
                return Err(TokenserverError::invalid_credentials().because("fxa: refused before"));
            }
            if !guard.breaker.allows(now) {
                return Err(TokenserverError::unavailable().because("fxa: circuit open"));
            }
        }
        let Ok(_slot) = self.remote_slots.try_acquire() else {
            return Err(TokenserverError::unavailable().because("fxa: too many calls"));
        };
        let url = format!("{}/v1/verify", self.server_url);
        let body = serde_json::json!({ "token": token }).to_string();
        let answer = self.request(url, Some(body)).await;
        let mut guard = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let (status, text) = match answer {
            Ok((status, _)) if status >= 500 => {
                guard.breaker.failed(Instant::now());
                slog_scope::warn!("FxA verify failed"; "status" => status);
                return Err(TokenserverError::unavailable().because("fxa: unreachable"));
            }
            Ok(reply) => {
                guard.breaker.succeeded();
                reply
            }
            Err(e) => {
                guard.breaker.failed(Instant::now());
                slog_scope::warn!("FxA verify failed"; "error" => e);
                return Err(TokenserverError::unavailable().because("fxa: unreachable"));
            }
        };
        let verified = (200..300)
            .contains(&status)
            .then(|| serde_json::from_str::<RemoteVerified>(&text).ok())
            .flatten()
            .filter(|v| has_sync_scope(&v.scope));
        let Some(verified) = verified else {
            guard.refused.refuse(token, Instant::now());
            return Err(TokenserverError::invalid_credentials().because("fxa: refused"));
        };
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

/// A JWT is decided by the keys: no usable key means FxA's keys could not be had (503: the
/// client retries), never a call to `/v1/verify`.
fn decide(outcome: LocalOutcome) -> Result<VerifiedToken, TokenserverError> {
    match outcome {
        LocalOutcome::Verified(v) => Ok(v),
        LocalOutcome::Rejected(e) => Err(e),
        LocalOutcome::Undecidable => Err(TokenserverError::unavailable().because("fxa: no keys")),
    }
}
