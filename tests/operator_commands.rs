//! `syncserver node ...`, `user ...` and `purge-replaced`, run as separate processes beside a
//! live server on its real databases, on every engine (the tokenserver tables are SQLite's
//! beside a Spanner storage).
#[macro_use]
mod common;

use common::db::*;
use common::*;
use serde_json::{Value, json};

backend_matrix!();

fn syncserver(server: &TestServer, args: &[&str]) -> std::process::Output {
    common::syncserver_beside(server, args)
}

/// Runs a command that must succeed; its stdout.
fn ok(server: &TestServer, args: &[&str]) -> String {
    let out = syncserver(server, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; its stderr.
fn refused(server: &TestServer, args: &[&str]) -> String {
    let out = syncserver(server, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    stderr
}

fn nodes(server: &TestServer) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(server, &["node", "list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn node<'a>(nodes: &'a [Value], url: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["node"] == url)
}

/// The email of test user `uid` (`credentials` signs tokens with fxa_uid = uid as 32 hex
/// digits and fxa_kid = fxa_kid(1234, "aaaa")), so rows below key the same Spanner storage.
fn email(uid: i64) -> String {
    format!("{uid:032x}@api.accounts.firefox.com")
}

/// A tokenserver user row, written as the tokenserver would.
#[allow(clippy::too_many_arguments)]
fn insert_user(
    server: &TestServer,
    uid: i64,
    email: &str,
    client_state: &str,
    created_at: i64,
    replaced_at: Option<i64>,
    nodeid: i64,
) {
    let mut conn = ts_db(server);
    let replaced = replaced_at.map_or("NULL".to_owned(), |r| r.to_string());
    sql_query(format!(
        "INSERT INTO users (uid, service, email, generation, client_state, created_at, \
         replaced_at, nodeid, keys_changed_at) VALUES (?, 1, ?, 1234, ?, ?, {replaced}, ?, 1234)"
    ))
    .bind(uid)
    .bind(email)
    .bind(client_state)
    .bind(created_at)
    .bind(nodeid)
    .execute(&mut conn)
    .unwrap();
}

#[tokio::test]
async fn nodes_are_added_updated_listed_and_kept_while_users_remain() {
    let server = TestServer::start().await;
    ok(
        &server,
        &["node", "add", "https://a.example.com", "--capacity", "5"],
    );
    let again = refused(&server, &["node", "add", "https://a.example.com"]);
    assert!(again.contains("exists already"), "{again}");
    ok(&server, &["node", "add", "https://b.example.com/"]);
    ok(
        &server,
        &[
            "node",
            "update",
            "https://a.example.com",
            "--downed",
            "1",
            "--backoff",
            "1",
        ],
    );
    let missing = refused(
        &server,
        &["node", "update", "https://c.example.com", "--downed", "1"],
    );
    assert!(
        missing.contains("no node https://c.example.com"),
        "{missing}"
    );

    let list = nodes(&server);
    let a = node(&list, "https://a.example.com")
        .expect("node a")
        .clone();
    assert_eq!(
        (
            &a["capacity"],
            &a["available"],
            &a["downed"],
            &a["backoff"],
            &a["users"]
        ),
        (&json!(5), &json!(5), &json!(1), &json!(1), &json!(0))
    );
    // The trailing slash is not part of a node.
    let b = node(&list, "https://b.example.com")
        .expect("node b")
        .clone();
    assert_eq!(b["capacity"], 100);
    let table = ok(&server, &["node", "list"]);
    assert!(table.lines().next().unwrap().starts_with("id"), "{table}");
    assert!(table.contains("https://a.example.com"), "{table}");

    insert_user(
        &server,
        900,
        &email(900),
        "aaaa",
        now_ms(),
        None,
        a["id"].as_i64().unwrap(),
    );
    assert_eq!(
        node(&nodes(&server), "https://a.example.com").unwrap()["users"],
        1
    );
    let kept = refused(&server, &["node", "remove", "https://a.example.com"]);
    assert!(kept.contains("still has 1 user rows"), "{kept}");
    assert!(node(&nodes(&server), "https://a.example.com").is_some());

    ok(
        &server,
        &[
            "node",
            "remove",
            "https://a.example.com",
            "--reassign",
            "https://b.example.com",
        ],
    );
    let list = nodes(&server);
    assert!(node(&list, "https://a.example.com").is_none());
    let b = node(&list, "https://b.example.com").unwrap();
    assert_eq!((&b["users"], &b["current_load"]), (&json!(1), &json!(1)));
    let shown: Value =
        serde_json::from_str(&ok(&server, &["user", "show", "900", "--json"])).unwrap();
    assert_eq!(shown["rows"][0]["nodeid"], b["id"]);
}

#[tokio::test]
async fn user_show_reports_rows_and_storage_and_delete_needs_yes() {
    let server = TestServer::start().await;
    let user = server.user(31);
    for (path, payload) in [
        ("/storage/bookmarks/a", "one"),
        ("/storage/bookmarks/b", "été"),
        ("/storage/tabs/t", "x"),
    ] {
        assert_eq!(
            user.put(path, json!({ "payload": payload })).await.status,
            200
        );
    }
    let info = user.get("/info/collections").await.json();
    ok(&server, &["node", "add", "https://sync.example.com"]);
    let nodeid = nodes(&server)[0]["id"].as_i64().unwrap();
    let now = now_ms();
    insert_user(
        &server,
        30,
        &email(31),
        "bbbb",
        now - 5000,
        Some(now - 1000),
        nodeid,
    );
    insert_user(&server, 31, &email(31), "aaaa", now - 1000, None, nodeid);

    let fxa_uid = format!("{:032x}", 31);
    for who in ["31".to_owned(), email(31), fxa_uid.clone()] {
        let shown: Value =
            serde_json::from_str(&ok(&server, &["user", "show", &who, "--json"])).unwrap();
        let uids: Vec<i64> = shown["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uid"].as_i64().unwrap())
            .collect();
        assert_eq!(uids, vec![31, 30], "{who}: newest first");
        let storage = &shown["storage"]["31"];
        assert_eq!(storage["bookmarks"]["records"], 2, "{shown}");
        assert_eq!(
            storage["bookmarks"]["bytes"],
            3 + 5,
            "bytes, not characters"
        );
        assert_eq!(storage["tabs"]["records"], 1);
        assert_eq!(
            storage["bookmarks"]["modified"].as_i64().unwrap(),
            (info["bookmarks"].as_f64().unwrap() * 1000.0).round() as i64
        );
        assert_eq!(shown["storage"]["30"], json!({}));
    }
    let text = ok(&server, &["user", "show", "31"]);
    assert!(
        text.contains("storage of uid 31") && text.contains("bookmarks"),
        "{text}"
    );
    let unknown = refused(&server, &["user", "show", "12345"]);
    assert!(unknown.contains("no user 12345"), "{unknown}");
    let bad = refused(&server, &["user", "show", "nobody"]);
    assert!(bad.contains("expected a uid"), "{bad}");

    let listed: Value = serde_json::from_str(&ok(&server, &["user", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let after: Value =
        serde_json::from_str(&ok(&server, &["user", "list", "--after", "30", "--json"])).unwrap();
    assert_eq!(after.as_array().unwrap().len(), 1);
    assert_eq!(after[0]["uid"], 31);

    let without_yes = refused(&server, &["user", "delete", "31"]);
    assert!(without_yes.contains("--yes"), "{without_yes}");
    assert_eq!(user.get("/info/collections").await.json(), info);

    ok(&server, &["user", "delete", &fxa_uid, "--yes"]);
    assert_eq!(user.get("/info/collections").await.json(), json!({}));
    assert_eq!(user.get("/storage/bookmarks").await.json(), json!([]));
    refused(&server, &["user", "show", "31"]);
    let listed: Value = serde_json::from_str(&ok(&server, &["user", "list", "--json"])).unwrap();
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn purge_replaced_deletes_old_replaced_rows_and_their_storage_only() {
    let server = TestServer::start().await;
    // uid 40: replaced ten days ago, with storage; 41: its account's current row; 43: replaced
    // an hour ago (within the grace period); 42: another account, current, with storage.
    let old = server.user(40);
    let other = server.user(42);
    for u in [&old, &other] {
        assert_eq!(
            u.put("/storage/history/h", json!({"payload": "p"}))
                .await
                .status,
            200
        );
        assert_eq!(
            u.put("/storage/prefs/p", json!({"payload": "q"}))
                .await
                .status,
            200
        );
    }
    ok(&server, &["node", "add", "https://sync.example.com"]);
    let nodeid = nodes(&server)[0]["id"].as_i64().unwrap();
    let now = now_ms();
    let day = 86_400_000;
    insert_user(
        &server,
        40,
        &email(40),
        "aaaa",
        now - 20 * day,
        Some(now - 10 * day),
        nodeid,
    );
    insert_user(
        &server,
        41,
        &email(40),
        "bbbb",
        now - 10 * day,
        None,
        nodeid,
    );
    insert_user(
        &server,
        43,
        &email(40),
        "cccc",
        now - 2 * day,
        Some(now - 3_600_000),
        nodeid,
    );
    insert_user(&server, 42, &email(42), "aaaa", now - day, None, nodeid);
    let uids = |server: &TestServer| -> Vec<i64> {
        let listed: Value = serde_json::from_str(&ok(server, &["user", "list", "--json"])).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uid"].as_i64().unwrap())
            .collect()
    };

    let dry = syncserver(&server, &["purge-replaced", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("would delete 1 replaced user rows and the storage of 1 of them (2 records)"),
        "{stderr}"
    );
    assert_eq!(uids(&server), vec![40, 41, 42, 43]);
    assert_eq!(old.get("/storage/history").await.json(), json!(["h"]));

    let run = syncserver(
        &server,
        &[
            "purge-replaced",
            "--grace-days",
            "7",
            "--rows-per-chunk",
            "1",
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("deleted 1 replaced user rows"), "{stderr}");
    assert_eq!(uids(&server), vec![41, 42, 43]);
    assert_eq!(old.get("/info/collections").await.json(), json!({}));
    assert_eq!(other.get("/storage/history").await.json(), json!(["h"]));
    assert_eq!(other.get("/storage/prefs").await.json(), json!(["p"]));

    // A grace period of zero takes the row replaced an hour ago too.
    ok(&server, &["purge-replaced", "--grace-days", "0"]);
    assert_eq!(uids(&server), vec![41, 42]);
}
