//! What an operator sees: the Prometheus endpoint and StatsD after real traffic, the reason on
//! every refused request's log line, the truth of the tokenserver's `new_uid`, and no secret
//! in any log line or Sentry event. The server runs as its own process (its metrics recorder
//! and logger are per process), on the engine under test.
//!
//! Stand-ins: FxA's OAuth server (tests/common/fxa.rs; it lives on the internet) and Sentry's
//! ingestion endpoint (a local HTTP listener that keeps what the real Sentry client sends).
//! The StatsD listener is a plain UDP socket, which is all a StatsD server is to its clients.
#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::backends::{self, ScratchDatabase};
use common::fxa::{FakeFxa, SYNC_SCOPE, Signer, unix_now};
use serde_json::{Value, json};
use syncserver::auth::Secrets;
use syncserver::auth::hawk::{SignedRequest, sign};

backend_matrix!();

const MASTER_SECRET: &str = "obs-master-secret-0123456789";
/// The database password (where the engine lets a test choose one: MySQL and PostgreSQL).
const DB_PASSWORD: &str = "obs-db-pw-9876";

/// The server as a child process, its log (stdout) and its stderr collected as they come.
struct Server {
    child: Child,
    base: String,
    port: u16,
    metrics: Option<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    _db: Option<ScratchDatabase>,
    client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database URL for the engine under test carrying `DB_PASSWORD`, and the database.
fn database_with_password() -> (Option<String>, Option<ScratchDatabase>) {
    let Some(db) = ScratchDatabase::create() else {
        return (None, None);
    };
    let url = match backends::engine() {
        "postgres" => {
            // This server trusts local connections: the password is sent, and must not leak.
            db.url.replacen(
                "postgres://postgres@",
                &format!("postgres://postgres:{DB_PASSWORD}@"),
                1,
            )
        }
        "mysql" => {
            let name = db.url.rsplit('/').next().unwrap().to_owned();
            let server = db.url.trim_end_matches(&format!("/{name}")).to_owned();
            backends::admin_exec(
                &server,
                &format!(
                    "CREATE USER IF NOT EXISTS 'obs'@'%' IDENTIFIED BY '{DB_PASSWORD}'; \
                     GRANT ALL PRIVILEGES ON `{name}`.* TO 'obs'@'%'"
                ),
            );
            let hostport = server.rsplit('@').next().unwrap();
            format!("mysql://obs:{DB_PASSWORD}@{hostport}/{name}")
        }
        _ => db.url.clone(),
    };
    (Some(url), Some(db))
}

fn start(env: &[(&str, String)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = database_with_password();
    let mut cmd = common::syncserver_command();
    cmd.env("SYNC_HOST", "127.0.0.1")
        .env("SYNC_PORT", "0")
        .env("SYNC_DATA_DIR", dir.path())
        .env("SYNC_MASTER_SECRET", MASTER_SECRET)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = &url {
        cmd.env("SYNC_SYNCSTORAGE__DATABASE_URL", url);
        if url.starts_with("spanner://") {
            cmd.env(
                "SYNC_SYNCSTORAGE__SPANNER_EMULATOR_HOST",
                backends::spanner_emulator_host(),
            );
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = stdout.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // The start-up block ends with the statsd line; the rest of stderr is kept too.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut block = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("the server stopped before starting: {block}");
        }
        block.push_str(&line);
        if line.trim_start().starts_with("statsd") {
            break;
        }
    }
    stderr.lock().unwrap().push_str(&block);
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let value = |what: &str| {
        block
            .lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(what)
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {what} in the start-up block: {block}"))
    };
    let base = value("listening on");
    let port = base.rsplit(':').next().unwrap().parse().unwrap();
    // What an operator needs from the start-up block.
    assert_eq!(
        value("identity.sync.tokenserver.uri"),
        format!("{base}/1.0/sync/1.5")
    );
    assert_eq!(value("master secret"), "from the settings (master_secret)");
    assert!(value("data directory").starts_with('/'), "{block}");
    assert!(
        value("storage database").starts_with(url.as_deref().map_or("sqlite:", |u| &u[..5])),
        "{block}"
    );
    let metrics = Some(value("prometheus")).filter(|m| m != "off");
    Server {
        child,
        base,
        port,
        metrics,
        stdout,
        stderr,
        _dir: dir,
        _db: db,
        client: reqwest::Client::new(),
    }
}

impl Server {
    /// A Hawk header for `uid`'s request, signed now (or at `ts`), with `secret`'s token.
    fn auth(
        &self,
        secret: &str,
        uid: u64,
        method: &str,
        target: &str,
        ts: Option<SystemTime>,
    ) -> String {
        let expires = unix_now() as u64 + 3600;
        let (id, key) = Secrets::new(secret).credentials(uid, &self.base, expires);
        match ts {
            None => sign(
                &id,
                &key,
                SignedRequest {
                    method,
                    target,
                    host: "127.0.0.1",
                    port: self.port,
                },
            ),
            Some(ts) => {
                let credentials = hawk::Credentials {
                    id,
                    key: hawk::Key::new(key.as_bytes(), hawk::DigestAlgorithm::Sha256).unwrap(),
                };
                let header = hawk::RequestBuilder::new(method, "127.0.0.1", self.port, target)
                    .request()
                    .make_header_full(&credentials, ts, "nonce-1".to_owned())
                    .unwrap();
                format!("Hawk {header}")
            }
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> u16 {
        rb.send().await.unwrap().status().as_u16()
    }

    /// A storage request as `uid`, signed with the server's secret.
    async fn storage(
        &self,
        method: reqwest::Method,
        uid: u64,
        rest: &str,
        body: Option<Value>,
    ) -> u16 {
        self.storage_as(uid, method, &format!("/1.5/{uid}{rest}"), body)
            .await
    }

    /// A request to `target` with `uid`'s token (maybe for another user's path).
    async fn storage_as(
        &self,
        uid: u64,
        method: reqwest::Method,
        target: &str,
        body: Option<Value>,
    ) -> u16 {
        let auth = self.auth(MASTER_SECRET, uid, method.as_str(), target, None);
        let mut rb = self
            .client
            .request(method, format!("{}{target}", self.base))
            .header("Authorization", auth);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        self.send(rb).await
    }

    async fn token(&self, bearer: &str, key_id: &str) -> u16 {
        self.send(
            self.client
                .get(format!("{}/1.0/sync/1.5", self.base))
                .header("Authorization", format!("Bearer {bearer}"))
                .header("X-KeyID", key_id),
        )
        .await
    }

    /// The JSON log lines so far, after waiting for `settle` (the logger is asynchronous).
    async fn log(&self) -> Vec<Value> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stdout
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `reason` of the one request log line for `method path` with `status`.
    async fn reason(&self, method: &str, path: &str, status: u16) -> String {
        let lines = self.log().await;
        let found: Vec<&Value> = lines
            .iter()
            .map(|l| &l["Fields"])
            .filter(|f| f["msg"] == "request" && f["method"] == method && f["path"] == path)
            .filter(|f| f["status"] == status)
            .collect();
        assert!(
            !found.is_empty(),
            "no {method} {path} {status} line in {lines:#?}"
        );
        found
            .last()
            .unwrap()
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no reason on {:?}", found.last()))
            .to_owned()
    }

    async fn scrape(&self) -> String {
        let url = self.metrics.as_deref().expect("prometheus is on");
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
}

/// The value of the sample `name{labels}` (labels given as they are rendered), 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            key.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

fn key_id(generation: u64) -> String {
    format!("{generation}-AAAAAAAAAAAAAAAAAAAAAA")
}

/// A local endpoint that answers 200 to anything and keeps the bodies (Sentry's envelopes).
fn sentry_stand_in() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                keep.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            });
        }
    });
    (format!("http://public@127.0.0.1:{port}/1"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_statsd_count_real_traffic() {
    let statsd = UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let fxa = FakeFxa::start();
    let server = start(&[
        ("SYNC_METRICS__PROMETHEUS_LISTEN", "127.0.0.1:0".into()),
        ("SYNC_STATSD_HOST", "127.0.0.1".into()),
        (
            "SYNC_STATSD_PORT",
            statsd.local_addr().unwrap().port().to_string(),
        ),
        ("SYNC_TOKENSERVER__FXA_OAUTH_SERVER_URL", fxa.url.clone()),
        (
            "SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK",
            Signer::shared(0).jwk.to_string(),
        ),
    ]);
    let before = server.scrape().await;
    assert_eq!(
        sample(&before, "syncserver_build_info", &[]),
        1.0,
        "{before}"
    );
    assert_eq!(
        sample(
            &before,
            "syncserver_http_request_duration_seconds_count",
            &[]
        ),
        0.0
    );

    let uid = 41;
    use reqwest::Method;
    let put = server
        .storage(
            Method::PUT,
            uid,
            "/storage/tabs/a",
            Some(json!({"payload": "x"})),
        )
        .await;
    assert_eq!(put, 200);
    let records = json!([{"id": "b", "payload": "y"}, {"id": "c", "payload": "z"}]);
    let target = format!("/1.5/{uid}/storage/tabs?batch=true");
    let auth = server.auth(MASTER_SECRET, uid, "POST", &target, None);
    let r = server
        .client
        .post(format!("{}{target}", server.base))
        .header("Authorization", auth)
        .json(&records)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let batch = r.json::<Value>().await.unwrap()["batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let commit = server
        .storage(
            Method::POST,
            uid,
            &format!("/storage/tabs?batch={batch}&commit=true"),
            Some(json!([])),
        )
        .await;
    assert_eq!(commit, 200);
    assert_eq!(
        server
            .storage(Method::GET, uid, "/storage/tabs?full=1", None)
            .await,
        200
    );
    // Another user's path, with this user's token.
    let other = format!("/1.5/{}/info/collections", uid + 1);
    assert_eq!(server.storage_as(uid, Method::GET, &other, None).await, 400);
    // The tokenserver: a new user, then the same one again.
    let jwt = Signer::shared(0).access_token("0bs0bs0bs0bs0bs0bs0bs0bs0bs0bs01", Some(7));
    assert_eq!(server.token(&jwt, &key_id(7)).await, 200);
    assert_eq!(server.token(&jwt, &key_id(7)).await, 200);

    let after = server.scrape().await;
    let count = |route: &str, status: &str| {
        sample(
            &after,
            "syncserver_http_request_duration_seconds_count",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(count("put_bso", "200"), 1.0, "{after}");
    assert_eq!(count("post_collection_batch", "202"), 1.0, "{after}");
    assert_eq!(count("post_collection_batch", "200"), 1.0, "{after}");
    assert_eq!(count("get_collection", "200"), 1.0, "{after}");
    assert_eq!(count("token", "200"), 2.0, "{after}");
    assert_eq!(
        sample(
            &after,
            "syncserver_http_refused_total",
            &[("reason", "uid mismatch")]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "syncserver_records_accepted_total", &[]),
        3.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "syncserver_batches_committed_total", &[]),
        1.0
    );
    for (outcome, n) in [("new_user", 1.0), ("existing", 1.0)] {
        assert_eq!(
            sample(
                &after,
                "syncserver_tokenserver_tokens_total",
                &[("outcome", outcome)]
            ),
            n,
            "{after}"
        );
    }
    for pool in ["storage", "tokenserver"] {
        assert!(
            sample(
                &after,
                "syncserver_db_pool_max_connections",
                &[("pool", pool)]
            ) >= 1.0,
            "{after}"
        );
    }

    // StatsD got upstream's names, with the storage prefix, and the pool gauges.
    let mut datagrams = String::new();
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match statsd.recv(&mut buf) {
            Ok(n) => {
                datagrams.push_str(&String::from_utf8_lossy(&buf[..n]));
                datagrams.push('\n');
            }
            Err(_) if datagrams.contains("token_creation") => break,
            Err(_) => {}
        }
    }
    for expected in [
        "syncstorage.request.put_bso:1|c",
        "syncstorage.request.post_collection_batch:1|c",
        "syncstorage.storage.pool.connections.idle:",
        "syncstorage.tokenserver.token_creation:",
        "syncstorage.tokenserver.request.token:1|c",
    ] {
        assert!(
            datagrams.contains(expected),
            "{expected} not in {datagrams}"
        );
    }
    // Never on the public port.
    let r = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_log_their_reason_and_no_secret_is_logged() {
    use reqwest::Method;
    let fxa = FakeFxa::start();
    let (dsn, sentry_events) = sentry_stand_in();
    // An FxA that refuses connections: a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start(&[
        ("SYNC_TOKENSERVER__FXA_OAUTH_SERVER_URL", fxa.url.clone()),
        (
            "SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK",
            Signer::shared(0).jwk.to_string(),
        ),
        ("SYNC_HAWK__MAX_SKEW_SECONDS", "60".into()),
        ("SYNC_SYNCSTORAGE__ENABLE_QUOTA", "true".into()),
        ("SYNC_SYNCSTORAGE__ENFORCE_QUOTA", "true".into()),
        ("SYNC_SYNCSTORAGE__LIMITS__MAX_QUOTA_LIMIT", "3000".into()),
        ("SENTRY_DSN", dsn),
    ]);
    let uid = 42;
    let path = format!("/1.5/{uid}/info/collections");
    let get = |auth: Option<String>| {
        let mut rb = server.client.get(format!("{}{path}", server.base));
        if let Some(auth) = auth {
            rb = rb.header("Authorization", auth);
        }
        server.send(rb)
    };
    // The request line carries the parameters that explain a sync, and how many ids.
    let listing =
        format!("/1.5/{uid}/storage/tabs?full=1&newer=12.5&limit=10&sort=newest&ids=a,b,c&x=y");
    assert_eq!(
        server
            .storage_as(uid, reqwest::Method::GET, &listing, None)
            .await,
        200
    );
    let lines = server.log().await;
    let line = lines
        .iter()
        .map(|l| &l["Fields"])
        .find(|f| f["msg"] == "request" && f["path"] == format!("/1.5/{uid}/storage/tabs"))
        .expect("the listing's request line");
    assert_eq!(
        line["query"], "full=1 newer=12.5 limit=10 sort=newest ids=3",
        "{line}"
    );
    assert!(line.get("reason").is_none(), "{line}");
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "hawk: missing header"),
        (Some("Hawk id=\"x".into()), 401, "hawk: bad header"),
        (
            Some(server.auth(MASTER_SECRET, uid, "GET", "/1.5/42/info/other", None)),
            401,
            "hawk: bad mac",
        ),
        (
            Some(server.auth(
                MASTER_SECRET,
                uid,
                "GET",
                &path,
                Some(SystemTime::now() - Duration::from_secs(600)),
            )),
            401,
            "hawk: ts skew",
        ),
        (
            Some(server.auth("another-secret", uid, "GET", &path, None)),
            401,
            "token: bad signature",
        ),
    ];
    for (auth, status, reason) in cases {
        assert_eq!(get(auth).await, status, "{reason}");
        assert_eq!(server.reason("GET", &path, status).await, reason);
    }
    // An expired token (info/collections forgives expiry: another route).
    let (id, key) = Secrets::new(MASTER_SECRET).credentials(uid, &server.base, 1);
    let target = format!("/1.5/{uid}/storage/tabs");
    let auth = sign(
        &id,
        &key,
        SignedRequest {
            method: "GET",
            target: &target,
            host: "127.0.0.1",
            port: server.port,
        },
    );
    let r = server
        .client
        .get(format!("{}{target}", server.base))
        .header("Authorization", auth);
    assert_eq!(server.send(r).await, 401);
    assert_eq!(server.reason("GET", &target, 401).await, "token: expired");
    // Another user's path.
    assert_eq!(
        server.storage(Method::GET, uid, "/storage/x", None).await,
        200
    );
    let other = format!("/1.5/{}/storage/x", uid + 1);
    assert_eq!(server.storage_as(uid, Method::GET, &other, None).await, 400);
    assert_eq!(server.reason("GET", &other, 400).await, "uid mismatch");
    // Over quota (403).
    let big = "q".repeat(2000);
    let server_ref = &server;
    let put = |id: &'static str| {
        let rest = format!("/storage/tabs/{id}");
        let server = server_ref;
        let body = json!({"payload": big});
        async move { server.storage(Method::PUT, uid, &rest, Some(body)).await }
    };
    assert_eq!(put("a").await, 200);
    assert_eq!(put("b").await, 200);
    assert_eq!(put("c").await, 403);
    assert_eq!(
        server
            .reason("PUT", &format!("/1.5/{uid}/storage/tabs/c"), 403)
            .await,
        "quota"
    );
    // A client known to crash (503).
    let r = server
        .client
        .get(format!("{}/1.5/{uid}/info/collections", server.base))
        .header(
            "User-Agent",
            "Firefox-iOS-Sync/3.0b1 (iPhone; iPhone OS 9.2) (Firefox)",
        );
    assert_eq!(server.send(r).await, 503);
    assert_eq!(server.reason("GET", &path, 503).await, "rejected client");

    // The tokenserver: each rule that refused says so.
    let token_path = "/1.0/sync/1.5";
    let sub = "0bs0bs0bs0bs0bs0bs0bs0bs0bs0bs02";
    let wrong_scope = Signer::shared(0).sign(
        "at+jwt",
        &json!({"sub": sub, "scope": "profile", "exp": unix_now() + 300}),
    );
    assert_eq!(server.token(&wrong_scope, &key_id(5)).await, 401);
    assert_eq!(
        server.reason("GET", token_path, 401).await,
        "oauth: bad scope"
    );
    let stranger = Signer::shared(2).access_token(sub, Some(5));
    assert_eq!(server.token(&stranger, &key_id(5)).await, 401);
    assert_eq!(
        server.reason("GET", token_path, 401).await,
        "oauth: bad signature"
    );
    let good = Signer::shared(0).access_token(sub, Some(5));
    assert_eq!(server.token(&good, &key_id(5)).await, 200);
    assert_eq!(server.token(&good, &key_id(5)).await, 200);
    let older = Signer::shared(0).access_token(sub, Some(4));
    assert_eq!(server.token(&older, &key_id(5)).await, 401);
    assert_eq!(
        server.reason("GET", token_path, 401).await,
        "generation: older than known"
    );
    let _ = SYNC_SCOPE;
    // new_uid is true exactly for the request that made the row.
    let issued: Vec<Value> = server
        .log()
        .await
        .into_iter()
        .map(|l| l["Fields"].clone())
        .filter(|f| f["msg"] == "token issued")
        .collect();
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(
        (&issued[0]["new_uid"], &issued[1]["new_uid"]),
        (&json!(true), &json!(false))
    );

    // Sentry gets the server faults: /__error__ is one.
    assert_eq!(
        server
            .send(server.client.get(format!("{}/__error__", server.base)))
            .await,
        500
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sentry_events.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = sentry_events.lock().unwrap().join("\n");
    assert!(
        events.contains("__error__ test error"),
        "no Sentry event: {events}"
    );

    // An FxA that cannot be reached is a 503 with its reason (an opaque token goes to FxA).
    drop(fxa);
    let server_unreachable = start(&[
        (
            "SYNC_TOKENSERVER__FXA_OAUTH_SERVER_URL",
            format!("http://127.0.0.1:{closed}"),
        ),
        ("SYNC_TOKENSERVER__FXA_OAUTH_REQUEST_TIMEOUT", "2".into()),
    ]);
    let opaque = "a".repeat(64);
    assert_eq!(server_unreachable.token(&opaque, &key_id(5)).await, 503);
    assert_eq!(
        server_unreachable.reason("GET", token_path, 503).await,
        "fxa: unreachable"
    );

    // Nothing anywhere carries the master secret or the database password.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in [&server, &server_unreachable] {
        let everything = format!(
            "{}\n{}\n{events}",
            s.stdout.lock().unwrap(),
            s.stderr.lock().unwrap()
        );
        assert!(
            everything.len() > 1000,
            "too little was logged to judge: {everything}"
        );
        for secret in [MASTER_SECRET, DB_PASSWORD] {
            assert!(
                !everything.contains(secret),
                "{secret} leaked:\n{everything}"
            );
        }
        // Hawk headers and bearer tokens are not logged either.
        assert!(!everything.contains("Hawk id="), "a Hawk header was logged");
        assert!(!everything.contains(&opaque), "a bearer token was logged");
    }
}
