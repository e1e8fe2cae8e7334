//! `bench`: drives a Sync 1.5 storage server with Hawk-signed traffic (issue 18's workloads),
//! verifies what it reads back against what was acknowledged, and reports throughput, latency,
//! errors and the server's CPU and memory. See bench/README.md.

pub mod client;
pub mod model;
pub mod procstat;
pub mod report;
pub mod run;
pub mod server;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};

use crate::report::Report;
use crate::run::{RunConfig, RunResult, Target};
use crate::server::{Backend, ServerSpec};
use crate::workload::Workload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    Mixed,
    Writes,
    Reads,
    All,
}

impl WorkloadArg {
    fn workloads(self) -> Vec<Workload> {
        match self {
            WorkloadArg::Mixed => vec![Workload::Mixed],
            WorkloadArg::Writes => vec![Workload::Writes],
            WorkloadArg::Reads => vec![Workload::Reads],
            WorkloadArg::All => Workload::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    about = "Load benchmark for a Sync 1.5 storage server, with read-back verification",
    after_help = "Examples:\n  bench --server-bin target/release/syncserver --backend sqlite --workload all\n  \
                  bench --url http://127.0.0.1:8000 --data-dir data --server-pid $(pidof syncserver)\n  \
                  bench --server-bin old/syncserver --compare-bin target/release/syncserver --rounds 2"
)]
pub struct Opts {
    /// The server to drive, when the bench does not start one.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The server's master secret (else read from DATA_DIR/master_secret).
    #[arg(long, env = "SYNC_MASTER_SECRET", hide_env_values = true)]
    pub master_secret: Option<String>,
    /// The running server's data dir, for its generated master secret.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// The running server's pid, for its CPU and RSS figures.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Start this server binary for each run, on a fresh scratch database.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// A second server binary: runs alternate A (--server-bin) and B, and B/A is reported.
    #[arg(long, requires = "server_bin")]
    pub compare_bin: Option<PathBuf>,
    /// The backend of the servers the bench starts.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    pub backend: Backend,
    /// MySQL/MariaDB server where scratch databases bench_<random> are created and dropped.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    pub mysql_url: String,
    /// PostgreSQL server where scratch databases bench_<random> are created and dropped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres_url: String,
    /// Extra environment for the servers the bench starts (repeatable), e.g.
    /// SYNC_SYNCSTORAGE__DATABASE_POOL_MAX_SIZE=20.
    #[arg(long = "server-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub server_env: Vec<(String, String)>,
    /// Extra environment for B only (repeatable): with --compare-bin the same binary as
    /// --server-bin, it measures a setting, e.g. SYNC_METRICS__PROMETHEUS_LISTEN=127.0.0.1:0.
    #[arg(long = "compare-env", value_name = "KEY=VALUE", value_parser = parse_env, requires = "compare_bin")]
    pub compare_env: Vec<(String, String)>,
    /// Names of the database server's processes whose CPU is reported (repeatable; default
    /// mariadbd/mysqld or postgres when the bench starts the server on those backends).
    #[arg(long = "db-process")]
    pub db_process: Vec<String>,
    #[arg(long, value_enum, default_value_t = WorkloadArg::All)]
    pub workload: WorkloadArg,
    /// Users, uids 1..=N (their storage is deleted first on a server the bench did not start).
    #[arg(long, default_value_t = 200)]
    pub users: u64,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds of warm-up before the measured window.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Rounds per server and workload (A B A B ... with --compare-bin).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Records per user prefilled for the reads workload.
    #[arg(long, default_value_t = 200)]
    pub reads_records: usize,
    /// Seconds a request may take before it counts as unanswered ("transport").
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Seconds a write of unknown outcome (5xx, or no answer) may take to land after the bench
    /// gave up on it; its records are re-read and adopted only then.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Skip reading every user's data back after each run.
    #[arg(long)]
    pub no_final_check: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl Opts {
    fn config(&self) -> Result<RunConfig, String> {
        if self.users == 0 || self.clients == 0 {
            return Err("--users and --clients must be at least 1".into());
        }
        if !self.duration.is_finite()
            || self.duration <= 0.0
            || !self.warmup.is_finite()
            || self.warmup < 0.0
        {
            return Err("--duration must be > 0 and --warmup >= 0".into());
        }
        let db_processes = if !self.db_process.is_empty() {
            self.db_process.clone()
        } else if self.server_bin.is_some() {
            self.backend.db_processes()
        } else {
            Vec::new()
        };
        Ok(RunConfig {
            users: self.users,
            clients: self.clients,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            reads_records: self.reads_records,
            final_check: !self.no_final_check,
            request_timeout: Duration::from_secs_f64(self.timeout.clamp(0.001, 3600.0)),
            settle: Duration::from_secs_f64(self.settle.clamp(0.0, 3600.0)),
            db_processes,
            quiet: self.quiet,
        })
    }

    fn spec(&self, bin: &std::path::Path, extra_env: &[(String, String)]) -> ServerSpec {
        ServerSpec {
            bin: bin.to_owned(),
            backend: self.backend,
            mysql_url: self.mysql_url.clone(),
            postgres_url: self.postgres_url.clone(),
            env: self.server_env.iter().chain(extra_env).cloned().collect(),
        }
    }

    /// The servers to measure, with their labels: one, or A and B.
    fn targets(&self) -> Result<Vec<(String, Target)>, String> {
        match (&self.server_bin, &self.compare_bin) {
            (Some(a), Some(b)) => Ok(vec![
                ("A".into(), Target::Start(self.spec(a, &[]))),
                ("B".into(), Target::Start(self.spec(b, &self.compare_env))),
            ]),
            (Some(a), None) => Ok(vec![("".into(), Target::Start(self.spec(a, &[])))]),
            (None, _) => {
                let master_secret = match &self.master_secret {
                    Some(s) => s.clone(),
                    None => {
                        let path = self.data_dir.join("master_secret");
                        std::fs::read_to_string(&path)
                            .map(|s| s.trim().to_owned())
                            .map_err(|e| {
                                format!(
                                    "no --master-secret and cannot read {}: {e}",
                                    path.display()
                                )
                            })?
                    }
                };
                Ok(vec![(
                    "".into(),
                    Target::External {
                        url: self.url.clone(),
                        master_secret,
                        pid: self.server_pid,
                    },
                )])
            }
        }
    }
}

/// Runs every workload, round and server the options ask for, in interleaved order (for each
/// workload: A B A B ...). Stops at the first run that cannot start.
pub async fn run(opts: &Opts) -> Result<Report, String> {
    let cfg = opts.config()?;
    let targets = opts.targets()?;
    let rounds = opts
        .rounds
        .unwrap_or(if targets.len() > 1 { 2 } else { 1 })
        .max(1);
    let mut runs: Vec<RunResult> = Vec::new();
    for w in opts.workload.workloads() {
        for round in 1..=rounds {
            for (label, target) in &targets {
                runs.push(run::run_one(&cfg, target, w, label, round).await?);
            }
        }
    }
    let comparisons = if targets.len() > 1 {
        report::comparisons(&runs, "A", "B")
    } else {
        Vec::new()
    };
    let verification_errors = runs.iter().map(|r| r.verification.errors).sum();
    Ok(Report {
        command: std::env::args().collect(),
        started_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        machine_cores: procstat::cores(),
        runs,
        comparisons,
        verification_errors,
    })
}
