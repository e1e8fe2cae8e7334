//! The storage operations as diesel queries, written once for every SQL backend that uses the
//! MySQL layout. `storage_ops!` is instantiated per connection type: synchronously for SQLite
//! (run on blocking threads) and with `.await` for diesel-async connections. The instantiating
//! module provides `Conn`, `Db`, `lock_collection_ts`, `pause`, `emit` and the byte-sum SQL; everything
//! else, and every SQL statement, is here. Each function runs inside a transaction the backend
//! opened (a read snapshot, or a write lock on the user's collection); none commits.

use crate::db::BsoPage;
use crate::protocol::{Bso, Offset, StoredBso, SyncTimestamp};

/// Rows per statement, well under every engine's bound-variable limit.
pub const CHUNK: usize = 500;
pub use crate::db::rules::{COMMIT_CHUNK, Staged, TOMBSTONE};

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

/// A timestamp column's value in ms: BIGINT on SQLite and MySQL, TIMESTAMPTZ on PostgreSQL
/// (see `pg_types`), so the shared operations compare and store timestamps one way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, diesel::AsExpression, diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::BigInt)]
#[diesel(sql_type = super::pg_types::Millis)]
pub struct Ms(pub i64);

pub type BsoRow = (String, String, Option<i32>, Ms, Ms);

pub fn stored((id, payload, sortindex, Ms(modified), Ms(expiry)): BsoRow) -> StoredBso {
    StoredBso {
        id,
        payload,
        sortindex,
        modified,
        expiry,
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

/// The operations. `[$($asy)*]` is `[async]` or `[]`, `[$($aw)*]` is `[.await]` or `[]`.
macro_rules! storage_ops {
    (schema = $schema:path, [$($asy:tt)*] [$($aw:tt)*]) => {
        use std::collections::{BTreeMap, HashMap};

        use diesel::dsl::{count_star, max, sql};
        use diesel::sql_types::{BigInt, Nullable};
        use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryResult};

        use $crate::db::sql::ops::*;
        use $schema::{bso, collections, user_collections};

        const BSO_COLUMNS: (bso::id, bso::payload, bso::sortindex, bso::modified, bso::ttl) =
            (bso::id, bso::payload, bso::sortindex, bso::modified, bso::ttl);
        use $crate::db::listing::{Listing, ListingSender, chunk_query, first_chunk, head_query, next_chunk};
        use $crate::db::{
            BsoPage, BsoRef, CollectionRef, DeleteBsos, DeletedCollection, GetBsos, Info, InfoBody, InfoKind,
            PostBsos, PostResult, PurgeStats, PutBso, StorageConfig, not_found,
        };
        use $crate::error::{ApiError, ApiResult};
        use $crate::protocol::bso::{ModifiedRule, apply_update};
        use $crate::protocol::{BatchRequest, Bso, BsoQuery, BsoUpdate, Offset, Precondition, Sort, StoredBso, SyncTimestamp, batch_id};

        // ---- collections and timestamps ----

        pub $($asy)* fn collection_id(conn: &mut Conn, name: &str) -> QueryResult<Option<i32>> {
            collections::table
                .filter(collections::name.eq(name))
                .select(collections::id)
                .first(conn)$($aw)*
                .optional()
        }

        /// Custom names get the next id after the highest (101 upwards, id 100 is reserved).
        pub $($asy)* fn get_or_create_collection_id(conn: &mut Conn, name: &str) -> QueryResult<i32> {
            if let Some(id) = collection_id(conn, name)$($aw)*? {
                return Ok(id);
            }
            diesel::insert_into(collections::table).values(collections::name.eq(name)).execute(conn)$($aw)*?;
            collections::table.filter(collections::name.eq(name)).select(collections::id).first(conn)$($aw)*
        }

        pub $($asy)* fn collection_ts(conn: &mut Conn, uid: i64, cid: i32) -> QueryResult<Option<SyncTimestamp>> {
            Ok(user_collections::table
                .find((uid, cid))
                .select(user_collections::last_modified)
                .first::<Ms>(conn)$($aw)*
                .optional()?
                .map(|Ms(ms)| SyncTimestamp::from_i64(ms)))
        }

        pub $($asy)* fn storage_ts(conn: &mut Conn, uid: i64) -> QueryResult<SyncTimestamp> {
            let ts: Option<Ms> = user_collections::table
                .filter(user_collections::userid.eq(uid))
                .select(max(user_collections::last_modified))
                .first(conn)$($aw)*?;
            Ok(ts.map(|Ms(ms)| SyncTimestamp::from_i64(ms)).unwrap_or_default())
        }

        /// Sets the collection's timestamp to `t`, creating its row when absent (the caller
        /// holds the collection's write lock).
        pub $($asy)* fn touch_collection(conn: &mut Conn, uid: i64, cid: i32, t: SyncTimestamp) -> QueryResult<()> {
            let updated = diesel::update(user_collections::table.find((uid, cid)))
                .set(user_collections::last_modified.eq(Ms(t.as_i64())))
                .execute(conn)$($aw)*?;
            if updated == 0 {
                diesel::insert_into(user_collections::table)
                    .values((
                        user_collections::userid.eq(uid),
                        user_collections::collection.eq(cid),
                        user_collections::last_modified.eq(Ms(t.as_i64())),
                    ))
                    .execute(conn)$($aw)*?;
            }
            Ok(())
        }

        $($asy)* fn names_by_id(conn: &mut Conn, ids: Vec<i32>) -> QueryResult<HashMap<i32, String>> {
            Ok(collections::table
                .filter(collections::id.eq_any(ids))
                .select((collections::id, collections::name))
                .load::<(i32, String)>(conn)$($aw)*?
                .into_iter()
                .collect())
        }

        fn live_bsos(uid: i64, now: i64) -> bso::BoxedQuery<'static, Db> {
            bso::table.filter(bso::userid.eq(uid)).filter(bso::ttl.gt(Ms(now))).into_boxed()
        }

        /// Bytes of unexpired payloads per collection.
        $($asy)* fn usage_by_collection(conn: &mut Conn, uid: i64, now: i64) -> QueryResult<Vec<(i32, i64)>> {
            let rows: Vec<(i32, Option<i64>)> = bso::table
                .filter(bso::userid.eq(uid))
                .filter(bso::ttl.gt(Ms(now)))
                .group_by(bso::collection)
                .select((bso::collection, sql::<Nullable<BigInt>>(BSO_BYTES_SUM)))
                .load(conn)$($aw)*?;
            Ok(rows.into_iter().map(|(c, s)| (c, s.unwrap_or(0))).collect())
        }

        pub $($asy)* fn user_usage_bytes(conn: &mut Conn, uid: i64, now: i64) -> QueryResult<i64> {
            Ok(usage_by_collection(conn, uid, now)$($aw)*?.into_iter().map(|(_, b)| b).sum())
        }

        $($asy)* fn named<V>(conn: &mut Conn, rows: Vec<(i32, V)>) -> QueryResult<BTreeMap<String, V>> {
            let names = names_by_id(conn, rows.iter().map(|(c, _)| *c).collect())$($aw)*?;
            Ok(rows.into_iter().filter_map(|(c, v)| names.get(&c).map(|n| (n.clone(), v))).collect())
        }

        pub $($asy)* fn info_body(conn: &mut Conn, uid: i64, kind: InfoKind, now: SyncTimestamp) -> QueryResult<InfoBody> {
            let now = now.as_i64();
            Ok(match kind {
                InfoKind::Collections => {
                    let rows: Vec<(i32, Ms)> = user_collections::table
                        .filter(user_collections::userid.eq(uid))
                        .filter(user_collections::collection.ne(TOMBSTONE))
                        .filter(user_collections::last_modified.gt(Ms(0)))
                        .select((user_collections::collection, user_collections::last_modified))
                        .load(conn)$($aw)*?;
                    let rows = rows.into_iter().map(|(c, Ms(m))| (c, SyncTimestamp::from_i64(m))).collect();
                    InfoBody::Timestamps(named(conn, rows)$($aw)*?)
                }
                InfoKind::Counts => {
                    let rows: Vec<(i32, i64)> = bso::table
                        .filter(bso::userid.eq(uid))
                        .filter(bso::ttl.gt(Ms(now)))
                        .group_by(bso::collection)
                        .select((bso::collection, count_star()))
                        .load(conn)$($aw)*?;
                    InfoBody::Counts(named(conn, rows)$($aw)*?)
                }
                InfoKind::Usage => {
                    let rows = usage_by_collection(conn, uid, now)$($aw)*?
                        .into_iter()
                        .map(|(c, b)| (c, b as f64 / 1024.0))
                        .collect();
                    InfoBody::Usage(named(conn, rows)$($aw)*?)
                }
                InfoKind::Quota => InfoBody::Quota(user_usage_bytes(conn, uid, now)$($aw)*? as f64 / 1024.0),
            })
        }

        // ---- reading records ----

        /// The live record, if any.
        pub $($asy)* fn get_live_bso(conn: &mut Conn, uid: i64, cid: i32, id: &str, now: SyncTimestamp) -> QueryResult<Option<StoredBso>> {
            Ok(live_bsos(uid, now.as_i64())
                .filter(bso::collection.eq(cid))
                .filter(bso::id.eq(id.to_owned()))
                .select(BSO_COLUMNS)
                .first::<BsoRow>(conn)$($aw)*
                .optional()?
                .map(stored))
        }

        /// One page of a listing. `max_records` caps every page.
        pub $($asy)* fn list_bsos(
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
                query = query.filter(bso::modified.gt(Ms(newer.as_i64())));
            }
            if let Some(older) = q.older {
                query = query.filter(bso::modified.lt(Ms(older.as_i64())));
            }
            query = match (q.sort, q.offset.bound) {
                (Sort::Newest, Some(b)) => query.filter(bso::modified.le(Ms(b))),
                (Sort::Oldest, Some(b)) => query.filter(bso::modified.ge(Ms(b))),
                _ => query,
            };
            query = match q.sort {
                Sort::Newest => query.order((bso::modified.desc(), bso::id.desc())),
                Sort::Oldest => query.order((bso::modified.asc(), bso::id.asc())),
                Sort::Index => query.order((bso::sortindex.desc(), bso::id.desc())),
            };
            query = query.limit(i64::from(limit) + 1).offset(q.offset.skip.min(i64::MAX as u64) as i64);
            let rows: Vec<StoredBso> = if q.full {
                query.select(BSO_COLUMNS).load::<BsoRow>(conn)$($aw)*?.into_iter().map(stored).collect()
            } else {
                query
                    .select((bso::id, bso::modified))
                    .load::<(String, Ms)>(conn)$($aw)*?
                    .into_iter()
                    .map(|(id, Ms(modified))| StoredBso { id, payload: String::new(), sortindex: None, modified, expiry: 0 })
                    .collect()
            };
            Ok($crate::db::rules::finish_page(rows, limit, q))
        }

        /// Existing rows (expired included: writes overwrite them) for `ids`.
        $($asy)* fn load_existing(conn: &mut Conn, uid: i64, cid: i32, ids: &[String]) -> QueryResult<HashMap<String, StoredBso>> {
            let mut out = HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(CHUNK) {
                let rows: Vec<BsoRow> = bso::table
                    .filter(bso::userid.eq(uid))
                    .filter(bso::collection.eq(cid))
                    .filter(bso::id.eq_any(chunk))
                    .select(BSO_COLUMNS)
                    .load(conn)$($aw)*?;
                out.extend(rows.into_iter().map(|r| (r.0.clone(), stored(r))));
            }
            Ok(out)
        }

        // ---- writing records ----

        /// Replaces the rows for these ids (delete then insert: the same SQL on every engine).
        $($asy)* fn write_rows(conn: &mut Conn, uid: i64, cid: i32, rows: &[StoredBso]) -> QueryResult<()> {
            for chunk in rows.chunks(CHUNK) {
                let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
                diesel::delete(
                    bso::table.filter(bso::userid.eq(uid)).filter(bso::collection.eq(cid)).filter(bso::id.eq_any(ids)),
                )
                .execute(conn)$($aw)*?;
                insert_bso_rows(conn, uid, cid, chunk)$($aw)*?;
            }
            Ok(())
        }

        /// Applies updates at T with the partial-update rules.
        $($asy)* fn apply_updates(
            conn: &mut Conn,
            uid: i64,
            cid: i32,
            updates: &[BsoUpdate],
            t: SyncTimestamp,
            rule: ModifiedRule,
        ) -> QueryResult<()> {
            let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
            let existing = load_existing(conn, uid, cid, &ids)$($aw)*?;
            let rows: Vec<StoredBso> = updates.iter().map(|u| apply_update(existing.get(&u.id), u, t, rule)).collect();
            write_rows(conn, uid, cid, &rows)$($aw)*
        }

        /// Locks the user (its tombstone row: every write of the user takes it first, so they
        /// serialize per user), resolves the collection (creating its name mapping and, when
        /// missing, its row) and picks a T later than every timestamp of the user.
        pub $($asy)* fn begin_write(conn: &mut Conn, uid: i64, collection: Option<&str>) -> ApiResult<WriteScope> {
            lock_collection_ts(conn, uid, TOMBSTONE)$($aw)*?;
            // Read after the lock: every other writer of this user has committed by now.
            let rows: Vec<(i32, Ms)> = user_collections::table
                .filter(user_collections::userid.eq(uid))
                .select((user_collections::collection, user_collections::last_modified))
                .load(conn)$($aw)*?;
            let cid = match collection {
                Some(name) => get_or_create_collection_id(conn, name)$($aw)*?,
                None => -1,
            };
            let (storage_ts, collection_ts) =
                $crate::db::rules::user_timestamps(rows.into_iter().map(|(c, Ms(m))| (i64::from(c), m)), i64::from(cid));
            let collection_ts = match collection_ts {
                Some(ts) => ts,
                // A new collection: its (placeholder) row, which records and batches need.
                None if collection.is_some() => lock_collection_ts(conn, uid, cid)$($aw)*?.unwrap_or_default(),
                None => SyncTimestamp::ZERO,
            };
            let floor = storage_ts.max(collection_ts);
            let mut t = SyncTimestamp::now();
            if let Some(ms) = $crate::db::rules::clock_wait(floor, t)? {
                pause(ms)$($aw)*;
                t = SyncTimestamp::now();
                $crate::db::rules::ensure_later(floor, t)?;
            }
            Ok(WriteScope { uid, cid, t, collection_ts })
        }

        /// The quota rule (`rules::check_quota`) against the user's committed usage.
        $($asy)* fn check_quota(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, staged: i64) -> ApiResult<()> {
            if !config.enable_quota {
                return Ok(());
            }
            let used = user_usage_bytes(conn, scope.uid, scope.t.as_i64())$($aw)*?;
            $crate::db::rules::check_quota(config, used, staged)
        }

        $($asy)* fn refresh_counters(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig) -> QueryResult<()> {
            if !config.enable_quota {
                return Ok(());
            }
            let (count, bytes): (i64, Option<i64>) = live_bsos(scope.uid, scope.t.as_i64())
                .filter(bso::collection.eq(scope.cid))
                .select((count_star(), sql::<Nullable<BigInt>>(BSO_BYTES_SUM)))
                .first(conn)$($aw)*?;
            diesel::update(user_collections::table.find((scope.uid, scope.cid)))
                .set((
                    user_collections::count.eq(count as i32),
                    user_collections::total_bytes.eq(bytes.unwrap_or(0)),
                ))
                .execute(conn)$($aw)*?;
            Ok(())
        }

        /// Bumps the collection to T (and its quota counters).
        $($asy)* fn finish_write(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig) -> QueryResult<SyncTimestamp> {
            touch_collection(conn, scope.uid, scope.cid, scope.t)$($aw)*?;
            refresh_counters(conn, scope, config)$($aw)*?;
            Ok(scope.t)
        }

        // ---- batches (the layout supplies storage and ids) ----

        /// Stages `updates`, merging field by field with what the batch already holds, and
        /// keeps the batch within max_total_records / max_total_bytes (400, code 17).
        $($asy)* fn stage(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, batch: BatchKey, updates: &[BsoUpdate]) -> ApiResult<()> {
            let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
            let staged = staged_items(conn, scope, batch, Staged::Ids(&ids))$($aw)*?;
            let merged = $crate::db::rules::merge_staged(staged, updates);
            put_staged(conn, scope, batch, &merged)$($aw)*?;
            let (records, bytes) = staged_totals(conn, scope, batch)$($aw)*?;
            $crate::db::rules::check_batch_totals(&config.limits, records, bytes)?;
            // Staged bytes count toward quota; re-sent ids replaced their earlier bytes above.
            check_quota(conn, scope, config, bytes)$($aw)*
        }

        /// Applies everything staged with one T (every record gets modified = T), then drops
        /// the batch.
        $($asy)* fn commit_batch(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, batch: BatchKey) -> ApiResult<SyncTimestamp> {
            let mut after: Option<String> = None;
            loop {
                let chunk = staged_items(conn, scope, batch, Staged::After(after.as_deref()))$($aw)*?;
                let Some(last) = chunk.last() else { break };
                after = Some(last.id.clone());
                apply_updates(conn, scope.uid, scope.cid, &chunk, scope.t, ModifiedRule::Always)$($aw)*?;
            }
            drop_batch(conn, scope, batch)$($aw)*?;
            Ok(finish_write(conn, scope, config)$($aw)*?)
        }

        // ---- units of work: one per StorageDb method ----

        fn check(precondition: Precondition, resource: SyncTimestamp) -> ApiResult<()> {
            precondition.check(resource)
        }

        fn modified_of(bso: &Option<StoredBso>) -> SyncTimestamp {
            bso.as_ref().map_or(SyncTimestamp::ZERO, |b| SyncTimestamp::from_i64(b.modified))
        }

        pub $($asy)* fn info(conn: &mut Conn, uid: i64, kind: InfoKind, precondition: Precondition) -> ApiResult<Info> {
            let storage_ts = storage_ts(conn, uid)$($aw)*?;
            check(precondition, storage_ts)?;
            let body = info_body(conn, uid, kind, SyncTimestamp::now())$($aw)*?;
            Ok(Info { storage_ts, body })
        }

        pub $($asy)* fn get_bsos(conn: &mut Conn, config: &StorageConfig, params: GetBsos) -> ApiResult<BsoPage> {
            let uid = params.target.user.legacy_id as i64;
            let Some(cid) = collection_id(conn, &params.target.collection)$($aw)*? else {
                check(params.target.precondition, SyncTimestamp::ZERO)?;
                return Ok(BsoPage { collection_ts: SyncTimestamp::ZERO, items: vec![], next_offset: None });
            };
            let ts = collection_ts(conn, uid, cid)$($aw)*?.unwrap_or_default();
            check(params.target.precondition, ts)?;
            let max = config.limits.max_total_records;
            Ok(page(ts, list_bsos(conn, uid, cid, &params.query, SyncTimestamp::now(), max)$($aw)*?))
        }

        /// A listing sent as it is read (`db::listing`): a page within one chunk in one read;
        /// a bigger full page as its head, then the records in chunks. All from this
        /// transaction's snapshot and one `now` (so expiry cannot change the page between
        /// chunks). `emit` is the backend's way to hand a message over.
        pub $($asy)* fn stream_bsos(conn: &mut Conn, config: &StorageConfig, params: GetBsos, out: &ListingSender) -> ApiResult<()> {
            let uid = params.target.user.legacy_id as i64;
            let now = SyncTimestamp::now();
            let max = config.limits.max_total_records;
            let q = &params.query;
            let Some(cid) = collection_id(conn, &params.target.collection)$($aw)*? else {
                check(params.target.precondition, SyncTimestamp::ZERO)?;
                let page = BsoPage { collection_ts: SyncTimestamp::ZERO, items: vec![], next_offset: None };
                return emit(out, Ok(Listing::Head { page, more: false }))$($aw)*;
            };
            let ts = collection_ts(conn, uid, cid)$($aw)*?.unwrap_or_default();
            check(params.target.precondition, ts)?;
            let page_limit = q.limit.unwrap_or(max).min(max);
            let n = first_chunk(q, max);
            let first_q = if q.full { chunk_query(q, q.offset, n) } else { q.clone() };
            let (first, next) = list_bsos(conn, uid, cid, &first_q, now, max)$($aw)*?;
            if !q.full || next.is_none() || n == page_limit {
                // The whole page: one read, as without streaming.
                let page = page(ts, (first, next));
                return emit(out, Ok(Listing::Head { page, more: false }))$($aw)*;
            }
            let head = page(ts, list_bsos(conn, uid, cid, &head_query(q), now, max)$($aw)*?);
            let total = head.items.len();
            emit(out, Ok(Listing::Head { page: head, more: true }))$($aw)*?;
            let (mut sent, mut offset) = (first.len(), next);
            emit(out, Ok(Listing::Records(first)))$($aw)*?;
            while let (Some(from), Some(n)) = (offset, next_chunk(total, sent)) {
                let (items, next) = list_bsos(conn, uid, cid, &chunk_query(q, from, n), now, max)$($aw)*?;
                if items.is_empty() {
                    break;
                }
                sent += items.len();
                offset = next;
                emit(out, Ok(Listing::Records(items)))$($aw)*?;
            }
            Ok(())
        }

        pub $($asy)* fn get_bso(conn: &mut Conn, params: BsoRef) -> ApiResult<Bso> {
            let uid = params.user.legacy_id as i64;
            let found = match collection_id(conn, &params.collection)$($aw)*? {
                Some(cid) => get_live_bso(conn, uid, cid, &params.id, SyncTimestamp::now())$($aw)*?,
                None => None,
            };
            check(params.precondition, modified_of(&found))?;
            found.map(Bso::from).ok_or_else(not_found)
        }

        pub $($asy)* fn put_bso(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, params: PutBso) -> ApiResult<SyncTimestamp> {
            let existing = get_live_bso(conn, scope.uid, scope.cid, &params.bso.id, scope.t)$($aw)*?;
            check(params.target.precondition, modified_of(&existing))?;
            check_quota(conn, scope, config, 0)$($aw)*?;
            apply_updates(conn, scope.uid, scope.cid, std::slice::from_ref(&params.bso), scope.t, ModifiedRule::WhenContentChanges)$($aw)*?;
            Ok(finish_write(conn, scope, config)$($aw)*?)
        }

        /// A POST: plain, or one step of a batch upload.
        pub $($asy)* fn post_bsos(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, params: PostBsos) -> ApiResult<PostResult> {
            check(params.target.precondition, scope.collection_ts)?;
            let items = params.items;
            let success: Vec<String> = items.valid.iter().map(|u| u.id.clone()).collect();
            let (last_modified, batch) = match &params.batch {
                BatchRequest::None => {
                    check_quota(conn, scope, config, 0)$($aw)*?;
                    apply_updates(conn, scope.uid, scope.cid, &items.valid, scope.t, ModifiedRule::WhenContentChanges)$($aw)*?;
                    (finish_write(conn, scope, config)$($aw)*?, None)
                }
                BatchRequest::Start => {
                    let batch = create_batch(conn, scope)$($aw)*?;
                    stage(conn, scope, config, batch, &items.valid)$($aw)*?;
                    (scope.collection_ts, Some(encode_batch(batch)))
                }
                BatchRequest::Append(id) => {
                    let batch = find_batch(conn, scope, id)$($aw)*?;
                    stage(conn, scope, config, batch, &items.valid)$($aw)*?;
                    (scope.collection_ts, Some(id.clone()))
                }
                BatchRequest::Commit(id) => {
                    let batch = find_batch(conn, scope, id)$($aw)*?;
                    stage(conn, scope, config, batch, &items.valid)$($aw)*?;
                    (commit_batch(conn, scope, config, batch)$($aw)*?, None)
                }
            };
            Ok(PostResult { last_modified, batch, success, failed: items.failed })
        }

        /// Deletes a live record; 404 when absent or expired.
        pub $($asy)* fn delete_bso(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, params: BsoRef) -> ApiResult<SyncTimestamp> {
            let existing = get_live_bso(conn, scope.uid, scope.cid, &params.id, scope.t)$($aw)*?;
            check(params.precondition, modified_of(&existing))?;
            if existing.is_none() {
                return Err(not_found());
            }
            diesel::delete(
                bso::table
                    .filter(bso::userid.eq(scope.uid))
                    .filter(bso::collection.eq(scope.cid))
                    .filter(bso::id.eq(params.id)),
            )
            .execute(conn)$($aw)*?;
            Ok(finish_write(conn, scope, config)$($aw)*?)
        }

        pub $($asy)* fn delete_bsos(conn: &mut Conn, scope: &WriteScope, config: &StorageConfig, params: DeleteBsos) -> ApiResult<SyncTimestamp> {
            check(params.target.precondition, scope.collection_ts)?;
            for chunk in params.ids.chunks(CHUNK) {
                diesel::delete(
                    bso::table
                        .filter(bso::userid.eq(scope.uid))
                        .filter(bso::collection.eq(scope.cid))
                        .filter(bso::id.eq_any(chunk)),
                )
                .execute(conn)$($aw)*?;
            }
            Ok(finish_write(conn, scope, config)$($aw)*?)
        }

        /// Removes the collection and leaves a tombstone at T so the storage timestamp never
        /// goes backwards.
        pub $($asy)* fn delete_collection(conn: &mut Conn, scope: &WriteScope, params: CollectionRef) -> ApiResult<DeletedCollection> {
            check(params.precondition, scope.collection_ts)?;
            let (uid, cid) = (scope.uid, scope.cid);
            // A pre-touched row (a batch opened, nothing committed) is not a collection yet.
            let existed = scope.collection_ts > SyncTimestamp::ZERO;
            diesel::delete(user_collections::table.find((uid, cid))).execute(conn)$($aw)*?;
            diesel::delete(bso::table.filter(bso::userid.eq(uid)).filter(bso::collection.eq(cid))).execute(conn)$($aw)*?;
            drop_collection_batches(conn, uid, cid)$($aw)*?;
            if existed {
                // Locked: two deletes at once must not move the storage timestamp backwards.
                let tombstone = lock_collection_ts(conn, uid, TOMBSTONE)$($aw)*?.unwrap_or_default();
                touch_collection(conn, uid, TOMBSTONE, tombstone.max(scope.t))$($aw)*?;
            }
            let storage_ts = storage_ts(conn, uid)$($aw)*?;
            Ok(DeletedCollection { previous_ts: scope.collection_ts, storage_ts })
        }

        /// Returns the storage timestamp before the delete.
        pub $($asy)* fn delete_storage(conn: &mut Conn, uid: i64, precondition: Precondition) -> ApiResult<SyncTimestamp> {
            let before = storage_ts(conn, uid)$($aw)*?;
            check(precondition, before)?;
            // begin_write locked the user: no other writer of this user is in flight.
            diesel::delete(user_collections::table.filter(user_collections::userid.eq(uid))).execute(conn)$($aw)*?;
            diesel::delete(bso::table.filter(bso::userid.eq(uid))).execute(conn)$($aw)*?;
            drop_user_batches(conn, uid)$($aw)*?;
            Ok(before)
        }

        /// One purge step (`db::purge`): up to `max_rows` expired records of any users, found
        /// by the ttl index and deleted by key (and still expired: a writer may have renewed
        /// one meanwhile), then up to `max_rows` rows of expired batches.
        pub $($asy)* fn purge_expired_chunk(conn: &mut Conn, now: SyncTimestamp, max_rows: i64) -> ApiResult<PurgeStats> {
            let now = now.as_i64();
            let keys: Vec<(i64, i32, String)> = bso::table
                .filter(bso::ttl.le(Ms(now)))
                .select((bso::userid, bso::collection, bso::id))
                .limit(max_rows)
                .load(conn)$($aw)*?;
            let mut by_collection: BTreeMap<(i64, i32), Vec<String>> = BTreeMap::new();
            for (uid, cid, id) in keys {
                by_collection.entry((uid, cid)).or_default().push(id);
            }
            let mut bsos = 0;
            for ((uid, cid), ids) in by_collection {
                for chunk in ids.chunks(CHUNK) {
                    bsos += diesel::delete(
                        bso::table
                            .filter(bso::userid.eq(uid))
                            .filter(bso::collection.eq(cid))
                            .filter(bso::id.eq_any(chunk))
                            .filter(bso::ttl.le(Ms(now))),
                    )
                    .execute(conn)$($aw)*?;
                }
            }
            let (batches, staged) = purge_batches(conn, now, max_rows)$($aw)*?;
            Ok(PurgeStats { bsos, batches, staged })
        }

        pub $($asy)* fn ping(conn: &mut Conn) -> ApiResult<()> {
            diesel::sql_query("SELECT 1").execute(conn)$($aw)*?;
            Ok(())
        }
    };
}
pub(crate) use storage_ops;
