//! Database failures by kind. Each engine maps its driver's errors into a `DbFault` once, at its
//! boundary, from what the engine says in codes (SQLSTATE and MySQL error numbers through
//! diesel, gRPC status codes from Spanner, where in the transaction SQLite failed), never from
//! message text. The retry policy (`db::retry`) and the HTTP mapping (`error.rs`) read only
//! this.

use crate::error::{ApiError, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFault {
    /// The engine rolled the unit of work back whole to settle a conflict with another one
    /// (deadlock, serialization failure, Spanner's ABORTED): running it again is safe and
    /// usually succeeds. Retried; 503 + Retry-After once the attempts are spent.
    Conflict,
    /// A lock was not granted in time (SQLite's busy timeout, PostgreSQL's lock_timeout,
    /// Spanner's resource exhaustion): 503 + Retry-After, not retried here.
    Busy,
    /// The database cannot be reached or dropped the connection: 503 + Retry-After +
    /// X-Weave-Backoff.
    Unavailable,
    /// The pool had no connection to give within its timeout (every connection busy, or none
    /// can be opened): 503 + Retry-After + X-Weave-Backoff, like `Unavailable`.
    PoolTimeout,
    /// No answer within the deadline (`database_request_timeout`, a statement timeout, the
    /// RPC deadline): 503 + Retry-After + X-Weave-Backoff.
    Deadline,
    /// A constraint the code relies on was violated (unique key, foreign key, not null,
    /// check): a bug or a damaged database. 500, reported.
    Integrity,
    /// Anything else the database refused: 500, reported.
    Other,
}

impl DbFault {
    /// This fault as the error a unit of work returns.
    pub fn error(self, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Database(self), message)
    }

    /// The short code logged and counted for a request this fault refused.
    pub fn code(self) -> &'static str {
        match self {
            DbFault::Conflict => "db: conflict",
            DbFault::Busy => "db: busy",
            DbFault::Unavailable => "db: unavailable",
            DbFault::PoolTimeout => "db: pool timeout",
            DbFault::Deadline => "db: deadline",
            DbFault::Integrity => "db: integrity",
            DbFault::Other => "db: error",
        }
    }

    /// What a SQLSTATE says (PostgreSQL, and MySQL's where diesel has no kind for it).
    pub fn from_sqlstate(state: &str) -> DbFault {
        match state {
            // serialization_failure, deadlock_detected
            "40001" | "40P01" => DbFault::Conflict,
            // lock_not_available (lock_timeout, NOWAIT)
            "55P03" => DbFault::Busy,
            // query_canceled (statement_timeout)
            "57014" => DbFault::Deadline,
            // too_many_connections, admin/crash shutdown, cannot_connect_now
            "53300" | "57P01" | "57P02" | "57P03" => DbFault::Unavailable,
            // connection_exception
            s if s.starts_with("08") => DbFault::Unavailable,
            // integrity_constraint_violation
            s if s.starts_with("23") => DbFault::Integrity,
            _ => DbFault::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(DbFault::from_sqlstate("40P01"), DbFault::Conflict);
        assert_eq!(DbFault::from_sqlstate("40001"), DbFault::Conflict);
        assert_eq!(DbFault::from_sqlstate("55P03"), DbFault::Busy);
        assert_eq!(DbFault::from_sqlstate("57014"), DbFault::Deadline);
        assert_eq!(DbFault::from_sqlstate("08006"), DbFault::Unavailable);
        assert_eq!(DbFault::from_sqlstate("57P01"), DbFault::Unavailable);
        assert_eq!(DbFault::from_sqlstate("23505"), DbFault::Integrity);
        assert_eq!(DbFault::from_sqlstate("42P01"), DbFault::Other);
        assert_eq!(DbFault::from_sqlstate("HY000"), DbFault::Other);
    }
}
