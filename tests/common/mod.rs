//! Black-box test harness: starts the real server on 127.0.0.1:0 with its SQLite database in a
//! temporary directory, and signs requests with Hawk exactly as a Firefox client does.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::Value;
use syncserver::auth::hawk::{SignedRequest, sign};
use syncserver::auth::{Secrets, TokenPayload, tokenlib};
use syncserver::settings::Settings;

pub const MASTER_SECRET: &str = "test-master-secret";

pub struct TestServer {
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
    handle: actix_web::dev::ServerHandle,
    pub client: reqwest::Client,
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
        adjust(&mut settings);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match syncserver::server::start(settings) {
                    Ok(running) => {
                        tx.send(Ok((running.addr, running.handle()))).unwrap();
                        let _ = running.server.await;
                    }
                    Err(e) => tx.send(Err(e)).unwrap(),
                }
            })
        });
        let (addr, handle) = rx.recv().expect("server thread").expect("server start");
        TestServer {
            port: addr.port(),
            base: format!("http://127.0.0.1:{}", addr.port()),
            dir,
            handle,
            client: reqwest::Client::new(),
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
        let secrets = Secrets::new(secret);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let payload = TokenPayload {
            uid,
            node: self.base.clone(),
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
        User {
            server: self,
            uid,
            id,
            key,
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

    /// A Hawk-signed request to an absolute path (e.g. another user's).
    pub fn request_abs(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = reqwest::Url::parse(&format!("{}{path}", self.server.base)).unwrap();
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let auth = sign(
            &self.id,
            &self.key,
            SignedRequest {
                method: method.as_str(),
                target: &target,
                host: "127.0.0.1",
                port: self.server.port,
            },
        );
        self.server
            .client
            .request(method, url)
            .header("Authorization", auth)
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        Resp::from(rb.send().await.unwrap()).await
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
