//! The tokenserver database on each engine: `tokenserver_ops!` instantiated per connection
//! type, inside a transaction per trait method. SQLite takes the write lock up front (`BEGIN
//! IMMEDIATE`); MySQL and PostgreSQL run READ COMMITTED with row locks on the service and its
//! nodes, so concurrent allocations serialize and each sees the others' rows.

use async_trait::async_trait;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::admin::{AdminOp, AdminOut};
use super::{SelfNode, Service, TokenserverDb, TsResult, UserLookup, UserRecord, UserUpdate};
use crate::db::pooled::{Pooled, ServerConn, Unit, UnitError};
use crate::db::sql::PoolSettings;
use crate::db::sqlite::SqliteTarget;
use crate::db::{mysql, postgres};
use crate::error::ApiError;
use crate::tokenserver::TokenserverError;
use futures::future::BoxFuture;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tokenserver/sqlite");
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tokenserver/mysql");
const POSTGRES_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("migrations/tokenserver/postgres");

/// The tokenserver tables' migrations (`check-config`).
pub const MIGRATIONS: crate::db::Migrations = crate::db::Migrations {
    sqlite: SQLITE_MIGRATIONS,
    mysql: MYSQL_MIGRATIONS,
    postgres: POSTGRES_MIGRATIONS,
};

/// The setting every error here is about.
const SETTING: &str = "tokenserver.database_url";

pub fn open(url: &str, pool: &PoolSettings) -> Result<super::SharedTokenserverDb, String> {
    if mysql::is_mysql_url(url) {
        type Db = PooledTokenserverDb<diesel_async::AsyncMysqlConnection>;
        return Ok(std::sync::Arc::new(Db::open(url, pool, MYSQL_MIGRATIONS)?));
    }
    if postgres::is_postgres_url(url) {
        type Db = PooledTokenserverDb<diesel_async::AsyncPgConnection>;
        return Ok(std::sync::Arc::new(Db::open(
            url,
            pool,
            POSTGRES_MIGRATIONS,
        )?));
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
    crate::tokenserver::db::ops::tokenserver_ops!(conn = diesel::SqliteConnection, run = diesel::RunQueryDsl, [] [] [] last_insert_id = "last_insert_rowid()");
    crate::tokenserver::db::admin::tokenserver_admin_ops!(conn = diesel::SqliteConnection, run = diesel::RunQueryDsl, [] [] reseed = []);
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
    async fn admin(&self, op: AdminOp) -> TsResult<AdminOut> {
        self.unit(move |c| Ok(sqlite_ops::admin::admin(c, &op)?))
            .await
    }
    async fn check(&self) -> TsResult<()> {
        self.unit(|c| Ok(sqlite_ops::ping(c).map(|_| ())?)).await
    }
    fn pool_state(&self) -> crate::db::PoolState {
        let state = self.pool.state();
        crate::db::PoolState {
            active: state.connections - state.idle_connections,
            idle: state.idle_connections,
            max_size: self.pool.max_size(),
            // r2d2 does not say how many wait.
            waiting: 0,
        }
    }
}

/// The tokenserver database on a server engine: the same pooled mechanism as the storage
/// API's (`db::pooled`: isolation levels, conflict retries, units on tasks of their own).
pub struct PooledTokenserverDb<C: ServerConn> {
    pool: Pooled<C>,
}

impl<C: ServerConn> PooledTokenserverDb<C> {
    pub fn open(
        url: &str,
        settings: &PoolSettings,
        migrations: EmbeddedMigrations,
    ) -> Result<Self, String> {
        if settings.run_migrations {
            C::migrate(url, migrations, SETTING)?;
        }
        Ok(PooledTokenserverDb {
            pool: Pooled::open(url, settings, SETTING)?,
        })
    }
}

impl<C: ServerConn> PooledTokenserverDb<C> {
    /// One write transaction. The tokenserver bounds its requests itself
    /// (`database_request_timeout`, 504), so the pool sets no deadline here.
    async fn unit<T: Send + 'static>(
        &self,
        unit: impl Unit<C, T, TokenserverError> + 'static,
    ) -> TsResult<T> {
        self.pool.write_unit(std::time::Duration::MAX, unit).await
    }
}

impl UnitError for TokenserverError {
    fn fault(&self) -> Option<crate::db::fault::DbFault> {
        self.fault
    }
}

/// The statements of one engine (`tokenserver_ops!`), as the pooled type calls them.
macro_rules! pooled_tokenserver_db {
    ($Conn:ty, $ops:ident) => {
        #[async_trait]
        impl TokenserverDb for PooledTokenserverDb<$Conn> {
            async fn service(&self, name: &str) -> TsResult<Option<Service>> {
                let name = name.to_owned();
                self.unit(move |c: &mut $Conn| {
                    let name = name.clone();
                    Box::pin(async move { Ok($ops::service(c, &name).await?) }) as BoxFuture<'_, _>
                })
                .await
            }
            async fn get_or_create_user(&self, lookup: UserLookup) -> TsResult<UserRecord> {
                self.unit(move |c: &mut $Conn| {
                    let lookup = lookup.clone();
                    Box::pin(async move { $ops::get_or_create_user(c, &lookup).await })
                        as BoxFuture<'_, _>
                })
                .await
            }
            async fn update_user(&self, update: UserUpdate) -> TsResult<i64> {
                self.unit(move |c: &mut $Conn| {
                    let update = update.clone();
                    Box::pin(async move { $ops::update_user(c, &update).await }) as BoxFuture<'_, _>
                })
                .await
            }
            async fn ensure_node(&self, service: i32, url: &str, capacity: i32) -> TsResult<()> {
                let url = url.to_owned();
                self.unit(move |c: &mut $Conn| {
                    let url = url.clone();
                    Box::pin(
                        async move { Ok($ops::ensure_node(c, service, &url, capacity).await?) },
                    ) as BoxFuture<'_, _>
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
                self.unit(move |c: &mut $Conn| {
                    let url = url.clone();
                    Box::pin(async move {
                        Ok($ops::ensure_self_node(c, service, &url, capacity).await?)
                    }) as BoxFuture<'_, _>
                })
                .await
            }
            async fn retire_user(&self, service: i32, email: &str, now_ms: i64) -> TsResult<()> {
                let email = email.to_owned();
                self.unit(move |c: &mut $Conn| {
                    let email = email.clone();
                    Box::pin(async move {
                        $ops::retire_user(c, service, &email, now_ms).await?;
                        Ok(())
                    }) as BoxFuture<'_, _>
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
                self.unit(move |c: &mut $Conn| {
                    let email = email.clone();
                    Box::pin(async move {
                        $ops::raise_generation(c, service, &email, generation).await?;
                        Ok(())
                    }) as BoxFuture<'_, _>
                })
                .await
            }
            async fn admin(&self, op: AdminOp) -> TsResult<AdminOut> {
                self.unit(move |c: &mut $Conn| {
                    let op = op.clone();
                    Box::pin(async move { Ok($ops::admin::admin(c, &op).await?) })
                        as BoxFuture<'_, _>
                })
                .await
            }
            async fn check(&self) -> TsResult<()> {
                self.unit(|c: &mut $Conn| {
                    Box::pin(async move {
                        $ops::ping(c).await?;
                        Ok(())
                    }) as BoxFuture<'_, _>
                })
                .await
            }
            fn pool_state(&self) -> crate::db::PoolState {
                self.pool.state()
            }
        }
    };
}

mod mysql_ops {
    crate::tokenserver::db::ops::tokenserver_ops!(conn = diesel_async::AsyncMysqlConnection, run = diesel_async::RunQueryDsl, [async] [.await] [for_update] last_insert_id = "CAST(LAST_INSERT_ID() AS SIGNED)");
    crate::tokenserver::db::admin::tokenserver_admin_ops!(conn = diesel_async::AsyncMysqlConnection, run = diesel_async::RunQueryDsl, [async] [.await] reseed = []);
}

mod postgres_ops {
    crate::tokenserver::db::ops::tokenserver_ops!(conn = diesel_async::AsyncPgConnection, run = diesel_async::RunQueryDsl, [async] [.await] [for_update] last_insert_id = "lastval()");
    crate::tokenserver::db::admin::tokenserver_admin_ops!(conn = diesel_async::AsyncPgConnection, run = diesel_async::RunQueryDsl, [async] [.await] reseed = [
        "SELECT setval(pg_get_serial_sequence('services', 'id'), GREATEST((SELECT MAX(id) FROM services), 1))",
        "SELECT setval(pg_get_serial_sequence('nodes', 'id'), GREATEST((SELECT MAX(id) FROM nodes), 1))",
        "SELECT setval(pg_get_serial_sequence('users', 'uid'), GREATEST((SELECT MAX(uid) FROM users), 1))"
    ]);
}

pooled_tokenserver_db!(diesel_async::AsyncMysqlConnection, mysql_ops);
pooled_tokenserver_db!(diesel_async::AsyncPgConnection, postgres_ops);
