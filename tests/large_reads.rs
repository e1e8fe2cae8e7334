//! Issue 13: neither a read nor a batch commit holds the whole collection in memory. Three
//! concurrent `?full=1` reads of a 250 MB collection (10,000 records of 25 KB), and the commit
//! of a 250 MB batch (100 MB on Spanner, its clamp), must each raise the resident memory of the
//! process holding the server (this test process; the client side discards what it reads) by
//! less than 100 MB; before, one such read cost ~650 MB. Runs on each engine.
#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

backend_matrix!();

const RECORD_BYTES: usize = 25_000;
const PER_POST: usize = 80;

fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// Runs `work`, sampling resident memory every 20 ms: its output, the RSS before, the peak.
async fn peak_rss_during<T>(work: impl std::future::Future<Output = T>) -> (T, u64, u64) {
    let baseline = rss_mb();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mb(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let out = work.await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    (out, baseline, peak.load(Ordering::Relaxed))
}

/// Reads the whole collection, discarding the body as it arrives; returns its size.
async fn read(user: &User<'_>) -> usize {
    let mut r = user
        .send_raw_request(Method::GET, "/storage/heavy?full=1")
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let mut n = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += chunk.len();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_full_reads_of_a_large_collection_stay_small() {
    let server = TestServer::start().await;
    let user = server.user(61);
    // Spanner's advertised page is 9,984 records; stay within one page everywhere.
    let records = 9_920;
    let payload = "x".repeat(RECORD_BYTES);
    for first in (0..records).step_by(PER_POST) {
        let items: Vec<Value> = (first..first + PER_POST)
            .map(|i| json!({"id": format!("r{i:05}"), "payload": payload}))
            .collect();
        post_ok(&user, "heavy", Value::Array(items)).await;
    }
    // One read first: what stays allocated after it is the baseline.
    let expected = records * (RECORD_BYTES + 60);
    let n = read(&server.user(61)).await;
    assert!(n > records * RECORD_BYTES && n < expected, "{n} bytes");
    let readers: Vec<User<'_>> = (0..3).map(|_| server.user(61)).collect();
    let (sizes, baseline, peak) =
        peak_rss_during(futures::future::join_all(readers.iter().map(read))).await;
    for size in sizes {
        assert_eq!(size, n);
    }
    eprintln!("RSS: baseline {baseline} MB, peak during three full reads {peak} MB");
    assert!(
        peak < baseline + 100,
        "three reads of {} MB raised RSS from {baseline} MB to {peak} MB",
        n >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committing_a_large_batch_stays_small() {
    let server = TestServer::start().await;
    let user = server.user(62);
    // Within max_total_bytes: 248 MB, or 97.5 MB on Spanner (clamped to 100 MB there).
    let spanner = common::backends::current() == Some("spanner");
    let records = if spanner { 3_840 } else { 9_920 };
    let payload = "y".repeat(RECORD_BYTES);
    let items = |first: usize| -> Value {
        Value::Array(
            (first..first + PER_POST)
                .map(|i| json!({"id": format!("b{i:05}"), "payload": payload}))
                .collect(),
        )
    };
    let r = user.post("/storage/big?batch=true", items(0)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.json()["batch"].as_str().unwrap().to_owned();
    let q = percent_encoding::utf8_percent_encode(&batch, percent_encoding::NON_ALPHANUMERIC);
    for first in (PER_POST..records).step_by(PER_POST) {
        let r = user
            .post(&format!("/storage/big?batch={q}"), items(first))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let commit_path = format!("/storage/big?batch={q}&commit=true");
    let commit = user.post(&commit_path, json!([]));
    let (r, baseline, peak) = peak_rss_during(commit).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let counts = user.get("/info/collection_counts").await.json();
    assert_eq!(counts["big"], records, "{counts}");
    eprintln!("RSS: baseline {baseline} MB, peak during the commit {peak} MB");
    assert!(
        peak < baseline + 100,
        "committing {records} staged records raised RSS from {baseline} MB to {peak} MB"
    );
}
