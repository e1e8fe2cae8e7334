//! Storage behind one async trait whose methods are Sync operations, each a whole unit of work
//! (lock, evaluate preconditions, act, commit): the units are written once (`units`) over the
//! statements each engine implements (`tx`). The only module that knows SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{ApiError, ApiResult};
use crate::protocol::post::PostItems;
use crate::protocol::{BatchRequest, Bso, BsoQuery, Limits, Offset, Precondition, SyncTimestamp};

pub mod fault;
pub mod listing;
pub mod mysql;
pub mod pooled;
pub mod postgres;
pub mod purge;
pub mod retry;
pub mod rules;
pub mod spanner;
pub mod sql;
pub mod sqlite;
pub mod transfer;
pub mod tx;
pub mod units;

/// Whose data: the tokenserver uid for SQL backends, fxa_uid/fxa_kid for Spanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId {
    pub legacy_id: u64,
    pub fxa_uid: String,
    pub fxa_kid: String,
}

impl UserId {
    pub fn from_uid(uid: u64) -> Self {
        UserId {
            legacy_id: uid,
            fxa_uid: String::new(),
            fxa_kid: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoKind {
    Collections,
    Counts,
    Usage,
    Quota,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InfoBody {
    Timestamps(BTreeMap<String, SyncTimestamp>),
    Counts(BTreeMap<String, i64>),
    /// KiB per collection.
    Usage(BTreeMap<String, f64>),
    /// KiB used in all.
    Quota(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub storage_ts: SyncTimestamp,
    pub body: InfoBody,
}

/// One collection of one user, with the request's precondition.
#[derive(Debug, Clone)]
pub struct CollectionRef {
    pub user: UserId,
    pub collection: String,
    pub precondition: Precondition,
}

#[derive(Debug, Clone)]
pub struct BsoRef {
    pub user: UserId,
    pub collection: String,
    pub id: String,
    pub precondition: Precondition,
}

#[derive(Debug, Clone)]
pub struct GetBsos {
    pub target: CollectionRef,
    pub query: BsoQuery,
}

/// A page of a listing: full records or only ids (`Bso` with the other fields unused).
#[derive(Debug, Clone)]
pub struct BsoPage {
    pub collection_ts: SyncTimestamp,
    pub items: Vec<Bso>,
    pub next_offset: Option<Offset>,
}

#[derive(Debug, Clone)]
pub struct PutBso {
    pub target: CollectionRef,
    pub bso: crate::protocol::BsoUpdate,
}

#[derive(Debug, Clone)]
pub struct PostBsos {
    pub target: CollectionRef,
    pub items: PostItems,
    pub batch: BatchRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostResult {
    /// The collection timestamp after the request (T, or unchanged for a staged batch).
    pub last_modified: SyncTimestamp,
    /// Set when records were staged rather than committed (202).
    pub batch: Option<String>,
    pub success: Vec<String>,
    pub failed: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct DeleteBsos {
    pub target: CollectionRef,
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedCollection {
    /// The collection's timestamp before the delete (X-Last-Modified).
    pub previous_ts: SyncTimestamp,
    /// The storage timestamp afterwards (the body).
    pub storage_ts: SyncTimestamp,
}

/// What a TTL purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub bsos: usize,
    pub batches: usize,
    /// Records staged in expired batches (deleted before their batches on the MySQL layout).
    pub staged: usize,
}

impl PurgeStats {
    pub fn is_empty(&self) -> bool {
        self.bsos + self.batches + self.staged == 0
    }
}

impl std::ops::AddAssign for PurgeStats {
    fn add_assign(&mut self, other: PurgeStats) {
        self.bsos += other.bsos;
        self.batches += other.batches;
        self.staged += other.staged;
    }
}

/// Connection pool occupancy, for `__lbheartbeat__`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub active: u32,
    pub idle: u32,
    pub max_size: u32,
    /// Units of work waiting for a connection (SQLite: writers queued for their turn).
    pub waiting: u32,
}

/// Settings every backend needs to apply the protocol's storage rules.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub limits: Limits,
    pub enable_quota: bool,
    pub enforce_quota: bool,
}

#[async_trait]
pub trait StorageDb: Send + Sync {
    async fn info(
        &self,
        user: &UserId,
        kind: InfoKind,
        precondition: Precondition,
    ) -> ApiResult<Info>;
    async fn get_bsos(&self, params: GetBsos) -> ApiResult<BsoPage>;
    /// `get_bsos` as the HTTP response needs it: the head (ids, timestamps, next offset) once
    /// the page is known, the full records afterwards in chunks, from one snapshot, so memory
    /// does not grow with the collection (`listing`).
    async fn stream_bsos(&self, params: GetBsos) -> ApiResult<listing::BsoStream>;
    /// The record and its timestamp; 404 when absent or expired.
    async fn get_bso(&self, params: BsoRef) -> ApiResult<Bso>;
    /// Returns the new collection timestamp.
    async fn put_bso(&self, params: PutBso) -> ApiResult<SyncTimestamp>;
    async fn post_bsos(&self, params: PostBsos) -> ApiResult<PostResult>;
    /// Returns the new collection timestamp; 404 when absent or expired.
    async fn delete_bso(&self, params: BsoRef) -> ApiResult<SyncTimestamp>;
    async fn delete_bsos(&self, params: DeleteBsos) -> ApiResult<SyncTimestamp>;
    async fn delete_collection(&self, params: CollectionRef) -> ApiResult<DeletedCollection>;
    /// Returns the storage timestamp before the delete.
    async fn delete_storage(
        &self,
        user: &UserId,
        precondition: Precondition,
    ) -> ApiResult<SyncTimestamp>;
    /// Whether the database answers (`__heartbeat__`).
    async fn check(&self) -> ApiResult<()>;
    /// One step of a TTL purge (`purge`): in one short transaction, deletes up to `max_rows`
    /// records that expired at `now` and up to `max_rows` expired batch rows (staged records
    /// first). Nothing left to delete: an empty result.
    async fn purge_expired_chunk(&self, now: SyncTimestamp, max_rows: u32)
    -> ApiResult<PurgeStats>;
    /// Deletes every record and batch expired now (reads already hide them), in chunks with
    /// the default options (`purge::purge_expired`).
    async fn purge_expired(&self) -> ApiResult<PurgeStats> {
        purge::purge_expired(self, &purge::PurgeOptions::default(), |_| {}).await
    }
    /// What the TTL purge would delete now.
    async fn count_expired(&self, now: SyncTimestamp) -> ApiResult<PurgeStats>;
    /// What the user has, for `copy` to compare (`transfer::UserSummary`).
    async fn summary(&self, user: &UserId) -> ApiResult<transfer::UserSummary>;
    /// Users with data, in uid order after `after` (SQL engines).
    async fn users_after(&self, after: u64, limit: u32) -> ApiResult<Vec<u64>>;
    /// A collection's rows, expired included, in id order after `after`.
    async fn rows_after(
        &self,
        user: &UserId,
        collection: &str,
        after: Option<String>,
        limit: u32,
    ) -> ApiResult<Vec<crate::protocol::StoredBso>>;
    /// Writes rows as they are, `modified` and expiry kept (one transaction).
    async fn import_rows(
        &self,
        user: &UserId,
        collection: &str,
        rows: Vec<crate::protocol::StoredBso>,
    ) -> ApiResult<()>;
    /// Sets collection and tombstone timestamps as given (one transaction).
    async fn set_timestamps(
        &self,
        user: &UserId,
        collections: Vec<(String, i64)>,
        tombstone: i64,
    ) -> ApiResult<()>;
    fn pool_state(&self) -> PoolState;
}

pub type SharedStorage = Arc<dyn StorageDb>;

/// Opens the storage backend named by the URL's scheme.
/// One schema's embedded migrations, per SQL engine.
pub struct Migrations {
    pub sqlite: diesel_migrations::EmbeddedMigrations,
    pub mysql: diesel_migrations::EmbeddedMigrations,
    pub postgres: diesel_migrations::EmbeddedMigrations,
}

/// The storage tables' migrations.
pub const STORAGE_MIGRATIONS: Migrations = Migrations {
    sqlite: sqlite::MIGRATIONS,
    mysql: mysql::MIGRATIONS,
    postgres: postgres::MIGRATIONS,
};

/// Where a database's schema stands (`check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every embedded migration is applied.
    Current,
    /// These are not (`syncserver migrate`, or start-up with `run_migrations`, applies them).
    Pending(Vec<String>),
    /// A SQLite file that does not exist yet: the server creates it.
    NotCreated,
    /// Spanner: its schema is checked (and completed) by start-up's DDL step instead.
    NotChecked,
}

/// Which of `set` the database at `url` still lacks; `setting` names it in errors.
pub fn schema_state(url: &str, set: Migrations, setting: &str) -> Result<SchemaState, String> {
    use pooled::Pooling;
    let pending = if spanner::is_spanner_url(url) {
        return Ok(SchemaState::NotChecked);
    } else if mysql::is_mysql_url(url) {
        diesel_async::AsyncMysqlConnection::pending(url, set.mysql, setting)?
    } else if postgres::is_postgres_url(url) {
        diesel_async::AsyncPgConnection::pending(url, set.postgres, setting)?
    } else {
        use diesel::Connection;
        use diesel_migrations::MigrationHarness;
        let target = sqlite::SqliteTarget::from_url(url)
            .ok_or_else(|| format!("{setting}: unsupported database URL"))?;
        if !target.path.exists() {
            return Ok(SchemaState::NotCreated);
        }
        let mut conn = diesel::SqliteConnection::establish(&target.path.to_string_lossy())
            .map_err(|e| format!("{setting}: cannot open: {e}"))?;
        conn.pending_migrations(set.sqlite)
            .map_err(|e| format!("{setting}: cannot read the applied migrations: {e}"))?
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    };
    Ok(if pending.is_empty() {
        SchemaState::Current
    } else {
        SchemaState::Pending(pending)
    })
}

pub async fn open_storage(
    url: &str,
    pool: &sql::PoolSettings,
    spanner_emulator_host: Option<&str>,
    config: StorageConfig,
) -> Result<SharedStorage, String> {
    if spanner::is_spanner_url(url) {
        let settings = spanner::SpannerSettings {
            emulator_host: spanner_emulator_host.map(str::to_owned),
            max_sessions: pool.max_size,
            timeout_secs: pool.connection_timeout_secs,
            run_migrations: pool.run_migrations,
        };
        return Ok(Arc::new(
            spanner::SpannerStorage::open(url, &settings, config).await?,
        ));
    }
    if mysql::is_mysql_url(url) {
        return Ok(Arc::new(mysql::MysqlStorage::open(
            url,
            pool,
            config,
            mysql::MIGRATIONS,
        )?));
    }
    if postgres::is_postgres_url(url) {
        return Ok(Arc::new(postgres::PostgresStorage::open(
            url,
            pool,
            config,
            postgres::MIGRATIONS,
        )?));
    }
    match sqlite::SqliteTarget::from_url(url) {
        Some(target) => Ok(Arc::new(sqlite::SqliteStorage::open(target, pool, config)?)),
        None => Err(format!(
            "syncstorage.database_url: unsupported database URL {:?} (use sqlite:PATH, mysql://, postgres:// or spanner://)",
            crate::secret::redact_url(url)
        )),
    }
}

/// Helper for backends: a missing record.
pub fn not_found() -> ApiError {
    ApiError::new(crate::error::ErrorKind::NotFound, "not found")
}
