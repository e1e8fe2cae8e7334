//! The three workloads of issue 18, as sessions of one user at a time, and the set-up and final
//! check around them.
//!
//! Users live in a pool; a client takes one out, runs a session for it and puts it back, so a
//! user is never driven by two clients at once and its acknowledged state (`model::Account`)
//! travels with it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, RngCore};
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::client::{Client, Creds, Fail, Req};
use crate::model::{
    Account, Ms, WireBso, check_listing_body, parse_ts, payload_hash, seconds_to_ms,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Mixed,
    Writes,
    Reads,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Mixed, Workload::Writes, Workload::Reads];
    pub fn name(self) -> &'static str {
        match self {
            Workload::Mixed => "mixed",
            Workload::Writes => "writes",
            Workload::Reads => "reads",
        }
    }
}

pub const DEVICES: usize = 3;
/// The reads workload's prefilled collection and its shape.
pub const READS_COLLECTION: &str = "history";
const READS_CHUNK: usize = 10;

/// Collections a device uploads to, with weights.
const COLLECTIONS: &[(&str, u32)] = &[
    ("history", 40),
    ("bookmarks", 15),
    ("forms", 10),
    ("tabs", 10),
    ("passwords", 5),
    ("addons", 5),
    ("prefs", 5),
    ("clients", 5),
    ("addresses", 2),
    ("creditcards", 3),
];

/// Per-session probabilities of the occasional operations in `mixed`.
const P_CONFIGURATION: f64 = 0.10;
const P_PUT: f64 = 0.05;
const P_DELETE_RECORD: f64 = 0.05;
const P_DELETE_COLLECTION: f64 = 0.01;
const P_DELETE_STORAGE: f64 = 0.005;
const P_BATCH: f64 = 1.0 / 3.0;

/// One device's last-sync time per collection.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub last: HashMap<String, Ms>,
}

/// A user: credentials, acknowledged state and devices.
#[derive(Debug)]
pub struct User {
    pub creds: Creds,
    pub account: Account,
    pub devices: [Device; DEVICES],
    /// `reads`: the modified times of the prefill uploads, oldest first.
    pub prefill_times: Vec<Ms>,
}

impl User {
    pub fn new(creds: Creds) -> User {
        User {
            creds,
            account: Account::default(),
            devices: Default::default(),
            prefill_times: Vec::new(),
        }
    }
    fn uid(&self) -> u64 {
        self.creds.uid
    }
}

/// Users waiting for a client.
pub struct Pool {
    users: Mutex<VecDeque<User>>,
    available: Semaphore,
}

impl Pool {
    pub fn new(users: Vec<User>) -> Pool {
        let n = users.len();
        Pool {
            users: Mutex::new(users.into()),
            available: Semaphore::new(n),
        }
    }

    pub async fn take(&self) -> User {
        self.available
            .acquire()
            .await
            .expect("the pool's semaphore is never closed")
            .forget();
        self.users
            .lock()
            .expect("pool lock")
            .pop_front()
            .expect("a permit means a user")
    }

    pub fn put(&self, user: User) {
        self.users.lock().expect("pool lock").push_back(user);
        self.available.add_permits(1);
    }

    /// Takes every user out (once all clients have stopped).
    pub fn drain(&self) -> Vec<User> {
        self.users.lock().expect("pool lock").drain(..).collect()
    }
}

fn fmt_ts(t: Ms) -> String {
    format!("{}.{:02}", t / 1000, (t % 1000) / 10)
}

fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Firefox-like record id: 12 base64url characters.
fn new_id(rng: &mut StdRng) -> String {
    let mut b = [0u8; 9];
    rng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// An encrypted-looking payload of about `size` bytes: Firefox's `{ciphertext, IV, hmac}` with
/// random base64.
pub fn payload(rng: &mut StdRng, size: usize) -> String {
    let ct_chars = size.saturating_sub(130).max(16);
    let mut ct = vec![0u8; ct_chars * 3 / 4];
    rng.fill_bytes(&mut ct);
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut iv);
    let mut mac = [0u8; 32];
    rng.fill_bytes(&mut mac);
    serde_json::json!({
        "ciphertext": STANDARD.encode(&ct),
        "IV": STANDARD.encode(iv),
        "hmac": mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    })
    .to_string()
}

fn random_payload(rng: &mut StdRng) -> String {
    let size = rng.gen_range(100..=2000);
    payload(rng, size)
}

fn pick_collection(rng: &mut StdRng) -> &'static str {
    let total: u32 = COLLECTIONS.iter().map(|c| c.1).sum();
    let mut x = rng.gen_range(0..total);
    for (name, w) in COLLECTIONS {
        if x < *w {
            return name;
        }
        x -= w;
    }
    COLLECTIONS[0].0
}

#[derive(Debug, Deserialize)]
struct PostBody {
    modified: Option<f64>,
    batch: Option<serde_json::Value>,
    #[serde(default)]
    success: Vec<String>,
    #[serde(default)]
    failed: HashMap<String, serde_json::Value>,
}

/// A write's timestamp from its body: a number, or `{"modified": n}`; else X-Last-Modified.
fn write_ts(body: &[u8], last_modified: Option<&str>) -> Option<Ms> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Number(n)) => n.as_f64().map(seconds_to_ms),
        Ok(serde_json::Value::Object(o)) => o
            .get("modified")
            .and_then(|m| m.as_f64())
            .map(seconds_to_ms),
        _ => last_modified.and_then(parse_ts),
    }
}

/// One user's session, driven by one client.
pub struct Session<'a> {
    pub client: &'a mut Client,
    pub user: &'a mut User,
    pub rng: &'a mut StdRng,
    /// Stop issuing requests after this instant.
    pub end: Option<Instant>,
    /// How long a write of unknown outcome may take to land after the client gave up.
    pub settle: Duration,
}

/// Aborts a session (the end of the run, or a failed request).
pub struct Stop;

type Step<T> = Result<T, Stop>;

impl Session<'_> {
    fn uid(&self) -> u64 {
        self.user.uid()
    }

    fn path(&self, rest: &str) -> String {
        format!("/1.5/{}{rest}", self.uid())
    }

    fn check_time(&self) -> Step<()> {
        match self.end {
            Some(end) if Instant::now() >= end => Err(Stop),
            _ => Ok(()),
        }
    }

    async fn send(&mut self, req: Req<'_>) -> Result<crate::client::Resp, Fail> {
        self.client.send(Some(&self.user.creds), req).await
    }

    /// GET info/collections, checked.
    async fn info_collections(&mut self) -> Step<HashMap<String, f64>> {
        self.check_time()?;
        let req = Req::new(
            "GET info/collections",
            Method::GET,
            self.path("/info/collections"),
        );
        let r = self.send(req).await.map_err(|_| Stop)?;
        let info: HashMap<String, f64> = match serde_json::from_slice(&r.body) {
            Ok(i) => i,
            Err(e) => {
                self.client.verified(
                    self.uid(),
                    0,
                    vec![crate::model::Problem {
                        kind: "unparsable response",
                        detail: format!("info/collections: {e}"),
                    }],
                );
                return Err(Stop);
            }
        };
        let problems = self.user.account.check_info_collections(&info);
        self.client.verified(self.uid(), 0, problems);
        Ok(info)
    }

    /// GET a collection (`full=1`, `newer` when > 0), checked; returns X-Last-Modified.
    async fn listing(&mut self, kind: &'static str, coll: &str, newer: Ms) -> Step<Option<Ms>> {
        self.check_time()?;
        let query = if newer > 0 {
            format!("?full=1&newer={}", fmt_ts(newer))
        } else {
            "?full=1".to_owned()
        };
        let req = Req::new(
            kind,
            Method::GET,
            self.path(&format!("/storage/{coll}{query}")),
        );
        let r = self.send(req).await.map_err(|_| Stop)?;
        let lm = r.header("X-Last-Modified").and_then(parse_ts);
        match check_listing_body(&self.user.account, coll, newer, lm, &r.body) {
            Ok((got, problems)) => self.client.verified(self.uid(), got.len(), problems),
            Err(e) => {
                self.client.verified(
                    self.uid(),
                    0,
                    vec![crate::model::Problem {
                        kind: "unparsable response",
                        detail: format!("{coll}: {e}"),
                    }],
                );
                return Err(Stop);
            }
        }
        Ok(lm)
    }

    /// GET one record, checked (404 allowed: the model says whether it should be there).
    async fn get_record(&mut self, kind: &'static str, coll: &str, id: &str) -> Step<()> {
        self.check_time()?;
        let req = Req::new(
            kind,
            Method::GET,
            self.path(&format!("/storage/{coll}/{id}")),
        )
        .also_ok(&[404]);
        let r = self.send(req).await.map_err(|_| Stop)?;
        let got = if r.status == 404 {
            None
        } else {
            match serde_json::from_slice::<WireBso>(&r.body) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.client.verified(
                        self.uid(),
                        0,
                        vec![crate::model::Problem {
                            kind: "unparsable response",
                            detail: format!("{coll}/{id}: {e}"),
                        }],
                    );
                    return Err(Stop);
                }
            }
        };
        let problems = self.user.account.check_record(coll, id, got.as_ref());
        self.client.verified(self.uid(), 1, problems);
        Ok(())
    }

    /// The records of an upload: half updates of existing ids (where there are some), the rest
    /// new; each with a random payload.
    fn make_records(&mut self, coll: &str, n: usize) -> Vec<(String, String)> {
        let existing: Vec<String> = self
            .user
            .account
            .collections
            .get(coll)
            .map(|c| {
                c.records
                    .keys()
                    .choose_multiple(self.rng, n / 2)
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut ids = existing;
        while ids.len() < n {
            let id = new_id(self.rng);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.shuffle(self.rng);
        ids.into_iter()
            .map(|id| {
                let p = random_payload(self.rng);
                (id, p)
            })
            .collect()
    }

    fn post_body(coll: &str, records: &[(String, String)], rng: &mut StdRng) -> Vec<u8> {
        let items: Vec<serde_json::Value> = records
            .iter()
            .map(|(id, payload)| {
                if coll == "history" || coll == "bookmarks" {
                    serde_json::json!({"id": id, "payload": payload, "sortindex": rng.gen_range(0..2000)})
                } else {
                    serde_json::json!({"id": id, "payload": payload})
                }
            })
            .collect();
        serde_json::to_vec(&items).expect("records serialize")
    }

    /// The device's X-If-Unmodified-Since for a write to `coll`: its last sync, when it has
    /// seen the collection's current state.
    fn precondition(&self, device: Option<usize>, coll: &str) -> Option<String> {
        let d = device?;
        let c = self.user.account.collections.get(coll)?;
        if !self.user.account.is_clean(coll) {
            return None;
        }
        let last = *self.user.devices[d].last.get(coll)?;
        (last == c.modified && last > 0).then(|| fmt_ts(last))
    }

    /// Uploads `records` to `coll` in one POST, or as a batch (start, appends, commit).
    /// Returns the write's timestamp when acknowledged.
    async fn upload(
        &mut self,
        coll: &str,
        records: Vec<(String, String)>,
        batch: bool,
        device: Option<usize>,
    ) -> Step<Ms> {
        let iums = self.precondition(device, coll);
        let chunks: Vec<&[(String, String)]> = if batch && records.len() >= 2 {
            let parts = if records.len() >= 3 {
                self.rng.gen_range(2..=3)
            } else {
                2
            };
            let size = records.len().div_ceil(parts);
            records.chunks(size).collect()
        } else {
            vec![&records[..]]
        };
        let mut batch_id: Option<String> = None;
        let mut success: Vec<String> = Vec::with_capacity(records.len());
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            self.check_time()?;
            let (kind, query) = match (batch, i, &batch_id) {
                (false, _, _) => ("POST records", String::new()),
                (true, 0, _) if last == 0 => {
                    ("POST batch commit", "?batch=true&commit=true".into())
                }
                (true, 0, _) => ("POST batch start", "?batch=true".into()),
                (true, _, Some(id)) if i == last => (
                    "POST batch commit",
                    format!("?batch={}&commit=true", encode_query(id)),
                ),
                (true, _, Some(id)) => {
                    ("POST batch append", format!("?batch={}", encode_query(id)))
                }
                (true, _, None) => return Err(Stop),
            };
            let body = Self::post_body(coll, chunk, self.rng);
            let mut req = Req::new(
                kind,
                Method::POST,
                self.path(&format!("/storage/{coll}{query}")),
            )
            .json(body);
            if let Some(t) = &iums {
                req = req.header("X-If-Unmodified-Since", t.clone());
            }
            let committing = i == last;
            let r = match self.send(req).await {
                Ok(r) => r,
                Err(Fail::Unknown) if committing => {
                    // The commit (or the single POST) may have landed.
                    self.client.rec.uncertain_writes += 1;
                    self.user
                        .account
                        .uncertain(coll, records.iter().map(|r| r.0.as_str()));
                    return Err(Stop);
                }
                Err(_) => return Err(Stop),
            };
            let body: PostBody = match serde_json::from_slice(&r.body) {
                Ok(b) => b,
                Err(_) => {
                    self.client.rec.uncertain_writes += 1;
                    self.user
                        .account
                        .uncertain(coll, records.iter().map(|r| r.0.as_str()));
                    return Err(Stop);
                }
            };
            if !body.failed.is_empty() {
                self.client.rec.failed_records += body.failed.len() as u64;
            }
            success.extend(body.success);
            if batch && batch_id.is_none() {
                batch_id = body.batch.map(|b| match b {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                });
            }
            if committing {
                let modified = body
                    .modified
                    .map(seconds_to_ms)
                    .or_else(|| r.header("X-Last-Modified").and_then(parse_ts));
                let Some(modified) = modified else {
                    self.client.rec.uncertain_writes += 1;
                    self.user
                        .account
                        .uncertain(coll, records.iter().map(|r| r.0.as_str()));
                    return Err(Stop);
                };
                let hashes: HashMap<&str, u64> = records
                    .iter()
                    .map(|(id, p)| (id.as_str(), payload_hash(p)))
                    .collect();
                if !success.is_empty() {
                    self.user.account.ack_write(
                        coll,
                        success
                            .iter()
                            .filter_map(|id| hashes.get(id.as_str()).map(|h| (id.as_str(), *h))),
                        modified,
                    );
                    if let Some(d) = device {
                        self.user.devices[d].last.insert(coll.to_owned(), modified);
                    }
                }
                return Ok(modified);
            }
        }
        Err(Stop)
    }

    async fn put_record(
        &mut self,
        kind: &'static str,
        coll: &str,
        id: &str,
        payload: String,
        device: Option<usize>,
    ) -> Step<Ms> {
        self.check_time()?;
        let hash = payload_hash(&payload);
        let body = serde_json::to_vec(&serde_json::json!({ "payload": payload }))
            .expect("record serializes");
        let mut req = Req::new(
            kind,
            Method::PUT,
            self.path(&format!("/storage/{coll}/{id}")),
        )
        .json(body);
        if let Some(t) = self.precondition(device, coll) {
            req = req.header("X-If-Unmodified-Since", t);
        }
        match self.send(req).await {
            Ok(r) => match write_ts(&r.body, r.header("X-Last-Modified")) {
                Some(t) => {
                    self.user.account.ack_write(coll, [(id, hash)], t);
                    if let Some(d) = device {
                        self.user.devices[d].last.insert(coll.to_owned(), t);
                    }
                    Ok(t)
                }
                None => {
                    self.client.rec.uncertain_writes += 1;
                    self.user.account.uncertain(coll, [id]);
                    Err(Stop)
                }
            },
            Err(Fail::Unknown) => {
                self.client.rec.uncertain_writes += 1;
                self.user.account.uncertain(coll, [id]);
                Err(Stop)
            }
            Err(Fail::Refused(_)) => Err(Stop),
        }
    }

    async fn delete_record(&mut self, coll: &str, id: &str, device: usize) -> Step<()> {
        self.check_time()?;
        let req = Req::new(
            "DELETE record",
            Method::DELETE,
            self.path(&format!("/storage/{coll}/{id}")),
        );
        match self.send(req).await {
            Ok(r) => match write_ts(&r.body, r.header("X-Last-Modified")) {
                Some(t) => {
                    self.user.account.ack_delete_record(coll, id, t);
                    self.user.devices[device].last.insert(coll.to_owned(), t);
                    Ok(())
                }
                None => {
                    self.user.account.uncertain(coll, [id]);
                    Err(Stop)
                }
            },
            Err(Fail::Unknown) => {
                self.client.rec.uncertain_writes += 1;
                self.user.account.uncertain(coll, [id]);
                Err(Stop)
            }
            Err(Fail::Refused(_)) => Err(Stop),
        }
    }

    async fn delete_collection(&mut self, coll: &str) -> Step<()> {
        self.check_time()?;
        let req = Req::new(
            "DELETE collection",
            Method::DELETE,
            self.path(&format!("/storage/{coll}")),
        );
        match self.send(req).await {
            Ok(_) => {
                self.user.account.ack_delete_collection(coll);
                Ok(())
            }
            Err(Fail::Unknown) => {
                self.client.rec.uncertain_writes += 1;
                self.user.account.uncertain_collection(coll);
                Err(Stop)
            }
            Err(Fail::Refused(_)) => Err(Stop),
        }
    }

    /// DELETE the whole storage: the account is fresh again, every device starts over.
    pub async fn delete_storage(&mut self, kind: &'static str) -> Step<()> {
        let req = Req::new(kind, Method::DELETE, self.path("/storage"));
        match self.send(req).await {
            Ok(_) => {
                self.user.account.ack_delete_storage();
                for d in &mut self.user.devices {
                    d.last.clear();
                }
                Ok(())
            }
            Err(Fail::Unknown) => {
                self.client.rec.uncertain_writes += 1;
                self.user.account.uncertain_storage();
                Err(Stop)
            }
            Err(Fail::Refused(_)) => Err(Stop),
        }
    }

    /// After a write whose outcome was unknown: re-read what it may have touched, check the
    /// rest, and adopt the server's state for it.
    pub async fn resync(&mut self, kind: &'static str) -> Step<()> {
        let req = Req::new(kind, Method::GET, self.path("/info/collections"));
        let r = self.send(req).await.map_err(|_| Stop)?;
        let info: HashMap<String, f64> = serde_json::from_slice(&r.body).map_err(|_| Stop)?;
        let names = self.user.account.resync_names(info.keys().cloned());
        for coll in names {
            let req = Req::new(
                kind,
                Method::GET,
                self.path(&format!("/storage/{coll}?full=1")),
            );
            let r = self.send(req).await.map_err(|_| Stop)?;
            let got: Vec<WireBso> = serde_json::from_slice(&r.body).map_err(|_| Stop)?;
            let info_ts = info.get(&coll).map(|t| seconds_to_ms(*t));
            let problems = self.user.account.resync_collection(&coll, info_ts, &got);
            self.client.verified(self.uid(), got.len(), problems);
        }
        self.user.account.resynced();
        Ok(())
    }

    /// A Firefox-like sync of one device (workload `mixed`).
    pub async fn mixed(&mut self) -> Step<()> {
        if self.user.account.needs_resync(Instant::now(), self.settle) {
            self.resync("GET resync").await?;
        }
        let d = self.rng.gen_range(0..DEVICES);
        if self.rng.gen_bool(P_CONFIGURATION) {
            self.check_time()?;
            let req = Req::new(
                "GET info/configuration",
                Method::GET,
                self.path("/info/configuration"),
            );
            self.client.send(None, req).await.map_err(|_| Stop)?;
        }
        let info = self.info_collections().await?;
        // meta/global: a fresh account gets meta/global and crypto/keys.
        self.get_record("GET meta/global", "meta", "global").await?;
        if !self.user.account.has_record("meta", "global") {
            let meta = serde_json::json!({
                "syncID": new_id(self.rng),
                "storageVersion": 5,
                "engines": COLLECTIONS.iter().map(|(n, _)| (n.to_string(), serde_json::json!({"version": 1, "syncID": "abcdefghijkl"}))).collect::<serde_json::Map<_, _>>(),
                "declined": [],
            })
            .to_string();
            self.put_record("PUT meta/global", "meta", "global", meta, Some(d))
                .await?;
            let keys = payload(self.rng, 300);
            self.put_record("PUT crypto/keys", "crypto", "keys", keys, Some(d))
                .await?;
        }
        // Download what changed since this device's last sync.
        let mut changed: Vec<(String, Ms)> = info
            .iter()
            .map(|(c, t)| (c.clone(), seconds_to_ms(*t)))
            .filter(|(c, t)| c != "meta" && *t > *self.user.devices[d].last.get(c).unwrap_or(&0))
            .collect();
        changed.sort();
        for (coll, ts) in changed {
            let newer = *self.user.devices[d].last.get(&coll).unwrap_or(&0);
            let lm = self.listing("GET newer", &coll, newer).await?;
            self.user.devices[d]
                .last
                .insert(coll, lm.filter(|t| *t > 0).unwrap_or(ts));
        }
        // Upload this device's changes.
        let coll = pick_collection(self.rng);
        let n = self.rng.gen_range(1..=100);
        let records = self.make_records(coll, n);
        let batch = self.rng.gen_bool(P_BATCH);
        self.upload(coll, records, batch, Some(d)).await?;
        // The occasional other writes.
        if self.rng.gen_bool(P_PUT) {
            let coll = pick_collection(self.rng);
            let mut recs = self.make_records(coll, 1);
            let (id, p) = recs.pop().expect("one record");
            self.put_record("PUT record", coll, &id, p, Some(d)).await?;
        }
        if self.rng.gen_bool(P_DELETE_RECORD) {
            let target = self
                .user
                .account
                .collections
                .iter()
                .filter(|(n, c)| *n != "meta" && *n != "crypto" && !c.records.is_empty())
                .choose(self.rng)
                .and_then(|(n, c)| {
                    c.records
                        .keys()
                        .choose(self.rng)
                        .map(|id| (n.clone(), id.clone()))
                });
            if let Some((coll, id)) = target {
                self.delete_record(&coll, &id, d).await?;
            }
        }
        if self.rng.gen_bool(P_DELETE_COLLECTION) {
            let target = self
                .user
                .account
                .collections
                .keys()
                .filter(|n| *n != "meta" && *n != "crypto")
                .choose(self.rng)
                .cloned();
            if let Some(coll) = target {
                self.delete_collection(&coll).await?;
            }
        }
        if self.rng.gen_bool(P_DELETE_STORAGE) {
            self.check_time()?;
            self.delete_storage("DELETE storage").await?;
        }
        Ok(())
    }

    /// One upload: a POST of up to 100 records or a batch (workload `writes`).
    pub async fn writes(&mut self) -> Step<()> {
        if self.user.account.needs_resync(Instant::now(), self.settle) {
            self.resync("GET resync").await?;
        }
        let coll = pick_collection(self.rng);
        let n = self.rng.gen_range(1..=100);
        let records = self.make_records(coll, n);
        let batch = self.rng.gen_bool(P_BATCH);
        self.upload(coll, records, batch, None).await?;
        Ok(())
    }

    /// A recent-changes listing, one record, info/collections (workload `reads`).
    pub async fn reads(&mut self) -> Step<()> {
        if self.user.account.needs_resync(Instant::now(), self.settle) {
            self.resync("GET resync").await?;
        }
        // A device a few uploads behind: 0 to 30 records come back.
        let times = &self.user.prefill_times;
        let newer = if times.is_empty() {
            0
        } else {
            times[times.len() - 1 - self.rng.gen_range(0..times.len().min(4))]
        };
        self.listing("GET newer", READS_COLLECTION, newer).await?;
        let id = self
            .user
            .account
            .collections
            .get(READS_COLLECTION)
            .and_then(|c| c.records.keys().choose(self.rng).cloned());
        if let Some(id) = id {
            self.get_record("GET record", READS_COLLECTION, &id).await?;
        }
        self.info_collections().await?;
        Ok(())
    }

    /// The reads workload's data: `records` records in uploads of 10, each its own timestamp.
    pub async fn prefill(&mut self, records: usize) -> Step<()> {
        let mut left = records;
        while left > 0 {
            let n = left.min(READS_CHUNK);
            let recs: Vec<(String, String)> = (0..n)
                .map(|_| {
                    let id = new_id(self.rng);
                    let p = random_payload(self.rng);
                    (id, p)
                })
                .collect();
            let t = self.upload(READS_COLLECTION, recs, false, None).await?;
            self.user.prefill_times.push(t);
            left -= n;
        }
        Ok(())
    }

    /// The final check: every collection read back in full against what was acknowledged. A
    /// user whose data cannot be read back is a verification error: unread data is unverified.
    pub async fn final_check(&mut self) -> Step<()> {
        let result = self.final_check_inner().await;
        if result.is_err() {
            let problem = crate::model::Problem {
                kind: "unreadable in the final check",
                detail: "a read-back request failed (see the errors outside the window)".into(),
            };
            self.client.verified(self.uid(), 0, vec![problem]);
        }
        result
    }

    async fn final_check_inner(&mut self) -> Step<()> {
        let wait = self.user.account.settles_in(Instant::now(), self.settle);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if self.user.account.is_uncertain() {
            self.resync("final check").await?;
        }
        let req = Req::new("final check", Method::GET, self.path("/info/collections"));
        let r = self.send(req).await.map_err(|_| Stop)?;
        let info: HashMap<String, f64> = serde_json::from_slice(&r.body).map_err(|_| Stop)?;
        let problems = self.user.account.check_info_collections(&info);
        self.client.verified(self.uid(), 0, problems);
        let mut names: Vec<String> = info.keys().cloned().collect();
        names.extend(self.user.account.collections.keys().cloned());
        names.sort();
        names.dedup();
        for coll in names {
            let req = Req::new(
                "final check",
                Method::GET,
                self.path(&format!("/storage/{coll}?full=1")),
            );
            let r = self.send(req).await.map_err(|_| Stop)?;
            let lm = r.header("X-Last-Modified").and_then(parse_ts);
            match check_listing_body(&self.user.account, &coll, 0, lm, &r.body) {
                Ok((got, problems)) => self.client.verified(self.uid(), got.len(), problems),
                Err(e) => self.client.verified(
                    self.uid(),
                    0,
                    vec![crate::model::Problem {
                        kind: "unparsable response",
                        detail: e,
                    }],
                ),
            }
        }
        Ok(())
    }
}
