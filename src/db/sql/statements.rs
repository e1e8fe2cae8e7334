//! The statements of the `tx` contract (`ReadTx`, `WriteTx`) as diesel queries, written once
//! for every SQL engine. A macro only because diesel's tables are types of their schema module
//! and SQLite's connection is synchronous: `sql_statements!` implements the traits for
//! `SqlTx<'_, Conn>` over one schema, with `.await` or without. What differs between engines
//! comes in as arguments (how to lock, how to count bytes), and what differs between table
//! layouts through the `BatchTables` trait, which the connection's `SqlTx` implements. The
//! units of work themselves are ordinary generic functions (`db::units`).

/// `sql_statements!(conn = C, db = Backend, schema = path, bytes_sum = "SQL", lock = ...,
/// run = RunQueryDsl, [.await])`:
/// - `bytes_sum`: the SQL that sums the payload bytes of `bso` rows;
/// - `lock = file`: the transaction already locks the whole database (SQLite's `BEGIN
///   IMMEDIATE`), so nothing is locked row by row;
/// - `lock = rows(placeholder)`: the user is locked with `SELECT ... FOR UPDATE` on its
///   tombstone row, and a new collection's row likewise; neither MySQL nor PostgreSQL locks a
///   row that does not exist, so a missing one is first created as an invisible placeholder by
///   `placeholder(conn, uid, cid)` (only when missing: on MySQL, `INSERT IGNORE` over an
///   existing row takes a shared lock that concurrent writers would then deadlock upgrading);
/// - `run` and `[.await]`: `diesel_async::RunQueryDsl, [.await]` for diesel-async
///   connections, `diesel::RunQueryDsl, []` for synchronous ones.
macro_rules! sql_statements {
    (
        conn = $Conn:ty, db = $Db:ty, schema = $schema:path, bytes_sum = $bytes_sum:expr,
        lock = $lock:ident $( ($placeholder:path) )?, run = $Run:path, [$($aw:tt)*]
    ) => {
        const _: () = {
            use std::collections::{BTreeMap, HashMap};

            #[allow(unused_imports)]
            use $Run;

            use $schema::{bso, collections, user_collections};
            use diesel::dsl::{count_star, max, sql};
            use diesel::sql_types::{BigInt, Nullable};
            use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};

            use $crate::db::rules::{Staged, TOMBSTONE};
            use $crate::db::sql::{BatchTables, BsoRow, CHUNK, Ms, Prepared, SqlPurge, SqlTx, stored};
            use $crate::db::tx::{Overwrite, ReadTx, Scope, WriteTx};
            use $crate::db::{PurgeStats, UserId};
            use $crate::error::ApiResult;
            use $crate::protocol::{BsoQuery, BsoUpdate, Sort, StoredBso, SyncTimestamp};

            type Batch = <SqlTx<'static, $Conn> as BatchTables>::Batch;

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

            fn ts(Ms(ms): Ms) -> SyncTimestamp {
                SyncTimestamp::from_i64(ms)
            }

            fn live_bsos(uid: i64, now: SyncTimestamp) -> bso::BoxedQuery<'static, $Db> {
                bso::table
                    .filter(bso::userid.eq(uid))
                    .filter(bso::ttl.gt(Ms(now.as_i64())))
                    .into_boxed()
            }

            impl SqlTx<'_, $Conn> {
                async fn per_collection_bytes(
                    &mut self,
                    uid: i64,
                    now: SyncTimestamp,
                ) -> ApiResult<Vec<(i32, i64)>> {
                    let rows: Vec<(i32, Option<i64>)> = bso::table
                        .filter(bso::userid.eq(uid))
                        .filter(bso::ttl.gt(Ms(now.as_i64())))
                        .group_by(bso::collection)
                        .select((bso::collection, sql::<Nullable<BigInt>>($bytes_sum)))
                        .load(&mut *self.0)$($aw)*?;
                    Ok(rows.into_iter().map(|(c, s)| (c, s.unwrap_or(0))).collect())
                }

                $crate::db::sql::statements::sql_statements!(
                    @lock $lock $( ($placeholder) )?, [$($aw)*]
                );
            }

            impl SqlPurge for SqlTx<'_, $Conn> {
                /// One purge step (`db::purge`): up to `max_rows` expired records of any
                /// users, found by the ttl index and deleted by key (and still expired: a
                /// writer may have renewed one meanwhile), then up to `max_rows` rows of
                /// expired batches.
                async fn purge_expired_chunk(
                    &mut self,
                    now: SyncTimestamp,
                    max_rows: i64,
                ) -> ApiResult<PurgeStats> {
                    let now = now.as_i64();
                    let keys: Vec<(i64, i32, String)> = bso::table
                        .filter(bso::ttl.le(Ms(now)))
                        .select((bso::userid, bso::collection, bso::id))
                        .limit(max_rows)
                        .load(&mut *self.0)$($aw)*?;
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
                            .execute(&mut *self.0)$($aw)*?;
                        }
                    }
                    let (batches, staged) = self.purge_batches(now, max_rows).await?;
                    Ok(PurgeStats {
                        bsos,
                        batches,
                        staged,
                    })
                }
            }

            impl ReadTx for SqlTx<'_, $Conn> {
                type User = i64;
                type Batch = Batch;

                fn user_key(user: &UserId) -> ApiResult<i64> {
                    Ok(user.legacy_id as i64)
                }

                fn encode_batch(batch: &Batch) -> String {
                    <Self as BatchTables>::encode_batch(batch)
                }

                async fn collection_id(&mut self, name: &str) -> ApiResult<Option<i32>> {
                    Ok(collections::table
                        .filter(collections::name.eq(name))
                        .select(collections::id)
                        .first(&mut *self.0)$($aw)*
                        .optional()?)
                }

                async fn collection_names(
                    &mut self,
                    ids: Vec<i32>,
                ) -> ApiResult<HashMap<i32, String>> {
                    Ok(collections::table
                        .filter(collections::id.eq_any(ids))
                        .select((collections::id, collections::name))
                        .load::<(i32, String)>(&mut *self.0)$($aw)*?
                        .into_iter()
                        .collect())
                }

                async fn collection_ts(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                ) -> ApiResult<Option<SyncTimestamp>> {
                    Ok(user_collections::table
                        .find((*uid, cid))
                        .select(user_collections::last_modified)
                        .first::<Ms>(&mut *self.0)$($aw)*
                        .optional()?
                        .map(ts))
                }

                async fn storage_ts(&mut self, uid: &i64) -> ApiResult<SyncTimestamp> {
                    let latest: Option<Ms> = user_collections::table
                        .filter(user_collections::userid.eq(*uid))
                        .select(max(user_collections::last_modified))
                        .first(&mut *self.0)$($aw)*?;
                    Ok(latest.map(ts).unwrap_or_default())
                }

                async fn user_collections(&mut self, uid: &i64) -> ApiResult<Vec<(i32, i64)>> {
                    let rows: Vec<(i32, Ms)> = user_collections::table
                        .filter(user_collections::userid.eq(*uid))
                        .select((
                            user_collections::collection,
                            user_collections::last_modified,
                        ))
                        .load(&mut *self.0)$($aw)*?;
                    Ok(rows.into_iter().map(|(c, Ms(ms))| (c, ms)).collect())
                }

                async fn record_counts(
                    &mut self,
                    uid: &i64,
                    now: SyncTimestamp,
                ) -> ApiResult<Vec<(i32, i64)>> {
                    Ok(bso::table
                        .filter(bso::userid.eq(*uid))
                        .filter(bso::ttl.gt(Ms(now.as_i64())))
                        .group_by(bso::collection)
                        .select((bso::collection, count_star()))
                        .load(&mut *self.0)$($aw)*?)
                }

                async fn record_bytes(
                    &mut self,
                    uid: &i64,
                    now: SyncTimestamp,
                ) -> ApiResult<Vec<(i32, i64)>> {
                    self.per_collection_bytes(*uid, now).await
                }

                async fn get_live_bso(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    id: &str,
                    now: SyncTimestamp,
                ) -> ApiResult<Option<StoredBso>> {
                    Ok(live_bsos(*uid, now)
                        .filter(bso::collection.eq(cid))
                        .filter(bso::id.eq(id.to_owned()))
                        .select(BSO_COLUMNS)
                        .first::<BsoRow>(&mut *self.0)$($aw)*
                        .optional()?
                        .map(stored))
                }

                async fn list_bsos(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    q: &BsoQuery,
                    limit: u32,
                    now: SyncTimestamp,
                ) -> ApiResult<(Vec<StoredBso>, Option<SyncTimestamp>)> {
                    let mut query = live_bsos(*uid, now).filter(bso::collection.eq(cid));
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
                    query = query
                        .limit(i64::from(limit) + 1)
                        .offset(q.offset.skip.min(i64::MAX as u64) as i64);
                    // The collection's timestamp in the same statement (one snapshot), so a
                    // listing read without a transaction reports one no older than its rows.
                    let collection_ts = user_collections::table
                        .find((*uid, cid))
                        .select(user_collections::last_modified)
                        .single_value();
                    let mut seen: Option<Ms> = None;
                    let rows = if q.full {
                        query
                            .select((BSO_COLUMNS, collection_ts))
                            .load::<(BsoRow, Option<Ms>)>(&mut *self.0)$($aw)*?
                            .into_iter()
                            .map(|(row, t)| {
                                seen = seen.or(t);
                                stored(row)
                            })
                            .collect()
                    } else {
                        query
                            .select((bso::id, bso::modified, collection_ts))
                            .load::<(String, Ms, Option<Ms>)>(&mut *self.0)$($aw)*?
                            .into_iter()
                            .map(|(id, Ms(modified), t)| {
                                seen = seen.or(t);
                                StoredBso {
                                    id,
                                    payload: String::new(),
                                    sortindex: None,
                                    modified,
                                    expiry: 0,
                                }
                            })
                            .collect()
                    };
                    Ok((rows, seen.map(ts)))
                }

                async fn load_existing(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    ids: &[String],
                ) -> ApiResult<HashMap<String, StoredBso>> {
                    let mut out = HashMap::with_capacity(ids.len());
                    for chunk in ids.chunks(CHUNK) {
                        let rows: Vec<BsoRow> = bso::table
                            .filter(bso::userid.eq(*uid))
                            .filter(bso::collection.eq(cid))
                            .filter(bso::id.eq_any(chunk))
                            .select(BSO_COLUMNS)
                            .load(&mut *self.0)$($aw)*?;
                        out.extend(rows.into_iter().map(|r| (r.0.clone(), stored(r))));
                    }
                    Ok(out)
                }

                async fn expired_counts(&mut self, now: SyncTimestamp) -> ApiResult<PurgeStats> {
                    let records: i64 = bso::table
                        .filter(bso::ttl.le(Ms(now.as_i64())))
                        .count()
                        .get_result(&mut *self.0)$($aw)*?;
                    let batches = self.count_expired_batches(now.as_i64()).await?;
                    Ok(PurgeStats {
                        bsos: records as usize,
                        batches: batches as usize,
                        staged: 0,
                    })
                }

                async fn users_after(&mut self, after: u64, limit: u32) -> ApiResult<Vec<u64>> {
                    let rows: Vec<i64> = user_collections::table
                        .filter(user_collections::userid.gt(after.min(i64::MAX as u64) as i64))
                        .select(user_collections::userid)
                        .distinct()
                        .order(user_collections::userid.asc())
                        .limit(i64::from(limit))
                        .load(&mut *self.0)$($aw)*?;
                    Ok(rows.into_iter().map(|u| u as u64).collect())
                }

                async fn rows_after(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    after: Option<&str>,
                    limit: u32,
                ) -> ApiResult<Vec<StoredBso>> {
                    let mut query = bso::table
                        .filter(bso::userid.eq(*uid))
                        .filter(bso::collection.eq(cid))
                        .into_boxed();
                    if let Some(after) = after {
                        query = query.filter(bso::id.gt(after.to_owned()));
                    }
                    Ok(query
                        .order(bso::id.asc())
                        .limit(i64::from(limit))
                        .select(BSO_COLUMNS)
                        .load::<BsoRow>(&mut *self.0)$($aw)*?
                        .into_iter()
                        .map(stored)
                        .collect())
                }

                async fn find_batch(&mut self, scope: &Scope<i64>, id: &str) -> ApiResult<Batch> {
                    BatchTables::find_batch(self, scope, id).await
                }

                async fn staged_items(
                    &mut self,
                    scope: &Scope<i64>,
                    batch: &Batch,
                    which: Staged<'_>,
                ) -> ApiResult<Vec<BsoUpdate>> {
                    BatchTables::staged_items(self, scope, batch, which).await
                }

                async fn staged_totals(
                    &mut self,
                    scope: &Scope<i64>,
                    batch: &Batch,
                ) -> ApiResult<(i64, i64)> {
                    BatchTables::staged_totals(self, scope, batch).await
                }

                async fn ping(&mut self) -> ApiResult<()> {
                    diesel::sql_query("SELECT 1")
                        .execute(&mut *self.0)$($aw)*?;
                    Ok(())
                }
            }

            impl WriteTx for SqlTx<'_, $Conn> {
                async fn lock_user(&mut self, uid: &i64) -> ApiResult<()> {
                    self.lock_collection(*uid, TOMBSTONE).await?;
                    Ok(())
                }

                async fn get_or_create_collection_id(&mut self, name: &str) -> ApiResult<i32> {
                    if let Some(id) = self.collection_id(name).await? {
                        return Ok(id);
                    }
                    diesel::insert_into(collections::table)
                        .values(collections::name.eq(name))
                        .execute(&mut *self.0)$($aw)*?;
                    Ok(collections::table
                        .filter(collections::name.eq(name))
                        .select(collections::id)
                        .first(&mut *self.0)$($aw)*?)
                }

                async fn add_collection(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                ) -> ApiResult<SyncTimestamp> {
                    Ok(self.lock_collection(*uid, cid).await?.unwrap_or_default())
                }

                async fn touch_collection(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    t: SyncTimestamp,
                ) -> ApiResult<()> {
                    let updated = Prepared(
                        diesel::update(user_collections::table.find((*uid, cid)))
                            .set(user_collections::last_modified.eq(Ms(t.as_i64()))),
                    )
                    .execute(&mut *self.0)$($aw)*?;
                    if updated == 0 {
                        diesel::insert_into(user_collections::table)
                            .values((
                                user_collections::userid.eq(*uid),
                                user_collections::collection.eq(cid),
                                user_collections::last_modified.eq(Ms(t.as_i64())),
                            ))
                            .execute(&mut *self.0)$($aw)*?;
                    }
                    Ok(())
                }

                const OVERWRITES_GIVEN: bool = true;

                async fn write_rows(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    rows: &[StoredBso],
                    overwrite: Overwrite,
                ) -> ApiResult<()> {
                    for chunk in rows.chunks(CHUNK) {
                        self.upsert_bso_rows(*uid, cid, chunk, overwrite).await?;
                    }
                    Ok(())
                }

                async fn delete_rows(
                    &mut self,
                    uid: &i64,
                    cid: i32,
                    ids: &[String],
                ) -> ApiResult<()> {
                    for chunk in ids.chunks(CHUNK) {
                        diesel::delete(
                            bso::table
                                .filter(bso::userid.eq(*uid))
                                .filter(bso::collection.eq(cid))
                                .filter(bso::id.eq_any(chunk)),
                        )
                        .execute(&mut *self.0)$($aw)*?;
                    }
                    Ok(())
                }

                async fn delete_collection_rows(&mut self, uid: &i64, cid: i32) -> ApiResult<()> {
                    diesel::delete(user_collections::table.find((*uid, cid)))
                        .execute(&mut *self.0)$($aw)*?;
                    diesel::delete(
                        bso::table
                            .filter(bso::userid.eq(*uid))
                            .filter(bso::collection.eq(cid)),
                    )
                    .execute(&mut *self.0)$($aw)*?;
                    self.drop_collection_batches(*uid, cid).await
                }

                async fn delete_user_rows(&mut self, uid: &i64) -> ApiResult<()> {
                    diesel::delete(
                        user_collections::table.filter(user_collections::userid.eq(*uid)),
                    )
                    .execute(&mut *self.0)$($aw)*?;
                    diesel::delete(bso::table.filter(bso::userid.eq(*uid)))
                        .execute(&mut *self.0)$($aw)*?;
                    self.drop_user_batches(*uid).await
                }

                async fn refresh_counters(&mut self, scope: &Scope<i64>) -> ApiResult<()> {
                    let (count, bytes): (i64, Option<i64>) = live_bsos(scope.user, scope.t)
                        .filter(bso::collection.eq(scope.cid))
                        .select((count_star(), sql::<Nullable<BigInt>>($bytes_sum)))
                        .first(&mut *self.0)$($aw)*?;
                    Prepared(
                        diesel::update(user_collections::table.find((scope.user, scope.cid)))
                            .set((
                                user_collections::count.eq(count as i32),
                                user_collections::total_bytes.eq(bytes.unwrap_or(0)),
                            )),
                    )
                    .execute(&mut *self.0)$($aw)*?;
                    Ok(())
                }

                async fn create_batch(&mut self, scope: &Scope<i64>) -> ApiResult<Batch> {
                    BatchTables::create_batch(self, scope).await
                }

                const MERGES_STAGED: bool = <Self as BatchTables>::MERGES_STAGED;

                async fn put_staged(
                    &mut self,
                    scope: &Scope<i64>,
                    batch: &Batch,
                    updates: &[BsoUpdate],
                ) -> ApiResult<()> {
                    BatchTables::put_staged(self, scope, batch, updates).await
                }

                async fn drop_batch(&mut self, scope: &Scope<i64>, batch: &Batch) -> ApiResult<()> {
                    BatchTables::drop_batch(self, scope, batch).await
                }
            }
        };
    };

    // The whole database is locked by the transaction: a row's lock is its plain read.
    (@lock file, [$($aw:tt)*]) => {
        async fn lock_collection(
            &mut self,
            uid: i64,
            cid: i32,
        ) -> ApiResult<Option<SyncTimestamp>> {
            self.collection_ts(&uid, cid).await
        }
    };

    (@lock rows ($placeholder:path), [$($aw:tt)*]) => {
        /// Locks the row (`FOR UPDATE`) until the transaction ends, creating it first as a
        /// placeholder when missing.
        async fn lock_collection(
            &mut self,
            uid: i64,
            cid: i32,
        ) -> ApiResult<Option<SyncTimestamp>> {
            if let Some(found) = self.locked_collection_ts(uid, cid).await? {
                return Ok(Some(found));
            }
            $placeholder(&mut *self.0, uid, cid)$($aw)*?;
            self.locked_collection_ts(uid, cid).await
        }

        async fn locked_collection_ts(
            &mut self,
            uid: i64,
            cid: i32,
        ) -> ApiResult<Option<SyncTimestamp>> {
            Ok(user_collections::table
                .find((uid, cid))
                .select(user_collections::last_modified)
                .for_update()
                .first::<Ms>(&mut *self.0)$($aw)*
                .optional()?
                .map(ts))
        }
    };
}
pub(crate) use sql_statements;
