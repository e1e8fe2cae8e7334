//! Metrics, both kinds, off by default: StatsD with upstream's names and DogStatsD tags (SPEC
//! 4.3; `statsd_host`), and Prometheus text on a listener of its own (`metrics.prometheus_listen`).
//! Every event the server counts is one function here, which sends it to whichever is on.
//! When neither is, an event costs a read of an unset `OnceLock` and a call into the `metrics`
//! facade's no-op recorder.

use std::net::UdpSocket;
use std::sync::OnceLock;
use std::time::Duration;

use cadence::prelude::*;
use cadence::{BufferedUdpMetricSink, QueuingMetricSink, StatsdClient};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::db::PoolState;

/// `[metrics]`: where Prometheus scrapes.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct MetricsSettings {
    /// `host:port` of the Prometheus listener (`GET /metrics`), never the public port; off when
    /// unset.
    pub prometheus_listen: Option<String>,
}

/// Where StatsD goes (upstream's settings).
#[derive(Debug, Clone)]
pub struct StatsdTarget {
    pub host: String,
    pub port: u16,
    /// `syncstorage.statsd_label`, the storage metrics' prefix.
    pub storage_label: String,
    /// `tokenserver.statsd_label`.
    pub tokenserver_label: String,
    /// `include_hostname_tag`: the pool gauges carry `hostname`.
    pub hostname: Option<String>,
}

struct Statsd {
    storage: StatsdClient,
    tokenserver: StatsdClient,
    hostname: Option<String>,
}

static STATSD: OnceLock<Statsd> = OnceLock::new();

/// Metrics queued for the StatsD socket at most; more are dropped, never waited for.
const STATSD_QUEUE: usize = 10_000;

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the StatsD buffers are sent even when not full.
const STATSD_FLUSH: Duration = Duration::from_secs(1);

/// Starts StatsD: a request only queues its metrics (bounded; more are dropped); a background
/// thread packs them into datagrams, sent when full and at least every `STATSD_FLUSH`. Once per
/// process.
pub fn start_statsd(target: &StatsdTarget) -> Result<(), String> {
    let client = |prefix: &str| -> Result<StatsdClient, String> {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("statsd: {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("statsd: {e}"))?;
        let sink = BufferedUdpMetricSink::from((target.host.as_str(), target.port), socket)
            .map_err(|e| format!("statsd_host {}:{}: {e}", target.host, target.port))?;
        let sink = QueuingMetricSink::with_capacity(sink, STATSD_QUEUE);
        Ok(StatsdClient::builder(prefix, sink)
            .with_error_handler(|_| {})
            .build())
    };
    let statsd = Statsd {
        storage: client(&target.storage_label)?,
        tokenserver: client(&target.tokenserver_label)?,
        hostname: target.hostname.clone(),
    };
    STATSD
        .set(statsd)
        .map_err(|_| "statsd: already started in this process".to_owned())?;
    std::thread::Builder::new()
        .name("statsd-flush".into())
        .spawn(|| {
            loop {
                std::thread::sleep(STATSD_FLUSH);
                if let Some(s) = STATSD.get() {
                    let _ = s.storage.flush();
                    let _ = s.tokenserver.flush();
                }
            }
        })
        .map_err(|e| format!("statsd: {e}"))?;
    Ok(())
}

/// Installs the Prometheus recorder (once per process) and returns the handle that renders it.
pub fn start_prometheus() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| format!("prometheus: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| "prometheus: a metrics recorder is already installed".to_owned())?;
    metrics::gauge!(
        "syncserver_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => option_env!("SYNCSERVER_COMMIT").unwrap_or("unknown"),
    )
    .set(1.0);
    // Histograms collect samples until drained: drain them even when nobody scrapes.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("prometheus-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| format!("prometheus: {e}"))?;
    Ok(handle)
}

/// One answered request: its route (upstream's handler names), status, time, and, when it
/// was refused, the reason code.
pub struct Request<'a> {
    pub route: &'static str,
    pub status: u16,
    pub elapsed: Duration,
    pub reason: Option<&'static str>,
    /// The collection of a storage request (`storage.quota.at_limit`'s tag).
    pub collection: Option<&'a str>,
}

pub fn request(r: &Request<'_>) {
    let tokenserver_route = r.route == "token" || r.route == "webhook";
    if let Some(s) = STATSD.get() {
        let client = if tokenserver_route {
            &s.tokenserver
        } else {
            &s.storage
        };
        let status = r.status.to_string();
        client
            .count_with_tags(&format!("request.{}", r.route), 1)
            .with_tag("tokenserver_origin", "rust")
            .send();
        client
            .time_with_tags("request.time", r.elapsed)
            .with_tag("route", r.route)
            .with_tag("status", &status)
            .send();
        if let Some(reason) = r.reason {
            statsd_refusal(client, reason, r.collection);
        }
    }
    let status = status_label(r.status);
    metrics::histogram!(
        "syncserver_http_request_duration_seconds",
        "route" => r.route,
        "status" => status,
    )
    .record(r.elapsed.as_secs_f64());
    if let Some(reason) = r.reason {
        metrics::counter!(
            "syncserver_http_refused_total",
            "route" => r.route,
            "reason" => reason,
        )
        .increment(1);
    }
}

/// Upstream's error counters for the refusals it counts.
fn statsd_refusal(client: &StatsdClient, reason: &str, collection: Option<&str>) {
    let name = match reason {
        "conflict" | "db: conflict" => "storage.conflict",
        "quota" => {
            client
                .count_with_tags("storage.quota.at_limit", 1)
                .with_tag("collection", collection.unwrap_or(""))
                .send();
            return;
        }
        "rejected client" => "error.rejectua",
        "request too large" => "request.validate.request_bytes_exceeded",
        "size limit" => "request.validate.batch.size_exceeded",
        "not acceptable" => "request.validate.invalid_accept_header",
        "content type" => "request.error.invalid_content_type",
        "db: pool timeout" => "storage.pool.timeout",
        "unavailable" | "db: unavailable" | "db: deadline" => "request.error.resource_unavailable",
        r if r.starts_with("hawk: ") || r.starts_with("token: ") => "request.error.hawk",
        r if r.starts_with("oauth: ") || r.starts_with("fxa: ") => "request.error.oauth",
        r if r.starts_with("client state: ") => "request.error.invalid_client_state",
        _ => return,
    };
    let _ = client.incr(name);
}

/// A status as a label without allocating for the common ones.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        409 => "409",
        412 => "412",
        413 => "413",
        415 => "415",
        500 => "500",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// A unit of work run again after a conflict (`db::retry`).
pub fn unit_retried() {
    if let Some(s) = STATSD.get() {
        let _ = s.storage.incr("storage.retry");
    }
    metrics::counter!("syncserver_db_unit_retries_total").increment(1);
}

/// How a write's records went: written now, or staged in a batch (`step`: start, append,
/// commit, or none for a PUT or plain POST); a commit also counts the batch.
pub fn records_written(step: &'static str, accepted: usize, failed: usize) {
    if let Some(s) = STATSD.get() {
        s.storage
            .count_with_tags("storage.records.accepted", accepted as i64)
            .with_tag("batch", step)
            .send();
        if step == "commit" {
            let _ = s.storage.incr("storage.batch.committed");
        }
    }
    metrics::counter!("syncserver_records_accepted_total", "batch" => step)
        .increment(accepted as u64);
    metrics::counter!("syncserver_records_failed_total", "batch" => step).increment(failed as u64);
    if step == "commit" {
        metrics::counter!("syncserver_batches_committed_total").increment(1);
    } else if step == "start" {
        metrics::counter!("syncserver_batches_started_total").increment(1);
    }
}

/// What the tokenserver did for a token request it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    /// An existing user row.
    Existing,
    /// The account's first row.
    NewUser,
    /// A new row for a key change (the old one retired).
    KeyChange,
    /// A user moved to another node (their node was gone or downed).
    Reassigned,
}

impl TokenOutcome {
    pub fn label(self) -> &'static str {
        match self {
            TokenOutcome::Existing => "existing",
            TokenOutcome::NewUser => "new_user",
            TokenOutcome::KeyChange => "key_change",
            TokenOutcome::Reassigned => "reassigned",
        }
    }
}

/// A token issued: the outcome and how long verifying the OAuth token and the whole request
/// took (upstream's `token_verification` and `token_creation` timers).
pub fn token_issued(outcome: TokenOutcome, verification: Duration, creation: Duration) {
    if let Some(s) = STATSD.get() {
        s.tokenserver
            .time_with_tags("token_verification", verification)
            .with_tag("token_type", "OAuth")
            .send();
        let _ = s.tokenserver.time("token_creation", creation);
        s.tokenserver
            .count_with_tags("token.issued", 1)
            .with_tag("outcome", outcome.label())
            .send();
    }
    metrics::counter!("syncserver_tokenserver_tokens_total", "outcome" => outcome.label())
        .increment(1);
}

/// A webhook event received, and whether it was applied.
pub fn webhook_event(event_type: &'static str, processed: bool) {
    if let Some(s) = STATSD.get() {
        s.tokenserver
            .count_with_tags("webhook.events_received", 1)
            .with_tag("event_type", event_type)
            .send();
        if processed {
            s.tokenserver
                .count_with_tags("webhook.events_processed", 1)
                .with_tag("event_type", event_type)
                .send();
        }
    }
    metrics::counter!(
        "syncserver_tokenserver_webhook_events_total",
        "event_type" => event_type,
        "processed" => if processed { "true" } else { "false" },
    )
    .increment(1);
}

/// The pool gauges of one database (`pool`: storage or tokenserver): at each scrape for
/// Prometheus, every 10 s for StatsD (`statsd_pool_gauges`).
pub fn pool_gauges(pool: &'static str, state: PoolState) {
    metrics::gauge!("syncserver_db_pool_connections", "pool" => pool, "state" => "active")
        .set(f64::from(state.active));
    metrics::gauge!("syncserver_db_pool_connections", "pool" => pool, "state" => "idle")
        .set(f64::from(state.idle));
    metrics::gauge!("syncserver_db_pool_max_connections", "pool" => pool)
        .set(f64::from(state.max_size));
    metrics::gauge!("syncserver_db_pool_waiting", "pool" => pool).set(f64::from(state.waiting));
}

/// Sends the pool gauges to StatsD every 10 s, as upstream (`storage.pool.connections.*`).
pub fn statsd_pool_gauges(
    storage: Option<crate::db::SharedStorage>,
) -> Option<tokio::task::JoinHandle<()>> {
    let s = STATSD.get()?;
    let storage = storage?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let state = storage.pool_state();
            let gauge = |name: &str, value: u32| {
                let mut m = s.storage.gauge_with_tags(name, u64::from(value));
                if let Some(host) = &s.hostname {
                    m = m.with_tag("hostname", host);
                }
                m.send();
            };
            gauge("storage.pool.connections.active", state.active);
            gauge("storage.pool.connections.idle", state.idle);
            gauge("storage.pool.connections.waiting", state.waiting);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_codes() {
        for code in [200u16, 304, 401, 404, 503] {
            assert_eq!(status_label(code), code.to_string());
        }
        assert_eq!(status_label(299), "other");
    }
}
