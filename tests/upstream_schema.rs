//! A database created by syncstorage-rs's own migrations (MySQL, PostgreSQL), holding data
//! upstream wrote, is read and written correctly, and our migrations leave it as it is.
#[macro_use]
mod common;

use common::db::*;
use common::*;
use serde_json::json;

backend_matrix!(
    not_spanner: "upstream's MySQL and PostgreSQL databases only (no Spanner fixture)"
);

/// A scratch database built by `fixture` (upstream's schema and rows), and a server on it.
async fn serve_fixture(fixture: &str) -> (common::backends::ScratchDatabase, TestServer) {
    let upstream = common::backends::ScratchDatabase::create().unwrap();
    common::backends::admin_exec(&upstream.url, fixture);
    let url = upstream.url.clone();
    let server = TestServer::start_with(|s| s.syncstorage.database_url = Some(url.into())).await;
    (upstream, server)
}

/// Both fixtures hold the same upstream rows: an expired record, the tombstone at .30, and
/// (PostgreSQL) a pre-touched row, none of which may show.
async fn assert_upstream_rows_read(user: &User<'_>) {
    let r = user.get("/info/collections").await;
    assert_eq!(
        r.json(),
        json!({"bookmarks": 1700000000.12, "custom": 1700000000.25})
    );
    assert_eq!(r.header("X-Last-Modified"), Some("1700000000.30"));
    let r = user.get("/storage/bookmarks?full=1&sort=oldest").await;
    assert_eq!(
        r.json(),
        json!([
            {"id": "b1", "modified": 1700000000.10, "payload": "first payload", "sortindex": 5},
            {"id": "b2", "modified": 1700000000.12, "payload": "second"}
        ])
    );
}

mod mysql_only {
    use super::*;

    #[tokio::test]
    #[ignore = "not on SQLite: an upstream MySQL database (on_mysql)"]
    async fn upstream_mysql_database_is_read_and_written() {
        let (upstream, server) = serve_fixture(include_str!("fixtures/upstream_mysql.sql")).await;
        let user = server.user(7);

        // Existing data, timestamps, the tombstone and expiry as upstream stored them.
        assert_upstream_rows_read(&user).await;
        // payload_size is 0 in upstream rows: usage must come from the payloads themselves.
        let usage = user.get("/info/collection_usage").await.json();
        assert_eq!(usage["bookmarks"], json!(19.0 / 1024.0));
        assert_eq!(
            user.get("/info/collection_counts").await.json(),
            json!({"bookmarks": 2, "custom": 1})
        );

        // Writes: an update, a new custom collection (id after upstream's), a batch.
        let r = user
            .put("/storage/bookmarks/b1", json!({"payload": "updated"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = user.get("/storage/bookmarks/b1").await.json();
        assert_eq!(
            (r["payload"].clone(), r["sortindex"].clone()),
            (json!("updated"), json!(5))
        );
        assert_eq!(
            user.put("/storage/another/x", json!({"payload": "y"}))
                .await
                .status,
            200
        );
        let r = user
            .post(
                "/storage/bookmarks?batch=true",
                json!([{"id": "b3", "payload": "p3"}]),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let batch = r.json()["batch"].as_str().unwrap().to_owned();
        let encoded =
            percent_encoding::utf8_percent_encode(&batch, percent_encoding::NON_ALPHANUMERIC);
        let r = user
            .post(
                &format!("/storage/bookmarks?batch={encoded}&commit=true"),
                json!([]),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ids_in(&user, "bookmarks").await, set(["b1", "b2", "b3"]));

        let mut conn = db(&server);
        assert_eq!(
            count(
                &mut conn,
                "SELECT id AS v FROM collections WHERE name = 'another'"
            ),
            102
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS v FROM __diesel_schema_migrations"
            ),
            6
        );
        // Our migrations did not touch upstream's tables: still latin1, still no extra columns.
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS v FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'bso'"
            ),
            8
        );
        drop(upstream);
    }
}

mod postgres_only {
    use super::*;

    #[tokio::test]
    #[ignore = "not on SQLite: an upstream PostgreSQL database (on_postgres)"]
    async fn upstream_postgres_database_is_read_and_written() {
        let (upstream, server) =
            serve_fixture(include_str!("fixtures/upstream_postgres.sql")).await;
        let user = server.user(7);

        // The pre-touched tabs row (an open batch, nothing committed) is not a collection.
        assert_upstream_rows_read(&user).await;
        assert_eq!(
            user.get("/info/collection_usage").await.json()["bookmarks"],
            json!(19.0 / 1024.0)
        );

        // The batch upstream opened commits here.
        let r = user
            .post(
                "/storage/tabs?batch=6f1c6f9e-2b1e-4c57-9d43-3c6f5a3b2a10&commit=true",
                json!([{"id": "t2"}]),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ids_in(&user, "tabs").await, set(["t1", "t2"]));
        assert_eq!(
            user.get("/storage/tabs/t1").await.json()["payload"],
            "staged by upstream"
        );

        // Writes: an update keeps the sortindex, a new custom collection gets the next id.
        assert_eq!(
            user.put("/storage/bookmarks/b1", json!({"payload": "updated"}))
                .await
                .status,
            200
        );
        let r = user.get("/storage/bookmarks/b1").await.json();
        assert_eq!(
            (r["payload"].clone(), r["sortindex"].clone()),
            (json!("updated"), json!(5))
        );
        assert_eq!(
            user.put("/storage/another/x", json!({"payload": "y"}))
                .await
                .status,
            200
        );
        let mut conn = db(&server);
        assert_eq!(collection_id(&mut conn, "another"), 102);
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) AS v FROM __diesel_schema_migrations"
            ),
            1
        );
        drop(upstream);
    }
}

async fn token_request(server: &TestServer, sub: &str, generation: i64, key_id: &str) -> Resp {
    let jwt = common::fxa::Signer::shared(0).access_token(sub, Some(generation));
    send_rb(
        server
            .client
            .get(format!("{}/1.0/sync/1.5", server.base))
            .header("Authorization", format!("Bearer {jwt}"))
            .header("X-KeyID", key_id),
    )
    .await
}

mod pooled_engines_only {
    use super::*;

    /// A tokenserver database syncstorage-rs created and filled keeps serving its users: its
    /// migrations are recognised as applied, its service id (3 on MySQL, after upstream re-seeded
    /// it) and its nodes are used as they are.
    #[tokio::test]
    #[ignore = "not on SQLite: an upstream tokenserver database on MySQL or PostgreSQL (on_mysql, on_postgres)"]
    async fn upstream_tokenserver_database_keeps_its_users() {
        let fixture = match common::backends::current() {
            Some("mysql") => include_str!("fixtures/upstream_tokenserver_mysql.sql"),
            Some("postgres") => include_str!("fixtures/upstream_tokenserver_postgres.sql"),
            other => panic!("not a pooled engine: {other:?}"),
        };
        let upstream = common::backends::ScratchDatabase::create().unwrap();
        common::backends::admin_exec(&upstream.url, fixture);
        let fxa = common::fxa::FakeFxa::start();
        let (ts_url, fxa_url) = (upstream.url.clone(), fxa.url.clone());
        let server = TestServer::start_with(move |s| {
            s.tokenserver.enabled = true;
            s.tokenserver.database_url = Some(ts_url.into());
            s.tokenserver.fxa_oauth_server_url = fxa_url;
        })
        .await;
        let r = token_request(&server, "existing", 10, "10-qqo").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["uid"], 12345);
        assert_eq!(
            r.json()["api_endpoint"],
            "https://existing.example/1.5/12345"
        );
        // A new user: the next uid, the existing service row and node (the database's nodes are
        // the operator's: this server does not add itself to them).
        let r = token_request(&server, "newcomer", 1, "1-qqo").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["uid"], 12346);
        assert_eq!(
            r.json()["api_endpoint"],
            "https://existing.example/1.5/12346"
        );
        let rows = count(
            &mut ts_db(&server),
            "SELECT COUNT(*) AS v FROM users WHERE service = 3 AND email = 'newcomer@api.accounts.firefox.com'",
        );
        assert_eq!(rows, 1);
    }
}
