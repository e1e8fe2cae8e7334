//! Diesel code shared by the SQL backends: the schema, the storage operations and the mapping
//! of database failures to protocol errors.

pub mod ops;
pub mod schema;

use crate::error::{ApiError, ErrorKind};

/// Pool settings (SPEC 4.4 names under `syncstorage.`).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout_secs: u32,
    pub connection_lifespan_secs: Option<u32>,
    pub connection_max_idle_secs: Option<u32>,
    pub run_migrations: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 10,
            connection_timeout_secs: 30,
            connection_lifespan_secs: None,
            connection_max_idle_secs: None,
            run_migrations: true,
        }
    }
}

/// The one place database failures become protocol errors: contention and unavailability
/// are 503 + Retry-After (the client retries), anything else is a 500.
impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        let text = e.to_string();
        if is_contention(&text) {
            ApiError::new(ErrorKind::Conflict, format!("database busy: {text}"))
        } else {
            ApiError::internal(format!("database error: {text}"))
        }
    }
}

/// SQLite's busy/locked results, as diesel reports them.
pub fn is_contention(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("database is locked") || m.contains("database table is locked") || m.contains("busy")
}

impl From<diesel::r2d2::PoolError> for ApiError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        ApiError::new(ErrorKind::Conflict, format!("database unavailable: {e}"))
    }
}
