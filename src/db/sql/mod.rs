//! Diesel code shared by the SQL backends: the schema, the storage operations and the mapping
//! of database failures to protocol errors.

pub mod mysql_layout;
pub mod ops;
pub mod pg_types;
pub mod schema;
pub mod schema_pg;

use crate::error::{ApiError, ErrorKind};

/// Pool settings (SPEC 4.4 names under `syncstorage.`).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout_secs: u32,
    pub connection_lifespan_secs: Option<u32>,
    pub connection_max_idle_secs: Option<u32>,
    pub run_migrations: bool,
    /// Seconds a unit of work may take before the client gets 503 (the database is stuck or
    /// overloaded); the unit itself still finishes (commit or rollback) on its own task.
    pub request_timeout_secs: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 10,
            connection_timeout_secs: 30,
            connection_lifespan_secs: None,
            connection_max_idle_secs: None,
            run_migrations: true,
            request_timeout_secs: 60,
        }
    }
}

/// The one place database failures become protocol errors: contention and unavailability
/// are 503 + Retry-After (the client retries), anything else is a 500.
impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        let text = e.to_string();
        // Two first writers to one collection race to insert its row; the loser is retried.
        let lost_insert_race = matches!(
            e,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
        );
        let connection_lost = matches!(
            e,
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _
            ) | Error::BrokenTransactionManager
        );
        if lost_insert_race || is_contention(&text) {
            ApiError::new(ErrorKind::Conflict, format!("{BUSY}{text}"))
        } else if connection_lost {
            // The database went away (restart, failover): clients come back later.
            ApiError::new(
                ErrorKind::Unavailable,
                format!("database connection lost: {text}"),
            )
        } else {
            ApiError::internal(format!("database error: {text}"))
        }
    }
}

const BUSY: &str = "database busy: ";

/// Lock contention as the engines report it: SQLite busy/locked, InnoDB deadlocks and lock
/// wait timeouts, PostgreSQL serialization failures.
pub fn is_contention(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "database is locked",
        "database table is locked",
        "busy",
        "deadlock",
        "lock wait timeout",
        "could not serialize",
        "duplicate entry",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// A unit of work that failed this way was rolled back whole and may simply be run again.
pub fn is_transient(e: &ApiError) -> bool {
    e.kind == ErrorKind::Conflict && e.message.starts_with(BUSY)
}

impl From<diesel::r2d2::PoolError> for ApiError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        ApiError::new(ErrorKind::Unavailable, format!("database unavailable: {e}"))
    }
}
