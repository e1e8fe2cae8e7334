//! Database failures are classified by what the engine says in codes, on the real engines:
//! each test provokes one kind of failure and checks the `DbFault` it maps to, and what a
//! client then sees (status, Retry-After, X-Weave-Backoff). The stalled database (Deadline) is
//! `tests/outage.rs`.
#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use diesel::connection::SimpleConnection;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use syncserver::db::fault::DbFault;
use syncserver::db::sql::fault_of;

backend_matrix!(not_spanner: "Spanner's faults are gRPC codes: the unit test in db::spanner maps each; tests/outage.rs loses a real emulator");

/// A direct connection to the test server's own database (MySQL or PostgreSQL).
enum Raw {
    Mysql(Box<diesel_async::AsyncMysqlConnection>),
    Pg(Box<diesel_async::AsyncPgConnection>),
}

impl Raw {
    async fn open(url: &str) -> Raw {
        if url.starts_with("mysql") {
            Raw::Mysql(Box::new(
                diesel_async::AsyncMysqlConnection::establish(url)
                    .await
                    .unwrap(),
            ))
        } else {
            Raw::Pg(Box::new(
                diesel_async::AsyncPgConnection::establish(url)
                    .await
                    .unwrap(),
            ))
        }
    }

    async fn exec(&mut self, sql: &str) -> diesel::QueryResult<()> {
        match self {
            Raw::Mysql(c) => c.batch_execute(sql).await,
            Raw::Pg(c) => c.batch_execute(sql).await,
        }
    }
}

fn engine() -> &'static str {
    common::backends::current().unwrap_or("sqlite")
}

/// A table of our own in a scratch database, with two rows.
async fn scratch_table(db: &common::backends::ScratchDatabase) -> (Raw, Raw) {
    let mut a = Raw::open(&db.url).await;
    a.exec("CREATE TABLE faults (k INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    a.exec("INSERT INTO faults (k, v) VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
    (a, Raw::open(&db.url).await)
}

/// Spanner's AlreadyExists is the unit test in `db::spanner`.
#[tokio::test]
async fn a_violated_constraint_is_integrity_a_reported_500_not_spanner() {
    let e = match engine() {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let mut c = <diesel::SqliteConnection as diesel::Connection>::establish(
                &dir.path().join("f.db").to_string_lossy(),
            )
            .unwrap();
            c.batch_execute(
                "CREATE TABLE faults (k INT PRIMARY KEY); INSERT INTO faults VALUES (1)",
            )
            .unwrap();
            c.batch_execute("INSERT INTO faults VALUES (1)")
                .unwrap_err()
        }
        _ => {
            let db = common::backends::ScratchDatabase::create().unwrap();
            let (mut a, _) = scratch_table(&db).await;
            a.exec("INSERT INTO faults (k, v) VALUES (1, 1)")
                .await
                .unwrap_err()
        }
    };
    assert_eq!(fault_of(&e), DbFault::Integrity, "{e}");
    let api = syncserver::error::ApiError::from(e);
    assert_eq!(api.status(), 500);
    assert!(api.is_reportable());
    assert_eq!(api.retry_after(), None);
}

/// Two transactions that each hold the row the other wants: the engine picks a victim, whose
/// error is a retryable conflict. (SQLite has one writer; Spanner's ABORTED is the unit test
/// in `db::spanner`.)
#[tokio::test]
#[ignore = "not on SQLite: row locks of a database server (on_mysql, on_postgres)"]
async fn a_deadlock_is_a_retryable_conflict_pooled_engines_only() {
    let db = common::backends::ScratchDatabase::create().unwrap();
    let (mut a, mut b) = scratch_table(&db).await;
    a.exec("BEGIN; UPDATE faults SET v = 1 WHERE k = 1")
        .await
        .unwrap();
    b.exec("BEGIN; UPDATE faults SET v = 2 WHERE k = 2")
        .await
        .unwrap();
    let first = tokio::spawn(async move {
        let r = a.exec("UPDATE faults SET v = 1 WHERE k = 2").await;
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = b.exec("UPDATE faults SET v = 2 WHERE k = 1").await;
    let (mut a, first) = first.await.unwrap();
    // Both transactions end before the scratch database is dropped (an open one would hold
    // MySQL's metadata lock on the table, and the drop would wait for it).
    let _ = a.exec("ROLLBACK").await;
    let _ = b.exec("ROLLBACK").await;
    let errors: Vec<_> = [first, second]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert_eq!(errors.len(), 1, "one victim: {errors:?}");
    assert_eq!(fault_of(&errors[0]), DbFault::Conflict, "{}", errors[0]);
    let api = syncserver::error::ApiError::from(errors.into_iter().next().unwrap());
    assert_eq!((api.status(), api.retry_after()), (503, Some(10)));
    assert!(syncserver::db::retry::RetryPolicy::retryable(&api.kind));
}

/// A lock not granted in time: PostgreSQL's lock_timeout (55P03). MySQL's lock wait timeout
/// has no SQLSTATE of its own, so the server sets it past the request deadline instead;
/// SQLite's is the HTTP test below.
#[tokio::test]
#[ignore = "not on SQLite: PostgreSQL's lock_timeout (on_postgres)"]
async fn a_lock_timeout_is_busy_postgres_only() {
    let db = common::backends::ScratchDatabase::create().unwrap();
    let (mut a, mut b) = scratch_table(&db).await;
    a.exec("BEGIN; UPDATE faults SET v = 1 WHERE k = 1")
        .await
        .unwrap();
    let e = b
        .exec("SET lock_timeout = '200ms'; UPDATE faults SET v = 2 WHERE k = 1")
        .await
        .unwrap_err();
    assert_eq!(fault_of(&e), DbFault::Busy, "{e}");
    let _ = a.exec("ROLLBACK").await;
}

/// Another process holds SQLite's write lock past the busy timeout: the write is 503 with
/// Retry-After (not a 500, not a backoff), and goes through once the lock is gone.
#[tokio::test]
async fn locked_by_another_process_is_busy_503_sqlite_only() {
    let server = TestServer::start_with(|s| {
        s.syncstorage.database_pool_connection_timeout = 1;
    })
    .await;
    let user = server.user(1);
    assert_put_ok(
        &user
            .put("/storage/bookmarks/a", serde_json::json!({"payload": "x"}))
            .await,
    );
    let path = server.db_path();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut c =
            <diesel::SqliteConnection as diesel::Connection>::establish(&path.to_string_lossy())
                .unwrap();
        c.batch_execute("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        c.batch_execute("ROLLBACK").unwrap();
    });
    locked_rx.recv().unwrap();
    let r = user
        .put("/storage/bookmarks/b", serde_json::json!({"payload": "y"}))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("10"));
    assert_eq!(r.header("x-weave-backoff"), None);
    // Reads are not blocked by a writer.
    assert_eq!(user.get("/storage/bookmarks/a").await.status, 200);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_put_ok(
        &user
            .put("/storage/bookmarks/b", serde_json::json!({"payload": "y"}))
            .await,
    );
}

/// A database server that cannot be reached: 503 with Retry-After and X-Weave-Backoff from the
/// storage API (nothing listens on the port). Spanner connects when the server starts, so an
/// unreachable Spanner is a start-up error; a Spanner lost later is `tests/outage.rs`.
#[tokio::test]
#[ignore = "not on SQLite: a database server (on_mysql, on_postgres)"]
async fn an_unreachable_database_is_unavailable_pooled_engines_only() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = match engine() {
        "mysql" => format!("mysql://root@127.0.0.1:{port}/nowhere"),
        _ => format!("postgres://postgres@127.0.0.1:{port}/nowhere"),
    };
    let pool = syncserver::db::sql::PoolSettings {
        connection_timeout_secs: 1,
        run_migrations: false,
        ..Default::default()
    };
    let config = syncserver::db::StorageConfig {
        limits: syncserver::protocol::Limits::default(),
        enable_quota: false,
        enforce_quota: false,
    };
    let db = syncserver::db::open_storage(&url, &pool, None, config)
        .await
        .expect("opening does not connect");
    let e = db
        .delete_storage(
            &syncserver::db::UserId {
                fxa_uid: "0".repeat(32),
                fxa_kid: "0000000001234-qqo".into(),
                ..syncserver::db::UserId::from_uid(1)
            },
            syncserver::protocol::Precondition::None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.kind,
            syncserver::error::ErrorKind::Database(DbFault::Unavailable | DbFault::Deadline)
        ),
        "{e:?}"
    );
    assert_eq!(
        (e.status(), e.retry_after(), e.backoff()),
        (503, Some(10), Some(10))
    );
    assert!(!e.is_reportable());
}
