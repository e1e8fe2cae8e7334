//! `syncserver copy` between every pair of SQL engines and `syncserver import-legacy` from a
//! Python syncserver database built here from its schema (LEGACY.md), both run as the real
//! binary; what they wrote is read back from the real databases, row by row.
#[macro_use]
mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::backends::{ScratchDatabase, other_engine_available};
use common::db::*;
use common::*;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use serde_json::{Value, json};

backend_matrix!(not_spanner: "copy and import-legacy read and write the SQL engines only");

/// Users of the populated server.
const UIDS: std::ops::RangeInclusive<u64> = 101..=106;

fn engine_of(url: &str) -> &'static str {
    if url.starts_with("mysql") {
        "mysql"
    } else if url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
}

/// The command with a storage and tokenserver database.
fn command(data_dir: &std::path::Path, storage: &str, tokenserver: &str) -> Command {
    let mut cmd = common::syncserver_command();
    cmd.env("SYNC_DATA_DIR", data_dir)
        .env("SYNC_SYNCSTORAGE__DATABASE_URL", storage)
        .env("SYNC_TOKENSERVER__DATABASE_URL", tokenserver)
        .env(
            "SYNC_TOKENSERVER__FXA_EMAIL_DOMAIN",
            "api.accounts.firefox.com",
        )
        .env("SYNC_MASTER_SECRET", MASTER_SECRET);
    cmd
}

fn succeed(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn user_rows(data_dir: &std::path::Path, storage: &str, tokenserver: &str) -> Value {
    let mut cmd = command(data_dir, storage, tokenserver);
    cmd.args(["user", "list", "--json"]);
    serde_json::from_slice(&succeed(cmd).stdout).unwrap()
}

#[derive(QueryableByName)]
struct RecordRow {
    #[diesel(sql_type = BigInt)]
    uid: i64,
    #[diesel(sql_type = Text)]
    collection: String,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Nullable<Integer>)]
    sortindex: Option<i32>,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = BigInt)]
    modified: i64,
    #[diesel(sql_type = BigInt)]
    expiry: i64,
}

#[derive(QueryableByName)]
struct CollectionRow {
    #[diesel(sql_type = BigInt)]
    uid: i64,
    #[diesel(sql_type = Text)]
    collection: String,
    #[diesel(sql_type = BigInt)]
    modified: i64,
}

/// Every record row (expired ones too) and every collection timestamp (the tombstone as `#0`,
/// placeholders left out) of a storage database, by collection name, sorted: what any client
/// of it can read, whatever the engine.
fn dump(url: &str) -> (Vec<String>, Vec<String>) {
    let mut conn = connect(url);
    let (records, collections) = if engine_of(url) == "postgres" {
        (
            "SELECT b.user_id AS uid, c.name AS collection, b.bso_id AS id, b.sortindex, b.payload, \
             CAST(EXTRACT(EPOCH FROM b.modified) * 1000 AS BIGINT) AS modified, \
             CAST(EXTRACT(EPOCH FROM b.expiry) * 1000 AS BIGINT) AS expiry \
             FROM bsos b JOIN collections c ON c.collection_id = b.collection_id",
            "SELECT u.user_id AS uid, COALESCE(c.name, '#' || CAST(u.collection_id AS TEXT)) AS collection, \
             CAST(EXTRACT(EPOCH FROM u.modified) * 1000 AS BIGINT) AS modified \
             FROM user_collections u LEFT JOIN collections c ON c.collection_id = u.collection_id \
             WHERE u.modified > TIMESTAMP WITH TIME ZONE '1970-01-01 00:00:00+00'",
        )
    } else {
        (
            "SELECT b.userid AS uid, c.name AS collection, b.id, b.sortindex, b.payload, \
             b.modified, b.ttl AS expiry FROM bso b JOIN collections c ON c.id = b.collection",
            "SELECT u.userid AS uid, COALESCE(c.name, CONCAT('#', u.collection)) AS collection, \
             u.last_modified AS modified FROM user_collections u \
             LEFT JOIN collections c ON c.id = u.collection WHERE u.last_modified > 0",
        )
    };
    let collections = if engine_of(url) == "sqlite" {
        collections.replace("CONCAT('#', u.collection)", "'#' || u.collection")
    } else {
        collections.to_owned()
    };
    let mut r: Vec<String> = sql_query(records)
        .load::<RecordRow>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{:?}|{}|{}|{}",
                r.uid, r.collection, r.id, r.sortindex, r.payload, r.modified, r.expiry
            )
        })
        .collect();
    let mut c: Vec<String> = sql_query(collections)
        .load::<CollectionRow>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|c| format!("{}|{}|{}", c.uid, c.collection, c.modified))
        .collect();
    r.sort();
    c.sort();
    (r, c)
}

/// A server with thousands of records: per user 300 bookmarks (some payloads not ASCII, some
/// sortindexes), 100 history records of which 10 have expired, custom collections, a deleted
/// collection (a tombstone) for half of them, and an uncommitted batch.
async fn populate(server: &TestServer) {
    for uid in UIDS {
        let user = server.user(uid);
        for chunk in 0..3 {
            let records: Vec<Value> = (0..100)
                .map(|i| {
                    let n = chunk * 100 + i;
                    let mut payload = "x".repeat(100 + n % 50);
                    if n % 7 == 0 {
                        payload.push_str("été");
                    }
                    if n % 2 == 0 {
                        json!({"id": format!("b{n:04}"), "payload": payload, "sortindex": n})
                    } else {
                        json!({"id": format!("b{n:04}"), "payload": payload})
                    }
                })
                .collect();
            let r = user.post("/storage/bookmarks", json!(records)).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let history: Vec<Value> = (0..100)
            .map(|i| json!({"id": format!("h{i}"), "payload": "visit", "ttl": if i < 10 { 1 } else { 3600 }}))
            .collect();
        assert_eq!(
            user.post("/storage/history", json!(history)).await.status,
            200
        );
        let custom: Vec<Value> = (0..20)
            .map(|i| json!({"id": format!("c{i}"), "payload": "custom"}))
            .collect();
        let name = format!("/storage/custom-{}", uid % 2);
        assert_eq!(user.post(&name, json!(custom)).await.status, 200);
        assert_eq!(
            user.put("/storage/meta/global", json!({"payload": "m"}))
                .await
                .status,
            200
        );
        if uid % 2 == 0 {
            assert_eq!(
                user.put("/storage/tabs/t", json!({"payload": "t"}))
                    .await
                    .status,
                200
            );
            assert_eq!(user.delete("/storage/tabs").await.status, 200);
        }
        let r = user
            .post(
                "/storage/forms?batch=true",
                json!([{"id": "f1", "payload": "staged"}]),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Ten history records of each user expire (their rows stay until purged).
    sleep_ms(1100).await;
}

/// The source's tokenserver rows: a node and a user row per test user (one replaced row too).
fn token_rows(server: &TestServer) {
    let mut cmd = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    cmd.args(["node", "add", "https://sync.example.com"]);
    succeed(cmd);
    let mut conn = ts_db(server);
    for uid in UIDS {
        sql_query(
            "INSERT INTO users (uid, service, email, generation, client_state, created_at, \
             replaced_at, nodeid, keys_changed_at) \
             VALUES (?, 1, ?, 1234, 'aaaa', 1000, NULL, 1, 1234)",
        )
        .bind(uid as i64)
        .bind(format!("{uid:032x}@api.accounts.firefox.com"))
        .execute(&mut conn)
        .unwrap();
    }
    sql_query(
        "INSERT INTO users (uid, service, email, generation, client_state, created_at, \
         replaced_at, nodeid, keys_changed_at) VALUES (100, 1, ?, 1000, 'bbbb', 500, 1000, 1, NULL)",
    )
    .bind(format!("{:032x}@api.accounts.firefox.com", 101))
    .execute(&mut conn)
    .unwrap();
}

/// A target database on `engine` (dropped with the handle), and its tokenserver URL.
fn target(
    engine: &str,
    dir: &std::path::Path,
    tag: &str,
) -> (String, String, Option<ScratchDatabase>) {
    if engine == "sqlite" {
        let d = dir.join(format!("copy-{tag}"));
        return (
            format!("sqlite:{}/syncserver.db", d.display()),
            format!("sqlite:{}/tokenserver.db", d.display()),
            None,
        );
    }
    let name = format!("sync_copy_{}_{tag}", std::process::id());
    let db = ScratchDatabase::create_named(engine, name);
    (db.url.clone(), db.url.clone(), Some(db))
}

#[tokio::test]
async fn copy_to_every_sql_engine_keeps_every_record_and_timestamp() {
    let server = TestServer::start().await;
    populate(&server).await;
    token_rows(&server);
    let source = dump(&server.database_url);
    assert!(source.0.len() > 2500, "{} records", source.0.len());
    assert!(
        source.1.iter().any(|c| c.contains("|#0|")),
        "a tombstone: {:?}",
        source.1
    );
    let source_users = user_rows(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    assert_eq!(source_users.as_array().unwrap().len(), 7);

    let from = engine_of(&server.database_url);
    let scratch = tempfile::tempdir().unwrap();
    let mut copied_to = vec![];
    for to in ["sqlite", "mysql", "postgres"] {
        if !other_engine_available(to, &format!("the copy {from} -> {to}")) {
            continue;
        }
        let (url, ts_url, _db) = target(to, scratch.path(), &format!("{from}_{to}"));
        let mut cmd = command(
            server.dir.path(),
            &server.database_url,
            &server.tokenserver_database_url,
        );
        cmd.args(["copy", "--from", &server.database_url, "--to", &url]);
        if to == "sqlite" {
            cmd.args(["--tokenserver-to", &ts_url]);
        }
        let out = succeed(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("6 users (6 copied, 0 already there)"),
            "{from} -> {to}: {stderr}"
        );
        assert!(stderr.contains("verified"), "{stderr}");
        assert!(stderr.contains("tokenserver: 8 rows copied"), "{stderr}");
        let copied = dump(&url);
        assert_eq!(copied.0, source.0, "{from} -> {to}: records differ");
        assert_eq!(
            copied.1, source.1,
            "{from} -> {to}: collection timestamps differ"
        );
        assert_eq!(
            user_rows(scratch.path(), &url, &ts_url),
            source_users,
            "{from} -> {to}"
        );

        // Run again: nothing to do, nothing changes.
        let mut again = command(
            server.dir.path(),
            &server.database_url,
            &server.tokenserver_database_url,
        );
        again.args([
            "copy",
            "--from",
            &server.database_url,
            "--to",
            &url,
            "--tokenserver-to",
            &ts_url,
        ]);
        let stderr = String::from_utf8_lossy(&succeed(again).stderr).into_owned();
        assert!(
            stderr.contains("6 users (0 copied, 6 already there)"),
            "{stderr}"
        );
        assert_eq!(dump(&url), source);
        copied_to.push(to);
    }
    assert!(
        copied_to.contains(&"sqlite") && copied_to.contains(&from),
        "{copied_to:?}"
    );

    // The copy serves the same client: same timestamps, same records, nothing new to fetch.
    if from == "sqlite" {
        let (url, _, _db) = target("sqlite", scratch.path(), "sqlite_sqlite");
        let path = url.strip_prefix("sqlite:").unwrap().to_owned();
        let copy = TestServer::start_with(|s| {
            s.syncstorage.database_url = Some(format!("sqlite:{path}").into())
        })
        .await;
        for uid in UIDS {
            let (a, b) = (server.user(uid), copy.user(uid));
            let (ia, ib) = (
                a.get("/info/collections").await,
                b.get("/info/collections").await,
            );
            assert_eq!(ia.json(), ib.json());
            assert_eq!(ia.header("X-Last-Modified"), ib.header("X-Last-Modified"));
            let newer = ia.header("X-Last-Modified").unwrap().to_owned();
            let fresh = b.get(&format!("/storage/bookmarks?newer={newer}")).await;
            assert_eq!(fresh.json(), json!([]));
            let full = "/storage/bookmarks?full=1&sort=oldest";
            assert_eq!(a.get(full).await.json(), b.get(full).await.json());
        }
    }
}

#[tokio::test]
async fn an_interrupted_copy_resumes_and_ends_with_the_same_data() {
    let server = TestServer::start().await;
    populate(&server).await;
    token_rows(&server);
    let source = dump(&server.database_url);
    let scratch = tempfile::tempdir().unwrap();
    let (url, ts_url, _db) = target("sqlite", scratch.path(), "resume");
    let db_path = url.strip_prefix("sqlite:").unwrap().to_owned();
    let args = [
        "copy",
        "--from",
        &server.database_url,
        "--to",
        &url,
        "--tokenserver-to",
        &ts_url,
    ];

    let mut cmd = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    cmd.args(args).args(["--rows-per-chunk", "5"]);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the first user (421 rows) is done and the second is half-way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = if std::path::Path::new(&db_path).exists() {
            let mut conn = connect(&url);
            sql_query("SELECT COUNT(*) AS v FROM bso")
                .get_result::<Num>(&mut conn)
                .map(|n| n.v)
                .unwrap_or(0)
        } else {
            0
        };
        if rows >= 650 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it was interrupted"
        );
        assert!(Instant::now() < deadline, "the copy made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = dump(&url);
    assert!(
        partial.0.len() < source.0.len(),
        "interrupted after {} rows",
        partial.0.len()
    );

    let mut again = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    again.args(args);
    let stderr = String::from_utf8_lossy(&succeed(again).stderr).into_owned();
    let already: u32 = stderr
        .lines()
        .find(|l| l.contains("storage: "))
        .unwrap_or_default()
        .split(" copied, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        (1..6).contains(&already),
        "users kept from the first run: {stderr}"
    );
    assert_eq!(dump(&url), source);
}
