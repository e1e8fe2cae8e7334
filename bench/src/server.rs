//! Starting a server binary on a scratch database, and removing both afterwards.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Mysql,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Mysql => "mysql",
            Backend::Postgres => "postgres",
        }
    }

    /// The database server's process names, for its CPU figure.
    pub fn db_processes(self) -> Vec<String> {
        match self {
            Backend::Sqlite => Vec::new(),
            Backend::Mysql => vec!["mariadbd".into(), "mysqld".into()],
            Backend::Postgres => vec!["postgres".into()],
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub bin: PathBuf,
    pub backend: Backend,
    /// Admin URLs (no database) of the MySQL and PostgreSQL servers.
    pub mysql_url: String,
    pub postgres_url: String,
    /// Extra `KEY=VALUE` environment for the server.
    pub env: Vec<(String, String)>,
}

/// A running server with its scratch database.
pub struct Running {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub master_secret: String,
    /// Holds the data dir (SQLite files, log) until the server is gone.
    dir: tempfile::TempDir,
    scratch_db: Option<ScratchDb>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ScratchDb {
    Mysql { admin: String, name: String },
    Postgres { admin: String, name: String },
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn db_url(admin: &str, name: &str) -> String {
    format!("{}/{name}", admin.trim_end_matches('/'))
}

async fn mysql_exec(admin: &str, sql: &str) -> Result<(), String> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::Opts::from_url(admin).map_err(|e| format!("{admin}: {e}"))?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| format!("MySQL at {admin}: {e}"))?;
    conn.query_drop(sql)
        .await
        .map_err(|e| format!("MySQL {sql}: {e}"))?;
    conn.disconnect().await.map_err(|e| e.to_string())
}

async fn postgres_exec(admin: &str, sql: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
    let task = tokio::spawn(connection);
    let result = client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("PostgreSQL {sql}: {e}"));
    drop(client);
    let _ = task.await;
    result
}

/// The database server's version and the settings that matter most for the figures, so a
/// report says what it ran on.
async fn mysql_settings(admin: &str) -> Result<Vec<(String, String)>, String> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::Opts::from_url(admin).map_err(|e| e.to_string())?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    let names = [
        "version",
        "innodb_buffer_pool_size",
        "log_bin",
        "innodb_flush_log_at_trx_commit",
        "sync_binlog",
    ];
    let mut out = Vec::new();
    for name in names {
        // Text protocol: every value arrives as text; a missing variable is an error, skipped.
        let v: Option<Option<String>> = conn
            .query_first(format!("SELECT CAST(@@{name} AS CHAR)"))
            .await
            .unwrap_or(None);
        if let Some(Some(v)) = v {
            let v = match v.parse::<u64>() {
                Ok(bytes) if name == "innodb_buffer_pool_size" => format!("{} MiB", bytes >> 20),
                _ => v,
            };
            out.push((name.to_owned(), v));
        }
    }
    conn.disconnect().await.map_err(|e| e.to_string())?;
    Ok(out)
}

async fn postgres_settings(admin: &str) -> Result<Vec<(String, String)>, String> {
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(connection);
    let mut out = Vec::new();
    for name in [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "max_connections",
    ] {
        if let Ok(row) = client
            .query_one(&format!("SELECT current_setting('{name}')"), &[])
            .await
            && let Ok(v) = row.try_get::<_, String>(0)
        {
            out.push((name.to_owned(), v));
        }
    }
    drop(client);
    let _ = task.await;
    Ok(out)
}

/// Servers and scratch databases alive now, for `cleanup_all` (an interrupted bench).
static LIVE_PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
static LIVE_DBS: std::sync::Mutex<Vec<ScratchDb>> = std::sync::Mutex::new(Vec::new());

fn live_dbs() -> std::sync::MutexGuard<'static, Vec<ScratchDb>> {
    LIVE_DBS.lock().unwrap_or_else(|e| e.into_inner())
}

fn live_pids() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE_PIDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the servers this process started and drops their scratch databases (on Ctrl-C).
pub async fn cleanup_all() {
    let pids: Vec<u32> = live_pids().drain(..).collect();
    for pid in pids {
        // SAFETY: kill(2) on a child this process started; no memory is involved.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dbs: Vec<ScratchDb> = live_dbs().clone();
    for db in dbs {
        if let Err(e) = db.drop_db().await {
            eprintln!("bench: {e}");
        }
    }
}

impl ScratchDb {
    async fn drop_db(&self) -> Result<(), String> {
        let result = self.drop_db_inner().await;
        if result.is_ok() {
            live_dbs().retain(|d| d != self);
        }
        result
    }

    async fn drop_db_inner(&self) -> Result<(), String> {
        match self {
            ScratchDb::Mysql { admin, name } => {
                mysql_exec(admin, &format!("DROP DATABASE IF EXISTS `{name}`")).await
            }
            ScratchDb::Postgres { admin, name } => {
                postgres_exec(
                    admin,
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                )
                .await
            }
        }
    }
}

/// The MySQL server's statement counters (SHOW GLOBAL STATUS), summed over every client: the
/// bench takes them at the start and the end of the measured window, when only the server under
/// test talks to the database. Round trips are about Questions + Com_stmt_prepare (a prepared
/// statement not in the connection's cache costs a prepare before its execute).
const MYSQL_COUNTERS: [&str; 9] = [
    "Questions",
    "Com_stmt_prepare",
    "Com_begin",
    "Com_commit",
    "Com_select",
    "Com_insert",
    "Com_update",
    "Com_delete",
    "Innodb_rows_read",
];

async fn mysql_counters(admin: &str) -> Result<Vec<(String, f64)>, String> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::Opts::from_url(admin).map_err(|e| e.to_string())?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    let rows: Vec<(String, String)> = conn
        .query("SHOW GLOBAL STATUS")
        .await
        .map_err(|e| e.to_string())?;
    conn.disconnect().await.map_err(|e| e.to_string())?;
    Ok(MYSQL_COUNTERS
        .iter()
        .filter_map(|name| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .map(|v| ((*name).to_owned(), v))
        })
        .collect())
}

/// PostgreSQL's per-database counters, summed over the databases (the scratch one is the only
/// busy one). Every statement outside a transaction is a transaction of its own here, so
/// xact_commit counts transactions plus such statements. PostgreSQL publishes a backend's
/// counters about once a second: the figures are approximate.
async fn postgres_counters(admin: &str) -> Result<Vec<(String, f64)>, String> {
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT CAST(SUM(xact_commit) AS FLOAT8), CAST(SUM(xact_rollback) AS FLOAT8), \
             CAST(SUM(tup_returned) AS FLOAT8), CAST(SUM(tup_fetched) AS FLOAT8) \
             FROM pg_stat_database",
            &[],
        )
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = task.await;
    let row = row?;
    let names = [
        "xact_commit",
        "xact_rollback",
        "tup_returned",
        "tup_fetched",
    ];
    Ok(names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            row.try_get::<_, Option<f64>>(i)
                .ok()
                .flatten()
                .map(|v| ((*n).to_owned(), v))
        })
        .collect())
}

impl ServerSpec {
    /// The database server's version and main settings (empty for SQLite or when unreachable).
    pub async fn database_settings(&self) -> Vec<(String, String)> {
        let r = match self.backend {
            Backend::Sqlite => return Vec::new(),
            Backend::Mysql => mysql_settings(&self.mysql_url).await,
            Backend::Postgres => postgres_settings(&self.postgres_url).await,
        };
        r.unwrap_or_default()
    }

    /// The database server's cumulative statement counters (empty for SQLite or when
    /// unreachable); the bench reports their growth per request in the measured window.
    pub async fn database_counters(&self) -> Vec<(String, f64)> {
        let r = match self.backend {
            Backend::Sqlite => return Vec::new(),
            Backend::Mysql => mysql_counters(&self.mysql_url).await,
            Backend::Postgres => postgres_counters(&self.postgres_url).await,
        };
        r.unwrap_or_default()
    }

    /// Creates a scratch database, starts the server on a free port and waits for
    /// `__heartbeat__`.
    pub async fn start(&self, http: &reqwest::Client) -> Result<Running, String> {
        if !self.bin.exists() {
            return Err(format!("server binary {} not found", self.bin.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("syncserver-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let name = format!("bench_{:016x}", rand::thread_rng().r#gen::<u64>());
        let (database_url, scratch_db) = match self.backend {
            Backend::Sqlite => (
                format!("sqlite:{}", dir.path().join("syncserver.db").display()),
                None,
            ),
            Backend::Mysql => {
                mysql_exec(&self.mysql_url, &format!("CREATE DATABASE `{name}`")).await?;
                (
                    db_url(&self.mysql_url, &name),
                    Some(ScratchDb::Mysql {
                        admin: self.mysql_url.clone(),
                        name: name.clone(),
                    }),
                )
            }
            Backend::Postgres => {
                postgres_exec(&self.postgres_url, &format!("CREATE DATABASE \"{name}\"")).await?;
                (
                    db_url(&self.postgres_url, &name),
                    Some(ScratchDb::Postgres {
                        admin: self.postgres_url.clone(),
                        name: name.clone(),
                    }),
                )
            }
        };
        if let Some(db) = &scratch_db {
            live_dbs().push(db.clone());
        }
        match self.spawn(http, dir, database_url, scratch_db).await {
            Ok(r) => Ok(r),
            Err((e, scratch)) => {
                if let Some(db) = scratch {
                    let _ = db.drop_db().await;
                }
                Err(e)
            }
        }
    }

    async fn spawn(
        &self,
        http: &reqwest::Client,
        dir: tempfile::TempDir,
        database_url: String,
        scratch_db: Option<ScratchDb>,
    ) -> Result<Running, (String, Option<ScratchDb>)> {
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => return Err((e, scratch_db)),
        };
        let mut secret = [0u8; 32];
        rand::thread_rng().fill(&mut secret[..]);
        let master_secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let log_path = dir.path().join("server.log");
        let log = match std::fs::File::create(&log_path) {
            Ok(f) => f,
            Err(e) => return Err((format!("{}: {e}", log_path.display()), scratch_db)),
        };
        let log2 = match log.try_clone() {
            Ok(f) => f,
            Err(e) => return Err((e.to_string(), scratch_db)),
        };
        let mut cmd = Command::new(&self.bin);
        // Only the settings given here (and --server-env): this server refuses unknown SYNC_*
        // variables, such as a test run's.
        for (key, _) in std::env::vars() {
            if key.starts_with("SYNC_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(dir.path())
            .env("SYNC_HOST", "127.0.0.1")
            .env("SYNC_PORT", port.to_string())
            .env("SYNC_MASTER_SECRET", &master_secret)
            .env("SYNC_DATA_DIR", dir.path().join("data"))
            .env("SYNC_SYNCSTORAGE__DATABASE_URL", &database_url)
            .env("SYNC_HUMAN_LOGS", "false")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Err((
                    format!("cannot start {}: {e}", self.bin.display()),
                    scratch_db,
                ));
            }
        };
        let pid = child.id().unwrap_or(0);
        live_pids().push(pid);
        let url = format!("http://127.0.0.1:{port}");
        let mut running = Running {
            child,
            pid,
            url: url.clone(),
            master_secret,
            dir,
            scratch_db,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                let scratch = running.scratch_db.take();
                return Err((
                    format!("the server exited ({status}) before answering; its log:\n{tail}"),
                    scratch,
                ));
            }
            let up = http
                .get(format!("{url}/__heartbeat__"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return Ok(running);
            }
            if Instant::now() > deadline {
                let scratch = running.scratch_db.take();
                running.kill().await;
                return Err((
                    "the server did not answer __heartbeat__ in 120 s".into(),
                    scratch,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Running {
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// How the server ended, if it has.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    async fn kill(&mut self) {
        let pid = self.pid;
        live_pids().retain(|p| *p != pid);
        if self.pid > 0 {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Stops the server and drops its scratch database.
    pub async fn stop(mut self) -> Result<(), String> {
        self.kill().await;
        if let Some(db) = self.scratch_db.take() {
            db.drop_db().await?;
        }
        Ok(())
    }
}
