//! The one retry policy for units of work. Only a `DbFault::Conflict` is run again: the engine
//! rolled that unit of work back whole, so nothing of it was applied. Anything else is
//! answered at once. The waits grow and are jittered, so the losers of one conflict do not meet
//! again.

use std::time::Duration;

use crate::db::fault::DbFault;
use crate::error::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included.
    pub attempts: u32,
    /// The first wait; each later one doubles, up to `max_ms`.
    pub base_ms: u64,
    pub max_ms: u64,
    /// Up to this much is added at random to each wait.
    pub jitter_ms: u64,
}

/// MySQL, PostgreSQL and SQLite: a deadlock or serialization failure settles quickly.
pub const SQL: RetryPolicy = RetryPolicy {
    attempts: 8,
    base_ms: 10,
    max_ms: 80,
    jitter_ms: 10,
};

/// Spanner aborts the losers of every lock conflict, and its emulator runs one transaction at
/// a time and aborts the rest, so writers must spread out further.
pub const SPANNER: RetryPolicy = RetryPolicy {
    attempts: 12,
    base_ms: 20,
    max_ms: 400,
    jitter_ms: 50,
};

impl RetryPolicy {
    /// Whether a unit of work that failed with this error may simply be run again.
    pub fn retryable(kind: &ErrorKind) -> bool {
        *kind == ErrorKind::Database(DbFault::Conflict)
    }

    /// The wait before running again after failed run number `attempt` (1-based), or `None`
    /// when the error is final or the attempts are spent.
    pub fn next_delay(&self, attempt: u32, kind: &ErrorKind) -> Option<Duration> {
        if !Self::retryable(kind) || attempt >= self.attempts {
            return None;
        }
        crate::metrics::unit_retried();
        let grown = self.base_ms << (attempt - 1).min(16);
        let jitter = rand::random::<u64>() % (self.jitter_ms + 1);
        Some(Duration::from_millis(grown.min(self.max_ms) + jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_conflicts_are_retried_a_bounded_number_of_times() {
        let conflict = ErrorKind::Database(DbFault::Conflict);
        for kind in [
            ErrorKind::Database(DbFault::Busy),
            ErrorKind::Database(DbFault::Unavailable),
            ErrorKind::Database(DbFault::Integrity),
            ErrorKind::Conflict,
        ] {
            assert_eq!(SQL.next_delay(1, &kind), None, "{kind:?}");
        }
        let first = SQL.next_delay(1, &conflict).unwrap();
        assert!(first >= Duration::from_millis(10) && first <= Duration::from_millis(20));
        let late = SPANNER.next_delay(11, &conflict).unwrap();
        assert!(late >= Duration::from_millis(400) && late <= Duration::from_millis(450));
        assert_eq!(SQL.next_delay(SQL.attempts, &conflict), None);
    }
}
