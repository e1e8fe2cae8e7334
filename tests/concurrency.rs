//! Many concurrent requests, and another process writing to the same SQLite file, never reach
//! a client as "database is locked" (a 500) or as a lost write.
#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::json;

backend_matrix!();

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_all_succeed() {
    let server = TestServer::start().await;
    let users: Vec<_> = (1..=4).map(|uid| server.user(uid)).collect();
    let mut tasks = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for i in 0..15 {
            let path = format!("/storage/col{}/item{i}", i % 3);
            let body = json!({"payload": format!("u{u}-{i}")});
            let put = user
                .request(reqwest::Method::PUT, &path)
                .header("Content-Type", "application/json");
            tasks.push(put.body(body.to_string()).send());
            tasks.push(
                user.request(reqwest::Method::GET, "/info/collections")
                    .send(),
            );
        }
    }
    let results = futures::future::join_all(tasks).await;
    for r in results {
        let r = r.unwrap();
        let status = r.status().as_u16();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
    }
    for (u, user) in users.iter().enumerate() {
        let counts = user.get("/info/collection_counts").await.json();
        assert_eq!(counts, json!({"col0": 5, "col1": 5, "col2": 5}));
        let item = user.get("/storage/col1/item4").await.json();
        assert_eq!(item["payload"], format!("u{u}-4"));
    }
}

mod sqlite_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn another_process_holding_the_write_lock_makes_requests_wait_not_fail() {
        let server = TestServer::start().await;
        let user = server.user(9);
        assert_eq!(
            user.put("/storage/tabs/a", json!({"payload": "first"}))
                .await
                .status,
            200
        );
        // Another connection (as an admin tool would) takes SQLite's write lock for a while.
        let db = server.db_path();
        let holder = std::thread::spawn(move || {
            let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
            conn.batch_execute("BEGIN IMMEDIATE; UPDATE collections SET name = name WHERE id = 1;")
                .unwrap();
            std::thread::sleep(Duration::from_millis(700));
            conn.batch_execute("COMMIT;").unwrap();
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let writes = (0..5).map(|i| {
            user.request(reqwest::Method::PUT, &format!("/storage/tabs/w{i}"))
                .header("Content-Type", "application/json")
                .body(json!({"payload": i.to_string()}).to_string())
                .send()
        });
        for r in futures::future::join_all(writes).await {
            let r = r.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        }
        holder.join().unwrap();
        let ids = user.get("/storage/tabs?sort=oldest").await.json();
        assert_eq!(ids.as_array().unwrap().len(), 6);
    }

    // SPEC 6.94: while every pooled connection is busy, __lbheartbeat__ answers 500 with how long
    // the pool has been exhausted; once one is free again it answers 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lbheartbeat_reports_an_exhausted_pool_until_it_recovers() {
        let server = TestServer::start_with(|s| s.syncstorage.database_pool_max_size = 1).await;
        let user = server.user(12);
        assert_eq!(
            user.put("/storage/tabs/a", json!({"payload": "x"}))
                .await
                .status,
            200
        );
        let db = server.db_path();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
            conn.batch_execute("BEGIN IMMEDIATE; UPDATE collections SET name = name WHERE id = 1;")
                .unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            conn.batch_execute("COMMIT;").unwrap();
        });
        locked_rx.recv().unwrap();
        // This write takes the pool's only connection and waits on the lock.
        let write = user
            .request(reqwest::Method::PUT, "/storage/tabs/b")
            .header("Content-Type", "application/json")
            .body(json!({"payload": "y"}).to_string())
            .send();
        let write = tokio::spawn(write);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = server.raw(reqwest::Method::GET, "/__lbheartbeat__").await;
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(
            (
                r.json()["active_connections"].clone(),
                r.json()["idle_connections"].clone()
            ),
            (json!(1), json!(0))
        );
        let first = r.json()["duration_ms"].as_u64().expect("duration_ms");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = server.raw(reqwest::Method::GET, "/__lbheartbeat__").await;
        assert_eq!(r.status, 500);
        assert!(
            r.json()["duration_ms"].as_u64().unwrap() >= first + 250,
            "{}",
            r.body
        );
        holder.join().unwrap();
        assert_eq!(write.await.unwrap().unwrap().status().as_u16(), 200);
        let r = server.raw(reqwest::Method::GET, "/__lbheartbeat__").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}
