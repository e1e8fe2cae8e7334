//! The MySQL/MariaDB backend: syncstorage-rs's MySQL tables (SPEC 5.1), diesel-async over the
//! pure-Rust mysql_async driver. A write is one READ COMMITTED transaction that starts with
//! `SELECT ... FOR UPDATE` on the user's collection row, so concurrent writers to one
//! collection serialize; reads run in one consistent-snapshot transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

use super::sql::PoolSettings;
use super::{
    BsoPage, BsoRef, CollectionRef, DeleteBsos, DeletedCollection, GetBsos, Info, InfoKind,
    PoolState, PostBsos, PostResult, PurgeStats, PutBso, StorageConfig, StorageDb, UserId,
};
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::protocol::{Bso, Precondition, SyncTimestamp};

pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://")
}

pub struct MysqlStorage {
    pool: Pool<AsyncMysqlConnection>,
    config: Arc<StorageConfig>,
    settings: PoolSettings,
}

/// Runs the embedded migrations on a blocking connection in a thread of its own (the
/// migration harness is synchronous). Idempotent; versions match upstream's, so a database
/// syncstorage-rs created is recognised as migrated.
pub fn run_migrations(url: &str) -> Result<(), String> {
    use diesel::Connection;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_migrations::MigrationHarness;
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncMysqlConnection> as Connection>::establish(&url)
                .map_err(|e| format!("syncstorage.database_url: cannot connect to MySQL: {e}"))?;
        conn.run_pending_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| format!("MySQL migrations failed: {e}"))
    })
    .join()
    .map_err(|_| "MySQL migrations panicked".to_owned())?
}

impl MysqlStorage {
    pub fn open(url: &str, settings: &PoolSettings, config: StorageConfig) -> Result<Self, String> {
        if settings.run_migrations {
            run_migrations(url)?;
        }
        let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new(url);
        let pool = Pool::builder(manager)
            .max_size(settings.max_size.max(1) as usize)
            .build()
            .map_err(|e| format!("syncstorage.database_url: {e}"))?;
        Ok(MysqlStorage {
            pool,
            config: Arc::new(config),
            settings: settings.clone(),
        })
    }
}

/// Checks out a connection, giving up after the pool timeout with a 503 (the database is
/// down or saturated: clients retry later). Old connections are replaced per the lifespan.
async fn connection(
    pool: &Pool<AsyncMysqlConnection>,
    settings: &PoolSettings,
) -> ApiResult<diesel_async::pooled_connection::deadpool::Object<AsyncMysqlConnection>> {
    let wait = Duration::from_secs(u64::from(settings.connection_timeout_secs.max(1)));
    loop {
        let obj = tokio::time::timeout(wait, pool.get())
            .await
            .map_err(|_| ApiError::new(ErrorKind::Conflict, "database pool timeout"))?
            .map_err(|e| {
                ApiError::new(ErrorKind::Conflict, format!("database unavailable: {e}"))
            })?;
        let metrics = diesel_async::pooled_connection::deadpool::Object::metrics(&obj);
        let too_old = settings
            .connection_lifespan_secs
            .is_some_and(|s| metrics.age() > Duration::from_secs(s.into()));
        let idle_too_long = settings
            .connection_max_idle_secs
            .is_some_and(|s| metrics.last_used() > Duration::from_secs(s.into()));
        if too_old || idle_too_long {
            let _ = diesel_async::pooled_connection::deadpool::Object::take(obj);
            continue;
        }
        return Ok(obj);
    }
}

/// How often a write unit of work that lost a deadlock is run again before the client gets 503.
const WRITE_ATTEMPTS: u64 = 5;

/// Creates the collection's global name mapping if needed (racing creators both succeed).
async fn ensure_collection(conn: &mut AsyncMysqlConnection, name: &str) -> ApiResult<()> {
    for _ in 0..3 {
        if ops::get_or_create_collection_id(conn, name).await.is_ok() {
            return Ok(());
        }
    }
    Ok(ops::collection_id(conn, name).await.map(|_| ())?)
}

/// Runs a unit of work on its own task, so it completes (commit or rollback) even when the
/// client goes away mid-request.
async fn detached<T: Send + 'static>(
    fut: impl Future<Output = ApiResult<T>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(fut)
        .await
        .map_err(|e| ApiError::internal(format!("database task failed: {e}")))?
}

/// A read-only unit of work on one snapshot: `|conn, config| body`.
macro_rules! read_unit {
    ($self:ident, |$conn:ident, $config:ident| $body:expr) => {{
        let pool = $self.pool.clone();
        let settings = $self.settings.clone();
        let config = $self.config.clone();
        detached(async move {
            let mut obj = connection(&pool, &settings).await?;
            let conn: &mut AsyncMysqlConnection = &mut obj;
            conn.transaction(async |$conn| {
                let $config: &StorageConfig = &config;
                let _ = $config;
                $body
            })
            .await
        })
        .await
    }};
}

/// A write unit of work on `(uid, collection)`: `|conn, scope, config| body`.
macro_rules! write_unit {
    ($self:ident, $uid:expr, $collection:expr, |$conn:ident, $scope:ident, $config:ident| $body:expr) => {{
        let pool = $self.pool.clone();
        let settings = $self.settings.clone();
        let config = $self.config.clone();
        let uid: i64 = $uid;
        let collection: Option<String> = $collection;
        detached(async move {
            let mut obj = connection(&pool, &settings).await?;
            let conn: &mut AsyncMysqlConnection = &mut obj;
            if let Some(name) = &collection {
                // The global name mapping is made in its own statement, so that two writers
                // creating it at once cannot deadlock each other's units of work.
                ensure_collection(conn, name).await?;
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                // The locking read comes first; later reads must see rows other writers
                // committed while we waited for it.
                conn.batch_execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                let result = conn
                    .transaction(async |$conn| {
                        let scope = ops::begin_write($conn, uid, collection.as_deref()).await?;
                        let $scope = &scope;
                        let $config: &StorageConfig = &config;
                        let _ = $config;
                        $body
                    })
                    .await;
                match result {
                    // A deadlock victim was rolled back whole: run it again.
                    Err(e) if super::sql::is_transient(&e) && attempt < WRITE_ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                    }
                    other => return other,
                }
            }
        })
        .await
    }};
}

#[async_trait]
impl StorageDb for MysqlStorage {
    async fn info(
        &self,
        user: &UserId,
        kind: InfoKind,
        precondition: Precondition,
    ) -> ApiResult<Info> {
        let uid = user.legacy_id as i64;
        read_unit!(self, |conn, _config| ops::info(
            conn,
            uid,
            kind,
            precondition
        )
        .await)
    }

    async fn get_bsos(&self, params: GetBsos) -> ApiResult<BsoPage> {
        read_unit!(self, |conn, config| ops::get_bsos(conn, config, params)
            .await)
    }

    async fn get_bso(&self, params: BsoRef) -> ApiResult<Bso> {
        read_unit!(self, |conn, _config| ops::get_bso(conn, params).await)
    }

    async fn put_bso(&self, params: PutBso) -> ApiResult<SyncTimestamp> {
        let (uid, collection) = (
            params.target.user.legacy_id as i64,
            params.target.collection.clone(),
        );
        write_unit!(self, uid, Some(collection), |conn, scope, config| {
            ops::put_bso(conn, scope, config, params.clone()).await
        })
    }

    async fn post_bsos(&self, params: PostBsos) -> ApiResult<PostResult> {
        let (uid, collection) = (
            params.target.user.legacy_id as i64,
            params.target.collection.clone(),
        );
        write_unit!(self, uid, Some(collection), |conn, scope, config| {
            ops::post_bsos(conn, scope, config, params.clone()).await
        })
    }

    async fn delete_bso(&self, params: BsoRef) -> ApiResult<SyncTimestamp> {
        let (uid, collection) = (params.user.legacy_id as i64, params.collection.clone());
        write_unit!(self, uid, Some(collection), |conn, scope, config| {
            ops::delete_bso(conn, scope, config, params.clone()).await
        })
    }

    async fn delete_bsos(&self, params: DeleteBsos) -> ApiResult<SyncTimestamp> {
        let (uid, collection) = (
            params.target.user.legacy_id as i64,
            params.target.collection.clone(),
        );
        write_unit!(self, uid, Some(collection), |conn, scope, config| {
            ops::delete_bsos(conn, scope, config, params.clone()).await
        })
    }

    async fn delete_collection(&self, params: CollectionRef) -> ApiResult<DeletedCollection> {
        let (uid, collection) = (params.user.legacy_id as i64, params.collection.clone());
        write_unit!(self, uid, Some(collection), |conn, scope, _config| {
            ops::delete_collection(conn, scope, params.clone()).await
        })
    }

    async fn delete_storage(
        &self,
        user: &UserId,
        precondition: Precondition,
    ) -> ApiResult<SyncTimestamp> {
        let uid = user.legacy_id as i64;
        write_unit!(self, uid, None, |conn, scope, _config| ops::delete_storage(
            conn,
            scope.uid,
            precondition
        )
        .await)
    }

    async fn check(&self) -> ApiResult<()> {
        let pool = self.pool.clone();
        let settings = self.settings.clone();
        detached(async move {
            let mut obj = connection(&pool, &settings).await?;
            ops::ping(&mut obj).await
        })
        .await
    }

    async fn purge_expired(&self) -> ApiResult<PurgeStats> {
        read_unit!(self, |conn, _config| ops::purge_expired(
            conn,
            SyncTimestamp::now()
        )
        .await)
    }

    fn pool_state(&self) -> PoolState {
        let status = self.pool.status();
        let idle = status.available as u32;
        PoolState {
            active: (status.size as u32).saturating_sub(idle),
            idle,
            max_size: status.max_size as u32,
        }
    }
}

/// The shared operations, compiled for diesel-async's MySQL connection.
mod ops {
    use diesel_async::RunQueryDsl;

    pub type Conn = diesel_async::AsyncMysqlConnection;
    type Db = diesel::mysql::Mysql;

    /// Bytes as MySQL counts them; rows written by syncstorage-rs leave payload_size at 0.
    const BSO_BYTES_SUM: &str = "CAST(SUM(LENGTH(payload)) AS SIGNED)";
    const STAGED_BYTES_SUM: &str = "CAST(SUM(payload_size) AS SIGNED)";

    /// Locks the user's collection row until the transaction ends.
    async fn lock_collection_ts(
        conn: &mut Conn,
        uid: i64,
        cid: i32,
    ) -> QueryResult<Option<SyncTimestamp>> {
        Ok(user_collections::table
            .find((uid, cid))
            .select(user_collections::last_modified)
            .for_update()
            .first::<i64>(conn)
            .await
            .optional()?
            .map(SyncTimestamp::from_i64))
    }

    async fn pause(ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }

    crate::storage_ops!(schema = crate::db::sql::schema, [async] [.await]);
    crate::mysql_layout_ops!([async] [.await]);
}
