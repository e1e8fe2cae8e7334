//! The PostgreSQL backend: syncstorage-rs's PostgreSQL tables (SPEC 5.2: `TIMESTAMPTZ`
//! timestamps, foreign keys to `user_collections`, UUID batch ids in `batches`/`batch_bsos`),
//! diesel-async over the pure-Rust tokio-postgres driver. A write locks the user's collection
//! row (`FOR UPDATE`, creating it as a "pre-touched" row first), so concurrent writers to one
//! collection serialize.

use diesel_async::AsyncPgConnection;

pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The storage database on PostgreSQL.
pub type PostgresStorage = crate::db::pooled::PooledStorage<AsyncPgConnection>;

impl crate::db::pooled::ServerConn for AsyncPgConnection {
    /// Writes: READ COMMITTED (explicit, in case the server's default is stricter), so each
    /// statement sees what other writers committed.
    fn session(_: &crate::db::sql::PoolSettings) -> String {
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED".to_owned()
    }
    const BEGIN_WRITE: &'static str = "BEGIN";
    /// Reads: one snapshot for the whole unit of work.
    const BEGIN_READ: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
}

/// Upstream's pre-touched row, which every read ignores; the foreign keys need it too.
async fn insert_placeholder(
    conn: &mut AsyncPgConnection,
    uid: i64,
    cid: i32,
) -> diesel::QueryResult<usize> {
    use diesel::ExpressionMethods;
    use diesel_async::RunQueryDsl;
    use layout::{Ms, PRE_TOUCH_MS, user_collections};
    diesel::insert_into(user_collections::table)
        .values((
            user_collections::userid.eq(uid),
            user_collections::collection.eq(cid),
            user_collections::last_modified.eq(Ms(PRE_TOUCH_MS)),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
}

crate::db::sql::statements::sql_statements!(
    conn = AsyncPgConnection,
    db = diesel::pg::Pg,
    schema = crate::db::sql::schema_pg,
    // Bytes, not characters.
    bytes_sum = "SUM(octet_length(payload))::BIGINT",
    lock = rows(insert_placeholder),
    run = diesel_async::RunQueryDsl,
    [.await]
);

/// This layout's records and batches (`BatchTables`): UUID batches in `batches`, their records
/// in `batch_bsos`, which go with their batch (ON DELETE CASCADE).
mod layout {
    use diesel::dsl::{count_star, sql};
    use diesel::prelude::Insertable;
    use diesel::sql_types::{BigInt, Nullable};
    use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
    use diesel_async::{AsyncPgConnection, RunQueryDsl};

    use crate::db::rules::{COMMIT_CHUNK, Staged};
    pub use crate::db::sql::Ms;
    pub use crate::db::sql::schema_pg::user_collections;
    use crate::db::sql::schema_pg::{batch_bsos, batches, bso};
    use crate::db::sql::{BatchTables, CHUNK, SqlTx};
    use crate::db::tx::{Overwrite, Scope};
    use crate::error::{ApiError, ApiResult};
    use crate::protocol::{BsoUpdate, StoredBso, batch_id};

    type Conn = AsyncPgConnection;
    type Db = diesel::pg::Pg;
    type BatchKey = uuid::Uuid;

    /// 0001-01-01T00:00:00Z: upstream's marker for a row that exists only for the foreign keys.
    pub const PRE_TOUCH_MS: i64 = -62_135_596_800_000;
    const BSO_BYTES_SUM: &str = "SUM(octet_length(payload))::BIGINT";

    #[derive(Insertable)]
    #[diesel(table_name = bso)]
    struct NewBso<'a> {
        userid: i64,
        collection: i32,
        id: &'a str,
        sortindex: Option<i32>,
        payload: &'a str,
        modified: Ms,
        ttl: Ms,
    }

    #[derive(Insertable)]
    #[diesel(table_name = batch_bsos)]
    struct NewBatchBso<'a> {
        user_id: i64,
        collection_id: i32,
        batch_id: uuid::Uuid,
        batch_bso_id: &'a str,
        sortindex: Option<i32>,
        payload: Option<&'a str>,
        ttl: Option<i64>,
    }

    fn staged_query(scope: &Scope<i64>, batch: BatchKey) -> batch_bsos::BoxedQuery<'static, Db> {
        batch_bsos::table
            .filter(batch_bsos::user_id.eq(scope.user))
            .filter(batch_bsos::collection_id.eq(scope.cid))
            .filter(batch_bsos::batch_id.eq(batch))
            .into_boxed()
    }

    impl BatchTables for SqlTx<'_, Conn> {
        type Batch = BatchKey;

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
                    modified: Ms(r.modified),
                    ttl: Ms(r.expiry),
                })
                .collect();
            use crate::db::sql::coalesce;
            use diesel::upsert::excluded;
            let insert = diesel::insert_into(bso::table)
                .values(values)
                .on_conflict((bso::userid, bso::collection, bso::id))
                .do_update();
            let sortindex = coalesce(excluded(bso::sortindex), bso::sortindex);
            let (payload, modified, ttl) = (
                bso::payload.eq(excluded(bso::payload)),
                bso::modified.eq(excluded(bso::modified)),
                bso::ttl.eq(excluded(bso::ttl)),
            );
            match overwrite {
                Overwrite::Whole => {
                    let changes = (
                        bso::sortindex.eq(excluded(bso::sortindex)),
                        payload,
                        modified,
                        ttl,
                    );
                    insert.set(changes).execute(&mut *self.0).await?
                }
                Overwrite::Given { expiry: true } => {
                    let changes = (bso::sortindex.eq(sortindex), payload, modified, ttl);
                    insert.set(changes).execute(&mut *self.0).await?
                }
                Overwrite::Given { expiry: false } => {
                    let changes = (bso::sortindex.eq(sortindex), payload, modified);
                    insert.set(changes).execute(&mut *self.0).await?
                }
            };
            Ok(())
        }

        /// Upstream's form: a hyphenated UUIDv4.
        fn encode_batch(key: &BatchKey) -> String {
            key.hyphenated().to_string()
        }

        /// Staged records go with their batch (ON DELETE CASCADE).
        async fn drop_batch(&mut self, scope: &Scope<i64>, key: &BatchKey) -> ApiResult<()> {
            diesel::delete(
                batches::table
                    .filter(batches::user_id.eq(scope.user))
                    .filter(batches::collection_id.eq(scope.cid))
                    .filter(batches::batch_id.eq(*key)),
            )
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn drop_collection_batches(&mut self, uid: i64, cid: i32) -> ApiResult<()> {
            diesel::delete(
                batches::table
                    .filter(batches::user_id.eq(uid))
                    .filter(batches::collection_id.eq(cid)),
            )
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn drop_user_batches(&mut self, uid: i64) -> ApiResult<()> {
            diesel::delete(batches::table.filter(batches::user_id.eq(uid)))
                .execute(&mut *self.0)
                .await?;
            Ok(())
        }

        /// Up to `max_rows` expired batches, by key: (batches, 0); their staged records go with
        /// them (ON DELETE CASCADE), at most max_total_records each.
        async fn count_expired_batches(&mut self, now: i64) -> ApiResult<i64> {
            Ok(batches::table
                .filter(batches::expiry.le(Ms(now)))
                .count()
                .get_result(&mut *self.0)
                .await?)
        }

        async fn purge_batches(&mut self, now: i64, max_rows: i64) -> ApiResult<(usize, usize)> {
            let keys: Vec<(i64, i32, uuid::Uuid)> = batches::table
                .filter(batches::expiry.le(Ms(now)))
                .select((batches::user_id, batches::collection_id, batches::batch_id))
                .limit(max_rows)
                .load(&mut *self.0)
                .await?;
            let mut deleted = 0;
            for (uid, cid, id) in keys {
                deleted += diesel::delete(
                    batches::table
                        .filter(batches::user_id.eq(uid))
                        .filter(batches::collection_id.eq(cid))
                        .filter(batches::batch_id.eq(id)),
                )
                .execute(&mut *self.0)
                .await?;
            }
            Ok((deleted, 0))
        }

        async fn staged_items(
            &mut self,
            scope: &Scope<i64>,
            batch: &BatchKey,
            which: Staged<'_>,
        ) -> ApiResult<Vec<BsoUpdate>> {
            type Row = (String, Option<i32>, Option<String>, Option<i64>);
            let columns = (
                batch_bsos::batch_bso_id,
                batch_bsos::sortindex,
                batch_bsos::payload,
                batch_bsos::ttl,
            );
            let mut rows: Vec<Row> = Vec::new();
            match which {
                Staged::After(after) => {
                    let mut query = staged_query(scope, *batch);
                    if let Some(after) = after {
                        query = query.filter(batch_bsos::batch_bso_id.gt(after.to_owned()));
                    }
                    rows = query
                        .select(columns)
                        .order(batch_bsos::batch_bso_id)
                        .limit(COMMIT_CHUNK)
                        .load(&mut *self.0)
                        .await?
                }
                Staged::Ids(ids) => {
                    for chunk in ids.chunks(CHUNK) {
                        let found: Vec<Row> = staged_query(scope, *batch)
                            .filter(batch_bsos::batch_bso_id.eq_any(chunk))
                            .select(columns)
                            .load(&mut *self.0)
                            .await?;
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
                    ttl: ttl.map(|t| t.clamp(0, i64::from(u32::MAX)) as u32),
                })
                .collect())
        }

        const MERGES_STAGED: bool = true;

        async fn put_staged(
            &mut self,
            scope: &Scope<i64>,
            batch: &BatchKey,
            updates: &[BsoUpdate],
        ) -> ApiResult<()> {
            use crate::db::sql::coalesce;
            use batch_bsos::{payload, sortindex, ttl};
            use diesel::upsert::excluded;
            for chunk in updates.chunks(CHUNK) {
                let values: Vec<NewBatchBso<'_>> = chunk
                    .iter()
                    .map(|u| NewBatchBso {
                        user_id: scope.user,
                        collection_id: scope.cid,
                        batch_id: *batch,
                        batch_bso_id: &u.id,
                        sortindex: u.sortindex,
                        payload: u.payload.as_deref(),
                        ttl: u.ttl.map(i64::from),
                    })
                    .collect();
                // `BsoUpdate::merged_with`: what the record leaves out stays staged.
                diesel::insert_into(batch_bsos::table)
                    .values(values)
                    .on_conflict(diesel::Table::primary_key(&batch_bsos::table))
                    .do_update()
                    .set((
                        sortindex.eq(coalesce(excluded(sortindex), sortindex)),
                        payload.eq(coalesce(excluded(payload), payload)),
                        ttl.eq(coalesce(excluded(ttl), ttl)),
                    ))
                    .execute(&mut *self.0)
                    .await?;
            }
            Ok(())
        }

        async fn staged_totals(
            &mut self,
            scope: &Scope<i64>,
            batch: &BatchKey,
        ) -> ApiResult<(i64, i64)> {
            let (records, bytes): (i64, Option<i64>) = staged_query(scope, *batch)
                .select((count_star(), sql::<Nullable<BigInt>>(BSO_BYTES_SUM)))
                .first(&mut *self.0)
                .await?;
            Ok((records, bytes.unwrap_or(0)))
        }

        /// The batch if it exists for this user and collection and has not expired.
        async fn find_batch(&mut self, scope: &Scope<i64>, id: &str) -> ApiResult<BatchKey> {
            let key = uuid::Uuid::parse_str(id.trim())
                .map_err(|_| ApiError::bad_request("invalid batch id"))?;
            let expiry: Option<Ms> = batches::table
                .filter(batches::user_id.eq(scope.user))
                .filter(batches::collection_id.eq(scope.cid))
                .filter(batches::batch_id.eq(key))
                .select(batches::expiry)
                .first(&mut *self.0)
                .await
                .optional()?;
            match expiry {
                Some(Ms(expiry)) if expiry > scope.t.as_i64() => Ok(key),
                _ => Err(ApiError::bad_request("batch not found")),
            }
        }

        async fn create_batch(&mut self, scope: &Scope<i64>) -> ApiResult<BatchKey> {
            // The collection row exists: begin_write locked (and if need be created) it.
            let key = uuid::Uuid::new_v4();
            diesel::insert_into(batches::table)
                .values((
                    batches::user_id.eq(scope.user),
                    batches::collection_id.eq(scope.cid),
                    batches::batch_id.eq(key),
                    batches::expiry.eq(Ms(scope.t.as_i64() + batch_id::BATCH_LIFETIME_MS)),
                ))
                .execute(&mut *self.0)
                .await?;
            Ok(key)
        }
    }
}
