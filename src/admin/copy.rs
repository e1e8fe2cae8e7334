//! `syncserver copy --from URL --to URL`: every user's storage and the tokenserver's rows from
//! one database to another: SQLite, MySQL/MariaDB, PostgreSQL and Spanner, any direction.
//!
//! Streaming: users are walked in uid order a page at a time (the storage's own users between
//! SQL engines; the tokenserver's rows when Spanner is a side, as it keys storage by FxA uid and
//! key id, which each row gives), and each collection's rows a
//! chunk at a time, each chunk one transaction; memory does not grow with the data.
//! Resumable without a state file: a user whose data on the target already equals the
//! source's (`UserSummary`: per collection its timestamp, rows and bytes, and the tombstone) is
//! skipped; any other user's partial copy is deleted and copied again. Verified: after each
//! user is copied, both summaries are read again and must be equal; the run ends with the
//! list of users that differ (exit non-zero), and running it again copies those again.
//!
//! Uncommitted batches are not copied (a client whose batch was in flight uploads it again).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{open_storage, open_tokenserver, runtime};
use crate::db::transfer::UserSummary;
use crate::db::{StorageDb, UserId};
use crate::protocol::Precondition;
use crate::settings::Settings;
use crate::tokenserver::db::SharedTokenserverDb;
use crate::tokenserver::db::admin::{AdminOp, AdminOut};

/// `syncserver copy`'s options (the command line's, through clap).
#[derive(Debug, Clone, clap::Args)]
pub struct CopyOptions {
    /// The database copied from (a storage URL, as syncstorage.database_url).
    #[arg(long)]
    pub from: String,
    /// The database copied to (created or migrated as needed).
    #[arg(long)]
    pub to: String,
    /// The source's tokenserver tables (default: the same MySQL/PostgreSQL database, or
    /// tokenserver.db beside the SQLite file; required when the source is Spanner).
    #[arg(long)]
    pub tokenserver_from: Option<String>,
    /// The target's tokenserver tables (same default).
    #[arg(long)]
    pub tokenserver_to: Option<String>,
    /// Copy the storage only.
    #[arg(long)]
    pub skip_tokenserver: bool,
    /// Rows per transaction.
    #[arg(long, default_value_t = 500)]
    pub rows_per_chunk: u32,
}

/// Users read per step of the walk.
const USERS_PER_PAGE: u32 = 500;

/// Where the tokenserver tables are when the storage is at `url`.
pub fn default_tokenserver_url(url: &str) -> Option<String> {
    if crate::db::mysql::is_mysql_url(url) || crate::db::postgres::is_postgres_url(url) {
        return Some(url.to_owned());
    }
    let target = crate::db::sqlite::SqliteTarget::from_url(url)?;
    let dir = target.path.parent()?;
    Some(format!("sqlite:{}", dir.join("tokenserver.db").display()))
}

fn sqlite_file_missing(url: &str) -> bool {
    crate::db::sqlite::SqliteTarget::from_url(url).is_some_and(|t| !t.path.exists())
}

pub fn run(settings: Settings, options: CopyOptions) -> Result<(), String> {
    use crate::secret::redact_url;
    if options.from == options.to {
        return Err("copy: --from and --to are the same database".into());
    }
    let spanner = [&options.from, &options.to]
        .iter()
        .any(|u| crate::db::spanner::is_spanner_url(u));
    if sqlite_file_missing(&options.from) {
        return Err(format!(
            "copy: {} does not exist",
            redact_url(&options.from)
        ));
    }
    let rt = runtime()?;
    let source = open_storage(&rt, &settings, &options.from, false)?;
    if let Some(t) = crate::db::sqlite::SqliteTarget::from_url(&options.to)
        && let Some(dir) = t.path.parent()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let target = open_storage(&rt, &settings, &options.to, true)?;
    eprintln!(
        "syncserver: copying {} -> {}",
        redact_url(&options.from),
        redact_url(&options.to)
    );

    let ts_from = options
        .tokenserver_from
        .clone()
        .or_else(|| default_tokenserver_url(&options.from))
        .filter(|url| !sqlite_file_missing(url));
    let ts_source = match &ts_from {
        Some(url) => Some(open_tokenserver(&rt, &settings, url, false)?),
        None => None,
    };
    if spanner && ts_source.is_none() {
        return Err(
            "copy: with Spanner on either side the users are the tokenserver's rows: \
                    give --tokenserver-from URL (their database)"
                .into(),
        );
    }
    if !options.skip_tokenserver {
        let to = options
            .tokenserver_to
            .clone()
            .or_else(|| default_tokenserver_url(&options.to));
        match (&ts_source, to) {
            (Some(src), Some(to)) if Some(&to) != ts_from.as_ref() => {
                let dst = open_tokenserver(&rt, &settings, &to, true)?;
                let n = rt.block_on(copy_tokenserver(src.as_ref(), &dst))?;
                eprintln!("syncserver: tokenserver: {n} rows copied, every row verified");
            }
            (Some(_), Some(_)) => {
                eprintln!("syncserver: tokenserver: the same database on both sides, kept")
            }
            (None, _) => eprintln!("syncserver: no tokenserver database found: storage only"),
            (Some(_), None) => eprintln!(
                "syncserver: no tokenserver database named for the target (--tokenserver-to): \
                 storage only"
            ),
        }
    }

    let walk = match (&ts_source, spanner) {
        (Some(ts), true) => Walk::TokenRows(ts.as_ref()),
        _ => Walk::StorageUids,
    };
    let report = rt.block_on(copy_storage(
        source.as_ref(),
        target.as_ref(),
        options.rows_per_chunk.max(1),
        walk,
    ))?;
    eprintln!(
        "syncserver: storage: {} users ({} copied, {} already there), {} records in {:.1} s",
        report.users,
        report.copied,
        report.already,
        report.records,
        report.elapsed.as_secs_f64()
    );
    if !report.differ.is_empty() {
        return Err(format!(
            "copy: {} users differ after copying (the source changed meanwhile?): uids {:?}; run \
             the same command again to copy them again",
            report.differ.len(),
            report.differ
        ));
    }
    eprintln!(
        "syncserver: verified: every user's collections, timestamps, record counts and sizes match"
    );
    Ok(())
}

async fn call(
    db: &dyn crate::tokenserver::db::TokenserverDb,
    op: AdminOp,
) -> Result<AdminOut, String> {
    match db.admin(op).await.map_err(super::ts_error)? {
        AdminOut::Refused(why) => Err(why),
        out => Ok(out),
    }
}

/// The tokenserver's rows, keeping every id; then each user row compared.
async fn copy_tokenserver(
    src: &dyn crate::tokenserver::db::TokenserverDb,
    dst: &SharedTokenserverDb,
) -> Result<usize, String> {
    let AdminOut::Services(services) = call(src, AdminOp::Services).await? else {
        return Err("unexpected answer".into());
    };
    let AdminOut::Nodes(nodes) = call(src, AdminOp::Nodes { service: None }).await? else {
        return Err("unexpected answer".into());
    };
    let first = AdminOp::Import {
        services,
        nodes,
        users: vec![],
    };
    let AdminOut::Count(mut copied) = call(dst.as_ref(), first).await? else {
        return Err("unexpected answer".into());
    };
    let mut after = 0;
    loop {
        let page = AdminOp::Users {
            after,
            limit: i64::from(USERS_PER_PAGE),
        };
        let AdminOut::Users(rows) = call(src, page.clone()).await? else {
            return Err("unexpected answer".into());
        };
        let Some(last) = rows.last() else { break };
        after = last.uid;
        let import = AdminOp::Import {
            services: vec![],
            nodes: vec![],
            users: rows.clone(),
        };
        if let AdminOut::Count(n) = call(dst.as_ref(), import).await? {
            copied += n;
        }
        let AdminOut::Users(there) = call(dst.as_ref(), page).await? else {
            return Err("unexpected answer".into());
        };
        if there != rows {
            return Err(format!(
                "copy: the target's tokenserver users after uid {} differ from the source's \
                 (the target had rows of its own?)",
                rows[0].uid - 1
            ));
        }
    }
    Ok(copied)
}

#[derive(Debug, Default)]
struct Report {
    users: u64,
    copied: u64,
    already: u64,
    records: i64,
    differ: Vec<u64>,
    elapsed: Duration,
}

/// How the users are found.
enum Walk<'a> {
    /// The storage's own uids (SQL engines).
    StorageUids,
    /// Every tokenserver row's storage (Spanner on a side).
    TokenRows(&'a dyn crate::tokenserver::db::TokenserverDb),
}

impl Walk<'_> {
    /// The next page of users after `after` (a uid), and the uid to continue after.
    async fn page(&self, source: &dyn StorageDb, after: u64) -> Result<Vec<UserId>, String> {
        match self {
            Walk::StorageUids => Ok(source
                .users_after(after, USERS_PER_PAGE)
                .await
                .map_err(|e| e.message)?
                .into_iter()
                .map(UserId::from_uid)
                .collect()),
            Walk::TokenRows(ts) => {
                let op = AdminOp::Users {
                    after: after.min(i64::MAX as u64) as i64,
                    limit: i64::from(USERS_PER_PAGE),
                };
                match call(*ts, op).await? {
                    AdminOut::Users(rows) => Ok(rows.iter().map(|r| r.storage_user()).collect()),
                    _ => Err("unexpected answer".into()),
                }
            }
        }
    }
}

async fn copy_storage(
    source: &dyn StorageDb,
    target: &dyn StorageDb,
    chunk: u32,
    walk: Walk<'_>,
) -> Result<Report, String> {
    let started = Instant::now();
    let mut total = 0u64;
    let mut after = 0;
    loop {
        let page = walk.page(source, after).await?;
        let Some(last) = page.last() else { break };
        after = last.legacy_id;
        total += page.len() as u64;
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} users, {msg} records, {elapsed} elapsed, ETA {eta}",
        )
        .map_err(|e| e.to_string())?,
    );
    let mut report = Report::default();
    let mut after = 0;
    loop {
        let page = walk.page(source, after).await?;
        let Some(last) = page.last() else { break };
        after = last.legacy_id;
        for user in page {
            let uid = user.legacy_id;
            let wanted = source.summary(&user).await.map_err(|e| e.message)?;
            let there = target.summary(&user).await.map_err(|e| e.message)?;
            bar.inc(1);
            if wanted.is_empty() && there.is_empty() {
                // A token row without storage (a replaced key, a batch never committed).
                continue;
            }
            report.users += 1;
            if wanted == there {
                report.already += 1;
            } else {
                copy_user(source, target, &user, &wanted, &there, chunk).await?;
                report.copied += 1;
                report.records += wanted.records();
                let after_copy = target.summary(&user).await.map_err(|e| e.message)?;
                if after_copy != wanted {
                    report.differ.push(uid);
                }
            }
            bar.set_message(report.records.to_string());
        }
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One user: whatever a stopped copy left is removed, then every collection's rows chunk by
/// chunk, then the timestamps (last, so a stopped copy never looks complete).
async fn copy_user(
    source: &dyn StorageDb,
    target: &dyn StorageDb,
    user: &UserId,
    wanted: &UserSummary,
    there: &UserSummary,
    chunk: u32,
) -> Result<(), String> {
    if !there.is_empty() {
        target
            .delete_storage(user, Precondition::None)
            .await
            .map_err(|e| e.message)?;
    }
    let names = wanted.collections.keys().chain(wanted.untimed_rows.keys());
    for name in names {
        let mut after: Option<String> = None;
        loop {
            let rows = source
                .rows_after(user, name, after.clone(), chunk)
                .await
                .map_err(|e| e.message)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id.clone());
            let full = rows.len() as u32 == chunk;
            target
                .import_rows(user, name, rows)
                .await
                .map_err(|e| e.message)?;
            if !full {
                break;
            }
        }
    }
    let collections = wanted
        .collections
        .iter()
        .map(|(name, (ms, _, _))| (name.clone(), *ms))
        .collect();
    target
        .set_timestamps(user, collections, wanted.tombstone)
        .await
        .map_err(|e| e.message)
}
