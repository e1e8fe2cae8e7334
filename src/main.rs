//! The `syncserver` command: `serve` (the default), `token`, `hawk`, `migrate`,
//! `check-config`, `healthcheck`, `purge-ttl`, and the operator's commands of `admin`:
//! `node`, `user`, `purge-replaced`, `copy`, `import-legacy`.

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
    about = "Firefox Sync 1.5 storage server",
    after_help = "Every command reads the server's settings (--config, SYNC_* variables) and runs \
                  beside a running server. Examples:\n  \
                  syncserver node list\n  \
                  syncserver user show 0123456789abcdef0123456789abcdef\n  \
                  syncserver purge-ttl --dry-run\n  \
                  syncserver copy --from sqlite:data/syncserver.db --to postgres://sync@localhost/sync"
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
        /// Count what has expired, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The tokenserver's storage nodes (where new users are sent).
    ///
    /// Examples:
    ///   syncserver node list
    ///   syncserver node add https://sync2.example.com --capacity 1000
    ///   syncserver node update https://sync2.example.com --downed 1
    ///   syncserver node remove https://sync2.example.com --reassign https://sync.example.com
    #[command(subcommand, verbatim_doc_comment)]
    Node(NodeCmd),
    /// The tokenserver's user rows and their storage.
    ///
    /// A user is named by uid, email (fxa_uid@domain) or FxA uid (32 hex digits).
    /// Examples:
    ///   syncserver user list --limit 50
    ///   syncserver user show 0123456789abcdef0123456789abcdef
    ///   syncserver user delete 42 --yes
    #[command(subcommand, verbatim_doc_comment)]
    User(UserCmd),
    /// Delete tokenserver rows replaced by a newer client state (or retired by an account
    /// deletion) longer ago than the grace period, with their storage (no current row uses it).
    ///
    /// Example: syncserver purge-replaced --grace-days 7 --dry-run
    PurgeReplaced {
        /// Rows replaced less than this many days ago are kept.
        #[arg(long, default_value_t = 7)]
        grace_days: u64,
        /// Count what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per step.
        #[arg(long, default_value_t = 100)]
        rows_per_chunk: u32,
        /// Milliseconds to pause between steps.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Copy every user's storage and the tokenserver rows to another database (SQLite,
    /// MySQL/MariaDB, PostgreSQL, Spanner), verified user by user. Resumable: run it again
    /// after an interruption and it continues. Stop the server (or expect users it changes
    /// meanwhile to be reported and copied again by the next run). With Spanner on a side the
    /// users are the tokenserver's rows (--tokenserver-from when Spanner is the source).
    ///
    /// Example: syncserver copy --from sqlite:data/syncserver.db --to postgres://sync:pw@localhost/sync
    Copy(syncserver::admin::copy::CopyOptions),
    /// Import the old Python syncserver's database (SQLite, MySQL or PostgreSQL) into this
    /// server's databases: users keep their uids and generations, records and collections
    /// their timestamps, so Firefox syncs on without uploading again.
    ///
    /// Example: syncserver import-legacy --from sqlite:/var/lib/syncserver/syncserver.db --dry-run
    ImportLegacy(syncserver::admin::legacy::ImportOptions),
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Every node with its counters and current users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a node (its URL as Firefox reaches it).
    Add {
        url: String,
        #[command(flatten)]
        change: NodeFields,
    },
    /// Change a node's counters or flags.
    Update {
        url: String,
        #[command(flatten)]
        change: NodeFields,
    },
    /// Remove a node; refused while users are on it, unless --reassign moves them.
    Remove {
        url: String,
        /// Move the node's users to this node first.
        #[arg(long)]
        reassign: Option<String>,
    },
}

#[derive(clap::Args)]
struct NodeFields {
    /// Users the node takes in all (add: 100).
    #[arg(long)]
    capacity: Option<i32>,
    /// New users it can still take now (add: the capacity).
    #[arg(long)]
    available: Option<i32>,
    #[arg(long)]
    current_load: Option<i32>,
    /// 1: no new users, existing ones get a new node.
    #[arg(long)]
    downed: Option<i32>,
    /// 1: no new users.
    #[arg(long)]
    backoff: Option<i32>,
}

impl From<NodeFields> for syncserver::tokenserver::db::admin::NodeChange {
    fn from(f: NodeFields) -> Self {
        Self {
            available: f.available,
            capacity: f.capacity,
            current_load: f.current_load,
            downed: f.downed,
            backoff: f.backoff,
        }
    }
}

#[derive(Subcommand)]
enum UserCmd {
    /// User rows in uid order.
    List {
        /// Rows after this uid.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Every row of the account (token rows, node, generation, keys_changed_at) and each
    /// row's collections with record counts and sizes.
    Show {
        /// uid, email or FxA uid.
        who: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete every row of the account and their storage; it starts afresh at its next sync.
    Delete {
        /// uid, email or FxA uid.
        who: String,
        /// Really delete.
        #[arg(long)]
        yes: bool,
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
            dry_run,
        } => purge_ttl(
            settings,
            syncserver::db::purge::PurgeOptions {
                rows_per_chunk,
                pause: std::time::Duration::from_millis(pause_ms),
                dry_run,
            },
        ),
        Command::Node(cmd) => {
            use syncserver::admin::nodes::NodeCommand;
            let cmd = match cmd {
                NodeCmd::List { json } => NodeCommand::List { json },
                NodeCmd::Add { url, change } => NodeCommand::Add {
                    url,
                    change: change.into(),
                },
                NodeCmd::Update { url, change } => NodeCommand::Update {
                    url,
                    change: change.into(),
                },
                NodeCmd::Remove { url, reassign } => NodeCommand::Remove { url, reassign },
            };
            syncserver::admin::nodes::run(settings, cmd)
        }
        Command::User(cmd) => {
            use syncserver::admin::users::UserCommand;
            let cmd = match cmd {
                UserCmd::List { after, limit, json } => UserCommand::List { after, limit, json },
                UserCmd::Show { who, json } => UserCommand::Show { who, json },
                UserCmd::Delete { who, yes } => UserCommand::Delete { who, yes },
            };
            syncserver::admin::users::run(settings, cmd)
        }
        Command::PurgeReplaced {
            grace_days,
            dry_run,
            rows_per_chunk,
            pause_ms,
        } => syncserver::admin::users::purge_replaced(
            settings,
            syncserver::admin::users::PurgeReplaced {
                grace: std::time::Duration::from_secs(grace_days * 86_400),
                dry_run,
                rows_per_chunk,
                pause: std::time::Duration::from_millis(pause_ms),
            },
        ),
        Command::Copy(options) => syncserver::admin::copy::run(settings, options),
        Command::ImportLegacy(options) => syncserver::admin::legacy::run(settings, options),
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

use syncserver::admin::{runtime as admin_runtime, settings_storage as open_for_admin};
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
    let verb = if options.dry_run {
        "would purge"
    } else {
        "purged"
    };
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
        "syncserver: {verb} {} expired records and {} expired batches ({} staged records)",
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
