//! `syncserver check-config`: the effective settings (secrets redacted), and whether each
//! database answers and has its schema. Settings that do not load (unknown keys, bad URLs)
//! fail before this runs, with their own message. Any problem: a non-zero exit.

use std::time::Duration;

use crate::db::{self, SchemaState, StorageConfig};
use crate::settings::Settings;

/// How long a database may take to answer here.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Prints the report to stdout; `Err` lists the problems found.
pub fn run(mut settings: Settings) -> Result<(), String> {
    println!("effective settings (secrets redacted):\n{settings:#?}\n");
    let mut problems = Vec::new();
    let mut report = |what: &str, result: Result<String, String>| match result {
        Ok(fine) => println!("ok       {what}: {fine}"),
        Err(problem) => {
            println!("PROBLEM  {what}: {problem}");
            problems.push(format!("{what}: {problem}"));
        }
    };
    let secret_file = settings.data_dir.join("master_secret");
    let secret = match settings.load_master_secret() {
        Ok(true) => Ok("set".to_owned()),
        Ok(false) => Ok(format!(
            "not set; the server will generate {}",
            std::path::absolute(&secret_file)
                .unwrap_or(secret_file)
                .display()
        )),
        Err(e) => Err(e),
    };
    report("master secret", secret);
    if let Some(url) = &settings.public_url {
        report("public_url", Ok(url.clone()));
    } else if settings
        .host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        report(
            "public_url",
            Err(format!(
                "not set while listening on {}: Firefox would be told http://localhost:{}",
                settings.host, settings.port
            )),
        );
    }
    if let Some(listen) = &settings.metrics.prometheus_listen {
        let parsed = listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("{listen}: {e}"))
            .and_then(|a| {
                (a.port() != settings.port || a.port() == 0)
                    .then(|| format!("http://{a}/metrics"))
                    .ok_or_else(|| format!("{listen} is the public port"))
            });
        report("metrics.prometheus_listen", parsed);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // The schema first: opening a SQLite file that does not exist would create it.
    if settings.syncstorage.enabled {
        let url = settings.storage_url();
        let schema = db::schema_state(&url, db::STORAGE_MIGRATIONS, "syncstorage.database_url");
        if !matches!(schema, Ok(SchemaState::NotCreated)) {
            report(
                "storage database",
                runtime.block_on(storage_answers(&settings, &url)),
            );
        }
        report("storage schema", schema.and_then(describe));
    }
    if settings.tokenserver.enabled {
        let url = settings.tokenserver_url();
        let schema = db::schema_state(
            &url,
            crate::tokenserver::db::backends::MIGRATIONS,
            "tokenserver.database_url",
        );
        if !matches!(schema, Ok(SchemaState::NotCreated)) {
            let mut pool = settings.tokenserver.pool();
            pool.run_migrations = false;
            pool.max_size = 1;
            let answers = runtime.block_on(async {
                let db = crate::tokenserver::db::open_tokenserver_db(&url, &pool)?;
                tokio::time::timeout(CHECK_TIMEOUT, db.check())
                    .await
                    .map_err(|_| "no answer in time".to_owned())?
                    .map_err(|e| e.reason.to_owned())
            });
            report(
                "tokenserver database",
                answers.map(|()| crate::secret::redact_url(&url)),
            );
        }
        report("tokenserver schema", schema.and_then(describe));
    }
    if problems.is_empty() {
        println!("\nno problems found");
        Ok(())
    } else {
        Err(format!(
            "{} problem(s):\n{}",
            problems.len(),
            problems.join("\n")
        ))
    }
}

/// Opens the storage database without changing it and asks it something.
async fn storage_answers(settings: &Settings, url: &str) -> Result<String, String> {
    let mut pool = settings.syncstorage.pool();
    pool.run_migrations = false;
    pool.max_size = 1;
    let storage = db::open_storage(
        url,
        &pool,
        settings.syncstorage.spanner_emulator_host.as_deref(),
        StorageConfig {
            limits: settings.syncstorage.limits.clone(),
            enable_quota: false,
            enforce_quota: false,
        },
    )
    .await?;
    tokio::time::timeout(CHECK_TIMEOUT, storage.check())
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| format!("{} ({})", e.reason(), e.message))?;
    Ok(crate::secret::redact_url(url))
}

fn describe(state: SchemaState) -> Result<String, String> {
    match state {
        SchemaState::Current => Ok("every migration applied".to_owned()),
        SchemaState::NotCreated => Ok("no database file yet: the server creates it".to_owned()),
        SchemaState::NotChecked => Ok("checked and completed by the server at start-up".to_owned()),
        SchemaState::Pending(names) => Err(format!(
            "{} migration(s) not applied ({}); run `syncserver migrate`",
            names.len(),
            names.join(", ")
        )),
    }
}
