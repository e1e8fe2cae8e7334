//! Storage rules every backend applies the same way, whatever its query language: the write
//! timestamp against the user's, batch totals, quota, and how a listing page ends.

use std::collections::HashMap;

use crate::db::StorageConfig;
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::protocol::{Bso, BsoQuery, BsoUpdate, Limits, Offset, StoredBso, SyncTimestamp};

/// The collection id whose row keeps the storage timestamp after a collection delete. Every
/// write of a user locks this row first (creating it as an invisible placeholder), so a user's
/// writes serialize on it whatever collection they touch, and different users never wait on
/// each other.
pub const TOMBSTONE: i32 = 0;
/// The standard collections, with the ids every table layout gives them (upstream's MySQL,
/// PostgreSQL and Spanner schemas preload them; ours too): resolved here, with no statement.
/// Custom names get ids from 101 in the database.
pub const STANDARD_COLLECTIONS: [(i32, &str); 13] = [
    (1, "clients"),
    (2, "crypto"),
    (3, "forms"),
    (4, "history"),
    (5, "keys"),
    (6, "meta"),
    (7, "bookmarks"),
    (8, "prefs"),
    (9, "tabs"),
    (10, "passwords"),
    (11, "addons"),
    (12, "addresses"),
    (13, "creditcards"),
];

pub fn standard_collection_id(name: &str) -> Option<i32> {
    STANDARD_COLLECTIONS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(id, _)| *id)
}

pub fn standard_collection_name(id: i32) -> Option<&'static str> {
    STANDARD_COLLECTIONS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| *n)
}

/// A user stamped at most this far ahead of our clock (the same 10 ms tick, typically) is
/// waited out instead of answered with 503.
pub const MAX_CLOCK_WAIT_MS: u64 = 100;

/// From the user's `user_collections` rows (collection id, ms; placeholders read as 0 or less),
/// the user's storage timestamp (the latest over every collection and the tombstone) and the
/// written collection's own (`None` when it has no row yet).
pub fn user_timestamps(
    rows: impl IntoIterator<Item = (i64, i64)>,
    cid: i64,
) -> (SyncTimestamp, Option<SyncTimestamp>) {
    let mut storage_ts = SyncTimestamp::ZERO;
    let mut collection_ts = None;
    for (c, ms) in rows {
        let ts = SyncTimestamp::from_i64(ms);
        storage_ts = storage_ts.max(ts);
        if c == cid {
            collection_ts = Some(ts);
        }
    }
    (storage_ts, collection_ts)
}

/// The user's storage timestamp from its `user_collections` rows (as `user_timestamps`).
pub fn storage_ts(rows: &[(i32, i64)]) -> SyncTimestamp {
    rows.iter()
        .map(|(_, ms)| SyncTimestamp::from_i64(*ms))
        .max()
        .unwrap_or_default()
}

/// The timestamps `/info/collections` shows of those rows: no tombstone, no placeholder.
pub fn visible_collections(rows: Vec<(i32, i64)>) -> Vec<(i32, SyncTimestamp)> {
    rows.into_iter()
        .filter(|(c, ms)| *c != TOMBSTONE && *ms > 0)
        .map(|(c, ms)| (c, SyncTimestamp::from_i64(ms)))
        .collect()
}

/// How long a write must wait before its T (`now`) is later than the user's storage timestamp
/// (`floor`): `None` when it already is, an error (503) when the user is too far ahead (the
/// clock went backwards). Per user, not per collection: two writes of one user to different
/// collections never share a T, so `X-If-Modified-Since` on the info views sees both.
pub fn clock_wait(floor: SyncTimestamp, now: SyncTimestamp) -> ApiResult<Option<u64>> {
    if floor < now {
        return Ok(None);
    }
    let ahead = floor.as_millis() - now.as_millis();
    if ahead > MAX_CLOCK_WAIT_MS {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "storage modified in the future",
        ));
    }
    // Holding the user's lock, waiting out the tick is cheaper for clients than a 503.
    Ok(Some(ahead + 10))
}

/// After the wait, T must be later than the user's storage timestamp.
pub fn ensure_later(floor: SyncTimestamp, t: SyncTimestamp) -> ApiResult<()> {
    if floor >= t {
        return Err(ApiError::new(ErrorKind::Conflict, "write conflict"));
    }
    Ok(())
}

/// Staged records a batch operation reads: those with these ids (merging re-sent records), or
/// the next `COMMIT_CHUNK` in id order after an id (a commit, chunk by chunk, so its memory
/// does not grow with the batch).
#[derive(Debug, Clone, Copy)]
pub enum Staged<'a> {
    Ids(&'a [String]),
    After(Option<&'a str>),
}

/// Staged records a commit applies at a time.
pub const COMMIT_CHUNK: i64 = 100;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_timestamps_cover_every_collection() {
        let rows = [(0, 3_000), (5, 1_000), (7, -62_135_596_800_000), (9, 2_000)];
        let (storage, coll) = user_timestamps(rows, 5);
        assert_eq!(storage, SyncTimestamp::from_millis(3_000));
        assert_eq!(coll, Some(SyncTimestamp::from_millis(1_000)));
        // A placeholder row exists but reads as 0.
        assert_eq!(user_timestamps(rows, 7).1, Some(SyncTimestamp::ZERO));
        assert_eq!(user_timestamps(rows, 8).1, None);
        assert_eq!(user_timestamps([], 8), (SyncTimestamp::ZERO, None));
    }

    #[test]
    fn waits_out_a_tick_but_not_a_backwards_clock() {
        let now = SyncTimestamp::from_millis(10_000);
        assert_eq!(
            clock_wait(SyncTimestamp::from_millis(9_990), now).unwrap(),
            None
        );
        assert_eq!(clock_wait(now, now).unwrap(), Some(10));
        assert_eq!(
            clock_wait(SyncTimestamp::from_millis(10_050), now).unwrap(),
            Some(60)
        );
        let e = clock_wait(SyncTimestamp::from_millis(10_200), now).unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(ensure_later(now, now).is_err());
        assert!(ensure_later(now, now.next_tick()).is_ok());
    }
}
