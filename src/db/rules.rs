//! Storage rules every backend applies the same way, whatever its query language: the write
//! timestamp against the collection's, batch totals, quota, and how a listing page ends.

use std::collections::HashMap;

use crate::db::StorageConfig;
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::protocol::{Bso, BsoQuery, BsoUpdate, Limits, Offset, StoredBso, SyncTimestamp};

/// The collection id whose row keeps the storage timestamp after a collection delete.
pub const TOMBSTONE: i32 = 0;
/// A collection stamped at most this far ahead of our clock (the same 10 ms tick, typically)
/// is waited out instead of answered with 503.
pub const MAX_CLOCK_WAIT_MS: u64 = 100;

/// How long a write must wait before its T (`now`) is later than the collection's timestamp:
/// `None` when it already is, an error (503) when the collection is too far ahead.
pub fn clock_wait(collection_ts: SyncTimestamp, now: SyncTimestamp) -> ApiResult<Option<u64>> {
    if collection_ts < now {
        return Ok(None);
    }
    let ahead = collection_ts.as_millis() - now.as_millis();
    if ahead > MAX_CLOCK_WAIT_MS {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "collection modified in the future",
        ));
    }
    // Holding the lock, waiting out the tick is cheaper for clients than a 503.
    Ok(Some(ahead + 10))
}

/// After the wait, T must be later than the collection's timestamp.
pub fn ensure_later(collection_ts: SyncTimestamp, t: SyncTimestamp) -> ApiResult<()> {
    if collection_ts >= t {
        return Err(ApiError::new(ErrorKind::Conflict, "write conflict"));
    }
    Ok(())
}

/// A batch may hold at most max_total_records records and max_total_bytes of payload (400,
/// code 17).
pub fn check_batch_totals(limits: &Limits, records: i64, bytes: i64) -> ApiResult<()> {
    if records > i64::from(limits.max_total_records) || bytes > i64::from(limits.max_total_bytes) {
        return Err(ApiError::new(
            ErrorKind::SizeLimit,
            "batch over max_total_records or max_total_bytes",
        ));
    }
    Ok(())
}

/// When quotas are on, a user at the limit (committed usage `used` plus `staged` batch bytes)
/// may not write more; checked before the write, so one write may overshoot, as upstream.
pub fn check_quota(config: &StorageConfig, used: i64, staged: i64) -> ApiResult<()> {
    if used + staged >= i64::from(config.limits.max_quota_limit) {
        if config.enforce_quota {
            return Err(ApiError::new(ErrorKind::OverQuota, "over quota"));
        }
        slog_scope::warn!("user over quota"; "used" => used);
    }
    Ok(())
}

/// A listing read `limit + 1` rows: the page is the first `limit`, and the extra row says
/// whether there is a next offset.
pub fn finish_page(
    mut rows: Vec<StoredBso>,
    limit: u32,
    q: &BsoQuery,
) -> (Vec<Bso>, Option<Offset>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more.then(|| {
        let page: Vec<i64> = rows.iter().map(|r| r.modified).collect();
        q.offset.next(q.sort, &page)
    });
    (rows.into_iter().map(Bso::from).collect(), next)
}

/// Records re-sent to a batch are merged field by field over what it already staged for
/// their ids (`staged`, any order); the result replaces those staged items.
pub fn merge_staged(staged: Vec<BsoUpdate>, updates: &[BsoUpdate]) -> Vec<BsoUpdate> {
    let staged: HashMap<String, BsoUpdate> =
        staged.into_iter().map(|u| (u.id.clone(), u)).collect();
    updates
        .iter()
        .map(|u| {
            staged
                .get(&u.id)
                .map_or_else(|| u.clone(), |old| old.merged_with(u))
        })
        .collect()
}
