//! Diesel code shared by the SQL backends: the schemas, the statements of the `tx` contract
//! (`statements`), what differs between table layouts (`BatchTables`), and the mapping of
//! database failures to protocol errors.

pub mod mysql_layout;
pub mod pg_types;
pub mod schema;
pub mod schema_pg;
pub mod statements;

use std::future::Future;

use crate::db::fault::DbFault;
use crate::db::rules::Staged;
use crate::db::tx::{Overwrite, Scope};
use crate::error::{ApiError, ApiResult};
use crate::protocol::{BsoUpdate, StoredBso};

diesel::define_sql_function! {
    /// SQL's COALESCE of two values: an upsert keeps the row's own where the record has none
    /// (`Overwrite::Given`, `WriteTx::MERGES_STAGED`).
    fn coalesce<T: diesel::sql_types::SingleValue>(x: diesel::sql_types::Nullable<T>, y: diesel::sql_types::Nullable<T>) -> diesel::sql_types::Nullable<T>;
}

/// A statement whose SQL text never depends on its values, kept prepared on its connection
/// although diesel does not cache its kind (every UPDATE and upsert, say): on MySQL and
/// PostgreSQL one round trip instead of prepare + execute, on SQLite no new prepare. Diesel
/// keys such a statement by its text, so each text is prepared once per connection: never wrap
/// one whose text varies with its input (an `IN` list, a multi-row insert).
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(pub Q);

impl<Q> diesel::query_builder::QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB, Q> diesel::query_builder::QueryFragment<DB> for Prepared<Q>
where
    DB: diesel::backend::Backend,
    Q: diesel::query_builder::QueryFragment<DB>,
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &DB) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> diesel::query_dsl::RunQueryDslSupport for Prepared<Q> {}

/// Rows per statement, well under every engine's bound-variable limit.
pub const CHUNK: usize = 500;

/// A diesel connection inside the transaction its engine opened: the SQL engines' `ReadTx` and
/// `WriteTx` (`statements`).
pub struct SqlTx<'a, C>(pub &'a mut C);

/// A timestamp column's value in ms: BIGINT on SQLite and MySQL, TIMESTAMPTZ on PostgreSQL
/// (see `pg_types`), so the shared statements compare and store timestamps one way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, diesel::AsExpression, diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::BigInt)]
#[diesel(sql_type = pg_types::Millis)]
pub struct Ms(pub i64);

/// A record row: id, payload, sortindex, modified, expiry.
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

/// One step of the TTL purge on a SQL engine (`StorageDb::purge_expired_chunk`).
pub trait SqlPurge {
    fn purge_expired_chunk(
        &mut self,
        now: crate::protocol::SyncTimestamp,
        max_rows: i64,
    ) -> impl Future<Output = ApiResult<crate::db::PurgeStats>> + Send;
}

/// What a table layout adds to the shared statements: record inserts and the batch tables
/// (`mysql_layout` for SQLite and MySQL; PostgreSQL's in `postgres.rs`).
pub trait BatchTables: Send {
    type Batch: Send + Sync;
    /// A batch key as the client sees it.
    fn encode_batch(batch: &Self::Batch) -> String;
    /// Writes whole records in one statement, replacing the rows with their ids (the engine's
    /// upsert: one index operation per row, where delete + insert took two statements and two).
    /// `overwrite` as `WriteTx::write_rows` says.
    fn upsert_bso_rows(
        &mut self,
        uid: i64,
        cid: i32,
        rows: &[StoredBso],
        overwrite: Overwrite,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn find_batch(
        &mut self,
        scope: &Scope<i64>,
        id: &str,
    ) -> impl Future<Output = ApiResult<Self::Batch>> + Send;
    fn create_batch(
        &mut self,
        scope: &Scope<i64>,
    ) -> impl Future<Output = ApiResult<Self::Batch>> + Send;
    fn staged_items(
        &mut self,
        scope: &Scope<i64>,
        batch: &Self::Batch,
        which: Staged<'_>,
    ) -> impl Future<Output = ApiResult<Vec<BsoUpdate>>> + Send;
    /// Whether `put_staged` merges each record with the staged row of its id in the statement
    /// (`WriteTx::MERGES_STAGED`).
    const MERGES_STAGED: bool;
    /// Stages records: merged in the statement (`MERGES_STAGED`), else replacing the staged
    /// rows of their ids.
    fn put_staged(
        &mut self,
        scope: &Scope<i64>,
        batch: &Self::Batch,
        updates: &[BsoUpdate],
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn staged_totals(
        &mut self,
        scope: &Scope<i64>,
        batch: &Self::Batch,
    ) -> impl Future<Output = ApiResult<(i64, i64)>> + Send;
    fn drop_batch(
        &mut self,
        scope: &Scope<i64>,
        batch: &Self::Batch,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn drop_collection_batches(
        &mut self,
        uid: i64,
        cid: i32,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn drop_user_batches(&mut self, uid: i64) -> impl Future<Output = ApiResult<()>> + Send;
    /// Expired batches of every user.
    fn count_expired_batches(&mut self, now: i64) -> impl Future<Output = ApiResult<i64>> + Send;
    /// One purge step over every user's batches: (batches, staged records) deleted, each at
    /// most `max_rows`.
    fn purge_batches(
        &mut self,
        now: i64,
        max_rows: i64,
    ) -> impl Future<Output = ApiResult<(usize, usize)>> + Send;
}

/// Pool settings (SPEC 4.4 names under `syncstorage.`).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout_secs: u32,
    pub connection_lifespan_secs: Option<u32>,
    pub connection_max_idle_secs: Option<u32>,
    pub run_migrations: bool,
    /// Seconds a unit of work may take before the client gets 503 (the database is stuck or
    /// overloaded); the unit itself still finishes (commit or rollback) on its own task.
    pub request_timeout_secs: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 10,
            connection_timeout_secs: 30,
            connection_lifespan_secs: None,
            connection_max_idle_secs: None,
            run_migrations: true,
            request_timeout_secs: 60,
        }
    }
}

/// The boundary of every diesel engine: a failure becomes a `DbFault` by diesel's error kind,
/// or else by the SQLSTATE the engine reported, none meaning the connection failed (MySQL's
/// deadlock, error 1213, arrives as a serialization failure; PostgreSQL's deadlock as 40P01).
pub fn fault_of(e: &diesel::result::Error) -> DbFault {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    match e {
        Error::DatabaseError(kind, info) => match kind {
            Kind::SerializationFailure => DbFault::Conflict,
            Kind::UniqueViolation
            | Kind::ForeignKeyViolation
            | Kind::NotNullViolation
            | Kind::CheckViolation
            | Kind::RestrictViolation
            | Kind::ExclusionViolation => DbFault::Integrity,
            // Lost connections, and a primary that became a read-only replica in a failover.
            Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::ReadOnlyTransaction => {
                DbFault::Unavailable
            }
            // No SQLSTATE: the driver's own failure, not the database's answer (mysql_async
            // reports a lost connection so): the connection is not to be used again.
            Kind::Unknown if info.sqlstate().is_none() => DbFault::Unavailable,
            _ => info.sqlstate().map_or(DbFault::Other, |state| {
                DbFault::from_sqlstate(state.as_str())
            }),
        },
        Error::BrokenTransactionManager => DbFault::Unavailable,
        _ => DbFault::Other,
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        fault_of(&e).error(format!("database: {e}"))
    }
}

impl From<diesel::r2d2::PoolError> for ApiError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        // r2d2 fails a checkout only when its connection timeout passes.
        DbFault::PoolTimeout.error(format!("database pool timeout: {e}"))
    }
}
