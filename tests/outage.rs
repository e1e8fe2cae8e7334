//! A database that goes away gives clients 503 + Retry-After (never a hang or a 500), the
//! heartbeat reports it, and the server recovers by itself when the database returns. The
//! outage is made with a TCP relay in front of the real MySQL server that the test cuts and
//! restores (MySQL and PostgreSQL); SQLite, being a file, has no such outage.
#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

backend_matrix!();

/// Relays 127.0.0.1:<port> to the database server until cut.
struct Relay {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            target: target.to_owned(),
            tasks: Arc::default(),
        };
        relay.serve(listener).await;
        relay
    }

    async fn serve(&self, listener: TcpListener) {
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                tasks.lock().await.push(conn);
            }
        });
        self.tasks.lock().await.push(accept);
    }

    /// Closes the port and every relayed connection.
    async fn cut(&self) {
        for task in self.tasks.lock().await.drain(..) {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_503_and_recovers() {
    let Some(engine) = common::backends::current() else {
        return;
    };
    // A database of our own, reached through the relay.
    let scratch = TestServer::start().await;
    let direct = scratch.database_url.clone();
    // Spanner's URL names no host: its emulator host goes through the relay instead.
    let spanner = engine == "spanner";
    let target = if spanner {
        common::backends::spanner_emulator_host()
    } else {
        let authority = direct
            .split("://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        authority.rsplit('@').next().unwrap().to_owned()
    };
    let relay = Relay::start(&target).await;
    let mut relayed = direct.replacen(&target, &format!("127.0.0.1:{}", relay.port), 1);
    if engine == "mysql" {
        // mysql_async would otherwise switch a local connection to the Unix socket, around
        // the relay.
        relayed.push_str("?prefer_socket=false");
    }
    let server = TestServer::start_with(|s| {
        s.syncstorage.database_url = Some(relayed.clone());
        s.syncstorage.database_pool_connection_timeout = 2;
        if spanner {
            s.syncstorage.spanner_emulator_host = Some(format!("127.0.0.1:{}", relay.port));
        }
    })
    .await;
    let user = server.user(5);
    assert_eq!(
        user.put("/storage/tabs/a", json!({"payload": "before"}))
            .await
            .status,
        200
    );

    relay.cut().await;
    for attempt in 0..3 {
        let started = std::time::Instant::now();
        let r = user
            .put("/storage/tabs/b", json!({"payload": "during"}))
            .await;
        assert_eq!(r.status, 503, "attempt {attempt}: {}", r.body);
        assert_eq!(r.header("Retry-After"), Some("10"));
        assert_eq!(r.body, "0");
        // Bounded by the pool's connection timeout, not a hang.
        assert!(started.elapsed() < Duration::from_secs(20));
        let r = user.get("/storage/tabs").await;
        assert_eq!(r.status, 503, "{}", r.body);
    }
    let hb = server.raw(reqwest::Method::GET, "/__heartbeat__").await;
    assert_eq!(hb.status, 503);
    assert_eq!(hb.json()["status"], "Err");

    relay.restore().await;
    let mut recovered = None;
    for _ in 0..50 {
        let r = user.get("/storage/tabs/a").await;
        if r.status == 200 {
            recovered = Some(r);
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = recovered.expect("the server recovers once the database is back");
    assert_eq!(r.json()["payload"], "before");
    assert_eq!(
        user.put("/storage/tabs/b", json!({"payload": "after"}))
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .raw(reqwest::Method::GET, "/__heartbeat__")
            .await
            .status,
        200
    );
    // Nothing from the outage was half-written.
    assert_eq!(user.get("/storage/tabs/b").await.json()["payload"], "after");
}
