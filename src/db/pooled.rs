//! What the server-database backends (MySQL, PostgreSQL) share: a deadpool of diesel-async
//! connections, units of work (`db::units`) run on tasks of their own, conflict retries, and
//! the `Backend` impl itself, generated per backend by `pooled_backend!` for its connection
//! type (a macro because the isolation statements and the connection type are per engine).

use std::future::Future;

use crate::error::{ApiError, ApiResult};

/// Runs a unit of work on its own task, so it completes (commit or rollback) even when the
/// client goes away mid-request, or gets 503 after `deadline`.
pub async fn detached<T: Send + 'static>(
    deadline: std::time::Duration,
    fut: impl Future<Output = ApiResult<T>> + Send + 'static,
) -> ApiResult<T> {
    match tokio::time::timeout(deadline, tokio::spawn(fut)).await {
        Ok(joined) => {
            joined.map_err(|e| ApiError::internal(format!("database task failed: {e}")))?
        }
        Err(_) => Err(too_slow()),
    }
}

/// A unit of work past its deadline: the database is stuck or overloaded.
pub fn too_slow() -> ApiError {
    crate::db::fault::DbFault::Deadline.error("database did not answer in time")
}

/// `database_request_timeout` as a duration.
pub fn deadline(settings: &crate::db::sql::PoolSettings) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(settings.request_timeout_secs.max(1)))
}

/// A deadpool manager whose new connections first run `session` (SQL; none when empty).
pub fn manager<C>(
    url: &str,
    session: String,
) -> diesel_async::pooled_connection::AsyncDieselConnectionManager<C>
where
    C: diesel_async::AsyncConnection + diesel_async::SimpleAsyncConnection + 'static,
{
    use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
    use futures::FutureExt;
    let mut config = ManagerConfig::<C>::default();
    config.custom_setup = Box::new(move |url| {
        let (url, session) = (url.to_owned(), session.clone());
        async move {
            let mut conn = C::establish(&url).await?;
            if !session.is_empty() {
                conn.batch_execute(&session)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(conn)
        }
        .boxed()
    });
    AsyncDieselConnectionManager::new_with_config(url, config)
}

/// Defines `$Storage` (pool + config) and its `StorageDb` impl over the `ops` module in scope.
/// `session` gives the SQL each new connection runs first; `before_write` is SQL run before
/// each write transaction begins (MySQL's isolation level); `read_start` is the first statement
/// of each read transaction (PostgreSQL's snapshot level).
macro_rules! pooled_backend {
    ($Storage:ident, $Conn:ty, session = $session:expr, before_write = $before_write:expr, read_start = $read_start:expr) => {
        pub struct $Storage {
            pool: diesel_async::pooled_connection::deadpool::Pool<$Conn>,
            config: std::sync::Arc<$crate::db::StorageConfig>,
            settings: $crate::db::sql::PoolSettings,
        }

        impl $Storage {
            /// Runs the embedded migrations on a blocking wrapper connection in a thread of its
            /// own (the migration harness is synchronous). Idempotent; the version names match
            /// upstream's, so a database syncstorage-rs created is recognised as migrated.
            pub fn run_migrations(url: &str) -> Result<(), String> {
                $crate::db::pooled::run_embedded_migrations!($Conn, url, MIGRATIONS, "syncstorage.database_url")
            }

            /// Migrates (unless switched off) and builds the pool; connections are made on
            /// demand, so a database that is down now is a 503 later, not a start-up failure.
            pub fn open(
                url: &str,
                settings: &$crate::db::sql::PoolSettings,
                config: $crate::db::StorageConfig,
            ) -> Result<Self, String> {
                if settings.run_migrations {
                    Self::run_migrations(url)?;
                }
                let session: fn(&$crate::db::sql::PoolSettings) -> String = $session;
                let manager = $crate::db::pooled::manager::<$Conn>(url, session(settings));
                let pool = diesel_async::pooled_connection::deadpool::Pool::builder(manager)
                    .max_size(settings.max_size.max(1) as usize)
                    .build()
                    .map_err(|e| format!("syncstorage.database_url: {e}"))?;
                Ok($Storage { pool, config: std::sync::Arc::new(config), settings: settings.clone() })
            }
        }

        $crate::db::pooled::pool_checkout!($Conn);

        /// One write transaction on `conn` (`|conn| body`) at the write isolation level, run
        /// again when the engine rolled it back to settle a conflict (`retry::SQL`).
        macro_rules! write_transaction {
            ($c:ident, |$tx:ident| $tbody:expr) => {{
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let before: &str = $before_write;
                    if !before.is_empty() {
                        $c.batch_execute(before).await?;
                    }
                    let result = $c.transaction(async |$tx| $tbody).await;
                    match result.as_ref().err().and_then(|e| $crate::db::retry::SQL.next_delay(attempt, &e.kind)) {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => break result,
                    }
                }
            }};
        }

        #[async_trait::async_trait]
        impl $crate::db::tx::Backend for $Storage {
            /// One read transaction on one snapshot, on a task of its own.
            async fn read(&self, op: $crate::db::units::ReadOp) -> $crate::error::ApiResult<$crate::db::units::ReadOut> {
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                let config = self.config.clone();
                $crate::db::pooled::detached($crate::db::pooled::deadline(&settings), async move {
                    use diesel_async::AsyncConnection;
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    conn.transaction(async |conn| {
                        let start: &str = $read_start;
                        if !start.is_empty() {
                            diesel_async::SimpleAsyncConnection::batch_execute(&mut *conn, start).await?;
                        }
                        $crate::db::units::read(&mut $crate::db::sql::SqlTx(conn), &config, op).await
                    })
                    .await
                })
                .await
            }

            /// One write transaction, run again on a conflict (`retry::SQL`), on a task of
            /// its own so that a client going away cannot leave it half-done.
            async fn write(&self, op: $crate::db::units::WriteOp) -> $crate::error::ApiResult<$crate::db::units::WriteOut> {
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                let config = self.config.clone();
                $crate::db::pooled::detached($crate::db::pooled::deadline(&settings), async move {
                    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                    use $crate::db::tx::WriteTx;
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    if let (_, Some(name)) = op.target() {
                        // The global name mapping is made in its own statement, so that two
                        // writers creating it at once cannot fail each other's units of work.
                        let mut tx = $crate::db::sql::SqlTx(&mut *conn);
                        if tx.get_or_create_collection_id(name).await.is_err() {
                            $crate::db::tx::ReadTx::collection_id(&mut tx, name).await?;
                        }
                    }
                    let op = &op;
                    let config = &config;
                    write_transaction!(conn, |tx| $crate::db::units::write(&mut $crate::db::sql::SqlTx(tx), config, op).await)
                })
                .await
            }

            /// One short write transaction, like any other write: its own isolation level,
            /// run again on a conflict (`retry::SQL`), answered within the deadline.
            async fn purge_expired_chunk(
                &self,
                now: $crate::protocol::SyncTimestamp,
                max_rows: u32,
            ) -> $crate::error::ApiResult<$crate::db::PurgeStats> {
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                $crate::db::pooled::detached($crate::db::pooled::deadline(&settings), async move {
                    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    write_transaction!(conn, |tx| $crate::db::sql::SqlTx(tx).purge_expired_chunk(now, i64::from(max_rows)).await)
                })
                .await
            }

            fn pool_state(&self) -> $crate::db::PoolState {
                let status = self.pool.status();
                let idle = status.available as u32;
                $crate::db::PoolState {
                    active: (status.size as u32).saturating_sub(idle),
                    idle,
                    max_size: status.max_size as u32,
                }
            }
        }
    };
}
pub(crate) use pooled_backend;


/// Defines `connection(pool, settings)`: checks out a connection of type `$Conn`, giving up after
/// the pool timeout with a 503 (the database is down or saturated: clients retry later).
/// Connections past their lifespan or idle limit are replaced.
macro_rules! pool_checkout {
    ($Conn:ty) => {
        async fn connection(
            pool: &diesel_async::pooled_connection::deadpool::Pool<$Conn>,
            settings: &$crate::db::sql::PoolSettings,
        ) -> $crate::error::ApiResult<diesel_async::pooled_connection::deadpool::Object<$Conn>> {
            use diesel_async::pooled_connection::deadpool::Object;
            use $crate::db::fault::DbFault;
            let wait =
                std::time::Duration::from_secs(u64::from(settings.connection_timeout_secs.max(1)));
            loop {
                let obj = tokio::time::timeout(wait, pool.get())
                    .await
                    .map_err(|_| DbFault::Unavailable.error("database pool timeout"))?
                    .map_err(|e| {
                        DbFault::Unavailable.error(format!("database unavailable: {e}"))
                    })?;
                let metrics = Object::metrics(&obj);
                let secs = |s: u32| std::time::Duration::from_secs(s.into());
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
                return Ok(obj);
            }
        }
    };
}
pub(crate) use pool_checkout;

/// Runs embedded migrations on a blocking wrapper connection in a thread of its own (the
/// migration harness is synchronous and must not block an async worker). Idempotent.
macro_rules! run_embedded_migrations {
    ($Conn:ty, $url:expr, $migrations:expr, $setting:expr) => {{
        use diesel::Connection;
        use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
        use diesel_migrations::MigrationHarness;
        let url = $url.to_owned();
        std::thread::spawn(move || {
            let mut conn = <AsyncConnectionWrapper<$Conn> as Connection>::establish(&url)
                .map_err(|e| format!("{}: cannot connect: {e}", $setting))?;
            conn.run_pending_migrations($migrations)
                .map(|_| ())
                .map_err(|e| format!("{}: migrations failed: {e}", $setting))
        })
        .join()
        .map_err(|_| "migrations panicked".to_owned())?
    }};
}
pub(crate) use run_embedded_migrations;
