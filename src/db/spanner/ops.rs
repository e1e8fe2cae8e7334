//! The storage operations on Spanner: the same rules as `sql::ops`, in Spanner SQL over the
//! interleaved upstream schema. Timestamps are TIMESTAMP columns, read and written as integer
//! ms (`UNIX_MILLIS`, `TIMESTAMP_MILLIS`). Writes are DML, so later reads in the same
//! read-write transaction see them.

use std::collections::{BTreeMap, HashMap};

use gcloud_spanner::row::Row;
use gcloud_spanner::statement::{Statement, ToKind};
use gcloud_spanner::transaction::Transaction;
use gcloud_spanner::transaction_rw::ReadWriteTransaction;

use super::status_error;
use crate::db::listing::{self, Listing, ListingSender};
use crate::db::rules::{self, Staged, TOMBSTONE};
use crate::db::{
    BsoPage, BsoRef, CollectionRef, DeleteBsos, DeletedCollection, GetBsos, Info, InfoBody,
    InfoKind, PostBsos, PostResult, PutBso, StorageConfig, UserId, not_found,
};
use crate::error::{ApiError, ApiResult};
use crate::protocol::bso::{ModifiedRule, apply_update};
use crate::protocol::{
    BatchRequest, Bso, BsoQuery, BsoUpdate, Offset, Precondition, Sort, StoredBso, SyncTimestamp,
    batch_id,
};

/// Rows per DML statement (Spanner allows 950 parameters per statement).
const ROWS_PER_STATEMENT: usize = 100;
/// Ids per `IN UNNEST(@ids)` read.
const IDS_PER_READ: usize = 1000;
/// First id of custom collections.
const FIRST_CUSTOM_COLLECTION: i64 = 101;

/// The latest instant a Spanner TIMESTAMP holds (9999-12-31T23:59:59.999Z), in ms.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// A client-supplied time as a TIMESTAMP_MILLIS argument: beyond Spanner's range it is the
/// range's end, which compares the same way against every stored time.
fn ms_param(ms: i64) -> i64 {
    ms.clamp(0, MAX_TIMESTAMP_MS)
}

/// The user and collection a write unit of work holds, and its T.
#[derive(Debug, Clone)]
pub struct Scope {
    pub fxa_uid: String,
    pub fxa_kid: String,
    pub cid: i64,
    pub t: SyncTimestamp,
    pub collection_ts: SyncTimestamp,
}

/// Spanner keys users by fxa_uid/fxa_kid: a token without them (minted by a tokenserver that
/// leaves them out) cannot name a user here, and must not share an empty key with others.
fn require_identity(user: &UserId) -> ApiResult<()> {
    if user.fxa_uid.is_empty() || user.fxa_kid.is_empty() {
        return Err(ApiError::unauthorized("token carries no fxa_uid/fxa_kid"));
    }
    Ok(())
}

/// A statement with the user's key bound as @fxa_uid / @fxa_kid.
fn user_stmt(sql: &str, user: &UserId) -> Statement {
    let mut stmt = Statement::new(sql);
    stmt.add_param("fxa_uid", &user.fxa_uid);
    stmt.add_param("fxa_kid", &user.fxa_kid);
    stmt
}

fn scope_stmt(sql: &str, scope: &Scope) -> Statement {
    let mut stmt = Statement::new(sql);
    stmt.add_param("fxa_uid", &scope.fxa_uid);
    stmt.add_param("fxa_kid", &scope.fxa_kid);
    stmt.add_param("cid", &scope.cid);
    stmt
}

fn param<T: ToKind>(mut stmt: Statement, name: &str, value: &T) -> Statement {
    stmt.add_param(name, value);
    stmt
}

async fn rows(tx: &mut Transaction, stmt: Statement) -> ApiResult<Vec<Row>> {
    let mut iter = tx.query(stmt).await.map_err(status_error)?;
    let mut out = Vec::new();
    while let Some(row) = iter.next().await.map_err(status_error)? {
        out.push(row);
    }
    Ok(out)
}

fn col<T: gcloud_spanner::row::TryFromValue>(row: &Row, name: &str) -> ApiResult<T> {
    row.column_by_name::<T>(name)
        .map_err(|e| ApiError::internal(format!("spanner column {name}: {e}")))
}

async fn exec(tx: &mut ReadWriteTransaction, stmt: Statement) -> ApiResult<i64> {
    tx.update(stmt).await.map_err(status_error)
}

// ---- collections and timestamps ----

pub async fn collection_id(tx: &mut Transaction, name: &str) -> ApiResult<Option<i64>> {
    let stmt = param(
        Statement::new("SELECT collection_id FROM collections WHERE name = @name"),
        "name",
        &name,
    );
    match rows(tx, stmt).await?.first() {
        Some(row) => Ok(Some(col(row, "collection_id")?)),
        None => Ok(None),
    }
}

/// Custom names get the next id after the highest (101 upwards).
async fn get_or_create_collection_id(tx: &mut ReadWriteTransaction, name: &str) -> ApiResult<i64> {
    if let Some(id) = collection_id(tx, name).await? {
        return Ok(id);
    }
    let max = rows(
        tx,
        Statement::new("SELECT MAX(collection_id) AS m FROM collections"),
    )
    .await?;
    let max: Option<i64> = max.first().map(|r| col(r, "m")).transpose()?.flatten();
    let id = max.map_or(FIRST_CUSTOM_COLLECTION, |m| {
        (m + 1).max(FIRST_CUSTOM_COLLECTION)
    });
    let mut stmt =
        Statement::new("INSERT INTO collections (collection_id, name) VALUES (@id, @name)");
    stmt.add_param("id", &id);
    stmt.add_param("name", &name);
    exec(tx, stmt).await?;
    Ok(id)
}

/// The collection's timestamp (ms), `None` when it has no row; placeholder rows read as 0.
async fn collection_ts(
    tx: &mut Transaction,
    user: &UserId,
    cid: i64,
) -> ApiResult<Option<SyncTimestamp>> {
    let stmt = param(
        user_stmt(
            "SELECT UNIX_MILLIS(modified) AS m FROM user_collections \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid",
            user,
        ),
        "cid",
        &cid,
    );
    match rows(tx, stmt).await?.first() {
        Some(row) => Ok(Some(SyncTimestamp::from_i64(col::<i64>(row, "m")?.max(0)))),
        None => Ok(None),
    }
}

async fn storage_ts(tx: &mut Transaction, user: &UserId) -> ApiResult<SyncTimestamp> {
    let stmt = user_stmt(
        "SELECT MAX(UNIX_MILLIS(modified)) AS m FROM user_collections \
         WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid",
        user,
    );
    let max: Option<i64> = match rows(tx, stmt).await?.first() {
        Some(row) => col(row, "m")?,
        None => None,
    };
    Ok(SyncTimestamp::from_i64(max.unwrap_or(0).max(0)))
}

/// Sets the collection's timestamp to `t`, creating its row when absent.
async fn touch_collection(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    cid: i64,
    t: SyncTimestamp,
) -> ApiResult<()> {
    let mut stmt = scope_stmt(
        "UPDATE user_collections SET modified = TIMESTAMP_MILLIS(@t) \
         WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @c",
        scope,
    );
    stmt.add_param("t", &t.as_i64());
    stmt.add_param("c", &cid);
    if exec(tx, stmt).await? == 0 {
        let mut stmt = scope_stmt(
            "INSERT INTO user_collections (fxa_uid, fxa_kid, collection_id, modified) \
             VALUES (@fxa_uid, @fxa_kid, @c, TIMESTAMP_MILLIS(@t))",
            scope,
        );
        stmt.add_param("t", &t.as_i64());
        stmt.add_param("c", &cid);
        exec(tx, stmt).await?;
    }
    Ok(())
}

async fn names_by_id(tx: &mut Transaction, ids: Vec<i64>) -> ApiResult<HashMap<i64, String>> {
    let stmt = param(
        Statement::new(
            "SELECT collection_id, name FROM collections WHERE collection_id IN UNNEST(@ids)",
        ),
        "ids",
        &ids,
    );
    rows(tx, stmt)
        .await?
        .iter()
        .map(|r| Ok((col(r, "collection_id")?, col(r, "name")?)))
        .collect()
}

async fn named<V>(tx: &mut Transaction, values: Vec<(i64, V)>) -> ApiResult<BTreeMap<String, V>> {
    let names = names_by_id(tx, values.iter().map(|(c, _)| *c).collect()).await?;
    Ok(values
        .into_iter()
        .filter_map(|(c, v)| names.get(&c).map(|n| (n.clone(), v)))
        .collect())
}

/// `(collection_id, value)` pairs from a grouped query over live records.
async fn per_collection(
    tx: &mut Transaction,
    user: &UserId,
    select: &str,
    now: SyncTimestamp,
) -> ApiResult<Vec<(i64, i64)>> {
    let sql = format!(
        "SELECT collection_id, {select} AS v FROM bsos \
         WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND expiry > TIMESTAMP_MILLIS(@now) \
         GROUP BY collection_id"
    );
    let stmt = param(user_stmt(&sql, user), "now", &now.as_i64());
    rows(tx, stmt)
        .await?
        .iter()
        .map(|r| {
            Ok((
                col(r, "collection_id")?,
                col::<Option<i64>>(r, "v")?.unwrap_or(0),
            ))
        })
        .collect()
}

const BYTES: &str = "SUM(BYTE_LENGTH(payload))";

async fn user_usage_bytes(
    tx: &mut Transaction,
    user: &UserId,
    now: SyncTimestamp,
) -> ApiResult<i64> {
    Ok(per_collection(tx, user, BYTES, now)
        .await?
        .iter()
        .map(|(_, b)| b)
        .sum())
}

pub async fn info(
    tx: &mut Transaction,
    user: &UserId,
    kind: InfoKind,
    precondition: Precondition,
) -> ApiResult<Info> {
    require_identity(user)?;
    let storage_ts = storage_ts(tx, user).await?;
    precondition.check(storage_ts)?;
    let now = SyncTimestamp::now();
    let body = match kind {
        InfoKind::Collections => {
            let stmt = param(
                user_stmt(
                    "SELECT collection_id, UNIX_MILLIS(modified) AS m FROM user_collections \
                     WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id != @tombstone \
                     AND modified > TIMESTAMP_MILLIS(0)",
                    user,
                ),
                "tombstone",
                &i64::from(TOMBSTONE),
            );
            let values = rows(tx, stmt)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        col(r, "collection_id")?,
                        SyncTimestamp::from_i64(col(r, "m")?),
                    ))
                })
                .collect::<ApiResult<Vec<_>>>()?;
            InfoBody::Timestamps(named(tx, values).await?)
        }
        InfoKind::Counts => {
            let values = per_collection(tx, user, "COUNT(*)", now).await?;
            InfoBody::Counts(named(tx, values).await?)
        }
        InfoKind::Usage => {
            let values = per_collection(tx, user, BYTES, now)
                .await?
                .into_iter()
                .map(|(c, b)| (c, b as f64 / 1024.0))
                .collect();
            InfoBody::Usage(named(tx, values).await?)
        }
        InfoKind::Quota => InfoBody::Quota(user_usage_bytes(tx, user, now).await? as f64 / 1024.0),
    };
    Ok(Info { storage_ts, body })
}

// ---- reading records ----

/// An ids-only listing reads no payloads (the fields `stored` expects, empty).
const ID_COLUMNS: &str = "bso_id, CAST(NULL AS STRING) AS payload, CAST(NULL AS INT64) AS sortindex, \
     UNIX_MILLIS(modified) AS modified, CAST(0 AS INT64) AS expiry";
const BSO_COLUMNS: &str =
    "bso_id, payload, sortindex, UNIX_MILLIS(modified) AS modified, UNIX_MILLIS(expiry) AS expiry";

fn stored(row: &Row) -> ApiResult<StoredBso> {
    Ok(StoredBso {
        id: col(row, "bso_id")?,
        payload: col::<Option<String>>(row, "payload")?.unwrap_or_default(),
        sortindex: col::<Option<i64>>(row, "sortindex")?.map(|s| s as i32),
        modified: col(row, "modified")?,
        expiry: col(row, "expiry")?,
    })
}

async fn get_live_bso(
    tx: &mut Transaction,
    user: &UserId,
    cid: i64,
    id: &str,
    now: SyncTimestamp,
) -> ApiResult<Option<StoredBso>> {
    let mut stmt = user_stmt(
        &format!(
            "SELECT {BSO_COLUMNS} FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
             AND collection_id = @cid AND bso_id = @id AND expiry > TIMESTAMP_MILLIS(@now)"
        ),
        user,
    );
    stmt.add_param("cid", &cid);
    stmt.add_param("id", &id);
    stmt.add_param("now", &now.as_i64());
    rows(tx, stmt).await?.first().map(stored).transpose()
}

async fn list_bsos(
    tx: &mut Transaction,
    user: &UserId,
    cid: i64,
    q: &BsoQuery,
    max_records: u32,
    now: SyncTimestamp,
) -> ApiResult<(Vec<Bso>, Option<Offset>)> {
    let limit = q.limit.unwrap_or(max_records).min(max_records);
    let columns = if q.full { BSO_COLUMNS } else { ID_COLUMNS };
    let mut sql = format!(
        "SELECT {columns} FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
         AND collection_id = @cid AND expiry > TIMESTAMP_MILLIS(@now)"
    );
    if !q.ids.is_empty() {
        sql.push_str(" AND bso_id IN UNNEST(@ids)");
    }
    if q.newer.is_some() {
        sql.push_str(" AND modified > TIMESTAMP_MILLIS(@newer)");
    }
    if q.older.is_some() {
        sql.push_str(" AND modified < TIMESTAMP_MILLIS(@older)");
    }
    match (q.sort, q.offset.bound) {
        (Sort::Newest, Some(_)) => sql.push_str(" AND modified <= TIMESTAMP_MILLIS(@bound)"),
        (Sort::Oldest, Some(_)) => sql.push_str(" AND modified >= TIMESTAMP_MILLIS(@bound)"),
        _ => {}
    }
    sql.push_str(match q.sort {
        // Qualified: the select list's aliases must not be what is sorted on.
        Sort::Newest => " ORDER BY bsos.modified DESC, bsos.bso_id DESC",
        Sort::Oldest => " ORDER BY bsos.modified ASC, bsos.bso_id ASC",
        Sort::Index => " ORDER BY bsos.sortindex DESC, bsos.bso_id DESC",
    });
    sql.push_str(" LIMIT @limit OFFSET @skip");
    let mut stmt = user_stmt(&sql, user);
    stmt.add_param("cid", &cid);
    stmt.add_param("now", &now.as_i64());
    if !q.ids.is_empty() {
        stmt.add_param("ids", &q.ids);
    }
    if let Some(newer) = q.newer {
        stmt.add_param("newer", &ms_param(newer.as_i64()));
    }
    if let Some(older) = q.older {
        stmt.add_param("older", &ms_param(older.as_i64()));
    }
    if let Some(bound) = q.offset.bound {
        stmt.add_param("bound", &ms_param(bound));
    }
    stmt.add_param("limit", &(i64::from(limit) + 1));
    stmt.add_param("skip", &(q.offset.skip.min(i64::MAX as u64) as i64));
    let found = rows(tx, stmt)
        .await?
        .iter()
        .map(stored)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(rules::finish_page(found, limit, q))
}

pub async fn get_bsos(
    tx: &mut Transaction,
    config: &StorageConfig,
    params: &GetBsos,
) -> ApiResult<BsoPage> {
    require_identity(&params.target.user)?;
    let user = &params.target.user;
    let Some(cid) = collection_id(tx, &params.target.collection).await? else {
        params.target.precondition.check(SyncTimestamp::ZERO)?;
        return Ok(BsoPage {
            collection_ts: SyncTimestamp::ZERO,
            items: vec![],
            next_offset: None,
        });
    };
    let ts = collection_ts(tx, user, cid).await?.unwrap_or_default();
    params.target.precondition.check(ts)?;
    let (items, next_offset) = list_bsos(
        tx,
        user,
        cid,
        &params.query,
        config.limits.max_total_records,
        SyncTimestamp::now(),
    )
    .await?;
    Ok(BsoPage {
        collection_ts: ts,
        items,
        next_offset,
    })
}

/// `get_bsos` sent as it is read (`db::listing`), from the read-only transaction's snapshot:
/// a page within one chunk in one read, a bigger full page as its head, then the records in
/// chunks; each read is bounded by `step` (a deadline per read, not for the whole listing,
/// whose pace is the client's).
pub async fn stream_bsos(
    tx: &mut Transaction,
    config: &StorageConfig,
    params: &GetBsos,
    out: &ListingSender,
    step: std::time::Duration,
) -> ApiResult<()> {
    let bounded = |_: tokio::time::error::Elapsed| {
        crate::db::fault::DbFault::Deadline.error("spanner did not answer in time")
    };
    require_identity(&params.target.user)?;
    let user = &params.target.user;
    let q = &params.query;
    let now = SyncTimestamp::now();
    let max = config.limits.max_total_records;
    let cid = tokio::time::timeout(step, collection_id(tx, &params.target.collection))
        .await
        .map_err(bounded)??;
    let Some(cid) = cid else {
        params.target.precondition.check(SyncTimestamp::ZERO)?;
        let page = BsoPage {
            collection_ts: SyncTimestamp::ZERO,
            items: vec![],
            next_offset: None,
        };
        return listing::send(out, Ok(Listing::Head { page, more: false })).await;
    };
    let ts = tokio::time::timeout(step, collection_ts(tx, user, cid))
        .await
        .map_err(bounded)??
        .unwrap_or_default();
    params.target.precondition.check(ts)?;
    let page_limit = q.limit.unwrap_or(max).min(max);
    let n = listing::first_chunk(q, max);
    let first_q = if q.full {
        listing::chunk_query(q, q.offset, n)
    } else {
        q.clone()
    };
    let (first, next) = tokio::time::timeout(step, list_bsos(tx, user, cid, &first_q, max, now))
        .await
        .map_err(bounded)??;
    if !q.full || next.is_none() || n == page_limit {
        // The whole page: one read, as without streaming.
        let page = BsoPage {
            collection_ts: ts,
            items: first,
            next_offset: next,
        };
        return listing::send(out, Ok(Listing::Head { page, more: false })).await;
    }
    let head_q = listing::head_query(q);
    let (items, next_offset) =
        tokio::time::timeout(step, list_bsos(tx, user, cid, &head_q, max, now))
            .await
            .map_err(bounded)??;
    let total = items.len();
    let page = BsoPage {
        collection_ts: ts,
        items,
        next_offset,
    };
    listing::send(out, Ok(Listing::Head { page, more: true })).await?;
    let (mut sent, mut offset) = (first.len(), next);
    listing::send(out, Ok(Listing::Records(first))).await?;
    while let (Some(from), Some(n)) = (offset, listing::next_chunk(total, sent)) {
        let chunk_q = listing::chunk_query(q, from, n);
        let (items, next) =
            tokio::time::timeout(step, list_bsos(tx, user, cid, &chunk_q, max, now))
                .await
                .map_err(bounded)??;
        if items.is_empty() {
            break;
        }
        sent += items.len();
        offset = next;
        listing::send(out, Ok(Listing::Records(items))).await?;
    }
    Ok(())
}

fn modified_of(bso: &Option<StoredBso>) -> SyncTimestamp {
    bso.as_ref()
        .map_or(SyncTimestamp::ZERO, |b| SyncTimestamp::from_i64(b.modified))
}

pub async fn get_bso(tx: &mut Transaction, params: &BsoRef) -> ApiResult<Bso> {
    require_identity(&params.user)?;
    let found = match collection_id(tx, &params.collection).await? {
        Some(cid) => get_live_bso(tx, &params.user, cid, &params.id, SyncTimestamp::now()).await?,
        None => None,
    };
    params.precondition.check(modified_of(&found))?;
    found.map(Bso::from).ok_or_else(not_found)
}

// ---- writing records ----

/// Existing rows (expired included: writes overwrite them) for `ids`.
async fn load_existing(
    tx: &mut Transaction,
    scope: &Scope,
    ids: &[String],
) -> ApiResult<HashMap<String, StoredBso>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_READ) {
        let stmt = param(
            scope_stmt(
                &format!(
                    "SELECT {BSO_COLUMNS} FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
                     AND collection_id = @cid AND bso_id IN UNNEST(@ids)"
                ),
                scope,
            ),
            "ids",
            &chunk.to_vec(),
        );
        for row in rows(tx, stmt).await? {
            let b = stored(&row)?;
            out.insert(b.id.clone(), b);
        }
    }
    Ok(out)
}

/// Writes whole rows with INSERT OR UPDATE (eight cells per record: the mutation budget).
async fn write_rows(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    records: &[StoredBso],
) -> ApiResult<()> {
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "(@fxa_uid, @fxa_kid, @cid, @id{i}, @s{i}, @p{i}, TIMESTAMP_MILLIS(@m{i}), TIMESTAMP_MILLIS(@e{i}))"
                )
            })
            .collect();
        let mut stmt = scope_stmt(
            &format!(
                "INSERT OR UPDATE INTO bsos (fxa_uid, fxa_kid, collection_id, bso_id, sortindex, \
                 payload, modified, expiry) VALUES {}",
                values.join(", ")
            ),
            scope,
        );
        for (i, r) in chunk.iter().enumerate() {
            stmt.add_param(&format!("id{i}"), &r.id);
            stmt.add_param(&format!("s{i}"), &r.sortindex.map(i64::from));
            stmt.add_param(&format!("p{i}"), &r.payload);
            stmt.add_param(&format!("m{i}"), &r.modified);
            stmt.add_param(&format!("e{i}"), &r.expiry);
        }
        exec(tx, stmt).await?;
    }
    Ok(())
}

async fn apply_updates(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    updates: &[BsoUpdate],
    rule: ModifiedRule,
) -> ApiResult<()> {
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let existing = load_existing(tx, scope, &ids).await?;
    let records: Vec<StoredBso> = updates
        .iter()
        .map(|u| apply_update(existing.get(&u.id), u, scope.t, rule))
        .collect();
    write_rows(tx, scope, &records).await
}

/// Resolves the collection, reads every timestamp of the user (in a read-write transaction
/// that locks what it reads, so two writes of one user serialize: the later one aborts and is
/// run again), creates the collection's invisible placeholder row when it has none (interleaved
/// records and batches need it as their parent), and picks a T later than the user's storage
/// timestamp.
pub async fn begin_write(
    tx: &mut ReadWriteTransaction,
    user: &UserId,
    collection: Option<&str>,
) -> ApiResult<Scope> {
    // purge_expired runs for no user.
    if collection.is_some() || !user.fxa_uid.is_empty() {
        require_identity(user)?;
    }
    let mut scope = Scope {
        fxa_uid: user.fxa_uid.clone(),
        fxa_kid: user.fxa_kid.clone(),
        cid: -1,
        t: SyncTimestamp::now(),
        collection_ts: SyncTimestamp::ZERO,
    };
    if user.fxa_uid.is_empty() {
        return Ok(scope);
    }
    if let Some(name) = collection {
        scope.cid = get_or_create_collection_id(tx, name).await?;
    }
    let stmt = user_stmt(
        "SELECT collection_id, UNIX_MILLIS(modified) AS m FROM user_collections \
         WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid",
        user,
    );
    let rows = rows(tx, stmt)
        .await?
        .iter()
        .map(|r| Ok((col::<i64>(r, "collection_id")?, col::<i64>(r, "m")?)))
        .collect::<ApiResult<Vec<_>>>()?;
    let (storage_ts, collection_ts) = rules::user_timestamps(rows, scope.cid);
    scope.collection_ts = match collection_ts {
        Some(ts) => ts,
        None if collection.is_some() => {
            let stmt = scope_stmt(
                "INSERT INTO user_collections (fxa_uid, fxa_kid, collection_id, modified) \
                 VALUES (@fxa_uid, @fxa_kid, @cid, TIMESTAMP_MILLIS(0))",
                &scope,
            );
            exec(tx, stmt).await?;
            SyncTimestamp::ZERO
        }
        None => SyncTimestamp::ZERO,
    };
    let floor = storage_ts.max(scope.collection_ts);
    if let Some(ms) = rules::clock_wait(floor, scope.t)? {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        scope.t = SyncTimestamp::now();
        rules::ensure_later(floor, scope.t)?;
    }
    Ok(scope)
}

async fn check_quota(
    tx: &mut Transaction,
    scope: &Scope,
    user: &UserId,
    config: &StorageConfig,
    staged: i64,
) -> ApiResult<()> {
    if !config.enable_quota {
        return Ok(());
    }
    let used = user_usage_bytes(tx, user, scope.t).await?;
    rules::check_quota(config, used, staged)
}

/// Bumps the collection to T and refreshes its quota counters.
async fn finish_write(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    config: &StorageConfig,
) -> ApiResult<SyncTimestamp> {
    touch_collection(tx, scope, scope.cid, scope.t).await?;
    if config.enable_quota {
        refresh_counters(tx, scope).await?;
    }
    Ok(scope.t)
}

async fn refresh_counters(tx: &mut ReadWriteTransaction, scope: &Scope) -> ApiResult<()> {
    let stmt = param(
        scope_stmt(
            "SELECT COUNT(*) AS n, SUM(BYTE_LENGTH(payload)) AS b FROM bsos \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid \
             AND expiry > TIMESTAMP_MILLIS(@now)",
            scope,
        ),
        "now",
        &scope.t.as_i64(),
    );
    let (count, bytes) = match rows(tx, stmt).await?.first() {
        Some(r) => (
            col::<i64>(r, "n")?,
            col::<Option<i64>>(r, "b")?.unwrap_or(0),
        ),
        None => (0, 0),
    };
    let mut stmt = scope_stmt(
        "UPDATE user_collections SET count = @n, total_bytes = @b \
         WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid",
        scope,
    );
    stmt.add_param("n", &count);
    stmt.add_param("b", &bytes);
    exec(tx, stmt).await?;
    Ok(())
}

// ---- batches ----

fn batch_stmt(sql: &str, scope: &Scope, batch: &str) -> Statement {
    param(scope_stmt(sql, scope), "batch", &batch)
}

async fn create_batch(tx: &mut ReadWriteTransaction, scope: &Scope) -> ApiResult<String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stmt = param(
        batch_stmt(
            "INSERT INTO batches (fxa_uid, fxa_kid, collection_id, batch_id, expiry) \
             VALUES (@fxa_uid, @fxa_kid, @cid, @batch, TIMESTAMP_MILLIS(@expiry))",
            scope,
            &id,
        ),
        "expiry",
        &(scope.t.as_i64() + batch_id::BATCH_LIFETIME_MS),
    );
    exec(tx, stmt).await?;
    Ok(id)
}

/// The batch if it exists for this user and collection and has not expired.
async fn find_batch(tx: &mut Transaction, scope: &Scope, id: &str) -> ApiResult<String> {
    let id = id.trim();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("invalid batch id"));
    }
    let stmt = param(
        batch_stmt(
            "SELECT batch_id FROM batches WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
             AND collection_id = @cid AND batch_id = @batch AND expiry > TIMESTAMP_MILLIS(@now)",
            scope,
            id,
        ),
        "now",
        &scope.t.as_i64(),
    );
    if rows(tx, stmt).await?.is_empty() {
        return Err(ApiError::bad_request("batch not found"));
    }
    Ok(id.to_owned())
}

async fn staged_items(
    tx: &mut Transaction,
    scope: &Scope,
    batch: &str,
    which: Staged<'_>,
) -> ApiResult<Vec<BsoUpdate>> {
    let mut sql = String::from(
        "SELECT batch_bso_id, payload, sortindex, ttl FROM batch_bsos WHERE fxa_uid = @fxa_uid \
         AND fxa_kid = @fxa_kid AND collection_id = @cid AND batch_id = @batch",
    );
    match which {
        Staged::Ids(_) => sql.push_str(" AND batch_bso_id IN UNNEST(@ids)"),
        Staged::After(after) => {
            if after.is_some() {
                sql.push_str(" AND batch_bso_id > @after");
            }
            sql.push_str(&format!(
                " ORDER BY batch_bso_id LIMIT {}",
                rules::COMMIT_CHUNK
            ));
        }
    }
    let mut stmt = batch_stmt(&sql, scope, batch);
    match which {
        Staged::Ids(ids) => stmt.add_param("ids", &ids.to_vec()),
        Staged::After(Some(after)) => stmt.add_param("after", &after),
        Staged::After(None) => {}
    }
    rows(tx, stmt)
        .await?
        .iter()
        .map(|r| {
            Ok(BsoUpdate {
                id: col(r, "batch_bso_id")?,
                payload: col(r, "payload")?,
                sortindex: col::<Option<i64>>(r, "sortindex")?.map(|s| s as i32),
                ttl: col::<Option<i64>>(r, "ttl")?.map(|t| t as u32),
            })
        })
        .collect()
}

async fn put_staged(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    batch: &str,
    merged: &[BsoUpdate],
) -> ApiResult<()> {
    for chunk in merged.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("(@fxa_uid, @fxa_kid, @cid, @batch, @id{i}, @s{i}, @p{i}, @t{i})"))
            .collect();
        let mut stmt = batch_stmt(
            &format!(
                "INSERT OR UPDATE INTO batch_bsos (fxa_uid, fxa_kid, collection_id, batch_id, \
                 batch_bso_id, sortindex, payload, ttl) VALUES {}",
                values.join(", ")
            ),
            scope,
            batch,
        );
        for (i, u) in chunk.iter().enumerate() {
            stmt.add_param(&format!("id{i}"), &u.id);
            stmt.add_param(&format!("s{i}"), &u.sortindex.map(i64::from));
            stmt.add_param(&format!("p{i}"), &u.payload);
            stmt.add_param(&format!("t{i}"), &u.ttl.map(i64::from));
        }
        exec(tx, stmt).await?;
    }
    Ok(())
}

async fn staged_totals(tx: &mut Transaction, scope: &Scope, batch: &str) -> ApiResult<(i64, i64)> {
    let stmt = batch_stmt(
        "SELECT COUNT(*) AS n, SUM(BYTE_LENGTH(payload)) AS b FROM batch_bsos \
         WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid AND batch_id = @batch",
        scope,
        batch,
    );
    match rows(tx, stmt).await?.first() {
        Some(r) => Ok((col(r, "n")?, col::<Option<i64>>(r, "b")?.unwrap_or(0))),
        None => Ok((0, 0)),
    }
}

/// Stages `updates` field by field over what the batch holds, within the batch limits.
async fn stage(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    user: &UserId,
    config: &StorageConfig,
    batch: &str,
    updates: &[BsoUpdate],
) -> ApiResult<()> {
    let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
    let staged = staged_items(tx, scope, batch, Staged::Ids(&ids)).await?;
    let merged = rules::merge_staged(staged, updates);
    put_staged(tx, scope, batch, &merged).await?;
    let (records, bytes) = staged_totals(tx, scope, batch).await?;
    rules::check_batch_totals(&config.limits, records, bytes)?;
    check_quota(tx, scope, user, config, bytes).await
}

/// Applies everything staged with one T, then drops the batch (its items cascade).
///
/// The commit request's own records are merged in memory rather than staged first: staging
/// them would spend mutations of the one commit transaction, whose budget a full batch
/// (max_total_records × 8 cells) already uses up. The limits and quota are checked the same.
async fn commit_batch(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    user: &UserId,
    config: &StorageConfig,
    batch: &str,
    last: &[BsoUpdate],
) -> ApiResult<SyncTimestamp> {
    // Committed usage before this batch lands, for the quota rule at the end.
    let used = if config.enable_quota {
        user_usage_bytes(tx, user, scope.t).await?
    } else {
        0
    };
    // Staged records chunk by chunk (memory does not grow with the batch), each merged with
    // the commit request's own records for its ids; those left over are applied last. It is
    // one transaction: a limit found exceeded at the end rolls all of it back.
    let mut pending: HashMap<&str, &BsoUpdate> = last.iter().map(|u| (u.id.as_str(), u)).collect();
    let (mut records, mut bytes) = (0i64, 0i64);
    let mut after: Option<String> = None;
    loop {
        let chunk = staged_items(tx, scope, batch, Staged::After(after.as_deref())).await?;
        let Some(tail) = chunk.last() else { break };
        after = Some(tail.id.clone());
        let merged: Vec<BsoUpdate> = chunk
            .into_iter()
            .map(|u| match pending.remove(u.id.as_str()) {
                Some(newer) => u.merged_with(newer),
                None => u,
            })
            .collect();
        records += merged.len() as i64;
        bytes += merged.iter().map(|u| u.payload_bytes() as i64).sum::<i64>();
        apply_updates(tx, scope, &merged, ModifiedRule::Always).await?;
    }
    let rest: Vec<BsoUpdate> = last
        .iter()
        .filter(|u| pending.contains_key(u.id.as_str()))
        .cloned()
        .collect();
    records += rest.len() as i64;
    bytes += rest.iter().map(|u| u.payload_bytes() as i64).sum::<i64>();
    apply_updates(tx, scope, &rest, ModifiedRule::Always).await?;
    rules::check_batch_totals(&config.limits, records, bytes)?;
    if config.enable_quota {
        rules::check_quota(config, used, bytes)?;
    }
    let stmt = batch_stmt(
        "DELETE FROM batches WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
         AND collection_id = @cid AND batch_id = @batch",
        scope,
        batch,
    );
    exec(tx, stmt).await?;
    finish_write(tx, scope, config).await
}

// ---- units of work ----

pub async fn put_bso(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    config: &StorageConfig,
    params: &PutBso,
) -> ApiResult<SyncTimestamp> {
    let user = &params.target.user;
    let existing = get_live_bso(tx, user, scope.cid, &params.bso.id, scope.t).await?;
    params.target.precondition.check(modified_of(&existing))?;
    check_quota(tx, scope, user, config, 0).await?;
    apply_updates(
        tx,
        scope,
        std::slice::from_ref(&params.bso),
        ModifiedRule::WhenContentChanges,
    )
    .await?;
    finish_write(tx, scope, config).await
}

pub async fn post_bsos(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    config: &StorageConfig,
    params: &PostBsos,
) -> ApiResult<PostResult> {
    params.target.precondition.check(scope.collection_ts)?;
    let user = &params.target.user;
    let items = &params.items;
    let success: Vec<String> = items.valid.iter().map(|u| u.id.clone()).collect();
    let (last_modified, batch) = match &params.batch {
        BatchRequest::None => {
            check_quota(tx, scope, user, config, 0).await?;
            apply_updates(tx, scope, &items.valid, ModifiedRule::WhenContentChanges).await?;
            (finish_write(tx, scope, config).await?, None)
        }
        BatchRequest::Start => {
            let batch = create_batch(tx, scope).await?;
            stage(tx, scope, user, config, &batch, &items.valid).await?;
            (scope.collection_ts, Some(batch))
        }
        BatchRequest::Append(id) => {
            let batch = find_batch(tx, scope, id).await?;
            stage(tx, scope, user, config, &batch, &items.valid).await?;
            (scope.collection_ts, Some(batch))
        }
        BatchRequest::Commit(id) => {
            let batch = find_batch(tx, scope, id).await?;
            (
                commit_batch(tx, scope, user, config, &batch, &items.valid).await?,
                None,
            )
        }
    };
    Ok(PostResult {
        last_modified,
        batch,
        success,
        failed: items.failed.clone(),
    })
}

pub async fn delete_bso(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    config: &StorageConfig,
    params: &BsoRef,
) -> ApiResult<SyncTimestamp> {
    let existing = get_live_bso(tx, &params.user, scope.cid, &params.id, scope.t).await?;
    params.precondition.check(modified_of(&existing))?;
    if existing.is_none() {
        return Err(not_found());
    }
    let stmt = param(
        scope_stmt(
            "DELETE FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
             AND collection_id = @cid AND bso_id = @id",
            scope,
        ),
        "id",
        &params.id,
    );
    exec(tx, stmt).await?;
    finish_write(tx, scope, config).await
}

pub async fn delete_bsos(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    config: &StorageConfig,
    params: &DeleteBsos,
) -> ApiResult<SyncTimestamp> {
    params.target.precondition.check(scope.collection_ts)?;
    for chunk in params.ids.chunks(IDS_PER_READ) {
        let stmt = param(
            scope_stmt(
                "DELETE FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
                 AND collection_id = @cid AND bso_id IN UNNEST(@ids)",
                scope,
            ),
            "ids",
            &chunk.to_vec(),
        );
        exec(tx, stmt).await?;
    }
    finish_write(tx, scope, config).await
}

/// Removes the collection (its records and batches cascade) and leaves the tombstone at T.
pub async fn delete_collection(
    tx: &mut ReadWriteTransaction,
    scope: &Scope,
    params: &CollectionRef,
) -> ApiResult<DeletedCollection> {
    params.precondition.check(scope.collection_ts)?;
    let existed = scope.collection_ts > SyncTimestamp::ZERO;
    let stmt = scope_stmt(
        "DELETE FROM user_collections WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
         AND collection_id = @cid",
        scope,
    );
    exec(tx, stmt).await?;
    if existed {
        let tombstone = collection_ts(tx, &params.user, i64::from(TOMBSTONE))
            .await?
            .unwrap_or_default();
        touch_collection(tx, scope, i64::from(TOMBSTONE), tombstone.max(scope.t)).await?;
    }
    let storage_ts = storage_ts(tx, &params.user).await?;
    Ok(DeletedCollection {
        previous_ts: scope.collection_ts,
        storage_ts,
    })
}

pub async fn delete_storage(
    tx: &mut ReadWriteTransaction,
    user: &UserId,
    precondition: Precondition,
) -> ApiResult<SyncTimestamp> {
    require_identity(user)?;
    let before = storage_ts(tx, user).await?;
    precondition.check(before)?;
    let stmt = user_stmt(
        "DELETE FROM user_collections WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid",
        user,
    );
    exec(tx, stmt).await?;
    Ok(before)
}
