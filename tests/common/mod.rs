//! Black-box test harness: starts the real server on 127.0.0.1:0 with a database of its own
//! (a SQLite file in a temporary directory, or a fresh MySQL database), and signs requests with
//! Hawk exactly as a Firefox client does.
//!
//! Backends: a test binary runs on SQLite; its `on_<backend>` tests (from `backend_matrix!`)
//! re-run the same binary with `SYNC_TEST_BACKEND=<backend>` when that server is reachable,
//! and say plainly on stderr when it is not. `SYNC_TEST_REQUIRE_BACKENDS=mysql` (CI) turns a
//! missing server into a failure.
#![allow(dead_code)]

pub mod backends;

/// The server binary as a child process, without the `SYNC_*` variables of the test run
/// (`SYNC_TEST_*`...), which it would refuse as unknown settings: each test sets its own.
pub fn syncserver_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_syncserver"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SYNC_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `syncserver ARGS` with `server`'s settings (data dir, storage and tokenserver databases,
/// master secret), as an operator runs it beside the server; its output.
pub fn syncserver_beside(server: &TestServer, args: &[&str]) -> std::process::Output {
    let mut cmd = syncserver_command();
    if server.database_url.starts_with("spanner://") {
        cmd.env(
            "SYNC_SYNCSTORAGE__SPANNER_EMULATOR_HOST",
            backends::spanner_emulator_host(),
        );
    }
    cmd.args(args)
        .env("SYNC_DATA_DIR", server.dir.path())
        .env("SYNC_SYNCSTORAGE__DATABASE_URL", &server.database_url)
        .env(
            "SYNC_TOKENSERVER__DATABASE_URL",
            &server.tokenserver_database_url,
        )
        .env("SYNC_MASTER_SECRET", MASTER_SECRET)
        .output()
        .unwrap()
}

pub mod db;
pub mod fxa;
pub mod proxy;
pub mod storage;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use syncserver::auth::hawk::{SignedRequest, sign};
use syncserver::auth::{Secrets, TokenPayload, tokenlib};
use syncserver::settings::Settings;

pub const MASTER_SECRET: &str = "test-master-secret";

pub struct TestServer {
    /// The server's own port (not the proxy's).
    pub port: u16,
    /// Where requests go: the server, or (`SYNC_TEST_VIA=nginx`) the proxy in front of it.
    pub base: String,
    pub dir: tempfile::TempDir,
    /// The storage database this server uses.
    pub database_url: String,
    /// The tokenserver's database (when the tokenserver is on).
    pub tokenserver_database_url: String,
    handle: actix_web::dev::ServerHandle,
    pub client: reqwest::Client,
    /// Dropped with the server (a MySQL database of its own).
    _database: Option<backends::ScratchDatabase>,
    /// The proxy in front, in a `through_nginx` run.
    _proxy: Option<proxy::Nginx>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed the default test settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::load_from(None, Vec::new()).expect("default settings");
        settings.port = 0;
        settings.master_secret = MASTER_SECRET.into();
        settings.data_dir = dir.path().to_path_buf();
        // Storage suites mint their own tokens; tests/tokenserver.rs turns it on.
        settings.tokenserver.enabled = false;
        let proxy_port = proxy::via_nginx().then(proxy::free_port);
        if let Some(port) = proxy_port {
            settings.public_url = Some(format!("https://localhost:{port}{}", proxy::PREFIX));
        } else if proxy::via_prefix() {
            // Requests go straight to the server, under the path, signed for it as they arrive.
            settings.public_url = Some(format!("https://public.example.net{}", proxy::PREFIX));
        }
        let database = backends::ScratchDatabase::create();
        if let Some(db) = &database {
            settings.syncstorage.database_url = Some(db.url.clone().into());
            if db.url.starts_with("spanner://") {
                settings.syncstorage.spanner_emulator_host =
                    Some(backends::spanner_emulator_host());
            }
        }
        adjust(&mut settings);
        let database_url = settings.storage_url();
        let tokenserver_database_url = settings.tokenserver_url();
        if let Some(engine) = backends::current() {
            // A test that overrides the URL must still be on the engine under test.
            assert!(
                database_url.starts_with(engine),
                "{engine} run, but the server uses {database_url}"
            );
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match syncserver::server::start(settings).await {
                    Ok(running) => {
                        tx.send(Ok((running.addr, running.handle()))).unwrap();
                        let _ = running.server.await;
                    }
                    Err(e) => tx.send(Err(e)).unwrap(),
                }
            })
        });
        let (addr, handle) = rx.recv().expect("server thread").expect("server start");
        let (base, client, proxy) = match proxy_port {
            Some(port) => (
                format!("https://localhost:{port}{}", proxy::PREFIX),
                proxy::https_client(),
                Some(proxy::Nginx::start(
                    port,
                    addr.port(),
                    proxy::Config::Documented,
                )),
            ),
            None if proxy::via_prefix() => (
                format!("http://127.0.0.1:{}{}", addr.port(), proxy::PREFIX),
                reqwest::Client::new(),
                None,
            ),
            None => (
                format!("http://127.0.0.1:{}", addr.port()),
                reqwest::Client::new(),
                None,
            ),
        };
        TestServer {
            port: addr.port(),
            base,
            dir,
            database_url,
            tokenserver_database_url,
            handle,
            client,
            _database: database,
            _proxy: proxy,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("syncserver.db")
    }

    /// A user with a token valid for an hour.
    pub fn user(&self, uid: u64) -> User<'_> {
        self.user_with(uid, 3600.0, MASTER_SECRET)
    }

    /// A user whose token expires `expires_in` seconds from now, signed with `secret`.
    pub fn user_with(&self, uid: u64, expires_in: f64, secret: &str) -> User<'_> {
        let (id, key) = credentials(uid, &self.base, expires_in, secret);
        User {
            server: self,
            uid,
            id,
            key,
        }
    }

    /// What a client signs for `path` here: the host, port and target (with the query) of
    /// `base` + `path`, as Firefox signs what it calls (the proxy's, in a proxy run).
    pub fn signing(&self, path: &str) -> (String, u16, String) {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base)).unwrap();
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        (
            url.host_str().unwrap().to_owned(),
            url.port_or_known_default().unwrap(),
            target,
        )
    }

    /// A client builder for this server (trusting the proxy's certificate in a proxy run).
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        if self._proxy.is_some() {
            proxy::https_client_builder()
        } else {
            reqwest::Client::builder()
        }
    }

    /// An unsigned request to an absolute path.
    pub async fn raw(&self, method: Method, path: &str) -> Resp {
        Resp::from(
            self.client
                .request(method, format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::mem::drop(handle.stop(false));
    }
}

pub struct User<'a> {
    pub server: &'a TestServer,
    pub uid: u64,
    pub id: String,
    pub key: String,
}

impl User<'_> {
    /// `/1.5/{uid}` + `rest`.
    pub fn path(&self, rest: &str) -> String {
        format!("/1.5/{}{rest}", self.uid)
    }

    /// A Hawk-signed request to `/1.5/{uid}{rest}`.
    pub fn request(&self, method: Method, rest: &str) -> reqwest::RequestBuilder {
        self.request_abs(method, &self.path(rest))
    }

    /// The `Authorization` header for one request to an absolute path on this server.
    pub fn authorization(&self, method: &str, path: &str) -> String {
        let (host, port, target) = self.server.signing(path);
        sign(
            &self.id,
            &self.key,
            SignedRequest {
                method,
                target: &target,
                host: &host,
                port,
            },
        )
    }

    /// A Hawk-signed request to an absolute path (e.g. another user's).
    pub fn request_abs(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = reqwest::Url::parse(&format!("{}{path}", self.server.base)).unwrap();
        let auth = self.authorization(method.as_str(), path);
        self.server
            .client
            .request(method, url)
            .header("Authorization", auth)
    }

    /// A signed request whose response is not read (for streaming bodies).
    pub async fn send_raw_request(&self, method: Method, rest: &str) -> reqwest::Response {
        self.request(method, rest).send().await.unwrap()
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        send_rb(rb).await
    }

    pub async fn get(&self, rest: &str) -> Resp {
        self.send(self.request(Method::GET, rest)).await
    }

    pub async fn delete(&self, rest: &str) -> Resp {
        self.send(self.request(Method::DELETE, rest)).await
    }

    pub async fn put(&self, rest: &str, body: Value) -> Resp {
        self.send(
            self.request(Method::PUT, rest)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post(&self, rest: &str, body: Value) -> Resp {
        self.send(
            self.request(Method::POST, rest)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    async fn from(r: reqwest::Response) -> Resp {
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A timestamp header as milliseconds.
    pub fn ts_header(&self, name: &str) -> u64 {
        ts_millis(
            self.header(name)
                .unwrap_or_else(|| panic!("missing {name}")),
        )
    }

    pub fn last_modified(&self) -> u64 {
        self.ts_header("X-Last-Modified")
    }
}

/// "123.45" → 123450.
pub fn ts_millis(text: &str) -> u64 {
    syncserver::protocol::SyncTimestamp::parse(text)
        .unwrap()
        .as_millis()
}

/// A JSON number timestamp as milliseconds (exact, from its text).
pub fn json_ts(v: &Value) -> u64 {
    ts_millis(&v.to_string())
}

/// Sleeps past the current 10 ms tick so the next write gets a later timestamp.
pub async fn next_tick() {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

/// Sends a request built outside `User` (custom Authorization, client or headers).
pub async fn send_rb(rb: reqwest::RequestBuilder) -> Resp {
    Resp::from(rb.send().await.unwrap()).await
}

/// Milliseconds → the wire text of a timestamp (seconds, exactly two decimals).
pub fn ts_text(ms: u64) -> String {
    format!("{}.{:02}", ms / 1000, (ms % 1000) / 10)
}

/// The client clock in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sleeps for `ms` milliseconds.
pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---- values ----

pub fn strs(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

pub fn set<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The elements of a JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// A JSON array of id strings (a listing without `full`), sorted.
pub fn sorted_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The keys of a JSON object as a sorted set.
pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

// ---- assertions ----

/// A protocol error: status, bare Weave number body (exact text), JSON content type and
/// X-Weave-Timestamp.
pub fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_error_bare(r, status, code, what);
    assert!(
        r.header("X-Weave-Timestamp").is_some(),
        "{what}: no X-Weave-Timestamp"
    );
}

/// Like `assert_error`, for the responses SPEC 1.8 sends without X-Weave-Timestamp (Dockerflow
/// paths, rejected user agents).
pub fn assert_error_bare(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.body, code, "{what}: body");
    assert!(
        r.header("Content-Type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: Content-Type {:?}",
        r.header("Content-Type")
    );
}

/// Asserts a storage error: `status`, `Content-Type: application/json` and a body that is the
/// Weave code as JSON.
pub fn assert_json_error(r: &Resp, status: u16, code: i64) {
    assert_eq!(r.status, status, "body: {:?}", r.body);
    assert_eq!(r.json(), json!(code), "body: {:?}", r.body);
    let ct = r.header("Content-Type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
}

/// Asserts a successful PUT: 200, bare timestamp body equal to X-Last-Modified and
/// X-Weave-Timestamp; returns it.
pub fn assert_put_ok(r: &Resp) -> u64 {
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.last_modified();
    assert_eq!(
        json_ts(&r.json()),
        t,
        "PUT body must be the bare new timestamp"
    );
    assert_eq!(r.ts_header("X-Weave-Timestamp"), t);
    t
}

/// Asserts a successful non-batch POST and returns (modified, success, failed).
pub fn assert_post_ok(r: &Resp) -> (u64, Vec<String>, Value) {
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let t = json_ts(&body["modified"]);
    assert_eq!(r.last_modified(), t, "X-Last-Modified must equal modified");
    (t, strings(&body["success"]), body["failed"].clone())
}

// ---- requests ----

/// PUT one item to `/storage/{coll}/{id}`; asserts it succeeded (`assert_put_ok`) and returns
/// its timestamp.
pub async fn put_ok(user: &User<'_>, coll: &str, id: &str, body: Value) -> u64 {
    let r = user.put(&format!("/storage/{coll}/{id}"), body).await;
    assert_eq!(r.status, 200, "PUT {coll}/{id}: {}", r.body);
    assert_put_ok(&r)
}

/// POST `items` (non-batch) to `/storage/{coll}`; asserts every item succeeded, in order, and
/// returns `modified` (equal to X-Last-Modified).
pub async fn post_ok(user: &User<'_>, coll: &str, items: Value) -> u64 {
    let r = user.post(&format!("/storage/{coll}"), items.clone()).await;
    assert_eq!(r.status, 200, "POST {coll}: {}", r.body);
    let (t, _, failed) = assert_post_ok(&r);
    let sent: Vec<Value> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(r.json()["success"], Value::Array(sent), "{}", r.body);
    assert_eq!(failed, json!({}), "{}", r.body);
    t
}

/// The ids in a collection, sorted.
pub async fn ids_in(user: &User<'_>, collection: &str) -> BTreeSet<String> {
    let r = user.get(&format!("/storage/{collection}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    strings(&r.json()).into_iter().collect()
}

/// A tokenlib token id and its Hawk key for `uid` on `node`, as a tokenserver sharing `secret`
/// mints them, expiring `expires_in` seconds from now.
pub fn credentials(uid: u64, node: &str, expires_in: f64, secret: &str) -> (String, String) {
    let secrets = Secrets::new(secret);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let payload = TokenPayload {
        uid,
        node: node.to_owned(),
        expires: (now + expires_in).round(),
        salt: tokenlib::new_salt(),
        fxa_uid: format!("{uid:032x}"),
        fxa_kid: "0000000001234-qqo".into(),
        hashed_fxa_uid: String::new(),
        hashed_device_id: String::new(),
        tokenserver_origin: Some("rust".into()),
    };
    let id = secrets.make_token(&payload);
    let key = secrets.derived_secret(&id, &payload.salt);
    (id, key)
}

/// `/info/collections` body and its X-Last-Modified, for "nothing changed" checks.
pub async fn info_collections(user: &User<'_>) -> (Value, u64) {
    let r = user.get("/info/collections").await;
    assert_eq!(r.status, 200, "{}", r.body);
    (r.json(), r.last_modified())
}

/// A raw-body request with an explicit Content-Type (`None` = no Content-Type header).
pub async fn send_raw(
    user: &User<'_>,
    method: Method,
    rest: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Resp {
    let mut rb = user.request(method, rest).body(body);
    if let Some(ct) = content_type {
        rb = rb.header("Content-Type", ct);
    }
    user.send(rb).await
}

pub async fn put_raw(
    user: &User<'_>,
    rest: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Resp {
    send_raw(user, Method::PUT, rest, Some(content_type), body).await
}

pub async fn post_raw(
    user: &User<'_>,
    rest: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Resp {
    send_raw(user, Method::POST, rest, Some(content_type), body).await
}
