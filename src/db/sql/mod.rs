//! Diesel code shared by the SQL backends: the schema, the storage operations and the mapping
//! of database failures to protocol errors.

pub mod mysql_layout;
pub mod ops;
pub mod pg_types;
pub mod schema;
pub mod schema_pg;

use crate::db::fault::DbFault;
use crate::error::ApiError;

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

/// The boundary of every diesel engine: a failure becomes a `DbFault` by diesel's error kind,
/// or else by the SQLSTATE the engine reported (MySQL's deadlock, error 1213, arrives as a
/// serialization failure; PostgreSQL's deadlock as 40P01).
pub fn fault_of(e: &diesel::result::Error) -> DbFault {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    match e {
        Error::DatabaseError(kind, info) => match kind {
            Kind::SerializationFailure => DbFault::Conflict,
            Kind::UniqueViolation
            | Kind::ForeignKeyViolation
            | Kind::NotNullViolation
            | Kind::CheckViolation
            | Kind::RestrictViolation
            | Kind::ExclusionViolation => DbFault::Integrity,
            // Lost connections, and a primary that became a read-only replica in a failover.
            Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::ReadOnlyTransaction => {
                DbFault::Unavailable
            }
            _ => info.sqlstate().map_or(DbFault::Other, |state| {
                DbFault::from_sqlstate(state.as_str())
            }),
        },
        Error::BrokenTransactionManager => DbFault::Unavailable,
        _ => DbFault::Other,
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        fault_of(&e).error(format!("database: {e}"))
    }
}

impl From<diesel::r2d2::PoolError> for ApiError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        DbFault::Unavailable.error(format!("database unavailable: {e}"))
    }
}
