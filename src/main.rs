//! The `syncserver` command: `serve` (the default), `token`, `hawk`, `migrate`,
//! `check-config`, `healthcheck`, `purge-ttl`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use syncserver::auth::Secrets;
use syncserver::settings::Settings;

#[derive(Parser)]
#[command(
    name = "syncserver",
    version,
    about = "Firefox Sync 1.5 storage server"
)]
struct Cli {
    /// TOML settings file (environment variables SYNC_* override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print Hawk credentials for a user, to drive the API by hand.
    Token {
        #[arg(long)]
        uid: u64,
        /// The node URL written into the token (default: http://HOST:PORT).
        #[arg(long)]
        node: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        duration: u64,
    },
    /// Print an Authorization header for one request, for curl: mints a token for the uid in
    /// the URL's /1.5/{uid} path and signs METHOD URL with Hawk.
    Hawk {
        /// HTTP method, e.g. GET or PUT.
        method: String,
        /// The full URL, e.g. http://127.0.0.1:8000/1.5/1/storage/bookmarks
        url: String,
    },
    /// Create or update the storage database schema, then exit.
    Migrate,
    /// Print the effective settings (secrets redacted), check that each database answers and
    /// has its schema; exits non-zero on any problem. Settings errors (unknown keys, bad URLs)
    /// are reported before anything else.
    ///
    /// Example: syncserver --config /etc/syncserver.toml check-config
    CheckConfig,
    /// Exit 0 when the server of these settings answers `__lbheartbeat__` on its port, for a
    /// container HEALTHCHECK (no curl needed in the image).
    Healthcheck,
    /// Delete expired records and batches (reads hide them already; this reclaims space), in
    /// short transactions, safe to run from cron beside a busy server.
    ///
    /// Example: syncserver purge-ttl --rows-per-chunk 500 --pause-ms 100
    PurgeTtl {
        /// Rows deleted per transaction.
        #[arg(long, default_value_t = 1000)]
        rows_per_chunk: u32,
        /// Milliseconds to pause between transactions.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("syncserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Token {
            uid,
            node,
            duration,
        } => token(settings, uid, node, duration),
        Command::Hawk { method, url } => hawk_header(settings, &method, &url),
        Command::Migrate => migrate(settings),
        Command::CheckConfig => syncserver::admin::check_config::run(settings),
        Command::Healthcheck => healthcheck(&settings),
        Command::PurgeTtl {
            rows_per_chunk,
            pause_ms,
        } => purge_ttl(
            settings,
            syncserver::db::purge::PurgeOptions {
                rows_per_chunk,
                pause: std::time::Duration::from_millis(pause_ms),
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncserver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    let _log = syncserver::logging::init(settings.human_logs);
    let _sentry = syncserver::logging::init_sentry(&settings.environment);
    actix_web::rt::System::new().block_on(async move {
        let running = syncserver::server::start(settings).await?;
        // One block for the person starting it, one log line for the log.
        let width = running
            .summary
            .iter()
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        let mut block = String::from("syncserver started\n");
        for (what, value) in &running.summary {
            block.push_str(&format!("  {what:<width$}  {value}\n"));
        }
        eprint!("{block}");
        let fields: Vec<String> = running
            .summary
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        slog_scope::info!("listening"; "address" => %running.addr, "summary" => fields.join("; "));
        running.server.await.map_err(|e| e.to_string())
    })
}

/// GET `__lbheartbeat__` on this machine's listener (a wildcard host is asked on loopback).
fn healthcheck(settings: &Settings) -> Result<(), String> {
    let host = match settings.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_owned(),
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => settings.host.clone(),
    };
    let url = format!("http://{host}:{}/__lbheartbeat__", settings.port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(&url)
        .call()
        .map(|_| ())
        .map_err(|e| format!("healthcheck: {url}: {e}"))
}

/// Mints credentials (token id and Hawk key) for `uid`.
fn mint(
    settings: &mut Settings,
    uid: u64,
    node: &str,
    duration: u64,
) -> Result<(String, String), String> {
    // Credentials from a secret made up here would be refused by the server: only its own.
    if !settings.load_master_secret()? {
        return Err(format!(
            "master_secret: not set and {} does not exist; run this with the server's settings \
             (its --config, SYNC_DATA_DIR or SYNC_MASTER_SECRET)",
            settings.data_dir.join("master_secret").display()
        ));
    }
    let secrets = Secrets::new(&settings.master_secret);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    Ok(secrets.credentials(uid, node, now + duration))
}

fn token(
    mut settings: Settings,
    uid: u64,
    node: Option<String>,
    duration: u64,
) -> Result<(), String> {
    let node = node
        .or_else(|| settings.public_url.clone())
        .unwrap_or_else(|| format!("http://{}:{}", settings.host, settings.port));
    let (id, key) = mint(&mut settings, uid, &node, duration)?;
    let out = serde_json::json!({
        "id": id,
        "key": key,
        "uid": uid,
        "api_endpoint": format!("{}/1.5/{uid}", node.trim_end_matches('/')),
        "duration": duration,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// A runtime for an admin command; the storage it opens lives as long as the runtime.
fn admin_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Opens the storage database for an admin command, running migrations.
fn open_for_admin(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
) -> Result<syncserver::db::SharedStorage, String> {
    settings.prepare_sqlite_dirs()?;
    let mut pool = settings.syncstorage.pool();
    pool.run_migrations = true;
    pool.max_size = 1;
    let config = syncserver::db::StorageConfig {
        limits: settings.syncstorage.limits.clone(),
        enable_quota: false,
        enforce_quota: false,
    };
    runtime.block_on(syncserver::db::open_storage(
        &settings.storage_url(),
        &pool,
        settings.syncstorage.spanner_emulator_host.as_deref(),
        config,
    ))
}

use syncserver::secret::redact_url;

fn migrate(settings: Settings) -> Result<(), String> {
    open_for_admin(&admin_runtime()?, &settings)?;
    eprintln!(
        "syncserver: migrations applied to {}",
        redact_url(&settings.storage_url())
    );
    if settings.tokenserver.enabled {
        let mut pool = settings.tokenserver.pool();
        pool.run_migrations = true;
        pool.max_size = 1;
        let url = settings.tokenserver_url();
        syncserver::tokenserver::db::open_tokenserver_db(&url, &pool)?;
        eprintln!(
            "syncserver: tokenserver migrations applied to {}",
            redact_url(&url)
        );
    }
    Ok(())
}

fn purge_ttl(
    settings: Settings,
    options: syncserver::db::purge::PurgeOptions,
) -> Result<(), String> {
    let runtime = admin_runtime()?;
    let storage = open_for_admin(&runtime, &settings)?;
    let stats = runtime
        .block_on(syncserver::db::purge::purge_expired(
            storage.as_ref(),
            &options,
            |so_far| {
                eprintln!(
                    "syncserver: purging: {} records, {} batches, {} staged records so far",
                    so_far.bsos, so_far.batches, so_far.staged
                )
            },
        ))
        .map_err(|e| e.message)?;
    eprintln!(
        "syncserver: purged {} expired records and {} expired batches ({} staged records)",
        stats.bsos, stats.batches, stats.staged
    );
    Ok(())
}

fn hawk_header(mut settings: Settings, method: &str, url: &str) -> Result<(), String> {
    let bad =
        || format!("hawk: cannot parse URL {url:?} (expected http(s)://HOST[:PORT]/1.5/UID/...)");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return Err(bad()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None if scheme == "https" => (authority, 443),
        None => (authority, 80),
    };
    let uid: u64 = target
        .strip_prefix("/1.5/")
        .and_then(|r| r.split(['/', '?']).next())
        .and_then(|u| u.parse().ok())
        .ok_or_else(bad)?;
    let (id, key) = mint(&mut settings, uid, &format!("{scheme}://{authority}"), 3600)?;
    let method = method.to_ascii_uppercase();
    let signed = syncserver::auth::hawk::SignedRequest {
        method: &method,
        target,
        host,
        port,
    };
    println!("{}", syncserver::auth::hawk::sign(&id, &key, signed));
    Ok(())
}
