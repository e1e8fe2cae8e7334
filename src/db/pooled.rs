//! The one pooled mechanism of the server engines (MySQL, PostgreSQL), for the storage and the
//! tokenserver databases alike: `Pooled<C>`, a deadpool of diesel-async connections whose
//! units of work run on tasks of their own, within a deadline, at the engine's isolation
//! levels (`ServerConn`), a write run again when the engine rolled it back to settle a
//! conflict (`retry::SQL`). The storage API's `Backend` is implemented here once for both
//! engines, over their `SqlTx` statements.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Manager, Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, SimpleAsyncConnection, TransactionManager,
};
use diesel_migrations::EmbeddedMigrations;
use futures::future::BoxFuture;

use crate::db::fault::DbFault;
use crate::db::sql::{PoolSettings, SqlPurge, SqlTx};
use crate::db::tx::{Backend, WriteTx};
use crate::db::units::{self, ReadOp, ReadOut, WriteOp, WriteOut};
use crate::db::{PoolState, PurgeStats, StorageConfig};
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::protocol::SyncTimestamp;

/// What differs between the server engines' connections: the isolation statements.
pub trait ServerConn:
    AsyncConnection<TransactionManager = AnsiTransactionManager>
    + SimpleAsyncConnection
    + Pooling
    + Send
    + 'static
{
    /// SQL each new connection runs first.
    fn session(settings: &PoolSettings) -> String;
    /// What begins a read transaction, its snapshot level included: one round trip.
    const BEGIN_READ: &'static str;
    /// What begins a write transaction, its isolation level included: one round trip.
    const BEGIN_WRITE: &'static str;
}

/// What every diesel-async connection with a pool manager and a migration harness has, named
/// once here so that generic code needs no diesel bounds.
pub trait Pooling: Sized {
    type Manager: Manager<Type = Self, Error = diesel_async::pooled_connection::PoolError>
        + Send
        + Sync;
    fn manager(url: &str, config: ManagerConfig<Self>) -> Self::Manager;
    /// Runs the embedded migrations (`run_migrations`).
    fn migrate(url: &str, migrations: EmbeddedMigrations, setting: &str) -> Result<(), String>;
    /// The embedded migrations not yet applied.
    fn pending(
        url: &str,
        migrations: EmbeddedMigrations,
        setting: &str,
    ) -> Result<Vec<String>, String>;
}

impl<C> Pooling for C
where
    C: AsyncConnection + 'static,
    AsyncDieselConnectionManager<C>:
        Manager<Type = C, Error = diesel_async::pooled_connection::PoolError> + Send + Sync,
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<C>:
        diesel::Connection<Backend = <C as diesel_async::AsyncConnectionCore>::Backend>
            + diesel_migrations::MigrationHarness<<C as diesel_async::AsyncConnectionCore>::Backend>,
{
    type Manager = AsyncDieselConnectionManager<C>;
    fn manager(url: &str, config: ManagerConfig<C>) -> Self::Manager {
        AsyncDieselConnectionManager::new_with_config(url, config)
    }
    fn migrate(url: &str, migrations: EmbeddedMigrations, setting: &str) -> Result<(), String> {
        run_migrations::<C, _>(url, migrations, setting)
    }
    fn pending(
        url: &str,
        migrations: EmbeddedMigrations,
        setting: &str,
    ) -> Result<Vec<String>, String> {
        pending_migrations::<C, _>(url, migrations, setting)
    }
}

/// Errors a pooled unit of work can end with: the storage API's and the tokenserver's.
pub trait UnitError: From<ApiError> + From<diesel::result::Error> + Send + 'static {
    /// The database fault behind the error, which decides whether to run the unit again.
    fn fault(&self) -> Option<DbFault>;
}

impl UnitError for ApiError {
    fn fault(&self) -> Option<DbFault> {
        match self.kind {
            ErrorKind::Database(fault) => Some(fault),
            _ => None,
        }
    }
}

/// A unit of work's body on a connection (boxed: it borrows the connection).
pub trait Unit<C, T, E>:
    for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, E>> + Send + Sync
{
}
impl<C, T, E, F> Unit<C, T, E> for F where
    F: for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, E>> + Send + Sync
{
}

/// A closure as a `Unit` (closures infer their signature only where they are written, so a
/// unit of work kept in a variable is declared through this).
pub fn unit<C, T, E, F>(f: F) -> F
where
    F: for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, E>> + Send + Sync,
{
    f
}

/// A closure run once with a connection (`Pooled::with_connection`), declared like `unit`.
pub fn with_conn<C, T, E, F>(f: F) -> F
where
    F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T, E>> + Send,
{
    f
}

/// Runs a unit of work on its own task, so it completes (commit or rollback) even when the
/// client goes away mid-request, or gets 503 after `deadline`.
pub async fn detached<T, E>(
    deadline: Duration,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<ApiError> + Send + 'static,
{
    match tokio::time::timeout(deadline, tokio::spawn(fut)).await {
        Ok(joined) => {
            joined.map_err(|e| E::from(ApiError::internal(format!("database task failed: {e}"))))?
        }
        Err(_) => Err(too_slow().into()),
    }
}

/// A unit of work past its deadline: the database is stuck or overloaded.
pub fn too_slow() -> ApiError {
    DbFault::Deadline.error("database did not answer in time")
}

/// `database_request_timeout` as a duration.
pub fn deadline(settings: &PoolSettings) -> Duration {
    Duration::from_secs(u64::from(settings.request_timeout_secs.max(1)))
}

/// Runs embedded migrations on a blocking wrapper connection in a thread of its own (the
/// migration harness is synchronous and must not block an async worker). Idempotent; the
/// version names match upstream's, so a database upstream created is recognised as migrated.
pub fn run_migrations<C, B>(
    url: &str,
    migrations: EmbeddedMigrations,
    setting: &str,
) -> Result<(), String>
where
    C: 'static,
    B: diesel::backend::Backend,
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<C>:
        diesel::Connection<Backend = B> + diesel_migrations::MigrationHarness<B>,
{
    use diesel_migrations::MigrationHarness;
    with_migration_connection::<C, B, _>(url, setting, move |conn, setting| {
        conn.run_pending_migrations(migrations)
            .map(|_| ())
            .map_err(|e| format!("{setting}: migrations failed: {e}"))
    })
}

/// The names of the embedded migrations not yet applied (`check-config`).
pub fn pending_migrations<C, B>(
    url: &str,
    migrations: EmbeddedMigrations,
    setting: &str,
) -> Result<Vec<String>, String>
where
    C: 'static,
    B: diesel::backend::Backend,
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<C>:
        diesel::Connection<Backend = B> + diesel_migrations::MigrationHarness<B>,
{
    use diesel_migrations::MigrationHarness;
    with_migration_connection::<C, B, _>(url, setting, move |conn, setting| {
        conn.pending_migrations(migrations)
            .map(|pending| pending.iter().map(|m| m.name().to_string()).collect())
            .map_err(|e| format!("{setting}: cannot read the applied migrations: {e}"))
    })
}

/// Runs `body` on a synchronous connection to `url` (diesel's migration harness is
/// synchronous), on a thread of its own so that no async runtime is blocked.
fn with_migration_connection<C, B, T>(
    url: &str,
    setting: &str,
    body: impl FnOnce(
        &mut diesel_async::async_connection_wrapper::AsyncConnectionWrapper<C>,
        &str,
    ) -> Result<T, String>
    + Send
    + 'static,
) -> Result<T, String>
where
    C: 'static,
    B: diesel::backend::Backend,
    T: Send + 'static,
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<C>:
        diesel::Connection<Backend = B>,
{
    use diesel::Connection;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    let (url, setting) = (url.to_owned(), setting.to_owned());
    std::thread::spawn(move || {
        let mut conn = AsyncConnectionWrapper::<C>::establish(&url)
            .map_err(|e| format!("{setting}: cannot connect: {e}"))?;
        body(&mut conn, &setting)
    })
    .join()
    .map_err(|_| "migrations panicked".to_owned())?
}

/// A deadpool of connections of one server engine, with its settings.
pub struct Pooled<C: ServerConn> {
    pool: Pool<C::Manager>,
    settings: PoolSettings,
}

impl<C: ServerConn> Pooled<C> {
    /// Builds the pool; connections are made on demand, so a database that is down now is a
    /// 503 later, not a start-up failure. `setting` names the URL in errors.
    pub fn open(url: &str, settings: &PoolSettings, setting: &str) -> Result<Self, String> {
        let session = C::session(settings);
        let mut manager_config = ManagerConfig::<C>::default();
        // No `SELECT 1` before every unit of work (a round trip each): `checkout` pings only a
        // connection that sat idle, and `with_connection` drops one that failed as lost.
        manager_config.recycling_method = RecyclingMethod::Fast;
        manager_config.custom_setup = Box::new(move |url| {
            let (url, session) = (url.to_owned(), session.clone());
            Box::pin(async move {
                let mut conn = C::establish(&url).await?;
                if !session.is_empty() {
                    conn.batch_execute(&session)
                        .await
                        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                }
                Ok(conn)
            })
        });
        let manager = C::manager(url, manager_config);
        let pool = Pool::builder(manager)
            .max_size(settings.max_size.max(1) as usize)
            .build()
            .map_err(|e| format!("{setting}: {e}"))?;
        Ok(Pooled {
            pool,
            settings: settings.clone(),
        })
    }

    /// `database_request_timeout`.
    pub fn deadline(&self) -> Duration {
        deadline(&self.settings)
    }

    pub fn state(&self) -> PoolState {
        let status = self.pool.status();
        let idle = status.available as u32;
        PoolState {
            active: (status.size as u32).saturating_sub(idle),
            idle,
            max_size: status.max_size as u32,
            waiting: status.waiting as u32,
        }
    }

    /// Runs `body` with a connection on a task of its own, within `deadline`.
    pub async fn with_connection<T, E>(
        &self,
        deadline: Duration,
        body: impl for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: UnitError,
    {
        let (pool, settings) = (self.pool.clone(), self.settings.clone());
        detached(deadline, async move {
            let mut obj = checkout::<C>(&pool, &settings).await?;
            let result = body(&mut obj).await;
            if let Err(e) = &result
                && e.fault() == Some(DbFault::Unavailable)
            {
                // Lost (or its server became a read-only replica): not back into the pool.
                let _ = Object::take(obj);
            }
            result
        })
        .await
    }

    /// A write: one transaction, run again on a conflict.
    pub async fn write_unit<T, E>(
        &self,
        deadline: Duration,
        unit: impl Unit<C, T, E> + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: UnitError,
    {
        self.with_connection(deadline, move |conn| {
            Box::pin(async move { write_transaction(conn, &unit).await })
        })
        .await
    }
}

/// A connection idle this long is pinged before use: the server or a proxy may have closed it
/// meanwhile. A busy pool's connections are never idle that long, so they go without.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Checks out a connection, giving up after the pool timeout with a 503 (the database is down
/// or saturated: clients retry later). Connections past their lifespan or idle limit are
/// replaced, and one idle for `PING_AFTER_IDLE` is pinged first (replaced if it fails).
async fn checkout<C: ServerConn>(
    pool: &Pool<C::Manager>,
    settings: &PoolSettings,
) -> ApiResult<Object<C::Manager>> {
    let wait = Duration::from_secs(u64::from(settings.connection_timeout_secs.max(1)));
    let secs = |s: u32| Duration::from_secs(s.into());
    loop {
        let obj = tokio::time::timeout(wait, pool.get())
            .await
            .map_err(|_| DbFault::PoolTimeout.error("database pool timeout"))?
            .map_err(|e| DbFault::Unavailable.error(format!("database unavailable: {e}")))?;
        let metrics = Object::metrics(&obj);
        let too_old = settings
            .connection_lifespan_secs
            .is_some_and(|s| metrics.age() > secs(s));
        let idle_too_long = settings
            .connection_max_idle_secs
            .is_some_and(|s| metrics.last_used() > secs(s));
        if too_old || idle_too_long {
            let _ = Object::take(obj);
            continue;
        }
        let idle = metrics.last_used() > PING_AFTER_IDLE;
        let mut obj = obj;
        if idle && obj.batch_execute("SELECT 1").await.is_err() {
            let _ = Object::take(obj);
            continue;
        }
        return Ok(obj);
    }
}

/// One read transaction on `conn`, at the engine's snapshot level.
pub async fn read_transaction<C, T, E>(conn: &mut C, unit: &impl Unit<C, T, E>) -> Result<T, E>
where
    C: ServerConn,
    T: Send,
    E: UnitError,
{
    transaction(conn, C::BEGIN_READ, unit).await
}

/// `unit` in a transaction begun by `begin`, committed when it succeeds. On failure the unit's
/// own error is returned (its fault decides a retry), whatever the rollback does: diesel's
/// transaction manager marks a connection whose rollback failed as broken, and the pool drops
/// it instead of reusing it.
async fn transaction<C, T, E>(conn: &mut C, begin: &str, unit: &impl Unit<C, T, E>) -> Result<T, E>
where
    C: ServerConn,
    T: Send,
    E: UnitError,
{
    AnsiTransactionManager::begin_transaction_sql(conn, begin).await?;
    match unit(conn).await {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(e) => {
            let _ = AnsiTransactionManager::rollback_transaction(conn).await;
            Err(e)
        }
    }
}

/// One write transaction on `conn` at the engine's write isolation level, run again when the
/// engine rolled it back to settle a conflict (`retry::SQL`).
pub async fn write_transaction<C, T, E>(conn: &mut C, unit: &impl Unit<C, T, E>) -> Result<T, E>
where
    C: ServerConn,
    T: Send,
    E: UnitError,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = transaction(conn, C::BEGIN_WRITE, unit).await;
        let retry = result
            .as_ref()
            .err()
            .and_then(UnitError::fault)
            .and_then(|fault| {
                crate::db::retry::SQL.next_delay(attempt, &ErrorKind::Database(fault))
            });
        match retry {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return result,
        }
    }
}

/// The storage API on a server engine: its units of work over its `SqlTx` statements.
pub struct PooledStorage<C: ServerConn> {
    pool: Pooled<C>,
    config: Arc<StorageConfig>,
}

impl<C: ServerConn> PooledStorage<C> {
    /// Migrates (unless switched off) and builds the pool.
    pub fn open(
        url: &str,
        settings: &PoolSettings,
        config: StorageConfig,
        migrations: EmbeddedMigrations,
    ) -> Result<Self, String> {
        const SETTING: &str = "syncstorage.database_url";
        if settings.run_migrations {
            C::migrate(url, migrations, SETTING)?;
        }
        Ok(PooledStorage {
            pool: Pooled::open(url, settings, SETTING)?,
            config: Arc::new(config),
        })
    }
}

#[async_trait::async_trait]
impl<C: ServerConn> Backend for PooledStorage<C>
where
    for<'a> SqlTx<'a, C>: WriteTx<User = i64> + SqlPurge,
{
    /// Statement by statement unless the unit needs one snapshot (`ReadOp::needs_snapshot`),
    /// then in one read transaction on the same connection.
    async fn read(&self, op: ReadOp) -> ApiResult<ReadOut> {
        let config = self.config.clone();
        let op = Arc::new(op);
        let body = with_conn(move |conn: &mut C| {
            Box::pin(async move {
                if !op.needs_snapshot() {
                    match units::read(&mut SqlTx(&mut *conn), &config, &op, false).await? {
                        ReadOut::NeedsSnapshot => {}
                        out => return Ok(out),
                    }
                }
                let unit = unit(move |conn: &mut C| {
                    let (config, op) = (config.clone(), op.clone());
                    Box::pin(async move { units::read(&mut SqlTx(conn), &config, &op, true).await })
                });
                read_transaction(conn, &unit).await
            })
        });
        self.pool.with_connection(self.pool.deadline(), body).await
    }

    async fn write(&self, op: WriteOp) -> ApiResult<WriteOut> {
        let config = self.config.clone();
        let op = Arc::new(op);
        let body = with_conn(move |conn: &mut C| {
            Box::pin(async move {
                if let (_, Some(name)) = op.target()
                    && crate::db::rules::standard_collection_id(name).is_none()
                {
                    // The global name mapping is made in its own statement, so that two
                    // writers creating it at once cannot fail each other's units of work.
                    let mut tx = SqlTx(&mut *conn);
                    if tx.get_or_create_collection_id(name).await.is_err() {
                        crate::db::tx::ReadTx::collection_id(&mut tx, name).await?;
                    }
                }
                let unit = unit(move |conn: &mut C| {
                    let (config, op) = (config.clone(), op.clone());
                    Box::pin(async move { units::write(&mut SqlTx(conn), &config, &op).await })
                });
                write_transaction(conn, &unit).await
            })
        });
        self.pool.with_connection(self.pool.deadline(), body).await
    }

    /// One short write transaction, like any other write.
    async fn purge_expired_chunk(
        &self,
        now: SyncTimestamp,
        max_rows: u32,
    ) -> ApiResult<PurgeStats> {
        let unit = unit(move |conn: &mut C| {
            Box::pin(async move {
                SqlTx(conn)
                    .purge_expired_chunk(now, i64::from(max_rows))
                    .await
            })
        });
        self.pool.write_unit(self.pool.deadline(), unit).await
    }

    fn pool_state(&self) -> PoolState {
        self.pool.state()
    }
}
