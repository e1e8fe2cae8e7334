//! `[tokenserver]` settings (SPEC 4.4 names). Defaults differ from upstream where a self-hoster
//! needs them to: the tokenserver is on, runs its migrations, and trusts Mozilla's production
//! Firefox Accounts.

use serde::{Deserialize, Deserializer};

use super::oauth::Jwk;
use crate::db::sql::PoolSettings;
use crate::secret::{DbUrl, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TokenserverSettings {
    pub enabled: bool,
    /// Defaults to the storage database (MySQL/PostgreSQL) or `sqlite:<data_dir>/tokenserver.db`.
    pub database_url: Option<DbUrl>,
    pub database_pool_max_size: u32,
    pub database_pool_connection_timeout: u32,
    /// Seconds a token request may spend in the database before 504 `elapsed`.
    pub database_request_timeout: Option<u64>,
    pub run_migrations: bool,
    pub token_duration: u64,
    /// Informational `node_type` in responses; defaults to the storage engine's name.
    pub node_type: Option<String>,
    pub node_capacity_release_rate: Option<f64>,
    pub spanner_node_id: Option<i64>,
    /// A node inserted at start-up; without it, the server's own `public_url` is the node.
    pub init_node_url: Option<String>,
    pub init_node_capacity: i32,
    pub allow_new_users: bool,
    /// When not empty, only these Firefox Accounts (their uids: 32 hex digits) get tokens,
    /// existing users included. A TOML array, or one variable with a comma-separated list.
    #[serde(deserialize_with = "list_or_commas")]
    pub allowed_users: Vec<String>,
    pub fxa_email_domain: String,
    pub fxa_oauth_server_url: String,
    /// Seconds for a whole exchange with FxA (JWKS fetch, remote verify).
    pub fxa_oauth_request_timeout: u64,
    /// Seconds to connect to FxA (at most the request timeout).
    pub fxa_oauth_connect_timeout: u64,
    /// A TOML table, one variable per member, or the whole JWK as JSON in one variable.
    #[serde(deserialize_with = "jwk_or_json")]
    pub fxa_oauth_primary_jwk: Option<Jwk>,
    #[serde(deserialize_with = "jwk_or_json")]
    pub fxa_oauth_secondary_jwk: Option<Jwk>,
    pub fxa_metrics_hash_secret: Secret,
    pub fxa_webhook_enabled: bool,
    pub fxa_webhook_metrics_only: bool,
    pub fxa_webhook_set_client_id: Option<String>,
    pub fxa_webhook_set_issuer: Option<String>,
    /// Accepted for upstream compatibility; FxA requests here do not use a thread pool.
    pub additional_blocking_threads_for_fxa_requests: Option<u32>,
    pub statsd_label: String,
}

/// Mozilla's production Firefox Accounts, where Firefox users have their accounts.
pub const PROD_OAUTH_SERVER: &str = "https://oauth.accounts.firefox.com";
pub const PROD_EMAIL_DOMAIN: &str = "api.accounts.firefox.com";

impl Default for TokenserverSettings {
    fn default() -> Self {
        TokenserverSettings {
            enabled: true,
            database_url: None,
            database_pool_max_size: 10,
            database_pool_connection_timeout: 30,
            database_request_timeout: None,
            run_migrations: true,
            token_duration: 3600,
            node_type: None,
            node_capacity_release_rate: None,
            spanner_node_id: None,
            init_node_url: None,
            init_node_capacity: 100_000,
            allow_new_users: true,
            allowed_users: Vec::new(),
            fxa_email_domain: PROD_EMAIL_DOMAIN.into(),
            fxa_oauth_server_url: PROD_OAUTH_SERVER.into(),
            fxa_oauth_request_timeout: 10,
            fxa_oauth_connect_timeout: 3,
            fxa_oauth_primary_jwk: None,
            fxa_oauth_secondary_jwk: None,
            fxa_metrics_hash_secret: "secret".into(),
            fxa_webhook_enabled: false,
            fxa_webhook_metrics_only: false,
            fxa_webhook_set_client_id: None,
            fxa_webhook_set_issuer: None,
            additional_blocking_threads_for_fxa_requests: None,
            statsd_label: "syncstorage.tokenserver".into(),
        }
    }
}

/// Whether `url` is an absolute http(s) URL with a host.
pub fn is_http_url(url: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|p| url.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
}

impl TokenserverSettings {
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_size: self.database_pool_max_size,
            connection_timeout_secs: self.database_pool_connection_timeout,
            connection_lifespan_secs: None,
            connection_max_idle_secs: None,
            run_migrations: self.run_migrations,
            // Token requests are bounded by `database_request_timeout` (504) in the issuer,
            // not by the pool; this only sets how long MySQL lets a row lock wait.
            request_timeout_secs: self
                .database_request_timeout
                .map_or(60, |s| s.clamp(1, 3600) as u32),
        }
    }

    /// The configured keys, primary first.
    pub fn jwks(&self) -> Vec<Jwk> {
        [&self.fxa_oauth_primary_jwk, &self.fxa_oauth_secondary_jwk]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn validate(&mut self) -> Result<(), String> {
        if let Some(url) = &self.init_node_url
            && !is_http_url(url)
        {
            return Err(format!(
                "tokenserver.init_node_url must be an http or https URL, not {url:?}"
            ));
        }
        for user in &mut self.allowed_users {
            *user = user.trim().to_ascii_lowercase();
            if user.contains('@') {
                return Err(format!(
                    "tokenserver.allowed_users: {user:?} is an email address; the tokenserver \
                     never learns emails (Firefox Accounts' tokens carry only the account's uid): \
                     list account uids (32 hex digits)"
                ));
            }
            if user.len() != 32 || !user.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "tokenserver.allowed_users: {user:?} is not a Firefox Accounts uid (32 hex \
                     digits)"
                ));
            }
        }
        if self.init_node_capacity <= 0 {
            return Err("tokenserver.init_node_capacity must be greater than 0".into());
        }
        if self.database_pool_max_size == 0 {
            return Err("tokenserver.database_pool_max_size must be greater than 0".into());
        }
        if !is_http_url(&self.fxa_oauth_server_url) {
            return Err("tokenserver.fxa_oauth_server_url must be an http or https URL".into());
        }
        if self
            .node_capacity_release_rate
            .is_some_and(|r| !(r > 0.0 && r <= 1.0))
        {
            return Err("tokenserver.node_capacity_release_rate must be in (0, 1]".into());
        }
        if self
            .database_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            self.database_url = None;
        }
        Ok(())
    }
}

/// A list as a TOML array or as one comma-separated string (`SYNC_..._ALLOWED_USERS=a,b`).
fn list_or_commas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Raw::List(l) => l,
    })
}

/// A JWK given as a table (TOML, or `..._JWK__N`-style variables) or as one JSON string, as
/// upstream's operators set it (`SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK='{"kty":"RSA",...}'`).
fn jwk_or_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Jwk>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Json(String),
        Key(Jwk),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Json(s)) if s.trim().is_empty() => Ok(None),
        Some(Raw::Json(s)) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("a JWK as JSON: {e}"))),
        Some(Raw::Key(key)) => Ok(Some(key)),
    }
}
