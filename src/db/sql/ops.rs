//! The storage operations as diesel queries. Each function runs inside a transaction the
//! backend opened (a read snapshot, or a write lock on the user's collection); none commits.

use std::collections::{BTreeMap, HashMap};

use diesel::dsl::{count_star, max, sum};
use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};

use super::schema::{batch_upload_items, batch_uploads, bso, collections, user_collections};
use crate::db::{BsoPage, InfoBody, InfoKind, PostResult, StorageConfig, not_found};
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::protocol::bso::{ModifiedRule, apply_update};
use crate::protocol::post::PostItems;
use crate::protocol::{
    BatchRequest, Bso, BsoQuery, BsoUpdate, Offset, Sort, StoredBso, SyncTimestamp, batch_id,
};

pub type Conn = SqliteConnection;
type Db = Sqlite;

/// Rows per statement, well under SQLite's bound-variable limit.
const CHUNK: usize = 500;
/// The collection id whose row keeps the storage timestamp after a collection delete.
const TOMBSTONE: i32 = 0;

// ---- collections and timestamps ----

pub fn collection_id(conn: &mut Conn, name: &str) -> QueryResult<Option<i32>> {
    collections::table
        .filter(collections::name.eq(name))
        .select(collections::id)
        .first(conn)
        .optional()
}

/// Custom names get the next id after the highest (101 upwards, id 100 being reserved).
pub fn get_or_create_collection_id(conn: &mut Conn, name: &str) -> QueryResult<i32> {
    if let Some(id) = collection_id(conn, name)? {
        return Ok(id);
    }
    diesel::insert_into(collections::table)
        .values(collections::name.eq(name))
        .execute(conn)?;
    collections::table
        .filter(collections::name.eq(name))
        .select(collections::id)
        .first(conn)
}

pub fn collection_ts(conn: &mut Conn, uid: i64, cid: i32) -> QueryResult<Option<SyncTimestamp>> {
    Ok(user_collections::table
        .find((uid, cid))
        .select(user_collections::last_modified)
        .first::<i64>(conn)
        .optional()?
        .map(SyncTimestamp::from_i64))
}

pub fn storage_ts(conn: &mut Conn, uid: i64) -> QueryResult<SyncTimestamp> {
    let ts: Option<i64> = user_collections::table
        .filter(user_collections::userid.eq(uid))
        .select(max(user_collections::last_modified))
        .first(conn)?;
    Ok(ts.map(SyncTimestamp::from_i64).unwrap_or_default())
}

/// Sets the collection's timestamp to `t`, creating its row when absent.
pub fn touch_collection(conn: &mut Conn, uid: i64, cid: i32, t: SyncTimestamp) -> QueryResult<()> {
    diesel::insert_into(user_collections::table)
        .values((
            user_collections::userid.eq(uid),
            user_collections::collection.eq(cid),
            user_collections::last_modified.eq(t.as_i64()),
        ))
        .on_conflict((user_collections::userid, user_collections::collection))
        .do_update()
        .set(user_collections::last_modified.eq(t.as_i64()))
        .execute(conn)?;
    Ok(())
}

fn names_by_id(conn: &mut Conn, ids: Vec<i32>) -> QueryResult<HashMap<i32, String>> {
    Ok(collections::table
        .filter(collections::id.eq_any(ids))
        .select((collections::id, collections::name))
        .load::<(i32, String)>(conn)?
        .into_iter()
        .collect())
}

fn live_bsos(uid: i64, now: i64) -> bso::BoxedQuery<'static, Db> {
    bso::table
        .filter(bso::userid.eq(uid))
        .filter(bso::ttl.gt(now))
        .into_boxed()
}

/// Bytes of unexpired payloads per collection.
fn usage_by_collection(conn: &mut Conn, uid: i64, now: i64) -> QueryResult<Vec<(i32, i64)>> {
    let rows: Vec<(i32, Option<i64>)> = bso::table
        .filter(bso::userid.eq(uid))
        .filter(bso::ttl.gt(now))
        .group_by(bso::collection)
        .select((bso::collection, sum(bso::payload_size)))
        .load(conn)?;
    Ok(rows.into_iter().map(|(c, s)| (c, s.unwrap_or(0))).collect())
}

pub fn user_usage_bytes(conn: &mut Conn, uid: i64, now: i64) -> QueryResult<i64> {
    Ok(usage_by_collection(conn, uid, now)?
        .into_iter()
        .map(|(_, b)| b)
        .sum())
}

fn named<V>(conn: &mut Conn, rows: Vec<(i32, V)>) -> QueryResult<BTreeMap<String, V>> {
    let names = names_by_id(conn, rows.iter().map(|(c, _)| *c).collect())?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, v)| names.get(&c).map(|n| (n.clone(), v)))
        .collect())
}

pub fn info(
    conn: &mut Conn,
    uid: i64,
    kind: InfoKind,
    now: SyncTimestamp,
) -> QueryResult<InfoBody> {
    let now = now.as_i64();
    Ok(match kind {
        InfoKind::Collections => {
            let rows: Vec<(i32, i64)> = user_collections::table
                .filter(user_collections::userid.eq(uid))
                .filter(user_collections::collection.ne(TOMBSTONE))
                .select((
                    user_collections::collection,
                    user_collections::last_modified,
                ))
                .load(conn)?;
            let rows = rows
                .into_iter()
                .map(|(c, m)| (c, SyncTimestamp::from_i64(m)))
                .collect();
            InfoBody::Timestamps(named(conn, rows)?)
        }
        InfoKind::Counts => {
            let rows: Vec<(i32, i64)> = bso::table
                .filter(bso::userid.eq(uid))
                .filter(bso::ttl.gt(now))
                .group_by(bso::collection)
                .select((bso::collection, count_star()))
                .load(conn)?;
            InfoBody::Counts(named(conn, rows)?)
        }
        InfoKind::Usage => {
            let rows = usage_by_collection(conn, uid, now)?
                .into_iter()
                .map(|(c, b)| (c, b as f64 / 1024.0))
                .collect();
            InfoBody::Usage(named(conn, rows)?)
        }
        InfoKind::Quota => InfoBody::Quota(user_usage_bytes(conn, uid, now)? as f64 / 1024.0),
    })
}

// ---- reading records ----

type BsoRow = (String, String, Option<i32>, i64, i64);

fn stored((id, payload, sortindex, modified, expiry): BsoRow) -> StoredBso {
    StoredBso {
        id,
        payload,
        sortindex,
        modified,
        expiry,
    }
}

const BSO_COLUMNS: (
    bso::id,
    bso::payload,
    bso::sortindex,
    bso::modified,
    bso::ttl,
) = (
    bso::id,
    bso::payload,
    bso::sortindex,
    bso::modified,
    bso::ttl,
);

/// The live record, if any.
pub fn get_bso(
    conn: &mut Conn,
    uid: i64,
    cid: i32,
    id: &str,
    now: SyncTimestamp,
) -> QueryResult<Option<StoredBso>> {
    Ok(live_bsos(uid, now.as_i64())
        .filter(bso::collection.eq(cid))
        .filter(bso::id.eq(id.to_owned()))
        .select(BSO_COLUMNS)
        .first::<BsoRow>(conn)
        .optional()?
        .map(stored))
}

/// One page of a listing. `max_records` caps pages without an explicit limit.
pub fn list_bsos(
    conn: &mut Conn,
    uid: i64,
    cid: i32,
    q: &BsoQuery,
    now: SyncTimestamp,
    max_records: u32,
) -> QueryResult<(Vec<Bso>, Option<Offset>)> {
    let limit = q.limit.unwrap_or(max_records).min(max_records);
    let mut query = live_bsos(uid, now.as_i64()).filter(bso::collection.eq(cid));
    if !q.ids.is_empty() {
        query = query.filter(bso::id.eq_any(q.ids.clone()));
    }
    if let Some(newer) = q.newer {
        query = query.filter(bso::modified.gt(newer.as_i64()));
    }
    if let Some(older) = q.older {
        query = query.filter(bso::modified.lt(older.as_i64()));
    }
    query = match (q.sort, q.offset.bound) {
        (Sort::Newest, Some(b)) => query.filter(bso::modified.le(b)),
        (Sort::Oldest, Some(b)) => query.filter(bso::modified.ge(b)),
        _ => query,
    };
    query = match q.sort {
        Sort::Newest => query.order((bso::modified.desc(), bso::id.desc())),
        Sort::Oldest => query.order((bso::modified.asc(), bso::id.asc())),
        Sort::Index => query.order((bso::sortindex.desc(), bso::id.desc())),
    };
    query = query
        .offset(q.offset.skip.min(i64::MAX as u64) as i64)
        .limit(i64::from(limit) + 1);
    let mut rows: Vec<StoredBso> = if q.full {
        query
            .select(BSO_COLUMNS)
            .load::<BsoRow>(conn)?
            .into_iter()
            .map(stored)
            .collect()
    } else {
        query
            .select((bso::id, bso::modified))
            .load::<(String, i64)>(conn)?
            .into_iter()
            .map(|(id, modified)| StoredBso {
                id,
                payload: String::new(),
                sortindex: None,
                modified,
                expiry: 0,
            })
            .collect()
    };
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more.then(|| {
        let page: Vec<i64> = rows.iter().map(|r| r.modified).collect();
        q.offset.next(q.sort, &page)
    });
    Ok((rows.into_iter().map(Bso::from).collect(), next))
}

/// Existing rows (expired included: writes overwrite them) for `ids`.
fn load_existing(
    conn: &mut Conn,
    uid: i64,
    cid: i32,
    ids: &[String],
) -> QueryResult<HashMap<String, StoredBso>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<BsoRow> = bso::table
            .filter(bso::userid.eq(uid))
            .filter(bso::collection.eq(cid))
            .filter(bso::id.eq_any(chunk))
            .select(BSO_COLUMNS)
            .load(conn)?;
        out.extend(rows.into_iter().map(|r| (r.0.clone(), stored(r))));
    }
    Ok(out)
}

// ---- writing records ----

#[derive(Insertable)]
#[diesel(table_name = bso)]
struct NewBso<'a> {
    userid: i64,
    collection: i32,
    id: &'a str,
    sortindex: Option<i32>,
    payload: &'a str,
    payload_size: i32,
    modified: i64,
    ttl: i64,
}

fn write_rows(conn: &mut Conn, uid: i64, cid: i32, rows: &[StoredBso]) -> QueryResult<()> {
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<NewBso<'_>> = chunk
            .iter()
            .map(|r| NewBso {
                userid: uid,
                collection: cid,
                id: &r.id,
                sortindex: r.sortindex,
                payload: &r.payload,
                payload_size: r.payload.len() as i32,
                modified: r.modified,
                ttl: r.expiry,
            })
            .collect();
        diesel::replace_into(bso::table)
            .values(values)
            .execute(conn)?;
    }
    Ok(())
}

/// Applies updates at T with the partial-update rules.
fn apply_updates(
    conn: &mut Conn,
    uid: i64,
    cid: i32,
    updates: &[BsoUpdate],
    t: SyncTimestamp,
    rule: ModifiedRule,
) -> QueryResult<()> {
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let existing = load_existing(conn, uid, cid, &ids)?;
    let rows: Vec<StoredBso> = updates
        .iter()
        .map(|u| apply_update(existing.get(&u.id), u, t, rule))
        .collect();
    write_rows(conn, uid, cid, &rows)
}

/// The state of a write unit of work once the collection is locked.
#[derive(Debug, Clone, Copy)]
pub struct WriteScope {
    pub uid: i64,
    pub cid: i32,
    /// The timestamp of this write.
    pub t: SyncTimestamp,
    /// The collection's timestamp before this write (0 when it has none).
    pub collection_ts: SyncTimestamp,
}

/// When quotas are on, a user at the limit (committed usage plus `staged` batch bytes) may not
/// write more; checked before the write, so one write may overshoot, as upstream.
pub fn check_quota(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    staged: i64,
) -> ApiResult<()> {
    if !config.enable_quota {
        return Ok(());
    }
    let used = user_usage_bytes(conn, scope.uid, scope.t.as_i64())?;
    if used + staged >= i64::from(config.limits.max_quota_limit) {
        if config.enforce_quota {
            return Err(ApiError::new(ErrorKind::OverQuota, "over quota"));
        }
        slog_scope::warn!("user over quota"; "uid" => scope.uid, "used" => used);
    }
    Ok(())
}

fn refresh_counters(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
) -> QueryResult<()> {
    if !config.enable_quota {
        return Ok(());
    }
    let (count, bytes): (i64, Option<i64>) = live_bsos(scope.uid, scope.t.as_i64())
        .filter(bso::collection.eq(scope.cid))
        .select((count_star(), sum(bso::payload_size)))
        .first(conn)?;
    diesel::update(user_collections::table.find((scope.uid, scope.cid)))
        .set((
            user_collections::count.eq(count as i32),
            user_collections::total_bytes.eq(bytes.unwrap_or(0)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Bumps the collection to T (and its quota counters).
fn finish_write(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
) -> QueryResult<SyncTimestamp> {
    touch_collection(conn, scope.uid, scope.cid, scope.t)?;
    refresh_counters(conn, scope, config)?;
    Ok(scope.t)
}

pub fn put_bso(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    update: &BsoUpdate,
) -> ApiResult<SyncTimestamp> {
    check_quota(conn, scope, config, 0)?;
    apply_updates(
        conn,
        scope.uid,
        scope.cid,
        std::slice::from_ref(update),
        scope.t,
        ModifiedRule::WhenContentChanges,
    )?;
    Ok(finish_write(conn, scope, config)?)
}

/// Deletes a live record; 404 when absent or expired.
pub fn delete_bso(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    id: &str,
) -> ApiResult<SyncTimestamp> {
    let deleted = diesel::delete(
        bso::table
            .filter(bso::userid.eq(scope.uid))
            .filter(bso::collection.eq(scope.cid))
            .filter(bso::id.eq(id))
            .filter(bso::ttl.gt(scope.t.as_i64())),
    )
    .execute(conn)?;
    if deleted == 0 {
        return Err(not_found());
    }
    Ok(finish_write(conn, scope, config)?)
}

pub fn delete_bsos(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    ids: &[String],
) -> ApiResult<SyncTimestamp> {
    for chunk in ids.chunks(CHUNK) {
        diesel::delete(
            bso::table
                .filter(bso::userid.eq(scope.uid))
                .filter(bso::collection.eq(scope.cid))
                .filter(bso::id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    Ok(finish_write(conn, scope, config)?)
}

fn delete_user_batches(conn: &mut Conn, uid: i64, batches: Vec<i64>) -> QueryResult<()> {
    for chunk in batches.chunks(CHUNK) {
        diesel::delete(
            batch_upload_items::table
                .filter(batch_upload_items::userid.eq(uid))
                .filter(batch_upload_items::batch.eq_any(chunk)),
        )
        .execute(conn)?;
        diesel::delete(
            batch_uploads::table
                .filter(batch_uploads::userid.eq(uid))
                .filter(batch_uploads::batch.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    Ok(())
}

/// Removes the collection and leaves a tombstone at T so the storage timestamp never goes
/// backwards. Returns the storage timestamp afterwards.
pub fn delete_collection(conn: &mut Conn, scope: &WriteScope) -> ApiResult<SyncTimestamp> {
    let (uid, cid) = (scope.uid, scope.cid);
    let existed = diesel::delete(user_collections::table.find((uid, cid))).execute(conn)? > 0;
    diesel::delete(
        bso::table
            .filter(bso::userid.eq(uid))
            .filter(bso::collection.eq(cid)),
    )
    .execute(conn)?;
    let batches = batch_uploads::table
        .filter(batch_uploads::userid.eq(uid))
        .filter(batch_uploads::collection.eq(cid))
        .select(batch_uploads::batch)
        .load(conn)?;
    delete_user_batches(conn, uid, batches)?;
    if existed {
        let tombstone = collection_ts(conn, uid, TOMBSTONE)?.unwrap_or_default();
        touch_collection(conn, uid, TOMBSTONE, tombstone.max(scope.t))?;
    }
    Ok(storage_ts(conn, uid)?)
}

pub fn delete_storage(conn: &mut Conn, uid: i64) -> QueryResult<()> {
    diesel::delete(bso::table.filter(bso::userid.eq(uid))).execute(conn)?;
    diesel::delete(user_collections::table.filter(user_collections::userid.eq(uid)))
        .execute(conn)?;
    diesel::delete(batch_upload_items::table.filter(batch_upload_items::userid.eq(uid)))
        .execute(conn)?;
    diesel::delete(batch_uploads::table.filter(batch_uploads::userid.eq(uid))).execute(conn)?;
    Ok(())
}

// ---- batches ----

type StagedRow = (String, Option<i32>, Option<String>, Option<i32>);

fn staged_update((id, sortindex, payload, ttl): StagedRow) -> BsoUpdate {
    BsoUpdate {
        id,
        payload,
        sortindex,
        ttl: ttl.map(|t| t.max(0) as u32),
    }
}

#[derive(Insertable)]
#[diesel(table_name = batch_upload_items)]
struct NewBatchItem<'a> {
    batch: i64,
    userid: i64,
    id: &'a str,
    sortindex: Option<i32>,
    payload: Option<&'a str>,
    payload_size: Option<i32>,
    ttl_offset: Option<i32>,
}

const STAGED_COLUMNS: (
    batch_upload_items::id,
    batch_upload_items::sortindex,
    batch_upload_items::payload,
    batch_upload_items::ttl_offset,
) = (
    batch_upload_items::id,
    batch_upload_items::sortindex,
    batch_upload_items::payload,
    batch_upload_items::ttl_offset,
);

fn staged_items(
    conn: &mut Conn,
    uid: i64,
    batch: i64,
    ids: Option<&[String]>,
) -> QueryResult<Vec<BsoUpdate>> {
    let base = || {
        batch_upload_items::table
            .filter(batch_upload_items::userid.eq(uid))
            .filter(batch_upload_items::batch.eq(batch))
            .select(STAGED_COLUMNS)
            .order(batch_upload_items::id.asc())
            .into_boxed::<Db>()
    };
    let rows: Vec<StagedRow> = match ids {
        None => base().load(conn)?,
        Some(ids) => {
            let mut rows = Vec::new();
            for chunk in ids.chunks(CHUNK) {
                rows.extend(
                    base()
                        .filter(batch_upload_items::id.eq_any(chunk))
                        .load::<StagedRow>(conn)?,
                );
            }
            rows
        }
    };
    Ok(rows.into_iter().map(staged_update).collect())
}

/// Stages `updates`, merging field by field with what the batch already holds, and keeps the
/// batch within max_total_records / max_total_bytes (400, code 17).
fn stage(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    batch: i64,
    updates: &[BsoUpdate],
) -> ApiResult<()> {
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let existing: HashMap<String, BsoUpdate> = staged_items(conn, scope.uid, batch, Some(&ids))?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    let merged: Vec<BsoUpdate> = updates
        .iter()
        .map(|u| {
            existing
                .get(&u.id)
                .map_or_else(|| u.clone(), |old| old.merged_with(u))
        })
        .collect();
    for chunk in merged.chunks(CHUNK) {
        let values: Vec<NewBatchItem<'_>> = chunk
            .iter()
            .map(|u| NewBatchItem {
                batch,
                userid: scope.uid,
                id: &u.id,
                sortindex: u.sortindex,
                payload: u.payload.as_deref(),
                payload_size: u.payload.as_ref().map(|p| p.len() as i32),
                ttl_offset: u.ttl.map(|t| t as i32),
            })
            .collect();
        diesel::replace_into(batch_upload_items::table)
            .values(values)
            .execute(conn)?;
    }
    let (records, bytes): (i64, Option<i64>) = batch_upload_items::table
        .filter(batch_upload_items::userid.eq(scope.uid))
        .filter(batch_upload_items::batch.eq(batch))
        .select((count_star(), sum(batch_upload_items::payload_size)))
        .first(conn)?;
    let limits = &config.limits;
    if records > i64::from(limits.max_total_records)
        || bytes.unwrap_or(0) > i64::from(limits.max_total_bytes)
    {
        return Err(ApiError::new(
            ErrorKind::SizeLimit,
            "batch over max_total_records or max_total_bytes",
        ));
    }
    if config.enable_quota {
        // Staged bytes count toward quota; re-sent ids replaced their earlier bytes above.
        check_quota(conn, scope, config, bytes.unwrap_or(0))?;
    }
    Ok(())
}

/// The batch if it exists for this user and collection and has not expired.
fn find_batch(conn: &mut Conn, scope: &WriteScope, id: &str) -> ApiResult<i64> {
    let batch = batch_id::decode(id)?;
    let found: Option<i32> = batch_uploads::table
        .find((batch, scope.uid))
        .select(batch_uploads::collection)
        .first(conn)
        .optional()?;
    match found {
        Some(cid) if cid == scope.cid && !batch_id::is_expired(batch, scope.t.as_i64()) => {
            Ok(batch)
        }
        _ => Err(ApiError::bad_request("batch not found")),
    }
}

fn create_batch(conn: &mut Conn, scope: &WriteScope) -> ApiResult<i64> {
    let now = scope.t.as_i64();
    // Expired batches of this user are dropped here rather than by a purge job.
    let expired = batch_uploads::table
        .filter(batch_uploads::userid.eq(scope.uid))
        .filter(batch_uploads::batch.lt(now - batch_id::BATCH_LIFETIME_MS - 10))
        .select(batch_uploads::batch)
        .load(conn)?;
    delete_user_batches(conn, scope.uid, expired)?;
    let first = batch_id::numeric_id(now, scope.uid as u64);
    for candidate in first..first + 5 {
        let inserted = diesel::insert_or_ignore_into(batch_uploads::table)
            .values((
                batch_uploads::batch.eq(candidate),
                batch_uploads::userid.eq(scope.uid),
                batch_uploads::collection.eq(scope.cid),
            ))
            .execute(conn)?;
        if inserted == 1 {
            // A reused id (possible with this scheme) must start empty.
            diesel::delete(
                batch_upload_items::table
                    .filter(batch_upload_items::userid.eq(scope.uid))
                    .filter(batch_upload_items::batch.eq(candidate)),
            )
            .execute(conn)?;
            return Ok(candidate);
        }
    }
    Err(ApiError::new(
        ErrorKind::Conflict,
        "could not allocate a batch id",
    ))
}

/// Applies everything staged with one T (every record gets modified = T), then drops the batch.
fn commit_batch(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    batch: i64,
) -> ApiResult<SyncTimestamp> {
    let staged = staged_items(conn, scope.uid, batch, None)?;
    for chunk in staged.chunks(CHUNK) {
        apply_updates(
            conn,
            scope.uid,
            scope.cid,
            chunk,
            scope.t,
            ModifiedRule::Always,
        )?;
    }
    delete_user_batches(conn, scope.uid, vec![batch])?;
    Ok(finish_write(conn, scope, config)?)
}

/// A POST: plain, or one step of a batch upload.
pub fn post_bsos(
    conn: &mut Conn,
    scope: &WriteScope,
    config: &StorageConfig,
    items: PostItems,
    request: &BatchRequest,
) -> ApiResult<PostResult> {
    let success: Vec<String> = items.valid.iter().map(|u| u.id.clone()).collect();
    let result = |last_modified, batch| PostResult {
        last_modified,
        batch,
        success: success.clone(),
        failed: items.failed.clone(),
    };
    match request {
        BatchRequest::None => {
            check_quota(conn, scope, config, 0)?;
            apply_updates(
                conn,
                scope.uid,
                scope.cid,
                &items.valid,
                scope.t,
                ModifiedRule::WhenContentChanges,
            )?;
            Ok(result(finish_write(conn, scope, config)?, None))
        }
        BatchRequest::Start => {
            let batch = create_batch(conn, scope)?;
            stage(conn, scope, config, batch, &items.valid)?;
            Ok(result(scope.collection_ts, Some(batch_id::encode(batch))))
        }
        BatchRequest::Append(id) => {
            let batch = find_batch(conn, scope, id)?;
            stage(conn, scope, config, batch, &items.valid)?;
            Ok(result(scope.collection_ts, Some(id.clone())))
        }
        BatchRequest::Commit(id) => {
            let batch = find_batch(conn, scope, id)?;
            stage(conn, scope, config, batch, &items.valid)?;
            Ok(result(commit_batch(conn, scope, config, batch)?, None))
        }
    }
}

/// A listing page for the trait's result type.
pub fn page(
    collection_ts: SyncTimestamp,
    (items, next_offset): (Vec<Bso>, Option<Offset>),
) -> BsoPage {
    BsoPage {
        collection_ts,
        items,
        next_offset,
    }
}

/// Removes expired records and expired batches (with their staged items) of every user.
pub fn purge_expired(conn: &mut Conn, now: SyncTimestamp) -> QueryResult<crate::db::PurgeStats> {
    let now = now.as_i64();
    let bsos = diesel::delete(bso::table.filter(bso::ttl.le(now))).execute(conn)?;
    let cutoff = now - batch_id::BATCH_LIFETIME_MS - 10;
    diesel::delete(batch_upload_items::table.filter(batch_upload_items::batch.lt(cutoff)))
        .execute(conn)?;
    let batches = diesel::delete(batch_uploads::table.filter(batch_uploads::batch.lt(cutoff)))
        .execute(conn)?;
    Ok(crate::db::PurgeStats { bsos, batches })
}
