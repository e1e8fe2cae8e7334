//! The embedded SQLite backend: one file, WAL, `BEGIN IMMEDIATE` for writes, a busy timeout,
//! and an in-process writer queue so concurrent requests wait their turn instead of ever
//! seeing "database is locked".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::fault::DbFault;
use super::sql::{PoolSettings, SqlPurge, SqlTx};
use super::tx::Backend;
use super::units::{self, ReadOp, ReadOut, WriteOp, WriteOut};
use super::{PoolState, PurgeStats, StorageConfig};
use crate::error::{ApiError, ApiResult};
use crate::protocol::SyncTimestamp;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Where the database file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteTarget {
    pub path: PathBuf,
}

impl SqliteTarget {
    /// `sqlite:PATH`, `sqlite://PATH` or `sqlite:///ABS`; anything else is not SQLite (a URL
    /// without a known scheme is refused, not taken for a file name).
    pub fn from_url(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest).to_owned();
        (!path.is_empty()).then(|| SqliteTarget {
            path: PathBuf::from(path),
        })
    }
}

/// Every connection's settings; `busy_timeout_ms` is how long a writer waits on another
/// process's write lock before the request gets 503 (`DbFault::Busy`).
#[derive(Debug)]
struct Pragmas {
    busy_timeout_ms: u64,
}

impl CustomizeConnection<Conn, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut Conn) -> Result<(), diesel::r2d2::Error> {
        // FULL: an acknowledged write survives power loss, not only a process crash.
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            self.busy_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub struct SqliteStorage {
    pool: Pool<ConnectionManager<Conn>>,
    /// One writer at a time inside this process; other processes are handled by busy_timeout.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Writers queued on `write_lock` (the pool gauge `waiting`).
    writers_waiting: Arc<std::sync::atomic::AtomicU32>,
    config: Arc<StorageConfig>,
    max_size: u32,
    /// `database_request_timeout`: a unit of work (queueing included) answered 503 after it.
    deadline: Duration,
}

/// A pool of connections to the file with our pragmas; `setting` names the URL in errors.
pub(crate) fn open_pool(
    path: &Path,
    settings: &PoolSettings,
    setting: &str,
) -> Result<Pool<ConnectionManager<Conn>>, String> {
    let manager = ConnectionManager::<Conn>::new(path.to_string_lossy());
    Pool::builder()
        .max_size(settings.max_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(u64::from(
            settings.connection_timeout_secs.max(1),
        )))
        .max_lifetime(
            settings
                .connection_lifespan_secs
                .map(|s| Duration::from_secs(s.into())),
        )
        .idle_timeout(
            settings
                .connection_max_idle_secs
                .map(|s| Duration::from_secs(s.into())),
        )
        // Waiting for the file's write lock is waiting for the database, like waiting for a
        // pooled connection, and never longer than the request's deadline.
        .connection_customizer(Box::new(Pragmas {
            busy_timeout_ms: 1000
                * u64::from(
                    settings
                        .connection_timeout_secs
                        .min(settings.request_timeout_secs)
                        .max(1),
                ),
        }))
        .build(manager)
        .map_err(|e| format!("{setting}: cannot open {}: {e}", path.display()))
}

/// `BEGIN IMMEDIATE`, `f`, commit (or rollback). That BEGIN is SQLite's only lock wait (this
/// process's writers queue before it; `busy_timeout` covers other processes). When it fails,
/// SQLite's extended result code says why: BUSY or LOCKED is `DbFault::Busy` (503); anything
/// else keeps its kind.
pub(crate) fn write_transaction<T, E>(
    conn: &mut Conn,
    f: impl FnOnce(&mut Conn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error> + From<ApiError>,
{
    let mut began = false;
    let result = conn.immediate_transaction(|conn| {
        began = true;
        f(conn)
    });
    if result.is_ok() || began {
        return result;
    }
    // SAFETY: reads this connection's last result code (set by the failed BEGIN; nothing ran
    // since); the handle is neither kept nor changed.
    let code = unsafe {
        conn.with_raw_connection(|raw| libsqlite3_sys::sqlite3_extended_errcode(raw.cast()))
    };
    match code & 0xff {
        libsqlite3_sys::SQLITE_BUSY | libsqlite3_sys::SQLITE_LOCKED => Err(DbFault::Busy
            .error("database file locked by another process")
            .into()),
        _ => result,
    }
}

/// Runs the embedded migrations; idempotent.
pub fn run_migrations(conn: &mut Conn) -> Result<(), String> {
    conn.run_pending_migrations(MIGRATIONS)
        .map(|_| ())
        .map_err(|e| format!("migrations failed: {e}"))
}

impl SqliteStorage {
    pub fn open(
        target: SqliteTarget,
        settings: &PoolSettings,
        config: StorageConfig,
    ) -> Result<Self, String> {
        let pool = open_pool(&target.path, settings, "syncstorage.database_url")?;
        if settings.run_migrations {
            let mut conn = pool
                .get()
                .map_err(|e| format!("cannot connect to {}: {e}", target.path.display()))?;
            run_migrations(&mut conn)?;
        }
        Ok(SqliteStorage {
            pool,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            writers_waiting: Arc::default(),
            config: Arc::new(config),
            max_size: settings.max_size.max(1),
            deadline: super::pooled::deadline(settings),
        })
    }

    /// On a blocking thread; the client gets 503 after the deadline while the work itself
    /// finishes (commit or rollback) on its thread.
    async fn blocking<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn, &StorageConfig) -> ApiResult<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let config = self.config.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn, &config)
        });
        match tokio::time::timeout(self.deadline, task).await {
            Ok(joined) => {
                joined.map_err(|e| ApiError::internal(format!("database task failed: {e}")))?
            }
            Err(_) => Err(super::pooled::too_slow()),
        }
    }

    /// A write's turn: writers of this process queue here (never in SQLite's busy handler);
    /// the wait counts toward the deadline.
    async fn write_turn(&self) -> ApiResult<tokio::sync::OwnedMutexGuard<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.writers_waiting.fetch_add(1, Relaxed);
        let turn = tokio::time::timeout(self.deadline, self.write_lock.clone().lock_owned()).await;
        self.writers_waiting.fetch_sub(1, Relaxed);
        turn.map_err(|_| super::pooled::too_slow())
    }
}

/// The units of work run on a blocking thread: SQLite's statements are synchronous, so the
/// generic (async) unit is driven there with `block_on`, and never waits on I/O of its own.
fn block_on<T>(unit: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(unit)
}

#[async_trait]
impl Backend for SqliteStorage {
    /// One read transaction, always: a WAL snapshot that never waits on writers. (Its BEGIN
    /// and COMMIT cost no round trip here, so going without, as the server engines do for
    /// most reads, saves nothing; measured, it lost a little to the reads run twice.)
    async fn read(&self, op: ReadOp) -> ApiResult<ReadOut> {
        self.blocking(move |conn, config| {
            conn.transaction(|conn| block_on(units::read(&mut SqlTx(conn), config, &op, true)))
        })
        .await
    }

    /// Queue behind this process's writers, then `BEGIN IMMEDIATE`.
    async fn write(&self, op: WriteOp) -> ApiResult<WriteOut> {
        let turn = self.write_turn().await?;
        self.blocking(move |conn, config| {
            // Held until the transaction ends, even if the request is dropped meanwhile.
            let _turn = turn;
            write_transaction(conn, |conn| {
                block_on(units::write(&mut SqlTx(conn), config, &op))
            })
        })
        .await
    }

    /// A short write like any other: queued behind this process's writers, within the
    /// deadline.
    async fn purge_expired_chunk(
        &self,
        now: SyncTimestamp,
        max_rows: u32,
    ) -> ApiResult<PurgeStats> {
        let turn = self.write_turn().await?;
        self.blocking(move |conn, _| {
            let _turn = turn;
            write_transaction(conn, |conn| {
                block_on(SqlTx(conn).purge_expired_chunk(now, i64::from(max_rows)))
            })
        })
        .await
    }

    fn pool_state(&self) -> PoolState {
        let state = self.pool.state();
        PoolState {
            active: state.connections - state.idle_connections,
            idle: state.idle_connections,
            max_size: self.max_size,
            waiting: self
                .writers_waiting
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A connection to the database file.
pub type Conn = diesel::SqliteConnection;

crate::db::sql::statements::sql_statements!(
    conn = diesel::SqliteConnection,
    db = diesel::sqlite::Sqlite,
    schema = crate::db::sql::schema,
    // Payload bytes (written by us on every insert).
    bytes_sum = "SUM(payload_size)",
    lock = file,
    run = diesel::RunQueryDsl,
    []
);
crate::db::sql::mysql_layout::mysql_layout!(
    conn = diesel::SqliteConnection,
    db = diesel::sqlite::Sqlite,
    staged_bytes_sum = "SUM(payload_size)",
    upsert = per_row,
    run = diesel::RunQueryDsl,
    []
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = |u: &str| SqliteTarget::from_url(u).map(|t| t.path);
        assert_eq!(p("sqlite:data/s.db"), Some(PathBuf::from("data/s.db")));
        assert_eq!(p("sqlite:///tmp/s.db"), Some(PathBuf::from("/tmp/s.db")));
        assert_eq!(p("sqlite://rel.db"), Some(PathBuf::from("rel.db")));
        assert_eq!(p("/var/lib/sync.db"), None);
        assert_eq!(p("mysql//root@host/x"), None);
        assert_eq!(p("mysql://root@localhost/db"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("sqlite:"), None);
    }
}
