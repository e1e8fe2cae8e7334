//! The statements of the `tx` contract (`ReadTx`, `WriteTx`) in Spanner SQL over the
//! interleaved upstream schema; the units of work are the shared ones (`db::units`).
//! Timestamps are TIMESTAMP columns, read and written as integer ms (`UNIX_MILLIS`,
//! `TIMESTAMP_MILLIS`). Writes are DML, so later reads in the same read-write transaction see
//! them; a read-write transaction locks what it reads, so two writes of one user serialize
//! (the later one aborts and is run again).

use std::collections::HashMap;
use std::ops::DerefMut;
use std::time::Duration;

use gcloud_spanner::row::Row;
use gcloud_spanner::statement::{Statement, ToKind};
use gcloud_spanner::transaction::Transaction;
use gcloud_spanner::transaction_rw::ReadWriteTransaction;

use super::{status_error, timed_out};
use crate::db::UserId;
use crate::db::rules::{self, Staged};
use crate::db::tx::{Overwrite, ReadTx, Scope, WriteTx};
use crate::error::{ApiError, ApiResult};
use crate::protocol::{BsoQuery, BsoUpdate, Sort, StoredBso, SyncTimestamp, batch_id};

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

const BYTES: &str = "SUM(BYTE_LENGTH(payload))";

/// An ids-only listing reads no payloads (the fields `stored` expects, empty).
const ID_COLUMNS: &str = "bso_id, CAST(NULL AS STRING) AS payload, CAST(NULL AS INT64) AS sortindex, \
     UNIX_MILLIS(modified) AS modified, CAST(0 AS INT64) AS expiry";
const BSO_COLUMNS: &str =
    "bso_id, payload, sortindex, UNIX_MILLIS(modified) AS modified, UNIX_MILLIS(expiry) AS expiry";

/// A Spanner transaction (read-only, or read-write for `WriteTx`) with the bound on each of
/// its statements.
pub struct SpannerTx<'a, T> {
    pub tx: &'a mut T,
    /// Each statement's deadline (Spanner unreachable: 503, never a hang).
    pub step: Duration,
}

/// A statement with the user's key bound as @fxa_uid / @fxa_kid.
fn user_stmt(sql: &str, user: &UserId) -> Statement {
    let mut stmt = Statement::new(sql);
    stmt.add_param("fxa_uid", &user.fxa_uid);
    stmt.add_param("fxa_kid", &user.fxa_kid);
    stmt
}

/// A statement on the user's collection @cid.
fn collection_stmt(sql: &str, user: &UserId, cid: i32) -> Statement {
    param(user_stmt(sql, user), "cid", &i64::from(cid))
}

fn batch_stmt(sql: &str, scope: &Scope<UserId>, batch: &str) -> Statement {
    param(
        collection_stmt(sql, &scope.user, scope.cid),
        "batch",
        &batch,
    )
}

fn param<T: ToKind>(mut stmt: Statement, name: &str, value: &T) -> Statement {
    stmt.add_param(name, value);
    stmt
}

fn col<T: gcloud_spanner::row::TryFromValue>(row: &Row, name: &str) -> ApiResult<T> {
    row.column_by_name::<T>(name)
        .map_err(|e| ApiError::internal(format!("spanner column {name}: {e}")))
}

fn stored(row: &Row) -> ApiResult<StoredBso> {
    Ok(StoredBso {
        id: col(row, "bso_id")?,
        payload: col::<Option<String>>(row, "payload")?.unwrap_or_default(),
        sortindex: col::<Option<i64>>(row, "sortindex")?.map(|s| s as i32),
        modified: col(row, "modified")?,
        expiry: col(row, "expiry")?,
    })
}

/// `(collection id, value)` pairs.
fn pairs(rows: &[Row], value: &str) -> ApiResult<Vec<(i32, i64)>> {
    rows.iter()
        .map(|r| {
            Ok((
                col::<i64>(r, "collection_id")? as i32,
                col::<Option<i64>>(r, value)?.unwrap_or(0),
            ))
        })
        .collect()
}

impl<T: DerefMut<Target = Transaction> + Send> SpannerTx<'_, T> {
    async fn rows(&mut self, stmt: Statement) -> ApiResult<Vec<Row>> {
        let tx: &mut Transaction = self.tx;
        let read = async move {
            let mut iter = tx.query(stmt).await.map_err(status_error)?;
            let mut out = Vec::new();
            while let Some(row) = iter.next().await.map_err(status_error)? {
                out.push(row);
            }
            Ok(out)
        };
        tokio::time::timeout(self.step, read)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// `(collection_id, value)` pairs from a grouped query over live records.
    async fn per_collection(
        &mut self,
        user: &UserId,
        select: &str,
        now: SyncTimestamp,
    ) -> ApiResult<Vec<(i32, i64)>> {
        let sql = format!(
            "SELECT collection_id, {select} AS v FROM bsos \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND expiry > TIMESTAMP_MILLIS(@now) \
             GROUP BY collection_id"
        );
        let stmt = param(user_stmt(&sql, user), "now", &now.as_i64());
        pairs(&self.rows(stmt).await?, "v")
    }
}

impl SpannerTx<'_, ReadWriteTransaction> {
    async fn exec(&mut self, stmt: Statement) -> ApiResult<i64> {
        match tokio::time::timeout(self.step, self.tx.update(stmt)).await {
            Ok(done) => done.map_err(status_error),
            Err(_) => Err(timed_out()),
        }
    }
}

impl<T: DerefMut<Target = Transaction> + Send> ReadTx for SpannerTx<'_, T> {
    type User = UserId;
    type Batch = String;

    /// Spanner keys users by fxa_uid/fxa_kid: a token without them (minted by a tokenserver
    /// that leaves them out) cannot name a user here, and must not share an empty key.
    fn user_key(user: &UserId) -> ApiResult<UserId> {
        if user.fxa_uid.is_empty() || user.fxa_kid.is_empty() {
            return Err(ApiError::unauthorized(
                crate::error::AuthFailure::TokenNoFxaUid,
            ));
        }
        Ok(user.clone())
    }

    fn encode_batch(batch: &String) -> String {
        batch.clone()
    }

    async fn collection_id(&mut self, name: &str) -> ApiResult<Option<i32>> {
        let stmt = param(
            Statement::new("SELECT collection_id FROM collections WHERE name = @name"),
            "name",
            &name,
        );
        match self.rows(stmt).await?.first() {
            Some(row) => Ok(Some(col::<i64>(row, "collection_id")? as i32)),
            None => Ok(None),
        }
    }

    async fn collection_names(&mut self, ids: Vec<i32>) -> ApiResult<HashMap<i32, String>> {
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let stmt = param(
            Statement::new(
                "SELECT collection_id, name FROM collections WHERE collection_id IN UNNEST(@ids)",
            ),
            "ids",
            &ids,
        );
        self.rows(stmt)
            .await?
            .iter()
            .map(|r| Ok((col::<i64>(r, "collection_id")? as i32, col(r, "name")?)))
            .collect()
    }

    /// Placeholder rows read as 0.
    async fn collection_ts(&mut self, user: &UserId, cid: i32) -> ApiResult<Option<SyncTimestamp>> {
        let stmt = collection_stmt(
            "SELECT UNIX_MILLIS(modified) AS m FROM user_collections \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid",
            user,
            cid,
        );
        match self.rows(stmt).await?.first() {
            Some(row) => Ok(Some(SyncTimestamp::from_i64(col::<i64>(row, "m")?.max(0)))),
            None => Ok(None),
        }
    }

    async fn storage_ts(&mut self, user: &UserId) -> ApiResult<SyncTimestamp> {
        let stmt = user_stmt(
            "SELECT MAX(UNIX_MILLIS(modified)) AS m FROM user_collections \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid",
            user,
        );
        let max: Option<i64> = match self.rows(stmt).await?.first() {
            Some(row) => col(row, "m")?,
            None => None,
        };
        Ok(SyncTimestamp::from_i64(max.unwrap_or(0).max(0)))
    }

    async fn user_collections(&mut self, user: &UserId) -> ApiResult<Vec<(i32, i64)>> {
        let stmt = user_stmt(
            "SELECT collection_id, UNIX_MILLIS(modified) AS m FROM user_collections \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid",
            user,
        );
        pairs(&self.rows(stmt).await?, "m")
    }

    async fn record_counts(
        &mut self,
        user: &UserId,
        now: SyncTimestamp,
    ) -> ApiResult<Vec<(i32, i64)>> {
        self.per_collection(user, "COUNT(*)", now).await
    }

    async fn record_bytes(
        &mut self,
        user: &UserId,
        now: SyncTimestamp,
    ) -> ApiResult<Vec<(i32, i64)>> {
        self.per_collection(user, BYTES, now).await
    }

    async fn get_live_bso(
        &mut self,
        user: &UserId,
        cid: i32,
        id: &str,
        now: SyncTimestamp,
    ) -> ApiResult<Option<StoredBso>> {
        let mut stmt = collection_stmt(
            &format!(
                "SELECT {BSO_COLUMNS} FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
                 AND collection_id = @cid AND bso_id = @id AND expiry > TIMESTAMP_MILLIS(@now)"
            ),
            user,
            cid,
        );
        stmt.add_param("id", &id);
        stmt.add_param("now", &now.as_i64());
        self.rows(stmt).await?.first().map(stored).transpose()
    }

    async fn list_bsos(
        &mut self,
        user: &UserId,
        cid: i32,
        q: &BsoQuery,
        limit: u32,
        now: SyncTimestamp,
    ) -> ApiResult<(Vec<StoredBso>, Option<SyncTimestamp>)> {
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
        let mut stmt = collection_stmt(&sql, user, cid);
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
        // Reads here are read-only transactions: one snapshot for every statement.
        let rows = self
            .rows(stmt)
            .await?
            .iter()
            .map(stored)
            .collect::<ApiResult<_>>()?;
        Ok((rows, None))
    }

    async fn load_existing(
        &mut self,
        user: &UserId,
        cid: i32,
        ids: &[String],
    ) -> ApiResult<HashMap<String, StoredBso>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_READ) {
            let stmt = param(
                collection_stmt(
                    &format!(
                        "SELECT {BSO_COLUMNS} FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
                         AND collection_id = @cid AND bso_id IN UNNEST(@ids)"
                    ),
                    user,
                    cid,
                ),
                "ids",
                &chunk.to_vec(),
            );
            for row in self.rows(stmt).await? {
                let b = stored(&row)?;
                out.insert(b.id.clone(), b);
            }
        }
        Ok(out)
    }

    async fn find_batch(&mut self, scope: &Scope<UserId>, id: &str) -> ApiResult<String> {
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
        if self.rows(stmt).await?.is_empty() {
            return Err(ApiError::bad_request("batch not found"));
        }
        Ok(id.to_owned())
    }

    async fn staged_items(
        &mut self,
        scope: &Scope<UserId>,
        batch: &String,
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
        self.rows(stmt)
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

    async fn staged_totals(
        &mut self,
        scope: &Scope<UserId>,
        batch: &String,
    ) -> ApiResult<(i64, i64)> {
        let stmt = batch_stmt(
            "SELECT COUNT(*) AS n, SUM(BYTE_LENGTH(payload)) AS b FROM batch_bsos \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid AND batch_id = @batch",
            scope,
            batch,
        );
        match self.rows(stmt).await?.first() {
            Some(r) => Ok((col(r, "n")?, col::<Option<i64>>(r, "b")?.unwrap_or(0))),
            None => Ok((0, 0)),
        }
    }

    async fn ping(&mut self) -> ApiResult<()> {
        self.rows(Statement::new("SELECT 1")).await?;
        Ok(())
    }

    async fn expired_counts(&mut self, now: SyncTimestamp) -> ApiResult<crate::db::PurgeStats> {
        let mut counts = [0i64; 2];
        for (i, table) in ["bsos", "batches"].iter().enumerate() {
            let mut stmt = Statement::new(format!(
                "SELECT COUNT(*) AS n FROM {table} WHERE expiry <= TIMESTAMP_MILLIS(@now)"
            ));
            stmt.add_param("now", &now.as_i64());
            if let Some(r) = self.rows(stmt).await?.first() {
                counts[i] = col(r, "n")?;
            }
        }
        Ok(crate::db::PurgeStats {
            bsos: counts[0].max(0) as usize,
            batches: counts[1].max(0) as usize,
            staged: 0,
        })
    }

    /// Spanner keys users by FxA uid and key id, not by a uid: `copy` walks the tokenserver's
    /// rows instead.
    async fn users_after(&mut self, _after: u64, _limit: u32) -> ApiResult<Vec<u64>> {
        Err(ApiError::internal(
            "Spanner storage is not walked by uid (copy walks the tokenserver rows)",
        ))
    }

    async fn rows_after(
        &mut self,
        user: &UserId,
        cid: i32,
        after: Option<&str>,
        limit: u32,
    ) -> ApiResult<Vec<StoredBso>> {
        let mut stmt = collection_stmt(
            &format!(
                "SELECT {BSO_COLUMNS} FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
                 AND collection_id = @cid AND bso_id > @after ORDER BY bso_id LIMIT @limit"
            ),
            user,
            cid,
        );
        stmt.add_param("after", &after.unwrap_or(""));
        stmt.add_param("limit", &i64::from(limit));
        self.rows(stmt).await?.iter().map(stored).collect()
    }
}

impl WriteTx for SpannerTx<'_, ReadWriteTransaction> {
    /// The read-write transaction locks what it reads (`user_collections` next).
    async fn lock_user(&mut self, _user: &UserId) -> ApiResult<()> {
        Ok(())
    }

    async fn get_or_create_collection_id(&mut self, name: &str) -> ApiResult<i32> {
        if let Some(id) = self.collection_id(name).await? {
            return Ok(id);
        }
        let max = self
            .rows(Statement::new(
                "SELECT MAX(collection_id) AS m FROM collections",
            ))
            .await?;
        let max: Option<i64> = max.first().map(|r| col(r, "m")).transpose()?.flatten();
        let id = max.map_or(FIRST_CUSTOM_COLLECTION, |m| {
            (m + 1).max(FIRST_CUSTOM_COLLECTION)
        });
        let mut stmt =
            Statement::new("INSERT INTO collections (collection_id, name) VALUES (@id, @name)");
        stmt.add_param("id", &id);
        stmt.add_param("name", &name);
        self.exec(stmt).await?;
        Ok(id as i32)
    }

    /// Interleaved records and batches need the row as their parent.
    async fn add_collection(&mut self, user: &UserId, cid: i32) -> ApiResult<SyncTimestamp> {
        let stmt = collection_stmt(
            "INSERT INTO user_collections (fxa_uid, fxa_kid, collection_id, modified) \
             VALUES (@fxa_uid, @fxa_kid, @cid, TIMESTAMP_MILLIS(0))",
            user,
            cid,
        );
        self.exec(stmt).await?;
        Ok(SyncTimestamp::ZERO)
    }

    async fn touch_collection(
        &mut self,
        user: &UserId,
        cid: i32,
        t: SyncTimestamp,
    ) -> ApiResult<()> {
        let stmt = param(
            collection_stmt(
                "UPDATE user_collections SET modified = TIMESTAMP_MILLIS(@t) \
                 WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid",
                user,
                cid,
            ),
            "t",
            &t.as_i64(),
        );
        if self.exec(stmt).await? == 0 {
            let stmt = param(
                collection_stmt(
                    "INSERT INTO user_collections (fxa_uid, fxa_kid, collection_id, modified) \
                     VALUES (@fxa_uid, @fxa_kid, @cid, TIMESTAMP_MILLIS(@t))",
                    user,
                    cid,
                ),
                "t",
                &t.as_i64(),
            );
            self.exec(stmt).await?;
        }
        Ok(())
    }

    /// INSERT OR UPDATE of whole rows (eight cells per record: the mutation budget).
    /// Whole records only (`OVERWRITES_GIVEN` is false): a mutation cannot keep a column.
    async fn write_rows(
        &mut self,
        user: &UserId,
        cid: i32,
        records: &[StoredBso],
        overwrite: Overwrite,
    ) -> ApiResult<()> {
        if overwrite != Overwrite::Whole {
            return Err(ApiError::internal("Spanner writes whole records only"));
        }
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(@fxa_uid, @fxa_kid, @cid, @id{i}, @s{i}, @p{i}, TIMESTAMP_MILLIS(@m{i}), TIMESTAMP_MILLIS(@e{i}))"
                    )
                })
                .collect();
            let mut stmt = collection_stmt(
                &format!(
                    "INSERT OR UPDATE INTO bsos (fxa_uid, fxa_kid, collection_id, bso_id, sortindex, \
                     payload, modified, expiry) VALUES {}",
                    values.join(", ")
                ),
                user,
                cid,
            );
            for (i, r) in chunk.iter().enumerate() {
                stmt.add_param(&format!("id{i}"), &r.id);
                stmt.add_param(&format!("s{i}"), &r.sortindex.map(i64::from));
                stmt.add_param(&format!("p{i}"), &r.payload);
                stmt.add_param(&format!("m{i}"), &r.modified);
                stmt.add_param(&format!("e{i}"), &r.expiry);
            }
            self.exec(stmt).await?;
        }
        Ok(())
    }

    async fn delete_rows(&mut self, user: &UserId, cid: i32, ids: &[String]) -> ApiResult<()> {
        for chunk in ids.chunks(IDS_PER_READ) {
            let stmt = param(
                collection_stmt(
                    "DELETE FROM bsos WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
                     AND collection_id = @cid AND bso_id IN UNNEST(@ids)",
                    user,
                    cid,
                ),
                "ids",
                &chunk.to_vec(),
            );
            self.exec(stmt).await?;
        }
        Ok(())
    }

    /// Records and batches are interleaved in the collection's row: they cascade.
    async fn delete_collection_rows(&mut self, user: &UserId, cid: i32) -> ApiResult<()> {
        let stmt = collection_stmt(
            "DELETE FROM user_collections WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
             AND collection_id = @cid",
            user,
            cid,
        );
        self.exec(stmt).await?;
        Ok(())
    }

    async fn delete_user_rows(&mut self, user: &UserId) -> ApiResult<()> {
        let stmt = user_stmt(
            "DELETE FROM user_collections WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid",
            user,
        );
        self.exec(stmt).await?;
        Ok(())
    }

    async fn refresh_counters(&mut self, scope: &Scope<UserId>) -> ApiResult<()> {
        let stmt = param(
            collection_stmt(
                "SELECT COUNT(*) AS n, SUM(BYTE_LENGTH(payload)) AS b FROM bsos \
                 WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid \
                 AND expiry > TIMESTAMP_MILLIS(@now)",
                &scope.user,
                scope.cid,
            ),
            "now",
            &scope.t.as_i64(),
        );
        let (count, bytes) = match self.rows(stmt).await?.first() {
            Some(r) => (
                col::<i64>(r, "n")?,
                col::<Option<i64>>(r, "b")?.unwrap_or(0),
            ),
            None => (0, 0),
        };
        let mut stmt = collection_stmt(
            "UPDATE user_collections SET count = @n, total_bytes = @b \
             WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid AND collection_id = @cid",
            &scope.user,
            scope.cid,
        );
        stmt.add_param("n", &count);
        stmt.add_param("b", &bytes);
        self.exec(stmt).await?;
        Ok(())
    }

    async fn create_batch(&mut self, scope: &Scope<UserId>) -> ApiResult<String> {
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
        self.exec(stmt).await?;
        Ok(id)
    }

    async fn put_staged(
        &mut self,
        scope: &Scope<UserId>,
        batch: &String,
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
            self.exec(stmt).await?;
        }
        Ok(())
    }

    /// Its staged records are interleaved in it: they cascade.
    async fn drop_batch(&mut self, scope: &Scope<UserId>, batch: &String) -> ApiResult<()> {
        let stmt = batch_stmt(
            "DELETE FROM batches WHERE fxa_uid = @fxa_uid AND fxa_kid = @fxa_kid \
             AND collection_id = @cid AND batch_id = @batch",
            scope,
            batch,
        );
        self.exec(stmt).await?;
        Ok(())
    }
}
