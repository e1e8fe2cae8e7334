//! Admin subcommands run as separate processes beside a live server, on the same SQLite file.
#[macro_use]
mod common;

use common::db::*;
use common::*;
use serde_json::json;

backend_matrix!();

fn bso_rows(server: &TestServer) -> i64 {
    let table = if mysql_layout(server) { "bso" } else { "bsos" };
    count(
        &mut db(server),
        &format!("SELECT COUNT(*) AS v FROM {table}"),
    )
}

fn syncserver(server: &TestServer, args: &[&str]) -> std::process::Output {
    common::syncserver_beside(server, args)
}

#[tokio::test]
async fn purge_ttl_removes_only_expired_records_while_the_server_runs() {
    let server = TestServer::start().await;
    let user = server.user(3);
    assert_eq!(
        user.put("/storage/tabs/gone", json!({"payload": "x", "ttl": 0}))
            .await
            .status,
        200
    );
    assert_eq!(
        user.put("/storage/tabs/kept", json!({"payload": "y"}))
            .await
            .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(bso_rows(&server), 2);
    let dry = syncserver(&server, &["purge-ttl", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{stderr}");
    assert!(stderr.contains("would purge 1 expired records"), "{stderr}");
    assert_eq!(bso_rows(&server), 2);
    let out = syncserver(
        &server,
        &["purge-ttl", "--rows-per-chunk", "1", "--pause-ms", "5"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("purging: 1 records"), "{stderr}");
    assert!(stderr.contains("purged 1 expired records"), "{stderr}");
    assert_eq!(bso_rows(&server), 1);
    assert_eq!(user.get("/storage/tabs").await.json(), json!(["kept"]));
    // The server keeps writing afterwards.
    assert_eq!(
        user.put("/storage/tabs/again", json!({"payload": "z"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn migrate_is_idempotent_beside_a_running_server() {
    let server = TestServer::start().await;
    let user = server.user(4);
    assert_eq!(
        user.put("/storage/prefs/p", json!({"payload": "x"}))
            .await
            .status,
        200
    );
    for _ in 0..2 {
        let out = syncserver(&server, &["migrate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(user.get("/storage/prefs/p").await.json()["payload"], "x");
    // The tokenserver's tables were created too (this server runs without the tokenserver).
    let services = count(
        &mut ts_db(&server),
        "SELECT COUNT(*) AS v FROM services WHERE service = 'sync-1.5'",
    );
    assert_eq!(services, 1);
}

#[tokio::test]
async fn token_command_credentials_work_against_the_server() {
    let server = TestServer::start().await;
    let port = server.port.to_string();
    let out = common::syncserver_command()
        .args(["token", "--uid", "77"])
        .env("SYNC_DATA_DIR", server.dir.path())
        .env("SYNC_MASTER_SECRET", MASTER_SECRET)
        .env("SYNC_PORT", &port)
        .output()
        .unwrap();
    assert!(out.status.success());
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(creds["uid"], 77);
    assert_eq!(
        creds["api_endpoint"],
        format!("http://127.0.0.1:{port}/1.5/77")
    );
    let user = User {
        server: &server,
        uid: 77,
        id: creds["id"].as_str().unwrap().into(),
        key: creds["key"].as_str().unwrap().into(),
    };
    assert_eq!(
        user.put("/storage/meta/global", json!({"payload": "m"}))
            .await
            .status,
        200
    );
    assert_eq!(user.get("/storage/meta").await.json(), json!(["global"]));
}

#[tokio::test]
async fn hawk_command_signs_one_request() {
    let server = TestServer::start().await;
    let url = format!("{}/1.5/5/info/collections", server.base);
    let out = syncserver(&server, &["hawk", "GET", &url]);
    assert!(out.status.success());
    let auth = String::from_utf8(out.stdout).unwrap();
    let signed_get = |url: &str| server.client.get(url).header("Authorization", auth.trim());
    assert_eq!(send_rb(signed_get(&url)).await.status, 200);
    let wrong = format!("{}/1.5/6/info/collections", server.base);
    assert_eq!(send_rb(signed_get(&wrong)).await.status, 401);
}

#[test]
fn invalid_setting_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, named) in [
        (
            "SYNC_SYNCSTORAGE__LIMITS__MAX_POST_RECORDS",
            "lots",
            "max_post_records",
        ),
        (
            "SYNC_SYNCSTORAGE__DATABASE_URL",
            "oracle://nope",
            "syncstorage.database_url",
        ),
        // No scheme: refused, not taken for a SQLite file at ./mysql/root@host/x.
        (
            "SYNC_SYNCSTORAGE__DATABASE_URL",
            "mysql//root@host/x",
            "unsupported database URL",
        ),
        // A mistyped directory is not created (only those under data_dir are).
        (
            "SYNC_SYNCSTORAGE__DATABASE_URL",
            "sqlite:/nonexistent-dir/sub/x.db",
            "directory /nonexistent-dir/sub does not exist",
        ),
        (
            "SYNC_SYNCSTORAGE__DATABSE_URL",
            "mysql://root@127.0.0.1/x",
            "did you mean `syncstorage.database_url`",
        ),
    ] {
        let out = common::syncserver_command()
            .env("SYNC_DATA_DIR", dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
    }
    assert!(!std::path::Path::new("/nonexistent-dir").exists());
    assert!(!std::path::Path::new("mysql").exists());
}

#[test]
fn token_refuses_a_secret_it_would_have_to_make_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::syncserver_command()
        .args(["token", "--uid", "7"])
        .env("SYNC_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SYNC_DATA_DIR"), "{stderr}");
    assert!(!dir.path().join("master_secret").exists());

    // With the server's secret, the node is its public URL.
    let out = common::syncserver_command()
        .args(["token", "--uid", "7"])
        .env("SYNC_DATA_DIR", dir.path())
        .env("SYNC_MASTER_SECRET", "s3cret")
        .env("SYNC_PUBLIC_URL", "https://sync.example.com/")
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["api_endpoint"], "https://sync.example.com/1.5/7");
}

#[tokio::test]
async fn check_config_passes_a_migrated_server_and_names_each_problem() {
    let server = TestServer::start().await;
    // The tokenserver tables too (this test server runs without the tokenserver).
    assert!(syncserver(&server, &["migrate"]).status.success());
    let out = syncserver(&server, &["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok       storage database"), "{stdout}");
    // Spanner's schema is completed by the server itself at start-up.
    let migrated = if spanner(&server) {
        "ok       storage schema: checked and completed by the server"
    } else {
        "ok       storage schema: every migration applied"
    };
    assert!(stdout.contains(migrated), "{stdout}");
    assert!(stdout.contains("ok       tokenserver schema"), "{stdout}");
    assert!(stdout.contains("no problems found"), "{stdout}");
    // The effective settings are printed, the secret is not.
    assert!(stdout.contains("master_secret: [redacted]"), "{stdout}");
    assert!(!stdout.contains(MASTER_SECRET), "{stdout}");

    // A database that does not answer, its password masked.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // check-config on another storage database, with more settings.
    let check_config = |url: String, more: &[(&str, &str)]| {
        common::syncserver_command()
            .arg("check-config")
            .env("SYNC_DATA_DIR", server.dir.path())
            .env("SYNC_MASTER_SECRET", MASTER_SECRET)
            .env("SYNC_SYNCSTORAGE__DATABASE_URL", url)
            .envs(more.iter().copied())
            .output()
            .unwrap()
    };
    let out = check_config(
        format!("mysql://sync:pw-hunter2@127.0.0.1:{closed}/sync"),
        &[("SYNC_SYNCSTORAGE__DATABASE_POOL_CONNECTION_TIMEOUT", "2")],
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("PROBLEM  storage database"), "{all}");
    assert!(!all.contains("pw-hunter2"), "{all}");
    assert!(all.contains("mysql://sync:****@"), "{all}");

    // A SQLite database nobody migrated.
    let empty = server.dir.path().join("empty.db");
    std::fs::File::create(&empty).unwrap();
    let out = check_config(
        format!("sqlite:{}", empty.display()),
        &[("SYNC_TOKENSERVER__ENABLED", "false")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("PROBLEM  storage schema") && stdout.contains("syncserver migrate"),
        "{stdout}"
    );
}

#[tokio::test]
async fn healthcheck_command_passes_only_while_the_server_answers() {
    let server = TestServer::start().await;
    let check = |port: u16| {
        common::syncserver_command()
            .arg("healthcheck")
            .env("SYNC_HOST", "0.0.0.0")
            .env("SYNC_PORT", port.to_string())
            .output()
            .unwrap()
    };
    let out = check(server.port);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = check(closed);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("__lbheartbeat__"));
}
