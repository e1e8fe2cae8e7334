//! Batch ids in the MySQL/Python form: standard base64 of the decimal text of
//! `creation_ms + uid % 10` (SPEC 1.10, 5.1). The creation time is recoverable, which is how
//! expiry is judged.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{ApiError, ApiResult};

/// Batches live this long after creation.
pub const BATCH_LIFETIME_MS: i64 = 2 * 60 * 60 * 1000;

pub fn encode(batch: i64) -> String {
    STANDARD.encode(batch.to_string())
}

/// A malformed id is a 400 like an unknown one.
pub fn decode(id: &str) -> ApiResult<i64> {
    let bad = || ApiError::bad_request("invalid batch id");
    let bytes = STANDARD.decode(id.trim()).map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// The numeric id for a batch created at `now_ms` by `uid`.
pub fn numeric_id(now_ms: i64, uid: u64) -> i64 {
    now_ms + (uid % 10) as i64
}

pub fn is_expired(batch: i64, now_ms: i64) -> bool {
    // The uid offset adds at most 9 ms of life; upstream accepts the same.
    batch + BATCH_LIFETIME_MS < now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = numeric_id(1_700_000_000_000, 42);
        assert_eq!(id, 1_700_000_000_002);
        assert_eq!(decode(&encode(id)).unwrap(), id);
        assert_eq!(encode(1_700_000_000_002), "MTcwMDAwMDAwMDAwMg==");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "sammich", "", "!!!", "YWJj", /* "abc" */
            "LTE=", /* "-1" */
        ] {
            assert_eq!(decode(bad).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn expiry() {
        let created = 1_000_000;
        assert!(!is_expired(created, created + BATCH_LIFETIME_MS));
        assert!(is_expired(created, created + BATCH_LIFETIME_MS + 11));
    }
}
