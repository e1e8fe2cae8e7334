//! One measured run (a workload against one server), and the sequence of runs the options ask
//! for (several workloads, rounds, A/B interleaving).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::client::{Client, Endpoint, Progress, Recorder, VerifyLog, Window, http_client};
use crate::procstat::{self, ProcFigures};
use crate::server::{Backend, ServerSpec};
use crate::workload::{Pool, Session, User, Workload};

/// What every run shares.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub users: u64,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Records per user prefilled for `reads`.
    pub reads_records: usize,
    pub final_check: bool,
    /// Per request; a write that times out has an unknown outcome.
    pub request_timeout: Duration,
    /// How long a write of unknown outcome may take to land after the client gave up.
    pub settle: Duration,
    /// Names of database server processes whose CPU is reported.
    pub db_processes: Vec<String>,
    pub quiet: bool,
}

/// The server a run drives.
#[derive(Debug, Clone)]
pub enum Target {
    /// Already running: its URL, master secret and (when known) pid.
    External {
        url: String,
        master_secret: String,
        pid: Option<u32>,
    },
    /// Started for this run on a fresh database.
    Start(ServerSpec),
}

/// Figures of one request type.
#[derive(Debug, Clone, Serialize)]
pub struct TypeFigures {
    pub ok: u64,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: BTreeMap<String, u64>,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Which server (A or B in a comparison).
    pub label: String,
    pub server: String,
    pub backend: Option<Backend>,
    pub workload: Workload,
    pub round: usize,
    pub users: u64,
    pub clients: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Successful requests per second in the measured window.
    pub req_per_s: f64,
    pub total: TypeFigures,
    pub by_type: BTreeMap<String, TypeFigures>,
    /// Non-2xx or unanswered requests outside the window (set-up, warm-up, final check).
    pub errors_outside_window: BTreeMap<String, u64>,
    pub uncertain_writes: u64,
    pub failed_records: u64,
    pub verification: VerifyLog,
    pub final_check: bool,
    pub process: ProcFigures,
    /// Successful requests per CPU second of the server (how operators size by cores).
    pub req_per_server_cpu_s: Option<f64>,
    /// The database server's version and main settings, as it reported them.
    pub database_settings: Vec<(String, String)>,
    /// Growth of the database server's statement counters in the measured window, per
    /// successful request (`ServerSpec::database_counters`).
    pub database_per_request: Vec<(String, f64)>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn figures(t: &crate::client::TypeStats, secs: f64) -> TypeFigures {
    let h = &t.hist;
    let has = !h.is_empty();
    let q = |x: f64| if has { ms(h.value_at_quantile(x)) } else { 0.0 };
    TypeFigures {
        ok: t.ok,
        req_per_s: t.ok as f64 / secs,
        p50_ms: q(0.50),
        p90_ms: q(0.90),
        p99_ms: q(0.99),
        max_ms: if has { ms(h.max()) } else { 0.0 },
        errors: t.errors.clone(),
    }
}

fn log(cfg: &RunConfig, msg: &str) {
    if !cfg.quiet {
        eprintln!("bench: {msg}");
    }
}

/// Runs `op` for every user, `clients` at a time; returns the users and what was recorded.
async fn for_each_user<F, Fut>(
    users: Vec<User>,
    clients: usize,
    http: &reqwest::Client,
    endpoint: &Arc<Endpoint>,
    progress: &Arc<Progress>,
    op: F,
) -> (Vec<User>, Recorder)
where
    F: Fn(Client, User, StdRng) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (Client, User, StdRng)> + Send,
{
    let queue = Arc::new(std::sync::Mutex::new(users));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let queue = queue.clone();
        let op = op.clone();
        let mut client = Client::new(http.clone(), endpoint.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut done = Vec::new();
            loop {
                let next = queue.lock().expect("queue lock").pop();
                let Some(user) = next else { break };
                let (c, u, r) = op(client, user, rng).await;
                client = c;
                rng = r;
                done.push(u);
            }
            (done, client.rec)
        }));
    }
    let mut users = Vec::new();
    let mut rec = Recorder::default();
    for t in tasks {
        let (done, r) = t.await.expect("a client task panicked");
        users.extend(done);
        rec.merge(&r);
    }
    users.sort_by_key(|u| u.creds.uid);
    (users, rec)
}

/// Prints progress every few seconds until `stop` flips.
fn progress_task(
    cfg: &RunConfig,
    name: String,
    progress: Arc<Progress>,
    window: Window,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.quiet {
        return None;
    }
    let warmup = cfg.warmup;
    Some(tokio::spawn(async move {
        let started = window.start - warmup;
        let mut last_ok = progress.ok.load(Ordering::Relaxed);
        let mut last_t = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            let ok = progress.ok.load(Ordering::Relaxed);
            let rate = (ok - last_ok) as f64 / (now - last_t).as_secs_f64();
            let phase = if now < window.start {
                format!(
                    "warm-up {:.0}/{:.0} s",
                    (now - started).as_secs_f64(),
                    warmup.as_secs_f64()
                )
            } else {
                format!(
                    "measure {:.0}/{:.0} s",
                    (now.min(window.end) - window.start).as_secs_f64(),
                    (window.end - window.start).as_secs_f64()
                )
            };
            eprintln!(
                "bench: [{name}] {phase}: {rate:.0} req/s, {} errors, {} verification errors",
                progress.errors.load(Ordering::Relaxed),
                progress.problems.load(Ordering::Relaxed)
            );
            last_ok = ok;
            last_t = now;
        }
    }))
}

/// One run: (start the server,) set up, warm up, measure, check, (stop the server).
pub async fn run_one(
    cfg: &RunConfig,
    target: &Target,
    workload: Workload,
    label: &str,
    round: usize,
) -> Result<RunResult, String> {
    let http = http_client(cfg.clients, cfg.request_timeout)?;
    let name = if label.is_empty() {
        format!("{} round {round}", workload.name())
    } else {
        format!("{label} {} round {round}", workload.name())
    };
    let (url, secret, pid, running, server, backend) = match target {
        Target::External {
            url,
            master_secret,
            pid,
        } => (
            url.clone(),
            master_secret.clone(),
            *pid,
            None,
            url.clone(),
            None,
        ),
        Target::Start(spec) => {
            log(
                cfg,
                &format!(
                    "[{name}] starting {} on a fresh {} database",
                    spec.bin.display(),
                    spec.backend.name()
                ),
            );
            let r = spec.start(&http).await?;
            (
                r.url.clone(),
                r.master_secret.clone(),
                Some(r.pid),
                Some(r),
                spec.bin.display().to_string(),
                Some(spec.backend),
            )
        }
    };
    let spec = match target {
        Target::Start(spec) => Some(spec.clone()),
        Target::External { .. } => None,
    };
    let result = measure(
        cfg,
        &http,
        &url,
        &secret,
        pid,
        spec,
        workload,
        &name,
        running.is_some(),
    )
    .await;
    let mut result = result;
    if let Some(mut r) = running {
        let exited = r.exited();
        if exited.is_some() || result.is_err() {
            // The temp dir goes with the server: keep its log for a look.
            let kept = std::env::temp_dir().join(format!("syncserver-bench-{}.log", r.pid));
            let _ = std::fs::copy(r.log_path(), &kept);
            if let Some(status) = exited {
                result = Err(format!(
                    "the server exited during the run ({status}); its log: {}",
                    kept.display()
                ));
            } else {
                log(cfg, &format!("[{name}] server log: {}", kept.display()));
            }
        }
        r.stop().await?;
    }
    let (mut result, procs) = result?;
    if let Target::Start(spec) = target {
        result.database_settings = spec.database_settings().await;
    }
    result.req_per_server_cpu_s = procs
        .server_cpu_s
        .filter(|c| *c > 0.0)
        .map(|c| result.total.ok as f64 / c);
    result.label = label.to_owned();
    result.server = server;
    result.backend = backend;
    result.round = round;
    result.process = procs;
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    cfg: &RunConfig,
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    pid: Option<u32>,
    spec: Option<ServerSpec>,
    workload: Workload,
    name: &str,
    fresh: bool,
) -> Result<(RunResult, ProcFigures), String> {
    let endpoint = Arc::new(Endpoint::new(url, secret)?);
    let progress = Arc::new(Progress::default());
    let settle = cfg.settle;
    let mut procs = ProcFigures {
        machine_cores: procstat::cores(),
        ..Default::default()
    };
    if fresh && let Some(pid) = pid {
        tokio::time::sleep(Duration::from_millis(500)).await;
        procs.server_rss_idle_mb = procstat::rss_bytes(pid).map(|r| r.0 as f64 / 1e6);
    }
    let users: Vec<User> = (1..=cfg.users)
        .map(|uid| User::new(endpoint.credentials(uid)))
        .collect();
    let mut outside = Recorder::default();
    // Set-up: a server we did not start may hold data of these uids from an earlier run.
    let users = if fresh {
        users
    } else {
        log(
            cfg,
            &format!("[{name}] deleting the storage of uids 1..={}", cfg.users),
        );
        let (users, rec) = for_each_user(
            users,
            cfg.clients,
            http,
            &endpoint,
            &progress,
            move |mut c, mut u, mut r| async move {
                let mut s = Session {
                    client: &mut c,
                    user: &mut u,
                    rng: &mut r,
                    end: None,
                    settle,
                };
                let _ = s.delete_storage("set-up").await;
                (c, u, r)
            },
        )
        .await;
        outside.merge(&rec);
        users
    };
    let users = if workload == Workload::Reads {
        log(
            cfg,
            &format!(
                "[{name}] prefilling {} records for each of {} users",
                cfg.reads_records, cfg.users
            ),
        );
        let records = cfg.reads_records;
        let (users, rec) = for_each_user(
            users,
            cfg.clients,
            http,
            &endpoint,
            &progress,
            move |mut c, mut u, mut r| async move {
                let mut s = Session {
                    client: &mut c,
                    user: &mut u,
                    rng: &mut r,
                    end: None,
                    settle,
                };
                let _ = s.prefill(records).await;
                (c, u, r)
            },
        )
        .await;
        outside.merge(&rec);
        users
    } else {
        users
    };

    // Warm-up and the measured window.
    log(
        cfg,
        &format!(
            "[{name}] {} clients, {} users: {:.0} s warm-up, {:.0} s measured",
            cfg.clients,
            cfg.users,
            cfg.warmup.as_secs_f64(),
            cfg.duration.as_secs_f64()
        ),
    );
    let now = Instant::now();
    let window = Window {
        start: now + cfg.warmup,
        end: now + cfg.warmup + cfg.duration,
    };
    let pool = Arc::new(Pool::new(users));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress_handle =
        progress_task(cfg, name.to_owned(), progress.clone(), window, stop.clone());
    let sampler = {
        let db = cfg.db_processes.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window.start.into()).await;
            let me = std::process::id();
            let server0 = pid.and_then(procstat::cpu_seconds);
            let db0 = procstat::cpu_by_name(&db);
            let bench0 = procstat::cpu_seconds(me);
            let machine0 = procstat::machine_ticks();
            let counters0 = match &spec {
                Some(spec) => spec.database_counters().await,
                None => Vec::new(),
            };
            let mut rss_max: Option<u64> = None;
            while Instant::now() + Duration::from_millis(500) < window.end {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Some((rss, _)) = pid.and_then(procstat::rss_bytes) {
                    rss_max = Some(rss_max.map_or(rss, |m| m.max(rss)));
                }
            }
            tokio::time::sleep_until(window.end.into()).await;
            let counters1 = match &spec {
                Some(spec) => spec.database_counters().await,
                None => Vec::new(),
            };
            let mut f = ProcFigures {
                db_counters: counters1
                    .into_iter()
                    .filter_map(|(k, v1)| {
                        let (_, v0) = counters0.iter().find(|(k0, _)| *k0 == k)?;
                        Some((k, v1 - v0))
                    })
                    .collect(),
                ..Default::default()
            };
            if let (Some(a), Some(b)) = (server0, pid.and_then(procstat::cpu_seconds)) {
                f.server_cpu_s = Some(b - a);
            }
            if let Some((rss, _)) = pid.and_then(procstat::rss_bytes) {
                f.server_rss_end_mb = Some(rss as f64 / 1e6);
                rss_max = Some(rss_max.map_or(rss, |m| m.max(rss)));
            }
            f.server_rss_max_mb = rss_max.map(|r| r as f64 / 1e6);
            if !db.is_empty() {
                f.db_cpu_s = Some(procstat::cpu_delta(&db0, &procstat::cpu_by_name(&db)));
            }
            if let (Some(a), Some(b)) = (bench0, procstat::cpu_seconds(me)) {
                f.bench_cpu_s = Some(b - a);
            }
            if let (Some((b0, t0)), Some((b1, t1))) = (machine0, procstat::machine_ticks())
                && t1 > t0
            {
                f.machine_busy = Some((b1 - b0) as f64 / (t1 - t0) as f64);
            }
            f
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..cfg.clients.max(1) {
        let pool = pool.clone();
        let mut client = Client::new(http.clone(), endpoint.clone(), progress.clone());
        client.set_window(Some(window));
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::from_entropy();
            while Instant::now() < window.end {
                let mut user = pool.take().await;
                let mut s = Session {
                    client: &mut client,
                    user: &mut user,
                    rng: &mut rng,
                    end: Some(window.end),
                    settle,
                };
                let _ = match workload {
                    Workload::Mixed => s.mixed().await,
                    Workload::Writes => s.writes().await,
                    Workload::Reads => s.reads().await,
                };
                pool.put(user);
            }
            client.rec
        }));
    }
    let mut rec = Recorder::default();
    for t in tasks {
        rec.merge(&t.await.map_err(|e| format!("a client task failed: {e}"))?);
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = progress_handle {
        h.abort();
    }
    let sampled = sampler.await.map_err(|e| e.to_string())?;
    procs.server_cpu_s = sampled.server_cpu_s;
    procs.server_rss_end_mb = sampled.server_rss_end_mb;
    procs.server_rss_max_mb = sampled.server_rss_max_mb;
    procs.db_cpu_s = sampled.db_cpu_s;
    procs.bench_cpu_s = sampled.bench_cpu_s;
    procs.machine_busy = sampled.machine_busy;
    let window_ok: u64 = rec.types.values().map(|t| t.ok).sum();

    let users = pool.drain();
    if cfg.final_check {
        log(
            cfg,
            &format!("[{name}] final check: reading back every user's collections"),
        );
        // Read-backs are not measured: give them time even when --timeout is short.
        let http = http_client(
            cfg.clients,
            cfg.request_timeout.max(Duration::from_secs(300)),
        )?;
        let http = &http;
        let (_, r) = for_each_user(
            users,
            cfg.clients,
            http,
            &endpoint,
            &progress,
            move |mut c, mut u, mut r| async move {
                let mut s = Session {
                    client: &mut c,
                    user: &mut u,
                    rng: &mut r,
                    end: None,
                    settle,
                };
                let _ = s.final_check().await;
                (c, u, r)
            },
        )
        .await;
        outside.merge(&r);
    }

    let secs = cfg.duration.as_secs_f64();
    let mut all = crate::client::TypeStats::new();
    for t in rec.types.values() {
        all.merge(t);
    }
    let by_type = rec
        .types
        .iter()
        .map(|(k, v)| (k.to_string(), figures(v, secs)))
        .collect();
    let total = figures(&all, secs);
    let mut verification = rec.verify.clone();
    verification.merge(&outside.verify);
    let mut errors_outside_window = rec.other_errors.clone();
    for (k, v) in &outside.other_errors {
        *errors_outside_window.entry(k.clone()).or_default() += v;
    }
    let result = RunResult {
        label: String::new(),
        server: String::new(),
        backend: None,
        workload,
        round: 0,
        users: cfg.users,
        clients: cfg.clients,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: secs,
        req_per_s: total.req_per_s,
        total,
        by_type,
        errors_outside_window,
        uncertain_writes: rec.uncertain_writes + outside.uncertain_writes,
        failed_records: rec.failed_records + outside.failed_records,
        verification,
        final_check: cfg.final_check,
        process: ProcFigures::default(),
        req_per_server_cpu_s: None,
        database_settings: Vec::new(),
        database_per_request: sampled
            .db_counters
            .iter()
            .filter(|_| window_ok > 0)
            .map(|(k, d)| (k.clone(), d / window_ok as f64))
            .collect(),
    };
    log(
        cfg,
        &format!(
            "[{name}] {:.0} req/s, p99 {:.1} ms, {} errors, {} verification errors in {} checks",
            result.req_per_s,
            result.total.p99_ms,
            result.total.errors.values().sum::<u64>(),
            result.verification.errors,
            result.verification.checks
        ),
    );
    Ok((result, procs))
}
