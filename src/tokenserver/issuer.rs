//! The token request after HTTP parsing (SPEC 3.2 processing order from "compute hashes" on):
//! get-or-create the user, validate the claims, update the record, mint the token. Also the
//! webhook's account events (SPEC 3.9).

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::claims::{self, Claims};
use super::fxa::FxaVerifier;
use super::hashes;
use super::keyid::KeyId;
use super::nodes::DEFAULT_RELEASE_RATE;
use super::oauth::{self, VerifiedToken};
use super::settings::TokenserverSettings;
use super::users::{NewRow, RETIRED};
use super::{TokenserverError, TsResult};
use crate::auth::{Secrets, TokenPayload, new_salt};
use crate::tokenserver::db::{
    SYNC_SERVICE, SelfNode, Service, SharedTokenserverDb, UserLookup, UserRecord, UserUpdate,
};

const DELETE_USER_EVENT: &str = "https://schemas.accounts.firefox.com/event/delete-user";
const PASSWORD_CHANGE_EVENT: &str = "https://schemas.accounts.firefox.com/event/password-change";

pub struct Tokenserver {
    pub db: SharedTokenserverDb,
    pub verifier: FxaVerifier,
    pub settings: TokenserverSettings,
    pub secrets: Secrets,
    pub service: Service,
    pub node_type: String,
}

/// A verified request, ready for the database.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub identity: VerifiedToken,
    pub key_id: KeyId,
    /// `?duration=`, when it parsed as an unsigned integer.
    pub duration: Option<u64>,
}

/// The success body of SPEC 3.3.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenResponse {
    pub id: String,
    pub key: String,
    pub uid: i64,
    pub api_endpoint: String,
    pub duration: u64,
    pub hashed_fxa_uid: String,
    pub hashalg: &'static str,
    pub node_type: String,
    /// What the request did to the user's rows (metrics), not part of the body.
    #[serde(skip)]
    pub outcome: crate::metrics::TokenOutcome,
}

/// The tokenserver's clock: `created_at`/`replaced_at` and webhook times, in ms.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Tokenserver {
    /// Opens the database and makes sure the service and the start-up node exist: the
    /// `init_node_url` node, else this server itself at `public_url`.
    pub async fn open(
        db: SharedTokenserverDb,
        settings: TokenserverSettings,
        secrets: Secrets,
        public_url: &str,
        node_type: String,
    ) -> Result<Self, String> {
        let service = db
            .service(SYNC_SERVICE)
            .await
            .map_err(|e| format!("tokenserver database: {}", e.description))?
            .ok_or_else(|| {
                format!(
                    "tokenserver database: no {SYNC_SERVICE:?} row in services (run the migrations)"
                )
            })?;
        let capacity = settings.init_node_capacity;
        let db_error = |e: TokenserverError| format!("tokenserver database: {}", e.description);
        match &settings.init_node_url {
            Some(url) => db
                .ensure_node(service.id, url, capacity)
                .await
                .map_err(db_error)?,
            None => match db
                .ensure_self_node(service.id, public_url, capacity)
                .await
                .map_err(db_error)?
            {
                SelfNode::Renamed(old) => slog_scope::info!("node renamed to public_url";
                    "from" => old, "to" => public_url),
                SelfNode::Assigned(old) => slog_scope::warn!(
                    "the only node is not public_url and has users; they keep it \
                     (UPDATE nodes SET node = ... to move them)";
                    "node" => old, "public_url" => public_url),
                SelfNode::Several => slog_scope::info!("several nodes: managed by the operator"),
                SelfNode::Inserted | SelfNode::Kept => {}
            },
        }
        let verifier = FxaVerifier::new(
            settings.jwks(),
            &settings.fxa_oauth_server_url,
            settings.fxa_oauth_request_timeout,
            settings.fxa_oauth_connect_timeout,
        );
        Ok(Tokenserver {
            db,
            verifier,
            settings,
            secrets,
            service,
            node_type,
        })
    }

    fn email(&self, fxa_uid: &str) -> String {
        format!("{fxa_uid}@{}", self.settings.fxa_email_domain)
    }

    /// A database call, bounded by `database_request_timeout` (504 `elapsed`).
    async fn db_call<T>(&self, call: impl Future<Output = TsResult<T>>) -> TsResult<T> {
        match self.settings.database_request_timeout {
            Some(secs) => tokio::time::timeout(Duration::from_secs(secs), call)
                .await
                .map_err(|_| TokenserverError::elapsed())?,
            None => call.await,
        }
    }

    pub async fn issue(&self, request: TokenRequest) -> TsResult<TokenResponse> {
        let fxa_uid = &request.identity.fxa_uid;
        let allowed = &self.settings.allowed_users;
        if !allowed.is_empty() && !allowed.iter().any(|u| u.eq_ignore_ascii_case(fxa_uid)) {
            // The operator chose to name accounts: the uid lets them add one they meant to.
            slog_scope::info!("token refused: account not in tokenserver.allowed_users";
                "fxa_uid" => fxa_uid);
            return Err(TokenserverError::not_allowed());
        }
        let email = self.email(fxa_uid);
        let claims = Claims {
            generation: request.identity.generation,
            keys_changed_at: request.key_id.keys_changed_at,
            client_state: request.key_id.client_state.clone(),
        };
        let lookup = UserLookup {
            service: self.service.id,
            email: email.clone(),
            request: NewRow {
                generation: claims.generation.unwrap_or(0),
                client_state: claims.client_state.clone(),
                keys_changed_at: claims.keys_changed_at,
            },
            allow_new_users: self.settings.allow_new_users,
            now_ms: now_ms(),
            node_capacity_release_rate: self
                .settings
                .node_capacity_release_rate
                .unwrap_or(DEFAULT_RELEASE_RATE),
            pinned_node: self.settings.spanner_node_id,
        };
        let user = self.db_call(self.db.get_or_create_user(lookup)).await?;
        let max = self.settings.token_duration;
        let duration = request.duration.filter(|d| *d <= max).unwrap_or(max);
        let record = claims::UserRecord {
            generation: user.generation,
            keys_changed_at: user.keys_changed_at,
            client_state: user.client_state.clone(),
            old_client_states: user.old_client_states.clone(),
        };
        claims::validate(&claims, &record)?;
        let (generation, keys_changed_at) = claims::updated(&claims, &record);
        let uid = if generation != user.generation
            || keys_changed_at != user.keys_changed_at
            || claims.client_state != user.client_state
        {
            let update = UserUpdate {
                service: self.service.id,
                email,
                current: user.clone(),
                generation,
                keys_changed_at,
                client_state: claims.client_state.clone(),
                now_ms: now_ms(),
            };
            self.db_call(self.db.update_user(update)).await?
        } else {
            user.uid
        };
        use crate::metrics::TokenOutcome;
        use crate::tokenserver::db::RowOrigin;
        let outcome = match user.origin {
            _ if uid != user.uid => TokenOutcome::KeyChange,
            RowOrigin::Existing => TokenOutcome::Existing,
            RowOrigin::FirstRow => TokenOutcome::NewUser,
            RowOrigin::Replacement => TokenOutcome::Reassigned,
        };
        // Logged by hashes only (SPEC 3.7): the full HMAC as `uid`, its prefix as metrics_uid.
        let secret = &self.settings.fxa_metrics_hash_secret;
        slog_scope::info!("token issued";
            "uid" => hashes::metrics_uid(secret, fxa_uid),
            "metrics_uid" => hashes::hashed_fxa_uid(secret, fxa_uid),
            "first_seen_at" => user.first_seen_at,
            "new_uid" => outcome != TokenOutcome::Existing,
            "outcome" => outcome.label());
        let mut response = self.mint(
            fxa_uid,
            &user,
            uid,
            keys_changed_at.unwrap_or(generation),
            &claims.client_state,
            duration,
        );
        response.outcome = outcome;
        Ok(response)
    }

    fn mint(
        &self,
        fxa_uid: &str,
        user: &UserRecord,
        uid: i64,
        kid_number: i64,
        client_state: &str,
        duration: u64,
    ) -> TokenResponse {
        let secret = &self.settings.fxa_metrics_hash_secret;
        let hashed_fxa_uid = hashes::hashed_fxa_uid(secret, fxa_uid);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let payload = TokenPayload {
            uid: uid as u64,
            node: user.node.clone(),
            expires: (now + duration as f64).floor(),
            salt: new_salt(),
            fxa_uid: fxa_uid.to_owned(),
            fxa_kid: hashes::fxa_kid(kid_number, client_state),
            hashed_device_id: hashes::hashed_device_id(secret, &hashed_fxa_uid),
            hashed_fxa_uid: hashed_fxa_uid.clone(),
            tokenserver_origin: Some("rust".into()),
        };
        let id = self.secrets.make_token(&payload);
        let key = self.secrets.derived_secret(&id, &payload.salt);
        let api_endpoint = self
            .service
            .pattern
            .replace("{node}", &user.node)
            .replace("{uid}", &uid.to_string());
        TokenResponse {
            id,
            key,
            uid,
            api_endpoint,
            duration,
            hashed_fxa_uid,
            hashalg: "sha256",
            node_type: self.node_type.clone(),
            outcome: crate::metrics::TokenOutcome::Existing,
        }
    }

    /// The webhook (SPEC 3.9): verifies the Security Event Token and applies its events.
    pub async fn handle_security_event(&self, token: &str) -> TsResult<()> {
        let s = &self.settings;
        let (Some(audience), Some(issuer)) =
            (&s.fxa_webhook_set_client_id, &s.fxa_webhook_set_issuer)
        else {
            return Err(TokenserverError::invalid_credentials().because("webhook: not configured"));
        };
        let event = oauth::verify_security_event(token, &s.jwks(), audience, issuer)?;
        let email = self.email(&event.sub);
        for (name, body) in &event.events {
            slog_scope::info!("fxa webhook event"; "event" => name);
            let event_type = match name.as_str() {
                DELETE_USER_EVENT => "delete_user",
                PASSWORD_CHANGE_EVENT => "password_change",
                _ => "other",
            };
            if s.fxa_webhook_metrics_only {
                crate::metrics::webhook_event(event_type, false);
                continue;
            }
            let mut processed = false;
            if name == DELETE_USER_EVENT {
                self.db_call(self.db.retire_user(self.service.id, &email, now_ms()))
                    .await?;
                processed = true;
            } else if name == PASSWORD_CHANGE_EVENT
                && let Some(change_time) = body
                    .get("changeTime")
                    .and_then(|t| t.as_i64())
                    .filter(|t| *t > 0 && *t < RETIRED)
            {
                self.db_call(
                    self.db
                        .raise_generation(self.service.id, &email, change_time - 1),
                )
                .await?;
                processed = true;
            }
            crate::metrics::webhook_event(event_type, processed);
        }
        Ok(())
    }
}
