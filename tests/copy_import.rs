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
        .env(
            "SYNC_SYNCSTORAGE__SPANNER_EMULATOR_HOST",
            common::backends::spanner_emulator_host(),
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

/// Spanner keys storage by FxA uid and key id: a copy there and back (to SQLite) walks the
/// tokenserver's rows and must bring back every row, expired ones and the tombstone included.
#[tokio::test]
async fn a_round_trip_through_spanner_loses_nothing() {
    let server = TestServer::start().await;
    let from = engine_of(&server.database_url);
    if !other_engine_available("spanner", &format!("the copy {from} -> spanner -> sqlite")) {
        return;
    }
    populate(&server).await;
    token_rows(&server);
    let source = dump(&server.database_url);
    let spanner =
        ScratchDatabase::create_named("spanner", format!("rt{}{}", std::process::id(), &from[..2]));
    let mut there = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    there.args(["copy", "--from", &server.database_url, "--to", &spanner.url]);
    let stderr = String::from_utf8_lossy(&succeed(there).stderr).into_owned();
    assert!(
        stderr.contains("6 users (6 copied, 0 already there)"),
        "{stderr}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let (url, ts_url, _) = target("sqlite", scratch.path(), "back");
    let mut back = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    back.args([
        "copy",
        "--from",
        &spanner.url,
        "--to",
        &url,
        "--tokenserver-from",
        &server.tokenserver_database_url,
        "--tokenserver-to",
        &ts_url,
    ]);
    let stderr = String::from_utf8_lossy(&succeed(back).stderr).into_owned();
    assert!(
        stderr.contains("6 users (6 copied, 0 already there)"),
        "{stderr}"
    );
    let back = dump(&url);
    assert_eq!(back.1, source.1, "collection timestamps after a round trip");
    assert_eq!(back.0, source.0, "records after a round trip");
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

// ---- import-legacy ----

/// The Python syncserver's tables (LEGACY.md 2.2, 2.3, 3.1) in this dialect: the unsharded
/// `bso` and one shard table (a database switched to sharding), staticnode's `users`. The
/// SQLite file is an old one (before 2020): its `users` has no keys_changed_at nor node.
fn legacy_schema(engine: &str) -> String {
    let (payload, uid, options) = match engine {
        "mysql" => (
            "MEDIUMTEXT",
            "INTEGER NOT NULL AUTO_INCREMENT",
            " ENGINE=InnoDB DEFAULT CHARSET=latin1",
        ),
        "postgres" => ("TEXT", "SERIAL", ""),
        _ => ("TEXT", "INTEGER NOT NULL", ""),
    };
    let bso = |name: &str| {
        format!(
            "CREATE TABLE {name} (userid INTEGER NOT NULL, collection INTEGER NOT NULL, \
             id VARCHAR(64) NOT NULL, sortindex INTEGER, modified BIGINT NOT NULL, \
             payload {payload} NOT NULL, payload_size INTEGER DEFAULT 0 NOT NULL, \
             ttl INTEGER DEFAULT 2100000000 NOT NULL, PRIMARY KEY (userid, collection, id)){options};"
        )
    };
    let token_columns = if engine == "sqlite" {
        ""
    } else {
        ", keys_changed_at BIGINT, node VARCHAR(255)"
    };
    format!(
        "CREATE TABLE collections (collectionid INTEGER NOT NULL, name VARCHAR(32) NOT NULL, \
         PRIMARY KEY (collectionid), UNIQUE (name)){options};
         CREATE TABLE user_collections (userid INTEGER NOT NULL, collection INTEGER NOT NULL, \
         last_modified BIGINT NOT NULL, PRIMARY KEY (userid, collection)){options};
         CREATE TABLE batch_uploads (batch BIGINT NOT NULL, userid INTEGER NOT NULL, \
         collection INTEGER NOT NULL, PRIMARY KEY (batch, userid)){options};
         CREATE TABLE batch_upload_items (batch BIGINT NOT NULL, userid INTEGER NOT NULL, \
         id VARCHAR(64) NOT NULL, sortindex INTEGER, payload {payload}, payload_size INTEGER, \
         ttl_offset INTEGER, PRIMARY KEY (batch, userid, id)){options};
         {}
         {}
         CREATE TABLE users (uid {uid}, service VARCHAR(32) NOT NULL, email VARCHAR(255) NOT NULL, \
         generation BIGINT NOT NULL, client_state VARCHAR(32) NOT NULL, created_at BIGINT NOT NULL, \
         replaced_at BIGINT{token_columns}, PRIMARY KEY (uid)){options};",
        bso("bso"),
        bso("bso3")
    )
}

const FXA_UID: &str = "0123456789abcdef0123456789abcdef";
/// 2020-09-13, on the 10 ms grid as the Python server wrote it.
const T0: i64 = 1_600_000_000_000;

/// Rows as the Python server left them. uid 7 is the account's current row (uid 6 replaced by
/// a key change); uid 8 a retired account; uid 9 another service. Of uid 7's 40 bookmarks, 5
/// have expired; its history is in the shard table; `clients` has a timestamp and no records.
fn legacy_rows(engine: &str, now_s: i64) -> String {
    let email = format!("{FXA_UID}@api.accounts.firefox.com");
    let kca = |v: &str| {
        if engine == "sqlite" {
            String::new()
        } else {
            format!(", {v}")
        }
    };
    let kca_col = if engine == "sqlite" {
        ""
    } else {
        ", keys_changed_at"
    };
    let mut sql = format!(
        "INSERT INTO collections (collectionid, name) VALUES (1, 'meta'), (2, 'crypto'), \
         (3, 'clients'), (4, 'bookmarks'), (5, 'history'), (6, 'custom-legacy');
         INSERT INTO users (uid, service, email, generation, client_state, created_at, replaced_at{kca_col}) VALUES \
         (6, 'sync-1.5', '{email}', 1000, 'bbbb', 1000, 2000{}), \
         (7, 'sync-1.5', '{email}', 1234, 'aaaa', 2000, NULL{}), \
         (8, 'sync-1.5', 'fedcba9876543210fedcba9876543210@api.accounts.firefox.com', 9223372036854775807, '', 500, 600{}), \
         (9, 'sync-1.1', '{email}', 1, '', 100, NULL{});
         INSERT INTO user_collections (userid, collection, last_modified) VALUES \
         (7, 1, {T0}), (7, 3, {}), (7, 4, {}), (7, 5, {}), (7, 6, {}), (6, 4, {T0});
         INSERT INTO bso (userid, collection, id, sortindex, modified, payload, payload_size, ttl) VALUES \
         (7, 1, 'global', NULL, {T0}, '{{\"syncID\":\"m\"}}', 13, 2100000000), \
         (6, 4, 'old1', NULL, {T0}, 'old keys', 8, 2100000000), \
         (6, 4, 'old2', NULL, {T0}, 'old keys', 8, 2100000000)",
        kca("0"),
        kca("1234"),
        kca("NULL"),
        kca("NULL"),
        T0 + 50_000,
        T0 + 100_000,
        T0 + 200_000,
        T0 + 300_000,
    );
    for i in 0..40 {
        let ttl = if i < 5 { 1_000_000_000 } else { 2_100_000_000 };
        let sortindex = if i % 2 == 0 {
            i.to_string()
        } else {
            "NULL".into()
        };
        let payload = if i % 3 == 0 {
            format!("bm{i} été")
        } else {
            format!("bm{i}")
        };
        sql += &format!(
            ", (7, 4, 'b{i:02}', {sortindex}, {}, '{payload}', 0, {ttl})",
            T0 + i * 10
        );
    }
    for i in 0..3 {
        sql += &format!(
            ", (7, 6, 'c{i}', NULL, {}, 'custom', 6, 2100000000)",
            T0 + 300_000
        );
    }
    sql += ";\nINSERT INTO bso3 (userid, collection, id, sortindex, modified, payload, payload_size, ttl) VALUES ";
    let history: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "(7, 5, 'h{i}', NULL, {}, 'visit', 5, {})",
                T0 + 200_000,
                now_s + 3600
            )
        })
        .collect();
    sql += &history.join(", ");
    sql + ";"
}

#[tokio::test]
async fn a_legacy_syncserver_database_imports_and_its_user_syncs_again() {
    let env_fxa = common::fxa::FakeFxa::start();
    let fxa_url = env_fxa.url.clone();
    let server = TestServer::start_with(move |s| {
        s.tokenserver.enabled = true;
        s.tokenserver.fxa_oauth_server_url = fxa_url;
    })
    .await;
    let engine = engine_of(&server.database_url);
    let now_s = now_ms() / 1000;

    // The legacy database on the same engine, as the Python server's settings name it.
    let legacy_dir = tempfile::tempdir().unwrap();
    let (legacy_url, _legacy_db) = if engine == "sqlite" {
        let path = legacy_dir.path().join("syncserver.db");
        let mut conn = connect(&format!("sqlite:{}", path.display()));
        if let AnyConnection::Sqlite(c) = &mut conn {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&legacy_schema("sqlite")).unwrap();
            c.batch_execute(&legacy_rows("sqlite", now_s)).unwrap();
        }
        (format!("sqlite:///{}", path.display()), None)
    } else {
        let db =
            ScratchDatabase::create_named(engine, format!("sync_legacy_{}", std::process::id()));
        common::backends::admin_exec(&db.url, &legacy_schema(engine));
        common::backends::admin_exec(&db.url, &legacy_rows(engine, now_s));
        let scheme = if engine == "mysql" {
            "pymysql"
        } else {
            "postgresql"
        };
        let rest = db.url.split_once("://").unwrap().1.to_owned();
        (format!("{scheme}://{rest}"), Some(db))
    };
    let import = |args: &[&str]| {
        let mut cmd = command(
            server.dir.path(),
            &server.database_url,
            &server.tokenserver_database_url,
        );
        cmd.args(["import-legacy", "--from", &legacy_url])
            .args(args);
        let out = succeed(cmd);
        String::from_utf8(out.stdout).unwrap()
    };

    let before = user_rows(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    let dry = import(&["--dry-run"]);
    assert!(
        dry.contains(
            "would import: 2 token rows (1 accounts; 1 retired rows skipped), 1 users' storage: \
             5 collections, 49 records (5 expired records skipped)"
        ),
        "{dry}"
    );
    assert_eq!(
        user_rows(
            server.dir.path(),
            &server.database_url,
            &server.tokenserver_database_url
        ),
        before,
        "a dry run writes nothing"
    );

    let done = import(&[]);
    assert!(done.contains("imported: 2 token rows"), "{done}");
    let shown: Value = {
        let mut cmd = command(
            server.dir.path(),
            &server.database_url,
            &server.tokenserver_database_url,
        );
        cmd.args(["user", "show", FXA_UID, "--json"]);
        serde_json::from_slice(&succeed(cmd).stdout).unwrap()
    };
    let rows = shown["rows"].as_array().unwrap();
    let summary: Vec<(i64, i64, &str, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r["uid"].as_i64().unwrap(),
                r["generation"].as_i64().unwrap(),
                r["client_state"].as_str().unwrap(),
                r["replaced_at"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(7, 1234, "aaaa", None), (6, 1000, "bbbb", Some(2000))]
    );

    // The user's client reads what the Python server served: timestamps and records.
    let user = server.user(7);
    let info = user.get("/info/collections").await;
    assert_eq!(
        info.json(),
        json!({
            "meta": 1600000000.0, "clients": 1600000050.0, "bookmarks": 1600000100.0,
            "history": 1600000200.0, "custom-legacy": 1600000300.0
        })
    );
    assert_eq!(info.header("X-Last-Modified"), Some("1600000300.00"));
    let bookmarks = user
        .get("/storage/bookmarks?full=1&sort=oldest")
        .await
        .json();
    let bookmarks = bookmarks.as_array().unwrap();
    assert_eq!(bookmarks.len(), 35, "the 5 expired ones are not imported");
    for b in bookmarks {
        let i: i64 = b["id"].as_str().unwrap()[1..].parse().unwrap();
        assert!(i >= 5);
        assert_eq!(json_ts(&b["modified"]) as i64, T0 + i * 10);
        let payload = if i % 3 == 0 {
            format!("bm{i} été")
        } else {
            format!("bm{i}")
        };
        assert_eq!(b["payload"], payload);
        assert_eq!(b["sortindex"].as_i64(), (i % 2 == 0).then_some(i));
    }
    assert_eq!(
        user.get("/storage/history")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        10
    );
    let meta = user.get("/storage/meta/global").await.json();
    assert_eq!(meta["payload"], "{\"syncID\":\"m\"}");
    // Nothing is newer than the client's last sync: it uploads nothing again.
    let fresh = user.get("/storage/bookmarks?newer=1600000100.00").await;
    assert_eq!(fresh.json(), json!([]));
    // The replaced row's storage (old keys) stays behind unless asked for.
    assert_eq!(
        server.user(6).get("/info/collections").await.json(),
        json!({})
    );

    // Firefox asks the tokenserver and gets its old uid back.
    let bearer = common::fxa::Signer::shared(0).access_token(FXA_UID, Some(1234));
    let r = send_rb(
        server
            .client
            .get(format!("{}/1.0/sync/1.5", server.base))
            .header("Authorization", format!("Bearer {bearer}"))
            .header("X-KeyID", "1234-qqo"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["uid"], 7);
    assert!(
        r.json()["api_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/1.5/7")
    );

    // Again, with the replaced row's storage: the rest stays as it was.
    let again = import(&["--include-replaced"]);
    assert!(again.contains("2 users' storage"), "{again}");
    assert_eq!(
        server
            .user(6)
            .get("/storage/bookmarks?sort=oldest")
            .await
            .json(),
        json!(["old1", "old2"])
    );
    assert_eq!(user.get("/info/collections").await.json(), info.json());
}

/// A Python server whose token side was tokenserver's sqlnode (services, nodes, users with an
/// integer service and nodeid): the current row is the one with the highest generation, and
/// only its storage comes over.
#[tokio::test]
async fn a_sqlnode_legacy_database_imports_by_generation() {
    let server = TestServer::start().await;
    let engine = engine_of(&server.database_url);
    let storage = legacy_schema(engine);
    let storage = &storage[..storage.find("CREATE TABLE users").unwrap()];
    let big = if engine == "mysql" {
        "BIGINT NOT NULL AUTO_INCREMENT"
    } else {
        "BIGINT NOT NULL"
    };
    let schema = format!(
        "{storage}
         CREATE TABLE services (id INTEGER NOT NULL, service VARCHAR(30), pattern VARCHAR(128), PRIMARY KEY (id));
         CREATE TABLE nodes (id {big}, service INTEGER NOT NULL, node VARCHAR(64) NOT NULL, \
         available INTEGER NOT NULL, current_load INTEGER NOT NULL, capacity INTEGER NOT NULL, \
         downed INTEGER NOT NULL, backoff INTEGER NOT NULL, PRIMARY KEY (id));
         CREATE TABLE users (uid {big}, service INTEGER NOT NULL, email VARCHAR(255) NOT NULL, \
         generation BIGINT NOT NULL, client_state VARCHAR(32) NOT NULL, created_at BIGINT NOT NULL, \
         replaced_at BIGINT, nodeid BIGINT NOT NULL, keys_changed_at BIGINT, PRIMARY KEY (uid));"
    );
    let a = format!("{FXA_UID}@api.accounts.firefox.com");
    let rows = format!(
        "INSERT INTO services (id, service, pattern) VALUES (1, 'sync-1.5', '{{node}}/1.5/{{uid}}'), \
         (2, 'sync-1.1', '{{node}}/1.1/{{uid}}');
         INSERT INTO nodes (id, service, node, available, current_load, capacity, downed, backoff) \
         VALUES (1, 1, 'https://old.example.com', 10, 2, 100, 0, 0);
         INSERT INTO users (uid, service, email, generation, client_state, created_at, replaced_at, \
         nodeid, keys_changed_at) VALUES \
         (20, 1, '{a}', 5000, 'cccc', 3000, NULL, 1, 5000), \
         (21, 1, '{a}', 4000, 'dddd', 4000, NULL, 1, 4000), \
         (22, 1, 'fedcba9876543210fedcba9876543210@api.accounts.firefox.com', 9223372036854775807, '', 10, 20, 1, NULL), \
         (23, 2, '{a}', 1, '', 1, NULL, 1, NULL);
         INSERT INTO collections (collectionid, name) VALUES (1, 'bookmarks');
         INSERT INTO user_collections (userid, collection, last_modified) VALUES (20, 1, {T0}), (21, 1, {T0});
         INSERT INTO bso (userid, collection, id, sortindex, modified, payload, payload_size, ttl) VALUES \
         (20, 1, 'kept', NULL, {T0}, 'current keys', 12, 2100000000), \
         (21, 1, 'stale', NULL, {T0}, 'a lost race', 11, 2100000000);"
    );
    let legacy_dir = tempfile::tempdir().unwrap();
    let (legacy_url, _db) = if engine == "sqlite" {
        let path = legacy_dir.path().join("sqlnode.db");
        let mut conn = connect(&format!("sqlite:{}", path.display()));
        if let AnyConnection::Sqlite(c) = &mut conn {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&schema).unwrap();
            c.batch_execute(&rows).unwrap();
        }
        (format!("sqlite:{}", path.display()), None)
    } else {
        let db =
            ScratchDatabase::create_named(engine, format!("sync_sqlnode_{}", std::process::id()));
        common::backends::admin_exec(&db.url, &schema);
        common::backends::admin_exec(&db.url, &rows);
        (db.url.clone(), Some(db))
    };
    let mut cmd = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    cmd.args([
        "import-legacy",
        "--from",
        &legacy_url,
        "--node",
        "https://sync.example.com",
    ]);
    let out = String::from_utf8(succeed(cmd).stdout).unwrap();
    assert!(
        out.contains("imported: 2 token rows (1 accounts; 1 retired rows skipped), 1 users' storage: 1 collections, 1 records"),
        "{out}"
    );
    assert_eq!(
        server.user(20).get("/storage/bookmarks").await.json(),
        json!(["kept"])
    );
    assert_eq!(
        server.user(21).get("/storage/bookmarks").await.json(),
        json!([])
    );
    let listed = user_rows(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    let uids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uid"].as_i64().unwrap())
        .collect();
    assert_eq!(uids, vec![20, 21]);
    let mut cmd = command(
        server.dir.path(),
        &server.database_url,
        &server.tokenserver_database_url,
    );
    cmd.args(["node", "list", "--json"]);
    let nodes: Value = serde_json::from_slice(&succeed(cmd).stdout).unwrap();
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "https://sync.example.com")
        .unwrap();
    assert_eq!(node["users"], 2, "{nodes}");
}
