//! Commands an operator runs beside the server (`syncserver <command>`), beyond `serve`: each
//! opens the databases the settings name (no listener), does its work in short transactions,
//! and reports on stderr (results on stdout).

pub mod check_config;
pub mod copy;
pub mod legacy;
pub mod nodes;
pub mod users;

use crate::db::SharedStorage;
use crate::settings::Settings;
use crate::tokenserver::db::{SYNC_SERVICE, SharedTokenserverDb};

/// A runtime for an admin command; the databases it opens live as long as the runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Opens a storage database for an admin command; `migrate`: create or update its schema.
pub fn open_storage(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    url: &str,
    migrate: bool,
) -> Result<SharedStorage, String> {
    let mut pool = settings.syncstorage.pool();
    pool.run_migrations = migrate;
    pool.max_size = 2;
    let config = crate::db::StorageConfig {
        limits: settings.syncstorage.limits.clone(),
        enable_quota: false,
        enforce_quota: false,
    };
    runtime.block_on(crate::db::open_storage(
        url,
        &pool,
        settings.syncstorage.spanner_emulator_host.as_deref(),
        config,
    ))
}

/// The storage database of the settings, migrated (as the server would at start-up).
pub fn settings_storage(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
) -> Result<SharedStorage, String> {
    settings.prepare_sqlite_dirs()?;
    open_storage(runtime, settings, &settings.storage_url(), true)
}

/// Opens a tokenserver database; `migrate`: create or update its tables.
pub fn open_tokenserver(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    url: &str,
    migrate: bool,
) -> Result<SharedTokenserverDb, String> {
    let mut pool = settings.tokenserver.pool();
    pool.run_migrations = migrate;
    pool.max_size = 1;
    let _guard = runtime.enter();
    crate::tokenserver::db::open_tokenserver_db(url, &pool)
}

/// The tokenserver database of the settings (migrated) and the id of the Sync service in it.
pub fn settings_tokenserver(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
) -> Result<(SharedTokenserverDb, i32), String> {
    settings.prepare_sqlite_dirs()?;
    let db = open_tokenserver(runtime, settings, &settings.tokenserver_url(), true)?;
    let service = runtime
        .block_on(db.service(SYNC_SERVICE))
        .map_err(ts_error)?
        .ok_or_else(|| format!("the tokenserver database has no {SYNC_SERVICE:?} service"))?;
    Ok((db, service.id))
}

/// One admin operation on the tokenserver tables; a refusal is an error (nothing changed).
pub fn ts_admin(
    runtime: &tokio::runtime::Runtime,
    db: &SharedTokenserverDb,
    op: crate::tokenserver::db::admin::AdminOp,
) -> Result<crate::tokenserver::db::admin::AdminOut, String> {
    use crate::tokenserver::db::admin::AdminOut;
    match runtime.block_on(db.admin(op)).map_err(ts_error)? {
        AdminOut::Refused(why) => Err(why),
        out => Ok(out),
    }
}

/// A tokenserver database failure as the operator reads it (the cause is logged above it).
pub fn ts_error(e: crate::tokenserver::TokenserverError) -> String {
    format!("tokenserver database: {} ({})", e.description, e.reason)
}

/// Rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The tokenserver's clock, for its rows' times.
pub(crate) use crate::tokenserver::issuer::now_ms;
