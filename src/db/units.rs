//! Every unit of work, written once for every engine over the `tx` traits: the steps a write
//! shares (lock the user, preconditions, quota, T, apply, finish) and the reads. An engine's
//! `Backend` runs them as ops (`ReadOp`, `WriteOp`: owned values, so a unit of work can run on
//! a task or a thread of its own), and `StorageDb` is implemented here, once, for every
//! `Backend`.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use crate::db::listing::{self, Listing, ListingSender};
use crate::db::rules::{self, Staged, TOMBSTONE};
use crate::db::transfer::{self, UserSummary};
use crate::db::tx::{Backend, Overwrite, ReadTx, Scope, WriteTx};
use crate::db::{
    BsoPage, BsoRef, CollectionRef, DeleteBsos, DeletedCollection, GetBsos, Info, InfoBody,
    InfoKind, PoolState, PostBsos, PostResult, PurgeStats, PutBso, StorageConfig, StorageDb,
    UserId, not_found,
};
use crate::error::{ApiError, ApiResult};
use crate::protocol::bso::{ModifiedRule, apply_update};
use crate::protocol::{
    BatchRequest, Bso, BsoQuery, BsoUpdate, Offset, Precondition, StoredBso, SyncTimestamp,
};

/// A read unit of work, as a value.
#[derive(Debug, Clone)]
pub enum ReadOp {
    Info {
        user: UserId,
        kind: InfoKind,
        precondition: Precondition,
    },
    GetBsos(GetBsos),
    /// A listing sent through `out` as it is read; errors go there too.
    Stream(GetBsos, ListingSender),
    GetBso(BsoRef),
    Ping,
    /// What the TTL purge would delete now (`purge-ttl --dry-run`).
    Expired(SyncTimestamp),
    /// `transfer::summary`.
    Summary(UserId),
    /// `transfer::users_after`.
    Users {
        after: u64,
        limit: u32,
    },
    /// `transfer::rows_after`.
    Rows {
        user: UserId,
        collection: String,
        after: Option<String>,
        limit: u32,
    },
}

impl ReadOp {
    /// A listing's pace is the client's: the engine bounds each read, not the whole unit.
    pub fn is_stream(&self) -> bool {
        matches!(self, ReadOp::Stream(..))
    }

    /// Whether the unit's statements must share one snapshot (a transaction). The others are
    /// one statement (a listing page reads its collection's timestamp in the same statement,
    /// `first_page`), so on a server engine they run without BEGIN and COMMIT, two round trips
    /// fewer. A listing that turns out to need a snapshot asks for one then
    /// (`ReadOut::NeedsSnapshot`).
    pub fn needs_snapshot(&self) -> bool {
        match self {
            ReadOp::Info { kind, .. } => *kind != InfoKind::Collections,
            ReadOp::GetBsos(_) | ReadOp::Stream(..) | ReadOp::GetBso(_) | ReadOp::Ping => false,
            ReadOp::Expired(_)
            | ReadOp::Summary(_)
            | ReadOp::Users { .. }
            | ReadOp::Rows { .. } => true,
        }
    }
}

#[derive(Debug)]
pub enum ReadOut {
    Info(Info),
    Page(BsoPage),
    Bso(Bso),
    Summary(UserSummary),
    Expired(PurgeStats),
    Users(Vec<u64>),
    Rows(Vec<StoredBso>),
    Done,
    /// Run without a snapshot, the unit found it needs one (a listing of several chunks):
    /// nothing was sent; run it again in a read transaction.
    NeedsSnapshot,
}

/// A write unit of work, as a value.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Put(PutBso),
    Post(PostBsos),
    DeleteBso(BsoRef),
    DeleteBsos(DeleteBsos),
    DeleteCollection(CollectionRef),
    DeleteStorage {
        user: UserId,
        precondition: Precondition,
    },
    /// `transfer::import_rows`: rows written as they are.
    ImportRows {
        user: UserId,
        collection: String,
        rows: Vec<StoredBso>,
    },
    /// `transfer::set_timestamps`.
    SetTimestamps {
        user: UserId,
        collections: Vec<(String, i64)>,
        tombstone: i64,
    },
}

impl WriteOp {
    /// Whose data and which collection (none: the whole storage) the write locks.
    pub fn target(&self) -> (&UserId, Option<&str>) {
        fn of(c: &CollectionRef) -> (&UserId, Option<&str>) {
            (&c.user, Some(c.collection.as_str()))
        }
        match self {
            WriteOp::Put(p) => of(&p.target),
            WriteOp::Post(p) => of(&p.target),
            WriteOp::DeleteBso(b) => (&b.user, Some(b.collection.as_str())),
            WriteOp::DeleteBsos(d) => of(&d.target),
            WriteOp::DeleteCollection(c) => of(c),
            WriteOp::DeleteStorage { user, .. } => (user, None),
            WriteOp::ImportRows {
                user, collection, ..
            } => (user, Some(collection.as_str())),
            WriteOp::SetTimestamps { user, .. } => (user, None),
        }
    }
}

#[derive(Debug)]
pub enum WriteOut {
    Timestamp(SyncTimestamp),
    Post(PostResult),
    Deleted(DeletedCollection),
    Done,
}

/// Runs a read op on `tx`; `snapshot`: whether `tx` is one read transaction (else each
/// statement is its own, see `ReadOp::needs_snapshot`).
pub async fn read<T: ReadTx>(
    tx: &mut T,
    config: &StorageConfig,
    op: &ReadOp,
    snapshot: bool,
) -> ApiResult<ReadOut> {
    Ok(match op {
        ReadOp::Info {
            user,
            kind,
            precondition,
        } => ReadOut::Info(info(tx, user, *kind, *precondition).await?),
        ReadOp::GetBsos(params) => match get_bsos(tx, config, params, snapshot).await? {
            Some(page) => ReadOut::Page(page),
            None => ReadOut::NeedsSnapshot,
        },
        ReadOp::Stream(params, out) => match stream_bsos(tx, config, params, out, snapshot).await {
            Ok(Streamed::Sent) => ReadOut::Done,
            Ok(Streamed::NeedsSnapshot) => ReadOut::NeedsSnapshot,
            Err(e) => {
                let _ = listing::send(out, Err(e)).await;
                ReadOut::Done
            }
        },
        ReadOp::GetBso(params) => ReadOut::Bso(get_bso(tx, params).await?),
        ReadOp::Ping => {
            tx.ping().await?;
            ReadOut::Done
        }
        ReadOp::Expired(now) => ReadOut::Expired(tx.expired_counts(*now).await?),
        ReadOp::Summary(user) => ReadOut::Summary(transfer::summary(tx, user).await?),
        ReadOp::Users { after, limit } => {
            ReadOut::Users(transfer::users_after(tx, *after, *limit).await?)
        }
        ReadOp::Rows {
            user,
            collection,
            after,
            limit,
        } => ReadOut::Rows(
            transfer::rows_after(tx, user, collection, after.as_deref(), *limit).await?,
        ),
    })
}

/// Runs a write op on `tx`: lock the user and pick T (`begin_write`), then the op's unit.
pub async fn write<T: WriteTx>(
    tx: &mut T,
    config: &StorageConfig,
    op: &WriteOp,
) -> ApiResult<WriteOut> {
    // A transfer keeps the timestamps it is given: no T of its own.
    match op {
        WriteOp::ImportRows {
            user,
            collection,
            rows,
        } => {
            transfer::import_rows(tx, user, collection, rows).await?;
            return Ok(WriteOut::Done);
        }
        WriteOp::SetTimestamps {
            user,
            collections,
            tombstone,
        } => {
            transfer::set_timestamps(tx, user, collections, *tombstone).await?;
            return Ok(WriteOut::Done);
        }
        _ => {}
    }
    let (user, collection) = op.target();
    let scope = begin_write(tx, user, collection).await?;
    Ok(match op {
        WriteOp::Put(p) => WriteOut::Timestamp(put_bso(tx, &scope, config, p).await?),
        WriteOp::Post(p) => WriteOut::Post(post_bsos(tx, &scope, config, p).await?),
        WriteOp::DeleteBso(b) => WriteOut::Timestamp(delete_bso(tx, &scope, config, b).await?),
        WriteOp::DeleteBsos(d) => WriteOut::Timestamp(delete_bsos(tx, &scope, config, d).await?),
        WriteOp::DeleteCollection(c) => {
            WriteOut::Deleted(delete_collection(tx, &scope, c.precondition).await?)
        }
        WriteOp::DeleteStorage { precondition, .. } => {
            WriteOut::Timestamp(delete_storage(tx, &scope, *precondition).await?)
        }
        WriteOp::ImportRows { .. } | WriteOp::SetTimestamps { .. } => WriteOut::Done,
    })
}

// ---- collection names ----

/// The collection's id: a standard one without a statement, a custom one from its table.
pub async fn collection_id<T: ReadTx>(tx: &mut T, name: &str) -> ApiResult<Option<i32>> {
    match rules::standard_collection_id(name) {
        Some(id) => Ok(Some(id)),
        None => tx.collection_id(name).await,
    }
}

/// The collection's id, a custom name's made when new.
pub async fn get_or_create_collection_id<T: WriteTx>(tx: &mut T, name: &str) -> ApiResult<i32> {
    match rules::standard_collection_id(name) {
        Some(id) => Ok(id),
        None => tx.get_or_create_collection_id(name).await,
    }
}

/// The names of these collection ids (standard ones without a statement).
pub async fn collection_names<T: ReadTx>(
    tx: &mut T,
    ids: Vec<i32>,
) -> ApiResult<HashMap<i32, String>> {
    let mut names = HashMap::with_capacity(ids.len());
    let mut custom = Vec::new();
    for id in ids {
        match rules::standard_collection_name(id) {
            Some(name) => {
                names.insert(id, name.to_owned());
            }
            None => custom.push(id),
        }
    }
    if !custom.is_empty() {
        names.extend(tx.collection_names(custom).await?);
    }
    Ok(names)
}

// ---- reads ----

fn modified_of(bso: &Option<StoredBso>) -> SyncTimestamp {
    bso.as_ref()
        .map_or(SyncTimestamp::ZERO, |b| SyncTimestamp::from_i64(b.modified))
}

async fn named<T: ReadTx, V>(tx: &mut T, rows: Vec<(i32, V)>) -> ApiResult<BTreeMap<String, V>> {
    let names = collection_names(tx, rows.iter().map(|(c, _)| *c).collect()).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, v)| names.get(&c).map(|n| (n.clone(), v)))
        .collect())
}

async fn usage_bytes<T: ReadTx>(tx: &mut T, user: &T::User, now: SyncTimestamp) -> ApiResult<i64> {
    Ok(tx
        .record_bytes(user, now)
        .await?
        .iter()
        .map(|(_, b)| b)
        .sum())
}

pub async fn info<T: ReadTx>(
    tx: &mut T,
    user: &UserId,
    kind: InfoKind,
    precondition: Precondition,
) -> ApiResult<Info> {
    let user = T::user_key(user)?;
    // `/info/collections` is one statement: the storage timestamp and the visible ones come
    // from the same rows.
    let (storage_ts, visible) = if kind == InfoKind::Collections {
        let rows = tx.user_collections(&user).await?;
        (rules::storage_ts(&rows), rules::visible_collections(rows))
    } else {
        (tx.storage_ts(&user).await?, Vec::new())
    };
    precondition.check(storage_ts)?;
    let now = SyncTimestamp::now();
    let body = match kind {
        InfoKind::Collections => InfoBody::Timestamps(named(tx, visible).await?),
        InfoKind::Counts => {
            let rows = tx.record_counts(&user, now).await?;
            InfoBody::Counts(named(tx, rows).await?)
        }
        InfoKind::Usage => {
            let rows = tx.record_bytes(&user, now).await?;
            let kib = rows
                .into_iter()
                .map(|(c, b)| (c, b as f64 / 1024.0))
                .collect();
            InfoBody::Usage(named(tx, kib).await?)
        }
        InfoKind::Quota => InfoBody::Quota(usage_bytes(tx, &user, now).await? as f64 / 1024.0),
    };
    Ok(Info { storage_ts, body })
}

/// What one read of a listing found, before its timestamp is settled.
struct Read {
    items: Vec<Bso>,
    next_offset: Option<Offset>,
    /// The collection's timestamp as the same statement saw it (`ReadTx::list_bsos`).
    seen: Option<SyncTimestamp>,
}

impl Read {
    fn page(self, collection_ts: SyncTimestamp) -> BsoPage {
        BsoPage {
            collection_ts,
            items: self.items,
            next_offset: self.next_offset,
        }
    }
}

/// One read of a listing; `max_records` caps every page.
async fn list_page<T: ReadTx>(
    tx: &mut T,
    user: &T::User,
    cid: i32,
    q: &BsoQuery,
    now: SyncTimestamp,
    max_records: u32,
) -> ApiResult<Read> {
    let limit = q.limit.unwrap_or(max_records).min(max_records);
    let (rows, seen) = tx.list_bsos(user, cid, q, limit, now).await?;
    let (items, next_offset) = rules::finish_page(rows, limit, q);
    Ok(Read {
        items,
        next_offset,
        seen,
    })
}

fn empty_page() -> BsoPage {
    BsoPage {
        collection_ts: SyncTimestamp::ZERO,
        items: vec![],
        next_offset: None,
    }
}

/// What a listing's first read found.
enum First<U> {
    /// No such collection (the precondition held against 0): an empty page.
    Missing,
    Found {
        user: U,
        cid: i32,
        page: BsoPage,
    },
    /// Without a snapshot, no timestamp could be paired with the page: read again in one.
    NeedsSnapshot,
}

/// A listing's first read (`q`) with the collection timestamp that goes with it, after the
/// precondition: the records first, with the timestamp their own statement saw (so it is no
/// older than any of them); for an empty page, the timestamp read after it. On a snapshot that
/// is the page's own. Without one it is only while it is not newer than `newer`: every write
/// that lands after the client's last sync gets a later T (`begin_write`), so none landed in
/// between and the page is still empty. Anything else needs a snapshot.
async fn first_page<T: ReadTx>(
    tx: &mut T,
    target: &CollectionRef,
    q: &BsoQuery,
    now: SyncTimestamp,
    max_records: u32,
    snapshot: bool,
) -> ApiResult<First<T::User>> {
    let user = T::user_key(&target.user)?;
    let Some(cid) = collection_id(tx, &target.collection).await? else {
        target.precondition.check(SyncTimestamp::ZERO)?;
        return Ok(First::Missing);
    };
    let read = list_page(tx, &user, cid, q, now, max_records).await?;
    let ts = match read.seen.filter(|_| !read.items.is_empty()) {
        Some(seen) => seen,
        None => match tx.collection_ts(&user, cid).await? {
            None if read.items.is_empty() => {
                target.precondition.check(SyncTimestamp::ZERO)?;
                return Ok(First::Missing);
            }
            Some(ts)
                if snapshot
                    || (read.items.is_empty() && ts <= q.newer.unwrap_or(SyncTimestamp::ZERO)) =>
            {
                ts
            }
            _ if snapshot => SyncTimestamp::ZERO,
            _ => return Ok(First::NeedsSnapshot),
        },
    };
    target.precondition.check(ts)?;
    Ok(First::Found {
        user,
        cid,
        page: read.page(ts),
    })
}

/// A page of a listing, read at once; `None`: it needs a snapshot (`first_page`).
pub async fn get_bsos<T: ReadTx>(
    tx: &mut T,
    config: &StorageConfig,
    params: &GetBsos,
    snapshot: bool,
) -> ApiResult<Option<BsoPage>> {
    let max = config.limits.max_total_records;
    let now = SyncTimestamp::now();
    Ok(
        match first_page(tx, &params.target, &params.query, now, max, snapshot).await? {
            First::Missing => Some(empty_page()),
            First::Found { page, .. } => Some(page),
            First::NeedsSnapshot => None,
        },
    )
}

/// How a streamed listing ended.
pub enum Streamed {
    Sent,
    /// Not sent: it needs several reads, which must share a snapshot, or a snapshot to pair
    /// its timestamp with (`first_page`).
    NeedsSnapshot,
}

/// A listing sent as it is read (`db::listing`): a page within one chunk in one read; a bigger
/// full page as its head, then the records in chunks. All from one snapshot and one `now` (so
/// expiry cannot change the page between chunks): without `snapshot`, a page that needs more
/// than one read is not sent (`Streamed::NeedsSnapshot`).
pub async fn stream_bsos<T: ReadTx>(
    tx: &mut T,
    config: &StorageConfig,
    params: &GetBsos,
    out: &ListingSender,
    snapshot: bool,
) -> ApiResult<Streamed> {
    let now = SyncTimestamp::now();
    let max = config.limits.max_total_records;
    let q = &params.query;
    let page_limit = q.limit.unwrap_or(max).min(max);
    let n = listing::first_chunk(q, max);
    let first_q = if q.full {
        listing::chunk_query(q, q.offset, n)
    } else {
        q.clone()
    };
    let whole = |page| Listing::Head { page, more: false };
    let (user, cid, first) =
        match first_page(tx, &params.target, &first_q, now, max, snapshot).await? {
            First::Missing => {
                return listing::send(out, Ok(whole(empty_page())))
                    .await
                    .map(|()| Streamed::Sent);
            }
            First::NeedsSnapshot => return Ok(Streamed::NeedsSnapshot),
            First::Found { user, cid, page } => (user, cid, page),
        };
    if !q.full || first.next_offset.is_none() || n == page_limit {
        // The whole page: one read, as without streaming.
        return listing::send(out, Ok(whole(first)))
            .await
            .map(|()| Streamed::Sent);
    }
    if !snapshot {
        return Ok(Streamed::NeedsSnapshot);
    }
    let ts = first.collection_ts;
    let head = list_page(tx, &user, cid, &listing::head_query(q), now, max)
        .await?
        .page(ts);
    let total = head.items.len();
    listing::send(
        out,
        Ok(Listing::Head {
            page: head,
            more: true,
        }),
    )
    .await?;
    let (mut sent, mut offset) = (first.items.len(), first.next_offset);
    listing::send(out, Ok(Listing::Records(first.items))).await?;
    while let (Some(from), Some(n)) = (offset, listing::next_chunk(total, sent)) {
        let chunk_q = listing::chunk_query(q, from, n);
        let chunk = list_page(tx, &user, cid, &chunk_q, now, max).await?;
        if chunk.items.is_empty() {
            break;
        }
        sent += chunk.items.len();
        offset = chunk.next_offset;
        listing::send(out, Ok(Listing::Records(chunk.items))).await?;
    }
    Ok(Streamed::Sent)
}

/// The record and its timestamp; 404 when absent or expired.
pub async fn get_bso<T: ReadTx>(tx: &mut T, params: &BsoRef) -> ApiResult<Bso> {
    let user = T::user_key(&params.user)?;
    let found = match collection_id(tx, &params.collection).await? {
        Some(cid) => {
            tx.get_live_bso(&user, cid, &params.id, SyncTimestamp::now())
                .await?
        }
        None => None,
    };
    params.precondition.check(modified_of(&found))?;
    found.map(Bso::from).ok_or_else(not_found)
}

// ---- the steps every write shares ----

/// Locks the user (every write of the user takes this lock first, so they serialize),
/// resolves the collection (creating its name mapping and, when missing, its placeholder row)
/// and picks a T later than every timestamp of the user.
pub async fn begin_write<T: WriteTx>(
    tx: &mut T,
    user: &UserId,
    collection: Option<&str>,
) -> ApiResult<Scope<T::User>> {
    let user = T::user_key(user)?;
    tx.lock_user(&user).await?;
    // Read after the lock: every other writer of this user has committed by now.
    let rows = tx.user_collections(&user).await?;
    let cid = match collection {
        Some(name) => get_or_create_collection_id(tx, name).await?,
        None => -1,
    };
    let (storage_ts, collection_ts) = rules::user_timestamps(
        rows.into_iter().map(|(c, ms)| (i64::from(c), ms)),
        i64::from(cid),
    );
    let collection_ts = match collection_ts {
        Some(ts) => ts,
        // A new collection: its (placeholder) row, which records and batches need.
        None if collection.is_some() => tx.add_collection(&user, cid).await?,
        None => SyncTimestamp::ZERO,
    };
    let floor = storage_ts.max(collection_ts);
    let mut t = SyncTimestamp::now();
    if let Some(ms) = rules::clock_wait(floor, t)? {
        tx.pause(ms).await;
        t = SyncTimestamp::now();
        rules::ensure_later(floor, t)?;
    }
    Ok(Scope {
        user,
        cid,
        t,
        collection_ts,
    })
}

/// The quota rule (`rules::check_quota`) against the user's committed usage.
async fn check_quota<T: ReadTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    staged: i64,
) -> ApiResult<()> {
    if !config.enable_quota {
        return Ok(());
    }
    let used = usage_bytes(tx, &scope.user, scope.t).await?;
    rules::check_quota(config, used, staged)
}

/// Applies updates at T with the partial-update rules.
async fn apply_updates<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    updates: &[BsoUpdate],
    rule: ModifiedRule,
) -> ApiResult<()> {
    if updates.is_empty() {
        return Ok(());
    }
    if T::OVERWRITES_GIVEN && updates.iter().all(|u| u.payload.is_some()) {
        // Each record sets payload and modified (T: its content changed); the sortindex and
        // expiry it leaves out the engine's upsert keeps from the row: no read before. Those
        // with a ttl and those without are written apart.
        for expiry in [true, false] {
            let rows: Vec<StoredBso> = updates
                .iter()
                .filter(|u| u.ttl.is_some() == expiry)
                .map(|u| apply_update(None, u, scope.t, rule))
                .collect();
            if !rows.is_empty() {
                let given = Overwrite::Given { expiry };
                tx.write_rows(&scope.user, scope.cid, &rows, given).await?;
            }
        }
        return Ok(());
    }
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let existing = tx.load_existing(&scope.user, scope.cid, &ids).await?;
    let rows: Vec<StoredBso> = updates
        .iter()
        .map(|u| apply_update(existing.get(&u.id), u, scope.t, rule))
        .collect();
    tx.write_rows(&scope.user, scope.cid, &rows, Overwrite::Whole)
        .await
}

/// Bumps the collection to T (and its quota counters).
async fn finish_write<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
) -> ApiResult<SyncTimestamp> {
    tx.touch_collection(&scope.user, scope.cid, scope.t).await?;
    if config.enable_quota {
        tx.refresh_counters(scope).await?;
    }
    Ok(scope.t)
}

// ---- batches ----

/// Stages `updates`, merging field by field with what the batch already holds, and keeps the
/// batch within max_total_records / max_total_bytes (400, code 17) and the quota. `fresh`: the
/// batch was created by this request (`create_batch`: empty), so there is nothing to merge
/// with and its totals are these records' (ids are unique within a request).
async fn stage<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    batch: &T::Batch,
    updates: &[BsoUpdate],
    fresh: bool,
) -> ApiResult<()> {
    if fresh || T::MERGES_STAGED {
        tx.put_staged(scope, batch, updates).await?;
    } else {
        let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
        let staged = tx.staged_items(scope, batch, Staged::Ids(&ids)).await?;
        let merged = rules::merge_staged(staged, updates);
        tx.put_staged(scope, batch, &merged).await?;
    }
    let (records, bytes) = if fresh {
        (updates.len() as i64, payload_bytes(updates))
    } else {
        tx.staged_totals(scope, batch).await?
    };
    rules::check_batch_totals(&config.limits, records, bytes)?;
    // Staged bytes count toward quota; re-sent ids replaced their earlier bytes above.
    check_quota(tx, scope, config, bytes).await
}

/// Payload bytes of records, as the batch limits and the quota count them.
fn payload_bytes(updates: &[BsoUpdate]) -> i64 {
    updates.iter().map(|u| u.payload_bytes() as i64).sum()
}

/// Applies everything staged, and the commit request's own records, with one T (every record
/// gets modified = T), then drops the batch.
///
/// The commit request's records are merged with the staged ones in memory, not staged first:
/// that saves writing them twice (and on Spanner, the mutations of the one commit transaction,
/// whose budget a full batch already uses up). Staged records are read chunk by chunk, so
/// memory does not grow with the batch. The limits and quota are checked on the whole, at the
/// end: it is one transaction, so a limit exceeded rolls all of it back.
async fn commit_batch<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    batch: &T::Batch,
    last: &[BsoUpdate],
) -> ApiResult<SyncTimestamp> {
    // Committed usage before this batch lands, for the quota rule at the end.
    let used = if config.enable_quota {
        usage_bytes(tx, &scope.user, scope.t).await?
    } else {
        0
    };
    let mut pending: HashMap<&str, &BsoUpdate> = last.iter().map(|u| (u.id.as_str(), u)).collect();
    let (mut records, mut bytes) = (0i64, 0i64);
    let mut after: Option<String> = None;
    loop {
        let chunk = tx
            .staged_items(scope, batch, Staged::After(after.as_deref()))
            .await?;
        let Some(tail) = chunk.last() else { break };
        after = Some(tail.id.clone());
        // A short chunk is the last one: no statement to find nothing after it.
        let last_chunk = (chunk.len() as i64) < rules::COMMIT_CHUNK;
        let merged: Vec<BsoUpdate> = chunk
            .into_iter()
            .map(|u| match pending.remove(u.id.as_str()) {
                Some(newer) => u.merged_with(newer),
                None => u,
            })
            .collect();
        records += merged.len() as i64;
        bytes += payload_bytes(&merged);
        apply_updates(tx, scope, &merged, ModifiedRule::Always).await?;
        if last_chunk {
            break;
        }
    }
    let rest: Vec<BsoUpdate> = last
        .iter()
        .filter(|u| pending.contains_key(u.id.as_str()))
        .cloned()
        .collect();
    records += rest.len() as i64;
    bytes += payload_bytes(&rest);
    apply_updates(tx, scope, &rest, ModifiedRule::Always).await?;
    rules::check_batch_totals(&config.limits, records, bytes)?;
    if config.enable_quota {
        rules::check_quota(config, used, bytes)?;
    }
    tx.drop_batch(scope, batch).await?;
    finish_write(tx, scope, config).await
}

// ---- the write units ----

pub async fn put_bso<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    params: &PutBso,
) -> ApiResult<SyncTimestamp> {
    let existing = tx
        .get_live_bso(&scope.user, scope.cid, &params.bso.id, scope.t)
        .await?;
    params.target.precondition.check(modified_of(&existing))?;
    check_quota(tx, scope, config, 0).await?;
    let update = std::slice::from_ref(&params.bso);
    apply_updates(tx, scope, update, ModifiedRule::WhenContentChanges).await?;
    finish_write(tx, scope, config).await
}

/// A POST: plain, or one step of a batch upload.
pub async fn post_bsos<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    params: &PostBsos,
) -> ApiResult<PostResult> {
    params.target.precondition.check(scope.collection_ts)?;
    let items = &params.items;
    let success: Vec<String> = items.valid.iter().map(|u| u.id.clone()).collect();
    let (last_modified, batch) = match &params.batch {
        BatchRequest::None => {
            check_quota(tx, scope, config, 0).await?;
            apply_updates(tx, scope, &items.valid, ModifiedRule::WhenContentChanges).await?;
            (finish_write(tx, scope, config).await?, None)
        }
        BatchRequest::Start => {
            let batch = tx.create_batch(scope).await?;
            stage(tx, scope, config, &batch, &items.valid, true).await?;
            (scope.collection_ts, Some(T::encode_batch(&batch)))
        }
        BatchRequest::Append(id) => {
            let batch = tx.find_batch(scope, id).await?;
            stage(tx, scope, config, &batch, &items.valid, false).await?;
            (scope.collection_ts, Some(id.clone()))
        }
        BatchRequest::Commit(id) => {
            let batch = tx.find_batch(scope, id).await?;
            let t = commit_batch(tx, scope, config, &batch, &items.valid).await?;
            (t, None)
        }
    };
    Ok(PostResult {
        last_modified,
        batch,
        success,
        failed: items.failed.clone(),
    })
}

/// Deletes a live record; 404 when absent or expired.
pub async fn delete_bso<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    params: &BsoRef,
) -> ApiResult<SyncTimestamp> {
    let existing = tx
        .get_live_bso(&scope.user, scope.cid, &params.id, scope.t)
        .await?;
    params.precondition.check(modified_of(&existing))?;
    if existing.is_none() {
        return Err(not_found());
    }
    let id = std::slice::from_ref(&params.id);
    tx.delete_rows(&scope.user, scope.cid, id).await?;
    finish_write(tx, scope, config).await
}

pub async fn delete_bsos<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    config: &StorageConfig,
    params: &DeleteBsos,
) -> ApiResult<SyncTimestamp> {
    params.target.precondition.check(scope.collection_ts)?;
    tx.delete_rows(&scope.user, scope.cid, &params.ids).await?;
    finish_write(tx, scope, config).await
}

/// Removes the collection and leaves the tombstone at T, so the storage timestamp never goes
/// backwards while the user has data.
pub async fn delete_collection<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    precondition: Precondition,
) -> ApiResult<DeletedCollection> {
    precondition.check(scope.collection_ts)?;
    // A placeholder (a batch opened, nothing committed) is not a collection yet.
    let existed = scope.collection_ts > SyncTimestamp::ZERO;
    tx.delete_collection_rows(&scope.user, scope.cid).await?;
    if existed {
        // The user is locked (`begin_write`): no other delete moves the tombstone meanwhile.
        let tombstone = tx
            .collection_ts(&scope.user, TOMBSTONE)
            .await?
            .unwrap_or_default();
        tx.touch_collection(&scope.user, TOMBSTONE, tombstone.max(scope.t))
            .await?;
    }
    let storage_ts = tx.storage_ts(&scope.user).await?;
    Ok(DeletedCollection {
        previous_ts: scope.collection_ts,
        storage_ts,
    })
}

/// Returns the storage timestamp before the delete.
pub async fn delete_storage<T: WriteTx>(
    tx: &mut T,
    scope: &Scope<T::User>,
    precondition: Precondition,
) -> ApiResult<SyncTimestamp> {
    let before = tx.storage_ts(&scope.user).await?;
    precondition.check(before)?;
    tx.delete_user_rows(&scope.user).await?;
    Ok(before)
}

// ---- StorageDb, once for every engine ----

fn unexpected() -> ApiError {
    ApiError::internal("unit of work returned another kind of result")
}

#[async_trait]
impl<B: Backend> StorageDb for B {
    async fn info(
        &self,
        user: &UserId,
        kind: InfoKind,
        precondition: Precondition,
    ) -> ApiResult<Info> {
        let op = ReadOp::Info {
            user: user.clone(),
            kind,
            precondition,
        };
        match self.read(op).await? {
            ReadOut::Info(info) => Ok(info),
            _ => Err(unexpected()),
        }
    }

    async fn get_bsos(&self, params: GetBsos) -> ApiResult<BsoPage> {
        match self.read(ReadOp::GetBsos(params)).await? {
            ReadOut::Page(page) => Ok(page),
            _ => Err(unexpected()),
        }
    }

    async fn stream_bsos(&self, params: GetBsos) -> ApiResult<listing::BsoStream> {
        let (tx, rx) = listing::channel();
        // The engine runs the listing on a task of its own, which goes on after the head is
        // here; an engine failure before the unit of work starts comes back from `read`.
        let read = self.read(ReadOp::Stream(params, tx));
        let head = listing::receive(rx);
        tokio::pin!(read, head);
        tokio::select! {
            head = &mut head => match head {
                Ok(stream) => Ok(stream),
                // The channel closed without a head: the engine's own error says why.
                Err(e) => read.await.and(Err(e)),
            },
            done = &mut read => match done {
                Err(e) => Err(e),
                Ok(_) => head.await,
            },
        }
    }

    async fn get_bso(&self, params: BsoRef) -> ApiResult<Bso> {
        match self.read(ReadOp::GetBso(params)).await? {
            ReadOut::Bso(bso) => Ok(bso),
            _ => Err(unexpected()),
        }
    }

    async fn put_bso(&self, params: PutBso) -> ApiResult<SyncTimestamp> {
        match self.write(WriteOp::Put(params)).await? {
            WriteOut::Timestamp(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn post_bsos(&self, params: PostBsos) -> ApiResult<PostResult> {
        match self.write(WriteOp::Post(params)).await? {
            WriteOut::Post(result) => Ok(result),
            _ => Err(unexpected()),
        }
    }

    async fn delete_bso(&self, params: BsoRef) -> ApiResult<SyncTimestamp> {
        match self.write(WriteOp::DeleteBso(params)).await? {
            WriteOut::Timestamp(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn delete_bsos(&self, params: DeleteBsos) -> ApiResult<SyncTimestamp> {
        match self.write(WriteOp::DeleteBsos(params)).await? {
            WriteOut::Timestamp(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn delete_collection(&self, params: CollectionRef) -> ApiResult<DeletedCollection> {
        match self.write(WriteOp::DeleteCollection(params)).await? {
            WriteOut::Deleted(d) => Ok(d),
            _ => Err(unexpected()),
        }
    }

    async fn delete_storage(
        &self,
        user: &UserId,
        precondition: Precondition,
    ) -> ApiResult<SyncTimestamp> {
        let op = WriteOp::DeleteStorage {
            user: user.clone(),
            precondition,
        };
        match self.write(op).await? {
            WriteOut::Timestamp(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn check(&self) -> ApiResult<()> {
        self.read(ReadOp::Ping).await.map(|_| ())
    }

    async fn purge_expired_chunk(
        &self,
        now: SyncTimestamp,
        max_rows: u32,
    ) -> ApiResult<PurgeStats> {
        Backend::purge_expired_chunk(self, now, max_rows).await
    }

    async fn count_expired(&self, now: SyncTimestamp) -> ApiResult<PurgeStats> {
        match self.read(ReadOp::Expired(now)).await? {
            ReadOut::Expired(stats) => Ok(stats),
            _ => Err(unexpected()),
        }
    }

    async fn summary(&self, user: &UserId) -> ApiResult<UserSummary> {
        match self.read(ReadOp::Summary(user.clone())).await? {
            ReadOut::Summary(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn users_after(&self, after: u64, limit: u32) -> ApiResult<Vec<u64>> {
        match self.read(ReadOp::Users { after, limit }).await? {
            ReadOut::Users(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    async fn rows_after(
        &self,
        user: &UserId,
        collection: &str,
        after: Option<String>,
        limit: u32,
    ) -> ApiResult<Vec<StoredBso>> {
        let op = ReadOp::Rows {
            user: user.clone(),
            collection: collection.to_owned(),
            after,
            limit,
        };
        match self.read(op).await? {
            ReadOut::Rows(rows) => Ok(rows),
            _ => Err(unexpected()),
        }
    }

    async fn import_rows(
        &self,
        user: &UserId,
        collection: &str,
        rows: Vec<StoredBso>,
    ) -> ApiResult<()> {
        let op = WriteOp::ImportRows {
            user: user.clone(),
            collection: collection.to_owned(),
            rows,
        };
        self.write(op).await.map(|_| ())
    }

    async fn set_timestamps(
        &self,
        user: &UserId,
        collections: Vec<(String, i64)>,
        tombstone: i64,
    ) -> ApiResult<()> {
        let op = WriteOp::SetTimestamps {
            user: user.clone(),
            collections,
            tombstone,
        };
        self.write(op).await.map(|_| ())
    }

    fn pool_state(&self) -> PoolState {
        Backend::pool_state(self)
    }
}
