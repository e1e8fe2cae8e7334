//! What differs between table layouts, for the MySQL layout (SPEC 5.1) that SQLite and MySQL
//! share: inserting records (with `payload_size`) and the batch tables `batch_uploads` /
//! `batch_upload_items`, whose ids are base64 of the creation ms plus `uid % 10`.
//! `mysql_layout!` implements `BatchTables` for one connection type (a macro only for the
//! synchronous/asynchronous split, like `statements`), with the same `run` and `[.await]`
//! arguments as `sql_statements!`.

macro_rules! mysql_layout {
    // An upsert (of records; on MySQL of staged records too): one statement per row, on the
    // primary key (SQLite, whose statements cost no round trip and whose dialect has no
    // multi-row upsert in diesel), or one for all rows with ON DUPLICATE KEY UPDATE (MySQL).
    (@upsert per_row, $table:path, $conn:expr, $values:expr, $changes:expr, [$($aw:tt)*]) => {
        for value in $values {
            // One row: the same text every time.
            $crate::db::sql::Prepared(
                diesel::insert_into($table)
                    .values(value)
                    .on_conflict(diesel::Table::primary_key(&$table))
                    .do_update()
                    .set($changes),
            )
            .execute($conn)$($aw)*?;
        }
    };
    (@upsert duplicate_keys, $table:path, $conn:expr, $values:expr, $changes:expr, [$($aw:tt)*]) => {
        diesel::insert_into($table)
            .values($values)
            .on_conflict(diesel::dsl::DuplicatedKeys)
            .do_update()
            .set($changes)
            .execute($conn)$($aw)*?;
    };
    // Staging records in a batch. MySQL: one upsert that merges each with its staged row
    // (`BsoUpdate::merged_with` in SQL: a field the record leaves out stays), so a batch POST
    // reads nothing first. SQLite: the caller merged them; the staged rows are replaced by a
    // delete and a multi-row insert (three statements cost less there than a statement per row,
    // measured: writes 0.96x with per-row upserts).
    (@merges_staged per_row) => { false };
    (@merges_staged duplicate_keys) => { true };
    (@stage per_row, $conn:expr, $scope:expr, $batch:expr, $chunk:expr, $values:expr, [$($aw:tt)*]) => {
        let chunk_ids: Vec<&str> = $chunk.iter().map(|u| u.id.as_str()).collect();
        diesel::delete(
            batch_upload_items::table
                .filter(batch_upload_items::userid.eq($scope.user))
                .filter(batch_upload_items::batch.eq($batch))
                .filter(batch_upload_items::id.eq_any(chunk_ids)),
        )
        .execute($conn)$($aw)*?;
        diesel::insert_into(batch_upload_items::table)
            .values($values)
            .execute($conn)$($aw)*?;
    };
    (@stage duplicate_keys, $conn:expr, $scope:expr, $batch:expr, $chunk:expr, $values:expr, [$($aw:tt)*]) => {{
        use $crate::db::sql::coalesce;
        use batch_upload_items::{payload, payload_size, sortindex, ttl_offset};
        use diesel::upsert::excluded;
        $crate::db::sql::mysql_layout::mysql_layout!(
            @upsert duplicate_keys, batch_upload_items::table, $conn, $values,
            (
                sortindex.eq(coalesce(excluded(sortindex), sortindex)),
                payload.eq(coalesce(excluded(payload), payload)),
                payload_size.eq(coalesce(excluded(payload_size), payload_size)),
                ttl_offset.eq(coalesce(excluded(ttl_offset), ttl_offset)),
            ),
            [$($aw)*]
        );
    }};
    (
        conn = $Conn:ty, db = $Db:ty, staged_bytes_sum = $staged_bytes_sum:expr,
        upsert = $upsert:ident, run = $Run:path, [$($aw:tt)*]
    ) => {
        const _: () = {
            #[allow(unused_imports)]
            use $Run;
            use diesel::dsl::{count_star, sql};
            use diesel::sql_types::{BigInt, Nullable};
            use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};

            use $crate::db::rules::{COMMIT_CHUNK, Staged};
            use $crate::db::sql::schema::{batch_upload_items, batch_uploads, bso};
            use $crate::db::sql::{BatchTables, CHUNK, Ms, SqlTx};
            use $crate::db::tx::{Overwrite, Scope};
            use $crate::error::{ApiError, ApiResult};
            use $crate::protocol::{BsoUpdate, StoredBso, batch_id};

            /// A batch as this layout keys it.
            type BatchKey = i64;

            /// What an upsert of a record replaces (`Overwrite`): every column but the key
            /// (`whole`), or the given ones (`given_expiry`, `given`).
            macro_rules! upsert_changes {
                (whole) => {{
                    use diesel::upsert::excluded;
                    (
                        bso::sortindex.eq(excluded(bso::sortindex)),
                        bso::payload.eq(excluded(bso::payload)),
                        bso::payload_size.eq(excluded(bso::payload_size)),
                        bso::modified.eq(excluded(bso::modified)),
                        bso::ttl.eq(excluded(bso::ttl)),
                    )
                }};
                (given_expiry) => {{
                    use diesel::upsert::excluded;
                    (upsert_changes!(given), bso::ttl.eq(excluded(bso::ttl)))
                }};
                (given) => {{
                    use diesel::upsert::excluded;
                    (
                        bso::sortindex.eq($crate::db::sql::coalesce(
                            excluded(bso::sortindex),
                            bso::sortindex,
                        )),
                        bso::payload.eq(excluded(bso::payload)),
                        bso::payload_size.eq(excluded(bso::payload_size)),
                        bso::modified.eq(excluded(bso::modified)),
                    )
                }};
            }

            #[derive(diesel::prelude::Insertable)]
            #[diesel(table_name = bso)]
            struct NewBso<'a> {
                userid: i64,
                collection: i32,
                id: &'a str,
                sortindex: Option<i32>,
                payload: &'a str,
                payload_size: i32,
                modified: Ms,
                ttl: Ms,
            }

            #[derive(diesel::prelude::Insertable)]
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

            impl SqlTx<'_, $Conn> {
                async fn drop_batches(&mut self, uid: i64, batches: Vec<i64>) -> ApiResult<()> {
                    for chunk in batches.chunks(CHUNK) {
                        diesel::delete(
                            batch_upload_items::table
                                .filter(batch_upload_items::userid.eq(uid))
                                .filter(batch_upload_items::batch.eq_any(chunk)),
                        )
                        .execute(&mut *self.0)$($aw)*?;
                        diesel::delete(
                            batch_uploads::table
                                .filter(batch_uploads::userid.eq(uid))
                                .filter(batch_uploads::batch.eq_any(chunk)),
                        )
                        .execute(&mut *self.0)$($aw)*?;
                    }
                    Ok(())
                }
            }

            impl BatchTables for SqlTx<'_, $Conn> {
                type Batch = BatchKey;

                fn encode_batch(key: &BatchKey) -> String {
                    batch_id::encode(*key)
                }

                async fn upsert_bso_rows(
                    &mut self,
                    uid: i64,
                    cid: i32,
                    rows: &[StoredBso],
                    overwrite: Overwrite,
                ) -> ApiResult<()> {
                    let values: Vec<NewBso<'_>> = rows
                        .iter()
                        .map(|r| NewBso {
                            userid: uid,
                            collection: cid,
                            id: &r.id,
                            sortindex: r.sortindex,
                            payload: &r.payload,
                            payload_size: r.payload.len() as i32,
                            modified: Ms(r.modified),
                            ttl: Ms(r.expiry),
                        })
                        .collect();
                    match overwrite {
                        Overwrite::Whole => {
                            $crate::db::sql::mysql_layout::mysql_layout!(
                                @upsert $upsert, bso::table, &mut *self.0, values,
                                upsert_changes!(whole), [$($aw)*]
                            );
                        }
                        Overwrite::Given { expiry: true } => {
                            $crate::db::sql::mysql_layout::mysql_layout!(
                                @upsert $upsert, bso::table, &mut *self.0, values,
                                upsert_changes!(given_expiry), [$($aw)*]
                            );
                        }
                        Overwrite::Given { expiry: false } => {
                            $crate::db::sql::mysql_layout::mysql_layout!(
                                @upsert $upsert, bso::table, &mut *self.0, values,
                                upsert_changes!(given), [$($aw)*]
                            );
                        }
                    }
                    Ok(())
                }

                async fn drop_batch(
                    &mut self,
                    scope: &Scope<i64>,
                    key: &BatchKey,
                ) -> ApiResult<()> {
                    self.drop_batches(scope.user, vec![*key]).await
                }

                async fn drop_collection_batches(&mut self, uid: i64, cid: i32) -> ApiResult<()> {
                    let batches: Vec<i64> = batch_uploads::table
                        .filter(batch_uploads::userid.eq(uid))
                        .filter(batch_uploads::collection.eq(cid))
                        .select(batch_uploads::batch)
                        .load(&mut *self.0)$($aw)*?;
                    self.drop_batches(uid, batches).await
                }

                async fn drop_user_batches(&mut self, uid: i64) -> ApiResult<()> {
                    diesel::delete(
                        batch_upload_items::table.filter(batch_upload_items::userid.eq(uid)),
                    )
                    .execute(&mut *self.0)$($aw)*?;
                    diesel::delete(batch_uploads::table.filter(batch_uploads::userid.eq(uid)))
                        .execute(&mut *self.0)$($aw)*?;
                    Ok(())
                }

                /// Up to `max_rows` staged records of expired batches, or when none is left, up to
                /// `max_rows` expired batches. Batch ids start with their creation ms, so the
                /// primary keys find both.
                async fn count_expired_batches(&mut self, now: i64) -> ApiResult<i64> {
                    let cutoff = now - batch_id::BATCH_LIFETIME_MS - 10;
                    Ok(batch_uploads::table
                        .filter(batch_uploads::batch.lt(cutoff))
                        .count()
                        .get_result(&mut *self.0)$($aw)*?)
                }

                async fn purge_batches(
                    &mut self,
                    now: i64,
                    max_rows: i64,
                ) -> ApiResult<(usize, usize)> {
                    let cutoff = now - batch_id::BATCH_LIFETIME_MS - 10;
                    let items: Vec<(i64, i64, String)> = batch_upload_items::table
                        .filter(batch_upload_items::batch.lt(cutoff))
                        .select((
                            batch_upload_items::batch,
                            batch_upload_items::userid,
                            batch_upload_items::id,
                        ))
                        .limit(max_rows)
                        .load(&mut *self.0)$($aw)*?;
                    if !items.is_empty() {
                        let mut by_batch: std::collections::BTreeMap<(i64, i64), Vec<String>> =
                            Default::default();
                        for (batch, uid, id) in items {
                            by_batch.entry((batch, uid)).or_default().push(id);
                        }
                        let mut staged = 0;
                        for ((batch, uid), ids) in by_batch {
                            for chunk in ids.chunks(CHUNK) {
                                staged += diesel::delete(
                                    batch_upload_items::table
                                        .filter(batch_upload_items::batch.eq(batch))
                                        .filter(batch_upload_items::userid.eq(uid))
                                        .filter(batch_upload_items::id.eq_any(chunk)),
                                )
                                .execute(&mut *self.0)$($aw)*?;
                            }
                        }
                        return Ok((0, staged));
                    }
                    let batches: Vec<(i64, i64)> = batch_uploads::table
                        .filter(batch_uploads::batch.lt(cutoff))
                        .select((batch_uploads::batch, batch_uploads::userid))
                        .limit(max_rows)
                        .load(&mut *self.0)$($aw)*?;
                    let mut deleted = 0;
                    for (batch, uid) in batches {
                        deleted += diesel::delete(batch_uploads::table.find((batch, uid)))
                            .execute(&mut *self.0)$($aw)*?;
                    }
                    Ok((deleted, 0))
                }

                async fn staged_items(
                    &mut self,
                    scope: &Scope<i64>,
                    batch: &BatchKey,
                    which: Staged<'_>,
                ) -> ApiResult<Vec<BsoUpdate>> {
                    let (uid, batch) = (scope.user, *batch);
                    let base = || {
                        batch_upload_items::table
                            .filter(batch_upload_items::userid.eq(uid))
                            .filter(batch_upload_items::batch.eq(batch))
                            .select((
                                batch_upload_items::id,
                                batch_upload_items::sortindex,
                                batch_upload_items::payload,
                                batch_upload_items::ttl_offset,
                            ))
                            .order(batch_upload_items::id.asc())
                            .into_boxed::<$Db>()
                    };
                    let mut rows: Vec<(String, Option<i32>, Option<String>, Option<i32>)> =
                        Vec::new();
                    match which {
                        Staged::After(after) => {
                            let mut query = base();
                            if let Some(after) = after {
                                query = query.filter(batch_upload_items::id.gt(after.to_owned()));
                            }
                            rows = query.limit(COMMIT_CHUNK).load(&mut *self.0)$($aw)*?;
                        }
                        Staged::Ids(ids) => {
                            for chunk in ids.chunks(CHUNK) {
                                let found: Vec<_> = base()
                                    .filter(batch_upload_items::id.eq_any(chunk))
                                    .load(&mut *self.0)$($aw)*?;
                                rows.extend(found);
                            }
                        }
                    }
                    Ok(rows
                        .into_iter()
                        .map(|(id, sortindex, payload, ttl)| BsoUpdate {
                            id,
                            payload,
                            sortindex,
                            ttl: ttl.map(|t| t.max(0) as u32),
                        })
                        .collect())
                }

                const MERGES_STAGED: bool =
                    $crate::db::sql::mysql_layout::mysql_layout!(@merges_staged $upsert);

                async fn put_staged(
                    &mut self,
                    scope: &Scope<i64>,
                    batch: &BatchKey,
                    updates: &[BsoUpdate],
                ) -> ApiResult<()> {
                    for chunk in updates.chunks(CHUNK) {
                        let values: Vec<NewBatchItem<'_>> = chunk
                            .iter()
                            .map(|u| NewBatchItem {
                                batch: *batch,
                                userid: scope.user,
                                id: &u.id,
                                sortindex: u.sortindex,
                                payload: u.payload.as_deref(),
                                payload_size: u.payload.as_ref().map(|p| p.len() as i32),
                                ttl_offset: u.ttl.map(|t| t as i32),
                            })
                            .collect();
                        $crate::db::sql::mysql_layout::mysql_layout!(
                            @stage $upsert, &mut *self.0, scope, *batch, chunk, values,
                            [$($aw)*]
                        );
                    }
                    Ok(())
                }

                async fn staged_totals(
                    &mut self,
                    scope: &Scope<i64>,
                    batch: &BatchKey,
                ) -> ApiResult<(i64, i64)> {
                    let (records, bytes): (i64, Option<i64>) = batch_upload_items::table
                        .filter(batch_upload_items::userid.eq(scope.user))
                        .filter(batch_upload_items::batch.eq(*batch))
                        .select((count_star(), sql::<Nullable<BigInt>>($staged_bytes_sum)))
                        .first(&mut *self.0)$($aw)*?;
                    Ok((records, bytes.unwrap_or(0)))
                }

                async fn find_batch(
                    &mut self,
                    scope: &Scope<i64>,
                    id: &str,
                ) -> ApiResult<BatchKey> {
                    let batch = batch_id::decode(id)?;
                    let found: Option<i32> = batch_uploads::table
                        .find((batch, scope.user))
                        .select(batch_uploads::collection)
                        .first(&mut *self.0)$($aw)*
                        .optional()?;
                    match found {
                        Some(cid)
                            if cid == scope.cid
                                && !batch_id::is_expired(batch, scope.t.as_i64()) =>
                        {
                            Ok(batch)
                        }
                        _ => Err(ApiError::bad_request("batch not found")),
                    }
                }

                async fn create_batch(&mut self, scope: &Scope<i64>) -> ApiResult<BatchKey> {
                    let now = scope.t.as_i64();
                    // Expired batches of this user are dropped here rather than by a purge job.
                    let expired: Vec<i64> = batch_uploads::table
                        .filter(batch_uploads::userid.eq(scope.user))
                        .filter(batch_uploads::batch.lt(now - batch_id::BATCH_LIFETIME_MS - 10))
                        .select(batch_uploads::batch)
                        .load(&mut *self.0)$($aw)*?;
                    self.drop_batches(scope.user, expired).await?;
                    let first = batch_id::numeric_id(now, scope.user as u64);
                    for candidate in first..first + 5 {
                        // An id that is taken inserts nothing (one statement, not a read first).
                        let inserted = diesel::insert_or_ignore_into(batch_uploads::table)
                            .values((
                                batch_uploads::batch.eq(candidate),
                                batch_uploads::userid.eq(scope.user),
                                batch_uploads::collection.eq(scope.cid),
                            ))
                            .execute(&mut *self.0)$($aw)*?;
                        if inserted == 0 {
                            continue;
                        }
                        // A reused id (possible with this scheme) must start empty.
                        diesel::delete(
                            batch_upload_items::table
                                .filter(batch_upload_items::userid.eq(scope.user))
                                .filter(batch_upload_items::batch.eq(candidate)),
                        )
                        .execute(&mut *self.0)$($aw)*?;
                        return Ok(candidate);
                    }
                    Err(ApiError::new(
                        $crate::error::ErrorKind::Conflict,
                        "could not allocate a batch id",
                    ))
                }
            }
        };
    };
}
pub(crate) use mysql_layout;
