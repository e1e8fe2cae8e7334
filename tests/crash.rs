//! Issue 13: every acknowledged write survives a crash. The real server binary runs as a child
//! process under concurrent writers (single POSTs and three-request batches); it is killed with
//! SIGKILL at random moments, at least five times, and restarted on the same database. At the
//! end every acknowledged record must be there with its payload and timestamp, every batch must
//! be all there or not there at all, and the storage timestamp must never have gone backwards.
//! Runs on SQLite, MySQL and PostgreSQL. Not on the Spanner emulator (optional in the issue):
//! it runs one read-write transaction at a time, and the transaction a killed server left open
//! blocks every later one until the emulator times it out (the restarted server does not come
//! up within a minute), which says nothing about Spanner itself.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backends::{self, ScratchDatabase};
use serde_json::{Value, json};
use syncserver::auth::hawk::{SignedRequest, sign};

backend_matrix!(
    not_spanner: "the Spanner emulator runs one read-write transaction at a time, and the one a killed server left open blocks the restarted server (see the module comment)"
);

const SECRET: &str = "crash-test-secret";
const KILLS: usize = 6;
const WRITERS: u64 = 4;

/// The server process and where it listens.
struct Server {
    child: Child,
    port: u16,
}

fn start(env: &[(String, String)], log: &std::path::Path) -> Server {
    let port = common::proxy::free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = common::syncserver_command()
        .envs(env.iter().cloned())
        .env("SYNC_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the server binary");
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = ureq::get(&format!("http://127.0.0.1:{port}/__lbheartbeat__"))
            .call()
            .is_ok();
        if up {
            return server;
        }
        assert!(Instant::now() < deadline, "the server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn authorization(uid: u64, method: &str, port: u16, target: &str) -> String {
    let (id, key) = common::credentials(uid, &format!("http://127.0.0.1:{port}"), 3600.0, SECRET);
    sign(
        &id,
        &key,
        SignedRequest {
            method,
            target,
            host: "127.0.0.1",
            port,
        },
    )
}

/// One storage request; `None` when the server was not there to answer (killed).
async fn call(
    client: &reqwest::Client,
    port: u16,
    uid: u64,
    method: reqwest::Method,
    rest: &str,
    body: Option<Value>,
) -> Option<(u16, Option<String>, String)> {
    let target = format!("/1.5/{uid}{rest}");
    let auth = authorization(uid, method.as_str(), port, &target);
    let mut rb = client
        .request(method, format!("http://127.0.0.1:{port}{target}"))
        .header("Authorization", auth)
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let r = rb.send().await.ok()?;
    let status = r.status().as_u16();
    let lm = r
        .headers()
        .get("X-Last-Modified")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.ok()?;
    Some((status, lm, text))
}

/// What the writers were told: acknowledged records, and batches whose commit was sent.
#[derive(Default)]
struct Ledger {
    /// (uid, collection, id) -> (payload, X-Last-Modified)
    acked: BTreeMap<(u64, String, String), (String, String)>,
    /// Batches whose commit was not acknowledged: (uid, collection, ids); all or nothing.
    unsure_batches: Vec<(u64, String, Vec<String>)>,
    /// The highest timestamp any acknowledged write returned, per user (ms).
    high_water: BTreeMap<u64, u64>,
}

fn ms(ts: &str) -> u64 {
    let (s, f) = ts.split_once('.').unwrap_or((ts, "0"));
    s.parse::<u64>().unwrap() * 1000 + format!("{f:0<3}")[..3].parse::<u64>().unwrap()
}

async fn writer(uid: u64, port: Arc<Mutex<u16>>, ledger: Arc<Mutex<Ledger>>, stop: Instant) {
    let client = reqwest::Client::new();
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let port = *port.lock().unwrap();
        let coll = format!("c{}", n % 3);
        let records: Vec<Value> = (0..3)
            .map(|i| json!({"id": format!("w{uid}-{n}-{i}"), "payload": format!("p{uid}-{n}-{i}")}))
            .collect();
        let ids: Vec<String> = records
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let acked = if n.is_multiple_of(2) {
            // A plain POST of three records.
            match call(
                &client,
                port,
                uid,
                reqwest::Method::POST,
                &format!("/storage/{coll}"),
                Some(Value::Array(records.clone())),
            )
            .await
            {
                Some((200, Some(lm), _)) => Some(lm),
                _ => None,
            }
        } else {
            // A batch in three requests: start, append, commit.
            let start = call(
                &client,
                port,
                uid,
                reqwest::Method::POST,
                &format!("/storage/{coll}?batch=true"),
                Some(json!([records[0]])),
            )
            .await;
            let Some((202, _, body)) = start else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let batch: Value = serde_json::from_str(&body).unwrap();
            let batch = batch["batch"].as_str().unwrap().to_owned();
            let q =
                percent_encoding::utf8_percent_encode(&batch, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let append = call(
                &client,
                port,
                uid,
                reqwest::Method::POST,
                &format!("/storage/{coll}?batch={q}"),
                Some(json!([records[1]])),
            )
            .await;
            if !matches!(append, Some((202, _, _))) {
                // Never committed: none of it may appear.
                ledger
                    .lock()
                    .unwrap()
                    .unsure_batches
                    .push((uid, coll.clone(), ids.clone()));
                continue;
            }
            let commit = call(
                &client,
                port,
                uid,
                reqwest::Method::POST,
                &format!("/storage/{coll}?batch={q}&commit=true"),
                Some(json!([records[2]])),
            )
            .await;
            match commit {
                Some((200, Some(lm), _)) => Some(lm),
                _ => {
                    ledger
                        .lock()
                        .unwrap()
                        .unsure_batches
                        .push((uid, coll.clone(), ids.clone()));
                    None
                }
            }
        };
        match acked {
            Some(lm) => {
                let mut l = ledger.lock().unwrap();
                for r in &records {
                    l.acked.insert(
                        (uid, coll.clone(), r["id"].as_str().unwrap().to_owned()),
                        (r["payload"].as_str().unwrap().to_owned(), lm.clone()),
                    );
                }
                let hw = l.high_water.entry(uid).or_default();
                *hw = (*hw).max(ms(&lm));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = ScratchDatabase::create();
    let mut env: Vec<(String, String)> = vec![
        ("SYNC_MASTER_SECRET".into(), SECRET.into()),
        ("SYNC_DATA_DIR".into(), dir.path().display().to_string()),
        ("SYNC_TOKENSERVER__ENABLED".into(), "false".into()),
        ("SYNC_HOST".into(), "127.0.0.1".into()),
    ];
    if let Some(db) = &scratch {
        env.push(("SYNC_SYNCSTORAGE__DATABASE_URL".into(), db.url.clone()));
        if db.url.starts_with("spanner://") {
            env.push((
                "SYNC_SYNCSTORAGE__SPANNER_EMULATOR_HOST".into(),
                backends::spanner_emulator_host(),
            ));
        }
    }
    let log = dir.path().join("server.log");
    let mut server = start(&env, &log);
    let port = Arc::new(Mutex::new(server.port));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let run_for = Duration::from_millis(1500) * (KILLS as u32 + 1);
    let stop = Instant::now() + run_for;
    let writers: Vec<_> = (1..=WRITERS)
        .map(|uid| tokio::spawn(writer(uid, port.clone(), ledger.clone(), stop)))
        .collect();
    let client = reqwest::Client::new();
    for kill in 0..KILLS {
        // A random moment in the traffic.
        let wait = 500 + rand::random::<u64>() % 1000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let before = ledger.lock().unwrap().high_water.clone();
        server = tokio::task::spawn_blocking({
            let env = env.clone();
            let log = log.clone();
            move || start(&env, &log)
        })
        .await
        .unwrap();
        *port.lock().unwrap() = server.port;
        // The storage timestamp never goes backwards across the crash.
        for (uid, hw) in before {
            let (status, lm, _) = call(
                &client,
                server.port,
                uid,
                reqwest::Method::GET,
                "/info/collections",
                None,
            )
            .await
            .expect("the restarted server answers");
            assert_eq!(status, 200, "kill {kill}");
            let ts = ms(lm.as_deref().unwrap());
            assert!(
                ts >= hw,
                "kill {kill}: user {uid}'s storage went back from {hw} to {ts}"
            );
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // Everything acknowledged is there, with its payload and timestamp.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.acked.len() > 50,
        "too little traffic: {}",
        ledger.acked.len()
    );
    let mut stored: BTreeMap<(u64, String, String), (String, String)> = BTreeMap::new();
    for uid in 1..=WRITERS {
        for c in 0..3 {
            let coll = format!("c{c}");
            let (status, _, body) = call(
                &client,
                server.port,
                uid,
                reqwest::Method::GET,
                &format!("/storage/{coll}?full=1"),
                None,
            )
            .await
            .unwrap();
            assert_eq!(status, 200);
            for bso in serde_json::from_str::<Value>(&body)
                .unwrap()
                .as_array()
                .unwrap()
            {
                let modified = format!("{:.2}", bso["modified"].as_f64().unwrap());
                stored.insert(
                    (uid, coll.clone(), bso["id"].as_str().unwrap().to_owned()),
                    (bso["payload"].as_str().unwrap().to_owned(), modified),
                );
            }
        }
    }
    for (key, (payload, lm)) in &ledger.acked {
        let got = stored.get(key);
        assert_eq!(
            got,
            Some(&(payload.clone(), lm.clone())),
            "acknowledged record {key:?} lost or changed"
        );
    }
    // A batch whose commit was not acknowledged is all there (it committed, the answer was
    // lost) or not there at all.
    for (uid, coll, ids) in &ledger.unsure_batches {
        let present: Vec<bool> = ids
            .iter()
            .map(|id| stored.contains_key(&(*uid, coll.clone(), id.clone())))
            .collect();
        assert!(
            present.iter().all(|p| *p) || present.iter().all(|p| !*p),
            "half-applied batch {ids:?}: {present:?}"
        );
        if present[0] {
            let stamps: Vec<&String> = ids
                .iter()
                .map(|id| &stored[&(*uid, coll.clone(), id.clone())].1)
                .collect();
            assert!(stamps.windows(2).all(|w| w[0] == w[1]), "{stamps:?}");
        }
    }
    eprintln!(
        "crash test: {KILLS} kills, {} acknowledged records, {} unacknowledged batches checked",
        ledger.acked.len(),
        ledger.unsure_batches.len()
    );
    server.child.kill().unwrap();
    let _ = server.child.wait();
}
