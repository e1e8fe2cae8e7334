//! Reading a user's data out whole and writing it in as it was (`syncserver copy` and
//! `import-legacy`): the units of work, written once over the `tx` traits like every other.
//! Nothing here picks a new timestamp: rows keep their `modified` and expiry, and collections
//! their timestamps, so a client that synced before sees nothing new after.

use std::collections::BTreeMap;

use crate::db::rules::TOMBSTONE;
use crate::db::tx::{Overwrite, ReadTx, Scope, WriteTx};
use crate::db::{UserId, units};
use crate::error::ApiResult;
use crate::protocol::{StoredBso, SyncTimestamp};

/// What a user has, as `copy` compares it between two databases: every collection with a
/// timestamp (placeholders left out) with its rows (expired ones included) and their payload
/// bytes, and the tombstone's timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSummary {
    /// Collection name → (timestamp ms, rows, payload bytes).
    pub collections: BTreeMap<String, (i64, i64, i64)>,
    /// Rows in collections without a timestamp (a copy that stopped half-way, or a batch's
    /// placeholder): name → rows.
    pub untimed_rows: BTreeMap<String, i64>,
    /// The tombstone's timestamp (0: none).
    pub tombstone: i64,
}

impl UserSummary {
    pub fn is_empty(&self) -> bool {
        self.collections.is_empty() && self.untimed_rows.is_empty() && self.tombstone <= 0
    }

    pub fn records(&self) -> i64 {
        self.collections.values().map(|c| c.1).sum::<i64>()
            + self.untimed_rows.values().sum::<i64>()
    }
}

/// The user's collections and row counts (`UserSummary`), in one snapshot.
pub async fn summary<T: ReadTx>(tx: &mut T, user: &UserId) -> ApiResult<UserSummary> {
    let user = T::user_key(user)?;
    let rows = tx.user_collections(&user).await?;
    // Every row, expired or not: `now` before every expiry.
    let counts = tx.record_counts(&user, SyncTimestamp::ZERO).await?;
    let bytes = tx.record_bytes(&user, SyncTimestamp::ZERO).await?;
    let mut ids: Vec<i32> = rows.iter().map(|r| r.0).collect();
    ids.extend(counts.iter().map(|r| r.0));
    let names = units::collection_names(tx, ids).await?;
    let name = |cid: i32| {
        names
            .get(&cid)
            .cloned()
            .unwrap_or_else(|| format!("#{cid}"))
    };
    let mut out = UserSummary::default();
    for (cid, ms) in rows {
        if cid == TOMBSTONE {
            out.tombstone = ms.max(0);
        } else if ms > 0 {
            out.collections.insert(name(cid), (ms, 0, 0));
        }
    }
    for (cid, n) in counts {
        match out.collections.get_mut(&name(cid)) {
            Some(c) => c.1 = n,
            None => {
                out.untimed_rows.insert(name(cid), n);
            }
        }
    }
    for (cid, b) in bytes {
        if let Some(c) = out.collections.get_mut(&name(cid)) {
            c.2 = b;
        }
    }
    Ok(out)
}

/// Users with any collection row, in uid order after `after`.
pub async fn users_after<T: ReadTx>(tx: &mut T, after: u64, limit: u32) -> ApiResult<Vec<u64>> {
    tx.users_after(after, limit).await
}

/// Rows of one collection, expired included, in id order after `after`.
pub async fn rows_after<T: ReadTx>(
    tx: &mut T,
    user: &UserId,
    collection: &str,
    after: Option<&str>,
    limit: u32,
) -> ApiResult<Vec<StoredBso>> {
    let user = T::user_key(user)?;
    match units::collection_id(tx, collection).await? {
        Some(cid) => tx.rows_after(&user, cid, after, limit).await,
        None => Ok(vec![]),
    }
}

/// Writes rows as they are (their `modified` and expiry kept) into the collection, replacing
/// rows with the same ids; the collection's timestamp is set afterwards (`set_timestamps`).
pub async fn import_rows<T: WriteTx>(
    tx: &mut T,
    user: &UserId,
    collection: &str,
    rows: &[StoredBso],
) -> ApiResult<()> {
    let user = T::user_key(user)?;
    tx.lock_user(&user).await?;
    let cid = units::get_or_create_collection_id(tx, collection).await?;
    if tx.collection_ts(&user, cid).await?.is_none() {
        // Its placeholder, which rows need (PostgreSQL's foreign keys).
        tx.add_collection(&user, cid).await?;
    }
    tx.write_rows(&user, cid, rows, Overwrite::Whole).await
}

/// Sets the collections' timestamps (and quota counters) and the tombstone's, as the source
/// had them.
pub async fn set_timestamps<T: WriteTx>(
    tx: &mut T,
    user: &UserId,
    collections: &[(String, i64)],
    tombstone: i64,
) -> ApiResult<()> {
    let mut user = T::user_key(user)?;
    tx.lock_user(&user).await?;
    for (name, ms) in collections {
        let cid = units::get_or_create_collection_id(tx, name).await?;
        let t = SyncTimestamp::from_i64(*ms);
        if tx.collection_ts(&user, cid).await?.is_none() {
            tx.add_collection(&user, cid).await?;
        }
        tx.touch_collection(&user, cid, t).await?;
        // The counters of a write now: live rows at this moment.
        let scope = Scope {
            user,
            cid,
            t: SyncTimestamp::now(),
            collection_ts: t,
        };
        tx.refresh_counters(&scope).await?;
        user = scope.user;
    }
    if tombstone > 0 {
        tx.touch_collection(&user, TOMBSTONE, SyncTimestamp::from_i64(tombstone))
            .await?;
    }
    Ok(())
}
