//! The tokenserver database on each engine: `tokenserver_ops!` instantiated per connection
//! type, inside a transaction per trait method. SQLite takes the write lock up front (`BEGIN
//! IMMEDIATE`); MySQL and PostgreSQL run READ COMMITTED with row locks on the service and its
//! nodes, so concurrent allocations serialize and each sees the others' rows.

use async_trait::async_trait;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{SelfNode, Service, TokenserverDb, TsResult, UserLookup, UserRecord, UserUpdate};
use crate::db::sql::PoolSettings;
use crate::db::sqlite::SqliteTarget;
use crate::db::{mysql, postgres};
use crate::error::ApiError;
use crate::tokenserver::TokenserverError;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tokenserver/sqlite");
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tokenserver/mysql");
const POSTGRES_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("migrations/tokenserver/postgres");

/// The setting every error here is about.
const SETTING: &str = "tokenserver.database_url";

pub fn open(url: &str, pool: &PoolSettings) -> Result<super::SharedTokenserverDb, String> {
    if mysql::is_mysql_url(url) {
        return Ok(std::sync::Arc::new(MysqlTokenserverDb::open(url, pool)?));
    }
    if postgres::is_postgres_url(url) {
        return Ok(std::sync::Arc::new(PostgresTokenserverDb::open(url, pool)?));
    }
    match SqliteTarget::from_url(url) {
        Some(target) => Ok(std::sync::Arc::new(SqliteTokenserverDb::open(
            &target, pool,
        )?)),
        None => Err(format!(
            "{SETTING}: unsupported database URL {:?} (use sqlite:PATH, mysql:// or postgres://)",
            crate::secret::redact_url(url)
        )),
    }
}

mod sqlite_ops {
    pub type Conn = diesel::SqliteConnection;
    use diesel::RunQueryDsl;
    crate::db::tokenserver::ops::tokenserver_ops!([] [] [] last_insert_id = "last_insert_rowid()");
}

pub struct SqliteTokenserverDb {
    pool: Pool<ConnectionManager<sqlite_ops::Conn>>,
}

impl SqliteTokenserverDb {
    pub fn open(target: &SqliteTarget, settings: &PoolSettings) -> Result<Self, String> {
        let pool = crate::db::sqlite::open_pool(&target.path, settings, SETTING)?;
        if settings.run_migrations {
            let mut conn = pool.get().map_err(|e| format!("{SETTING}: {e}"))?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(|e| format!("{SETTING}: migrations failed: {e}"))?;
        }
        Ok(SqliteTokenserverDb { pool })
    }

    /// One `BEGIN IMMEDIATE` transaction on a blocking thread.
    async fn unit<T, F>(&self, f: F) -> TsResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut sqlite_ops::Conn) -> TsResult<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(ApiError::from)?;
            crate::db::sqlite::write_transaction(&mut conn, f)
        })
        .await
        .map_err(|e| TokenserverError::from(ApiError::internal(format!("task failed: {e}"))))?
    }
}

#[async_trait]
impl TokenserverDb for SqliteTokenserverDb {
    async fn service(&self, name: &str) -> TsResult<Option<Service>> {
        let name = name.to_owned();
        self.unit(move |c| Ok(sqlite_ops::service(c, &name)?)).await
    }
    async fn get_or_create_user(&self, lookup: UserLookup) -> TsResult<UserRecord> {
        self.unit(move |c| sqlite_ops::get_or_create_user(c, &lookup))
            .await
    }
    async fn update_user(&self, update: UserUpdate) -> TsResult<i64> {
        self.unit(move |c| sqlite_ops::update_user(c, &update))
            .await
    }
    async fn ensure_node(&self, service: i32, url: &str, capacity: i32) -> TsResult<()> {
        let url = url.to_owned();
        self.unit(move |c| Ok(sqlite_ops::ensure_node(c, service, &url, capacity)?))
            .await
    }
    async fn ensure_self_node(&self, service: i32, url: &str, capacity: i32) -> TsResult<SelfNode> {
        let url = url.to_owned();
        self.unit(move |c| Ok(sqlite_ops::ensure_self_node(c, service, &url, capacity)?))
            .await
    }
    async fn retire_user(&self, service: i32, email: &str, now_ms: i64) -> TsResult<()> {
        let email = email.to_owned();
        self.unit(move |c| Ok(sqlite_ops::retire_user(c, service, &email, now_ms).map(|_| ())?))
            .await
    }
    async fn raise_generation(&self, service: i32, email: &str, generation: i64) -> TsResult<()> {
        let email = email.to_owned();
        self.unit(move |c| {
            Ok(sqlite_ops::raise_generation(c, service, &email, generation).map(|_| ())?)
        })
        .await
    }
    async fn check(&self) -> TsResult<()> {
        self.unit(|c| Ok(sqlite_ops::ping(c).map(|_| ())?)).await
    }
}

/// `$Db` over a deadpool of `$Conn`, its statements in module `$ops`; `$before` runs before each
/// transaction (the isolation level).
macro_rules! pooled_tokenserver {
    ($Db:ident, $Conn:ty, $ops:ident, $migrations:expr, before = $before:expr) => {
        pub struct $Db {
            pool: diesel_async::pooled_connection::deadpool::Pool<$Conn>,
            settings: PoolSettings,
        }

        impl $Db {
            pub fn open(url: &str, settings: &PoolSettings) -> Result<Self, String> {
                if settings.run_migrations {
                    crate::db::pooled::run_embedded_migrations!($Conn, url, $migrations, SETTING)?;
                }
                let manager =
                    diesel_async::pooled_connection::AsyncDieselConnectionManager::<$Conn>::new(
                        url,
                    );
                let pool = diesel_async::pooled_connection::deadpool::Pool::builder(manager)
                    .max_size(settings.max_size.max(1) as usize)
                    .build()
                    .map_err(|e| format!("{SETTING}: {e}"))?;
                Ok($Db {
                    pool,
                    settings: settings.clone(),
                })
            }
        }

        impl $Db {
            /// One transaction, on a task of its own so that it finishes even when the client
            /// goes away.
            async fn unit<T, F>(&self, f: F) -> TsResult<T>
            where
                T: Send + 'static,
                F: for<'c> Fn(&'c mut $Conn) -> futures::future::BoxFuture<'c, TsResult<T>>
                    + Send
                    + Sync
                    + 'static,
            {
                crate::db::pooled::pool_checkout!($Conn);
                let pool = self.pool.clone();
                let settings = self.settings.clone();
                // The tokenserver bounds its requests itself (`database_request_timeout`, 504).
                crate::db::pooled::detached(std::time::Duration::MAX, async move {
                    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                    let mut obj = connection(&pool, &settings).await?;
                    let conn: &mut $Conn = &mut obj;
                    // Run again when the engine rolled it back to settle a conflict, as the
                    // storage API's units of work are (`retry::SQL`).
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        conn.batch_execute($before).await?;
                        let result = conn.transaction(async |c| f(c).await).await;
                        let retry = result
                            .as_ref()
                            .err()
                            .and_then(|e| e.fault)
                            .and_then(|fault| {
                                crate::db::retry::SQL
                                    .next_delay(attempt, &crate::error::ErrorKind::Database(fault))
                            });
                        match retry {
                            Some(wait) => tokio::time::sleep(wait).await,
                            None => return Ok(result),
                        }
                    }
                })
                .await
                .map_err(TokenserverError::from)?
            }
        }

        #[async_trait]
        impl TokenserverDb for $Db {
            async fn service(&self, name: &str) -> TsResult<Option<Service>> {
                let name = name.to_owned();
                self.unit(move |c| {
                    let name = name.clone();
                    Box::pin(async move { Ok($ops::service(c, &name).await?) })
                })
                .await
            }
            async fn get_or_create_user(&self, lookup: UserLookup) -> TsResult<UserRecord> {
                self.unit(move |c| {
                    let lookup = lookup.clone();
                    Box::pin(async move { $ops::get_or_create_user(c, &lookup).await })
                })
                .await
            }
            async fn update_user(&self, update: UserUpdate) -> TsResult<i64> {
                self.unit(move |c| {
                    let update = update.clone();
                    Box::pin(async move { $ops::update_user(c, &update).await })
                })
                .await
            }
            async fn ensure_node(&self, service: i32, url: &str, capacity: i32) -> TsResult<()> {
                let url = url.to_owned();
                self.unit(move |c| {
                    let url = url.clone();
                    Box::pin(
                        async move { Ok($ops::ensure_node(c, service, &url, capacity).await?) },
                    )
                })
                .await
            }
            async fn ensure_self_node(
                &self,
                service: i32,
                url: &str,
                capacity: i32,
            ) -> TsResult<SelfNode> {
                let url = url.to_owned();
                self.unit(move |c| {
                    let url = url.clone();
                    Box::pin(async move {
                        Ok($ops::ensure_self_node(c, service, &url, capacity).await?)
                    })
                })
                .await
            }
            async fn retire_user(&self, service: i32, email: &str, now_ms: i64) -> TsResult<()> {
                let email = email.to_owned();
                self.unit(move |c| {
                    let email = email.clone();
                    Box::pin(async move {
                        $ops::retire_user(c, service, &email, now_ms).await?;
                        Ok(())
                    })
                })
                .await
            }
            async fn raise_generation(
                &self,
                service: i32,
                email: &str,
                generation: i64,
            ) -> TsResult<()> {
                let email = email.to_owned();
                self.unit(move |c| {
                    let email = email.clone();
                    Box::pin(async move {
                        $ops::raise_generation(c, service, &email, generation).await?;
                        Ok(())
                    })
                })
                .await
            }
            async fn check(&self) -> TsResult<()> {
                self.unit(|c| {
                    Box::pin(async move {
                        $ops::ping(c).await?;
                        Ok(())
                    })
                })
                .await
            }
        }
    };
}

mod mysql_ops {
    pub type Conn = diesel_async::AsyncMysqlConnection;
    use diesel_async::RunQueryDsl;
    crate::db::tokenserver::ops::tokenserver_ops!([async] [.await] [for_update] last_insert_id = "CAST(LAST_INSERT_ID() AS SIGNED)");
}

mod postgres_ops {
    pub type Conn = diesel_async::AsyncPgConnection;
    use diesel_async::RunQueryDsl;
    crate::db::tokenserver::ops::tokenserver_ops!([async] [.await] [for_update] last_insert_id = "lastval()");
}

// Reads after the first lock must see rows other requests committed meanwhile.
pooled_tokenserver!(
    MysqlTokenserverDb,
    diesel_async::AsyncMysqlConnection,
    mysql_ops,
    MYSQL_MIGRATIONS,
    before = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
);
// Explicit, in case the server's default isolation is stricter.
pooled_tokenserver!(
    PostgresTokenserverDb,
    diesel_async::AsyncPgConnection,
    postgres_ops,
    POSTGRES_MIGRATIONS,
    before = "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"
);
