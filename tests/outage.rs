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

/// Relays 127.0.0.1:<port> to the database server until cut; `pause` stops forwarding (the
/// connections stay open and nothing is lost: a database that stops answering).
struct Relay {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    paused: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Copies one direction, holding what it read while the relay is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            target: target.to_owned(),
            tasks: Arc::default(),
            paused: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        relay.serve(listener).await;
        relay
    }

    async fn serve(&self, listener: TcpListener) {
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let paused = self.paused.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let paused = paused.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(&target).await {
                        let (client_r, client_w) = client.into_split();
                        let (up_r, up_w) = upstream.into_split();
                        tokio::join!(
                            pump(client_r, up_w, paused.subscribe()),
                            pump(up_r, client_w, paused.subscribe())
                        );
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

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener).await;
    }
}

/// A server whose database (a scratch one of the engine under test) is reached through a relay.
async fn relayed_server(
    engine: &str,
    adjust: impl FnOnce(&mut syncserver::settings::Settings),
) -> (TestServer, TestServer, Relay) {
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
        s.syncstorage.database_url = Some(relayed.clone().into());
        s.syncstorage.database_pool_connection_timeout = 2;
        if spanner {
            s.syncstorage.spanner_emulator_host = Some(format!("127.0.0.1:{}", relay.port));
        }
        adjust(s);
    })
    .await;
    (scratch, server, relay)
}

mod server_engines_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "not on SQLite: a database server behind a TCP relay (on_mysql, on_postgres, on_spanner)"]
    async fn database_outage_is_503_and_recovers() {
        let (_scratch, server, relay) = relayed_server(common::backends::engine(), |_| {}).await;
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
        recovers(&server, &user).await;
        // Nothing from the outage was half-written.
        assert_eq!(user.get("/storage/tabs/b").await.json()["payload"], "after");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "not on SQLite: a database server behind a TCP relay (on_mysql, on_postgres, on_spanner)"]
    async fn a_database_that_stops_answering_is_503_with_backoff_and_recovers() {
        let (_scratch, server, relay) = relayed_server(common::backends::engine(), |s| {
            s.syncstorage.database_request_timeout = 1;
            s.syncstorage.database_pool_max_size = 20;
        })
        .await;
        let user = server.user(6);
        assert_eq!(
            user.put("/storage/tabs/a", json!({"payload": "before"}))
                .await
                .status,
            200
        );
        // The database keeps its connections open but answers nothing.
        relay.pause(true);
        for attempt in 0..2 {
            let started = std::time::Instant::now();
            let r = user
                .put("/storage/tabs/b", json!({"payload": "during"}))
                .await;
            assert_eq!(r.status, 503, "attempt {attempt}: {}", r.body);
            assert_eq!(r.header("Retry-After"), Some("10"));
            assert_eq!(r.header("X-Weave-Backoff"), Some("10"));
            assert_eq!(r.body, "0");
            // Bounded by the request deadline (Spanner: its own step deadline), not a hang.
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            let r = user.get("/storage/tabs").await;
            assert_eq!(r.status, 503, "{}", r.body);
            assert_eq!(r.header("X-Weave-Backoff"), Some("10"));
        }
        let hb = server.raw(reqwest::Method::GET, "/__heartbeat__").await;
        assert_eq!(hb.status, 503);
        assert_eq!(hb.json()["status"], "Err");
        assert!(hb.json().get("database_msg").is_none(), "{}", hb.body);

        relay.pause(false);
        recovers(&server, &user).await;
        assert_eq!(user.get("/storage/tabs/b").await.json()["payload"], "after");
    }
}

/// Once the database is back: within 15 s the record written before is read again, a new write
/// succeeds and the heartbeat is 200.
async fn recovers(server: &TestServer, user: &User<'_>) {
    let mut recovered = None;
    for _ in 0..75 {
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
    let r = user
        .put("/storage/tabs/b", json!({"payload": "after"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        server
            .raw(reqwest::Method::GET, "/__heartbeat__")
            .await
            .status,
        200
    );
}
