//! What the server-database backends (MySQL, PostgreSQL) share: a deadpool of diesel-async
//! connections, units of work run on tasks of their own, transient-conflict retries, and the
//! `StorageDb` impl itself, generated per backend by `pooled_backend!` around that backend's
//! `ops` module (its instance of `storage_ops!`).

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

        /// A read-only unit of work on one snapshot: `|conn, config| body`, answered 503 after
        /// `database_request_timeout` (or after `$deadline`).
        macro_rules! read_unit {
            ($self:ident, |$conn:ident, $config:ident| $body:expr) => {{
                read_unit!($self, $crate::db::pooled::deadline(&$self.settings), |$conn, $config| $body)
            }};
            ($self:ident, $deadline:expr, |$conn:ident, $config:ident| $body:expr) => {{
                let pool = $self.pool.clone();
                let settings = $self.settings.clone();
                let config = $self.config.clone();
                $crate::db::pooled::detached($deadline, async move {
                    use diesel_async::AsyncConnection;
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    conn.transaction(async |$conn| {
                        let start: &str = $read_start;
                        if !start.is_empty() {
                            diesel_async::SimpleAsyncConnection::batch_execute(&mut *$conn, start).await?;
                        }
                        let $config: &$crate::db::StorageConfig = &config;
                        let _ = $config;
                        $body
                    })
                    .await
                })
                .await
            }};
        }

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

        /// A write unit of work on `(uid, collection)`: `|conn, scope, config| body`, run
        /// again when the engine rolled it back to settle a conflict (`retry::SQL`).
        macro_rules! write_unit {
            ($self:ident, $uid:expr, $collection:expr, |$conn:ident, $scope:ident, $config:ident| $body:expr) => {{
                let pool = $self.pool.clone();
                let settings = $self.settings.clone();
                let config = $self.config.clone();
                let uid: i64 = $uid;
                let collection: Option<String> = $collection;
                $crate::db::pooled::detached($crate::db::pooled::deadline(&settings), async move {
                    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    if let Some(name) = &collection {
                        // The global name mapping is made in its own statement, so that two
                        // writers creating it at once cannot fail each other's units of work.
                        if ops::get_or_create_collection_id(conn, name).await.is_err() {
                            ops::collection_id(conn, name).await?;
                        }
                    }
                    write_transaction!(conn, |$conn| {
                        let scope = ops::begin_write($conn, uid, collection.as_deref()).await?;
                        let $scope = &scope;
                        let $config: &$crate::db::StorageConfig = &config;
                        let _ = $config;
                        $body
                    })
                })
                .await
            }};
        }

        #[async_trait::async_trait]
        impl $crate::db::StorageDb for $Storage {
            async fn info(
                &self,
                user: &$crate::db::UserId,
                kind: $crate::db::InfoKind,
                precondition: $crate::protocol::Precondition,
            ) -> $crate::error::ApiResult<$crate::db::Info> {
                let uid = user.legacy_id as i64;
                read_unit!(self, |conn, _config| ops::info(conn, uid, kind, precondition).await)
            }

            async fn get_bsos(&self, params: $crate::db::GetBsos) -> $crate::error::ApiResult<$crate::db::BsoPage> {
                read_unit!(self, |conn, config| ops::get_bsos(conn, config, params.clone()).await)
            }

            async fn stream_bsos(&self, params: $crate::db::GetBsos) -> $crate::error::ApiResult<$crate::db::listing::BsoStream> {
                        let (tx, rx) = $crate::db::listing::channel();
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                let config = self.config.clone();
                // On a task of its own: the read goes on while the response is sent, holding
                // its connection and snapshot at most `listing::STALL` per chunk.
                tokio::spawn(async move {
                    let result = async {
                        use diesel_async::AsyncConnection;
                        let mut obj = connection(&pool, &settings).await?;
                        let conn: &mut $Conn = &mut obj;
                        conn.transaction(async |conn| {
                            let start: &str = $read_start;
                            if !start.is_empty() {
                                diesel_async::SimpleAsyncConnection::batch_execute(&mut *conn, start).await?;
                            }
                            ops::stream_bsos(conn, &config, params.clone(), &tx).await
                        })
                        .await
                    }
                    .await;
                    if let Err(e) = result {
                        let _ = $crate::db::listing::send(&tx, Err(e)).await;
                    }
                });
                $crate::db::listing::receive(rx).await
            }

            async fn get_bso(&self, params: $crate::db::BsoRef) -> $crate::error::ApiResult<$crate::protocol::Bso> {
                read_unit!(self, |conn, _config| ops::get_bso(conn, params.clone()).await)
            }

            async fn put_bso(&self, params: $crate::db::PutBso) -> $crate::error::ApiResult<$crate::protocol::SyncTimestamp> {
                let (uid, collection) = (params.target.user.legacy_id as i64, params.target.collection.clone());
                write_unit!(self, uid, Some(collection), |conn, scope, config| ops::put_bso(
                    conn,
                    scope,
                    config,
                    params.clone()
                )
                .await)
            }

            async fn post_bsos(&self, params: $crate::db::PostBsos) -> $crate::error::ApiResult<$crate::db::PostResult> {
                let (uid, collection) = (params.target.user.legacy_id as i64, params.target.collection.clone());
                write_unit!(self, uid, Some(collection), |conn, scope, config| ops::post_bsos(
                    conn,
                    scope,
                    config,
                    params.clone()
                )
                .await)
            }

            async fn delete_bso(&self, params: $crate::db::BsoRef) -> $crate::error::ApiResult<$crate::protocol::SyncTimestamp> {
                let (uid, collection) = (params.user.legacy_id as i64, params.collection.clone());
                write_unit!(self, uid, Some(collection), |conn, scope, config| ops::delete_bso(
                    conn,
                    scope,
                    config,
                    params.clone()
                )
                .await)
            }

            async fn delete_bsos(&self, params: $crate::db::DeleteBsos) -> $crate::error::ApiResult<$crate::protocol::SyncTimestamp> {
                let (uid, collection) = (params.target.user.legacy_id as i64, params.target.collection.clone());
                write_unit!(self, uid, Some(collection), |conn, scope, config| ops::delete_bsos(
                    conn,
                    scope,
                    config,
                    params.clone()
                )
                .await)
            }

            async fn delete_collection(
                &self,
                params: $crate::db::CollectionRef,
            ) -> $crate::error::ApiResult<$crate::db::DeletedCollection> {
                let (uid, collection) = (params.user.legacy_id as i64, params.collection.clone());
                write_unit!(self, uid, Some(collection), |conn, scope, _config| ops::delete_collection(
                    conn,
                    scope,
                    params.clone()
                )
                .await)
            }

            async fn delete_storage(
                &self,
                user: &$crate::db::UserId,
                precondition: $crate::protocol::Precondition,
            ) -> $crate::error::ApiResult<$crate::protocol::SyncTimestamp> {
                let uid = user.legacy_id as i64;
                write_unit!(self, uid, None, |conn, scope, _config| ops::delete_storage(conn, scope.uid, precondition)
                    .await)
            }

            async fn check(&self) -> $crate::error::ApiResult<()> {
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                $crate::db::pooled::detached($crate::db::pooled::deadline(&settings), async move {
                    let mut obj = connection(&pool, &settings).await?;
                    ops::ping(&mut obj).await
                })
                .await
            }

            async fn purge_expired_chunk(
                &self,
                now: $crate::protocol::SyncTimestamp,
                max_rows: u32,
            ) -> $crate::error::ApiResult<$crate::db::PurgeStats> {
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                // One short write transaction, like any other write: its own isolation level,
                // run again on a conflict (`retry::SQL`), answered within the deadline.
                $crate::db::pooled::detached($crate::db::pooled::deadline(&settings), async move {
                    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    write_transaction!(conn, |tx| ops::purge_expired_chunk(tx, now, i64::from(max_rows)).await)
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

/// `lock_collection_ts` for the server engines, around the backend's `insert_placeholder`:
/// locks the user's collection row (`FOR UPDATE`) until the transaction ends. Neither engine
/// locks a row that does not exist, so a missing row is first created as an invisible
/// placeholder, and the first writers of a new collection serialize too. The placeholder is
/// inserted only when missing: on MySQL, `INSERT IGNORE` over an existing row takes a shared
/// lock that concurrent writers would then deadlock upgrading.
macro_rules! locking_collection_ts {
    () => {
        async fn lock_collection_ts(
            conn: &mut Conn,
            uid: i64,
            cid: i32,
        ) -> QueryResult<Option<SyncTimestamp>> {
            async fn locked(
                conn: &mut Conn,
                uid: i64,
                cid: i32,
            ) -> QueryResult<Option<SyncTimestamp>> {
                Ok(user_collections::table
                    .find((uid, cid))
                    .select(user_collections::last_modified)
                    .for_update()
                    .first::<Ms>(conn)
                    .await
                    .optional()?
                    .map(|Ms(ms)| SyncTimestamp::from_i64(ms)))
            }
            if let Some(ts) = locked(conn, uid, cid).await? {
                return Ok(Some(ts));
            }
            insert_placeholder(conn, uid, cid).await?;
            locked(conn, uid, cid).await
        }
    };
}
pub(crate) use locking_collection_ts;

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
