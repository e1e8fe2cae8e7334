//! Tokenserver error bodies: `{"status": ..., "errors": [{"location", "name", "description"}]}`
//! with their HTTP statuses (SPEC 3.1-3.7). Not the storage API's bare Weave numbers.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenserverError {
    pub http_status: u16,
    pub status: &'static str,
    pub location: &'static str,
    pub name: String,
    pub description: String,
    /// The database fault behind this error, if any: the tokenserver's units of work are run
    /// again on a `DbFault::Conflict` like the storage API's (`db::retry`).
    pub fault: Option<crate::db::fault::DbFault>,
    /// Why, as a short fixed code for the log line and the refusal counter (never client
    /// input); finer than the body, which keeps upstream's few shapes.
    pub reason: &'static str,
}

impl TokenserverError {
    fn new(
        http_status: u16,
        status: &'static str,
        location: &'static str,
        name: &str,
        description: &str,
        reason: &'static str,
    ) -> Self {
        TokenserverError {
            http_status,
            status,
            location,
            name: name.into(),
            description: description.into(),
            fault: None,
            reason,
        }
    }

    /// The same answer, logged and counted with a more precise reason.
    pub fn because(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    /// Missing or malformed Authorization.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "error",
            "body",
            "",
            "Unauthorized",
            "auth: no bearer token",
        )
    }
    /// An Authorization scheme other than Bearer.
    pub fn unsupported() -> Self {
        Self::new(401, "error", "body", "", "Unsupported", "auth: not bearer")
    }
    pub fn invalid_credentials() -> Self {
        Self::new(
            401,
            "invalid-credentials",
            "body",
            "",
            "Unauthorized",
            "oauth: invalid",
        )
    }
    pub fn invalid_key_id(description: &str) -> Self {
        Self::new(
            401,
            "invalid-key-id",
            "header",
            "X-KeyID",
            description,
            "keyid: invalid",
        )
    }
    /// X-Client-State that is not a client state at all.
    pub fn bad_client_state_header() -> Self {
        Self::new(
            400,
            "error",
            "header",
            "X-Client-State",
            "Invalid client state value",
            "client state: malformed",
        )
    }
    /// X-Client-State disagreeing with X-KeyID.
    pub fn client_state_mismatch() -> Self {
        Self::new(
            401,
            "invalid-client-state",
            "body",
            "",
            "Unauthorized",
            "client state: keyid mismatch",
        )
    }
    /// A client state the user record does not accept (SPEC 3.5 rules 2-5).
    pub fn unacceptable_client_state(why: &str) -> Self {
        Self::new(
            401,
            "invalid-client-state",
            "header",
            "X-Client-State",
            &format!("Unacceptable client-state value {why}"),
            "client state: unacceptable",
        )
    }
    pub fn invalid_generation() -> Self {
        Self::new(
            401,
            "invalid-generation",
            "body",
            "",
            "Unauthorized",
            "generation: older than known",
        )
    }
    pub fn invalid_keys_changed_at() -> Self {
        Self::new(
            401,
            "invalid-keysChangedAt",
            "body",
            "",
            "Unauthorized",
            "keys_changed_at: invalid",
        )
    }
    pub fn new_users_disabled() -> Self {
        Self::new(
            403,
            "new-users-disabled",
            "body",
            "",
            "New users are not allowed",
            "new users disabled",
        )
    }
    /// An account not on `tokenserver.allowed_users`: the same shape as upstream's 403s.
    pub fn not_allowed() -> Self {
        Self::new(
            403,
            "not-allowed",
            "body",
            "",
            "This account is not allowed on this server",
            "account not allowed",
        )
    }
    pub fn unsupported_application() -> Self {
        Self::new(
            404,
            "error",
            "url",
            "application",
            "Unsupported application",
            "unsupported application",
        )
    }
    pub fn unsupported_version(version: &str) -> Self {
        Self::new(
            404,
            "error",
            "url",
            version,
            "Unsupported application version",
            "unsupported version",
        )
    }
    /// No node can take the user (503), or a retired user has no node (500).
    pub fn internal_error(http_status: u16) -> Self {
        Self::new(
            http_status,
            "internal-error",
            "internal",
            "",
            "Server error",
            "internal",
        )
    }

    /// No node can take a new user (none available, or the pinned one is gone): upstream's
    /// 503 internal-error.
    pub fn no_node() -> Self {
        Self::internal_error(503).because("no node")
    }

    /// A database or upstream service that is down or too slow: the client retries later.
    pub fn unavailable() -> Self {
        Self::new(
            503,
            "error",
            "body",
            "",
            "Resource is not available",
            "unavailable",
        )
    }

    /// A query string that does not parse.
    pub fn bad_query_string() -> Self {
        Self::new(
            400,
            "error",
            "querystring",
            "",
            "Invalid query string",
            "bad query",
        )
    }

    /// `tokenserver.database_request_timeout` passed.
    pub fn elapsed() -> Self {
        Self::new(504, "elapsed", "body", "", "Elapsed", "db: deadline")
    }

    pub fn body(&self) -> Value {
        json!({
            "status": self.status,
            "errors": [{"location": self.location, "name": self.name, "description": self.description}],
        })
    }
}

/// Database failures: contention or an unreachable database is 503, anything else 500.
impl From<crate::error::ApiError> for TokenserverError {
    fn from(e: crate::error::ApiError) -> Self {
        let status = e.status();
        // A conflict is expected traffic, run again by the pooled unit (`retry::SQL`), like the
        // storage API's.
        if e.kind == crate::error::ErrorKind::Database(crate::db::fault::DbFault::Conflict) {
            slog_scope::debug!("tokenserver database conflict"; "error" => &e.message);
        } else {
            slog_scope::error!("tokenserver database error"; "error" => &e.message, "status" => status);
        }
        let mut error = if status == 503 {
            Self::unavailable()
        } else {
            Self::internal_error(500)
        };
        if let crate::error::ErrorKind::Database(fault) = e.kind {
            error.fault = Some(fault);
        }
        error.because(e.reason())
    }
}

impl From<diesel::result::Error> for TokenserverError {
    fn from(e: diesel::result::Error) -> Self {
        crate::error::ApiError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            TokenserverError::unsupported().body(),
            json!({"status":"error","errors":[{"description":"Unsupported","location":"body","name":""}]})
        );
        assert_eq!(TokenserverError::unsupported().http_status, 401);
        let e = TokenserverError::bad_client_state_header();
        assert_eq!(e.http_status, 400);
        assert_eq!(
            e.body(),
            json!({"status":"error","errors":[{"location":"header","name":"X-Client-State","description":"Invalid client state value"}]})
        );
        assert_eq!(TokenserverError::new_users_disabled().http_status, 403);
        assert_eq!(
            TokenserverError::unsupported_version("1.2").body()["errors"][0]["name"],
            "1.2"
        );
        assert_eq!(
            TokenserverError::internal_error(503).body()["status"],
            "internal-error"
        );
        assert_eq!(
            TokenserverError::unacceptable_client_state("stale value").body()["errors"][0]["description"],
            "Unacceptable client-state value stale value"
        );
    }
}
