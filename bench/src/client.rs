//! The Hawk-signing HTTP client and the per-client recorder of latencies, statuses and
//! verification problems.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde::Serialize;

use syncserver::auth::Secrets;
use syncserver::auth::hawk::{SignedRequest, sign};

use crate::model::Problem;

/// Where the server is and how to mint credentials for it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host:port` plus any path prefix, no trailing slash.
    pub base: String,
    host: String,
    port: u16,
    secrets: Secrets,
}

impl Endpoint {
    pub fn new(url: &str, master_secret: &str) -> Result<Endpoint, String> {
        let u = Url::parse(url).map_err(|e| format!("--url {url:?}: {e}"))?;
        let host = u
            .host_str()
            .ok_or_else(|| format!("--url {url:?} has no host"))?
            .to_owned();
        let port = u
            .port_or_known_default()
            .ok_or_else(|| format!("--url {url:?} has no port"))?;
        Ok(Endpoint {
            base: url.trim_end_matches('/').to_owned(),
            host,
            port,
            secrets: Secrets::new(master_secret),
        })
    }

    /// Hawk credentials for `uid`, as a tokenserver sharing the master secret would issue, with
    /// the server's URL as the node.
    pub fn credentials(&self, uid: u64) -> Creds {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (id, key) = self.secrets.credentials(uid, &self.base, now + 24 * 3600);
        Creds { uid, id, key }
    }
}

#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u64,
    id: String,
    key: String,
}

/// A response with an accepted status.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a request did not get an accepted status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// A 4xx: the server refused and wrote nothing.
    Refused(u16),
    /// A 5xx, or no answer: a write may or may not have happened.
    Unknown,
}

/// The measured window; requests that complete outside it are not in the figures.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

/// Live counters for the progress lines on stderr.
#[derive(Debug, Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub problems: AtomicU64,
}

/// Latencies and outcomes of one request type.
#[derive(Debug, Clone)]
pub struct TypeStats {
    pub hist: Histogram<u64>,
    pub ok: u64,
    /// Non-accepted outcomes by status ("transport" for no answer).
    pub errors: BTreeMap<String, u64>,
}

impl Default for TypeStats {
    fn default() -> Self {
        TypeStats::new()
    }
}

impl TypeStats {
    pub fn new() -> TypeStats {
        TypeStats {
            // 1 µs .. 10 min, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn merge(&mut self, other: &TypeStats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Verification problems: counted by kind, with a few examples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyLog {
    pub checks: u64,
    pub records_checked: u64,
    pub errors: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 20;

impl VerifyLog {
    pub fn merge(&mut self, other: &VerifyLog) {
        self.checks += other.checks;
        self.records_checked += other.records_checked;
        self.errors += other.errors;
        for (k, v) in &other.by_kind {
            *self.by_kind.entry(k.clone()).or_default() += v;
        }
        for e in &other.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }
}

/// What one client saw.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Within the measured window, by request type.
    pub types: BTreeMap<&'static str, TypeStats>,
    /// Non-accepted outcomes outside the window (set-up, warm-up, final check), by status.
    pub other_errors: BTreeMap<String, u64>,
    /// Writes whose outcome was unknown (5xx or no answer), whenever they happened.
    pub uncertain_writes: u64,
    /// Records a POST reported in `failed`.
    pub failed_records: u64,
    pub verify: VerifyLog,
}

impl Recorder {
    pub fn merge(&mut self, other: &Recorder) {
        for (k, v) in &other.types {
            match self.types.get_mut(k) {
                Some(t) => t.merge(v),
                None => {
                    self.types.insert(k, v.clone());
                }
            }
        }
        for (k, v) in &other.other_errors {
            *self.other_errors.entry(k.clone()).or_default() += v;
        }
        self.uncertain_writes += other.uncertain_writes;
        self.failed_records += other.failed_records;
        self.verify.merge(&other.verify);
    }
}

/// One closed-loop client: an HTTP client (shared pool), its recorder and its clock window.
pub struct Client {
    http: reqwest::Client,
    endpoint: Arc<Endpoint>,
    window: Option<Window>,
    progress: Arc<Progress>,
    pub rec: Recorder,
}

/// A request to send.
pub struct Req<'a> {
    pub kind: &'static str,
    pub method: Method,
    /// Path and query after the base URL, e.g. `/1.5/7/info/collections`.
    pub target: String,
    pub body: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
    /// Statuses that count as success besides 2xx (e.g. 404 for a fresh account's meta/global).
    pub also_ok: &'a [u16],
}

impl<'a> Req<'a> {
    pub fn new(kind: &'static str, method: Method, target: String) -> Req<'a> {
        Req {
            kind,
            method,
            target,
            body: None,
            headers: Vec::new(),
            also_ok: &[],
        }
    }
    pub fn json(mut self, body: Vec<u8>) -> Self {
        self.headers
            .push(("Content-Type", "application/json".to_owned()));
        self.body = Some(body);
        self
    }
    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
    pub fn also_ok(mut self, statuses: &'a [u16]) -> Self {
        self.also_ok = statuses;
        self
    }
}

/// A shared connection pool for `clients` concurrent clients; `timeout` per request.
pub fn http_client(clients: usize, timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(clients.max(1))
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())
}

impl Client {
    pub fn new(http: reqwest::Client, endpoint: Arc<Endpoint>, progress: Arc<Progress>) -> Self {
        Client {
            http,
            endpoint,
            window: None,
            progress,
            rec: Recorder::default(),
        }
    }

    pub fn set_window(&mut self, window: Option<Window>) {
        self.window = window;
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `req`, signed for `creds` when given; records its latency and outcome.
    pub async fn send(&mut self, creds: Option<&Creds>, req: Req<'_>) -> Result<Resp, Fail> {
        let url = match Url::parse(&format!("{}{}", self.endpoint.base, req.target)) {
            Ok(u) => u,
            Err(_) => return self.outcome(req.kind, Instant::now(), Err("bad url".into())),
        };
        let mut rb = self.http.request(req.method.clone(), url.clone());
        if let Some(creds) = creds {
            // Sign exactly what goes on the wire: the parsed URL's path and query.
            let target = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            let auth = sign(
                &creds.id,
                &creds.key,
                SignedRequest {
                    method: req.method.as_str(),
                    target: &target,
                    host: &self.endpoint.host,
                    port: self.endpoint.port,
                },
            );
            rb = rb.header("Authorization", auth);
        }
        for (k, v) in &req.headers {
            rb = rb.header(*k, v);
        }
        if let Some(body) = req.body {
            rb = rb.body(body);
        }
        let started = Instant::now();
        let result = async {
            let r = rb.send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.bytes().await.map_err(|e| e.to_string())?.to_vec();
            Ok::<_, String>(Resp {
                status,
                headers,
                body,
            })
        }
        .await;
        let result = match result {
            Ok(r) if (200..300).contains(&r.status) || req.also_ok.contains(&r.status) => Ok(r),
            Ok(r) => Err(r.status.to_string()),
            Err(e) => Err(format!("transport: {e}")),
        };
        let transport_error = matches!(&result, Err(e) if e.starts_with("transport"));
        let outcome = self.outcome(req.kind, started, result);
        if transport_error {
            // A server that is gone refuses at once: do not spin the CPU it shares.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outcome
    }

    fn outcome(
        &mut self,
        kind: &'static str,
        started: Instant,
        result: Result<Resp, String>,
    ) -> Result<Resp, Fail> {
        let done = Instant::now();
        let measured = self
            .window
            .is_some_and(|w| started >= w.start && done <= w.end);
        let error_key = |e: &String| -> String {
            if e.starts_with("transport") {
                "transport".into()
            } else {
                e.clone()
            }
        };
        match &result {
            Ok(_) => {
                self.progress.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
                if !measured {
                    *self.rec.other_errors.entry(error_key(e)).or_default() += 1;
                }
            }
        }
        if measured {
            let t = self.rec.types.entry(kind).or_default();
            match &result {
                Ok(_) => {
                    t.ok += 1;
                    let us = (done - started).as_micros().clamp(1, 600_000_000) as u64;
                    t.hist.saturating_record(us);
                }
                Err(e) => *t.errors.entry(error_key(e)).or_default() += 1,
            }
        }
        result.map_err(|e| match e.parse::<u16>() {
            Ok(s) if (400..500).contains(&s) => Fail::Refused(s),
            _ => Fail::Unknown,
        })
    }

    /// Counts a verification check and its problems, for user `uid`.
    pub fn verified(&mut self, uid: u64, records: usize, problems: Vec<Problem>) {
        let v = &mut self.rec.verify;
        v.checks += 1;
        v.records_checked += records as u64;
        for p in problems {
            v.errors += 1;
            self.progress.problems.fetch_add(1, Ordering::Relaxed);
            *v.by_kind.entry(p.kind.to_owned()).or_default() += 1;
            if v.examples.len() < MAX_EXAMPLES {
                v.examples
                    .push(format!("uid {uid}: {}: {}", p.kind, p.detail));
            }
        }
    }
}
