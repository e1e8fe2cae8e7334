//! `syncserver user list|show|delete` and `purge-replaced`: the tokenserver's `users` rows and
//! the storage each row's uid owns.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{now_ms, runtime, settings_storage, settings_tokenserver, table, ts_admin};
use crate::db::{InfoBody, InfoKind, SharedStorage, UserId};
use crate::protocol::Precondition;
use crate::settings::Settings;
use crate::tokenserver::db::SharedTokenserverDb;
use crate::tokenserver::db::admin::{AdminOp, AdminOut, NodeRow, UserRow, UserSelector};

#[derive(Debug, Clone)]
pub enum UserCommand {
    List { after: i64, limit: i64, json: bool },
    Show { who: String, json: bool },
    Delete { who: String, yes: bool },
}

/// `user show` and `user delete` name an account by uid (digits), email (has an `@`) or FxA
/// uid (32 hex digits).
pub fn selector(who: &str) -> Result<UserSelector, String> {
    if who.contains('@') {
        return Ok(UserSelector::Email(who.to_owned()));
    }
    if who.len() == 32 && who.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(UserSelector::FxaUid(who.to_ascii_lowercase()));
    }
    who.parse::<i64>()
        .map(UserSelector::Uid)
        .map_err(|_| format!("{who:?}: expected a uid, an email or a 32-hex-digit FxA uid"))
}

pub fn run(settings: Settings, command: UserCommand) -> Result<(), String> {
    let rt = runtime()?;
    let (db, _service) = settings_tokenserver(&rt, &settings)?;
    match command {
        UserCommand::List { after, limit, json } => {
            let rows = users(ts_admin(&rt, &db, AdminOp::Users { after, limit })?)?;
            let nodes = node_urls(&rt, &db)?;
            print!("{}", render_rows(&rows, &nodes, json)?);
            if !json && rows.len() as i64 == limit {
                eprintln!(
                    "syncserver: {limit} rows shown; more with --after {}",
                    rows.last().map_or(0, |r| r.uid)
                );
            }
        }
        UserCommand::Show { who, json } => {
            let rows = users(ts_admin(&rt, &db, AdminOp::FindUser(selector(&who)?))?)?;
            if rows.is_empty() {
                return Err(format!("no user {who}"));
            }
            let nodes = node_urls(&rt, &db)?;
            let storage = settings_storage(&rt, &settings)?;
            let mut usage = BTreeMap::new();
            for row in &rows {
                usage.insert(row.uid, collections(&rt, &storage, &row.storage_user())?);
            }
            if json {
                let out = serde_json::json!({"rows": rows, "storage": usage});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", render_rows(&rows, &nodes, false)?);
                for (uid, cols) in &usage {
                    println!("\nstorage of uid {uid}:");
                    if cols.is_empty() {
                        println!("  (none)");
                        continue;
                    }
                    let lines: Vec<Vec<String>> = cols
                        .iter()
                        .map(|(name, c)| {
                            vec![
                                format!("  {name}"),
                                format!("{:.2}", c.modified as f64 / 1000.0),
                                c.records.to_string(),
                                c.bytes.to_string(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(&["  collection", "modified", "records", "bytes"], &lines)
                    );
                }
            }
        }
        UserCommand::Delete { who, yes } => {
            let rows = users(ts_admin(&rt, &db, AdminOp::FindUser(selector(&who)?))?)?;
            if rows.is_empty() {
                return Err(format!("no user {who}"));
            }
            if !yes {
                eprint!("{}", render_rows(&rows, &node_urls(&rt, &db)?, false)?);
                return Err(format!(
                    "user delete: would delete these {} rows and their storage; run again with --yes",
                    rows.len()
                ));
            }
            let storage = settings_storage(&rt, &settings)?;
            for row in &rows {
                delete_storage(&rt, &storage, &row.storage_user())?;
            }
            let uids = rows.iter().map(|r| r.uid).collect();
            ts_admin(&rt, &db, AdminOp::DeleteUsers { uids })?;
            eprintln!(
                "syncserver: deleted {} user rows of {who} and their storage; the account starts \
                 afresh (a new uid) at its next token request",
                rows.len()
            );
        }
    }
    Ok(())
}

fn users(out: AdminOut) -> Result<Vec<UserRow>, String> {
    match out {
        AdminOut::Users(rows) => Ok(rows),
        _ => Err("unexpected answer".into()),
    }
}

fn node_urls(
    rt: &tokio::runtime::Runtime,
    db: &SharedTokenserverDb,
) -> Result<BTreeMap<i64, String>, String> {
    match ts_admin(rt, db, AdminOp::Nodes { service: None })? {
        AdminOut::Nodes(nodes) => Ok(nodes.into_iter().map(|n: NodeRow| (n.id, n.node)).collect()),
        _ => Err("unexpected answer".into()),
    }
}

fn delete_storage(
    rt: &tokio::runtime::Runtime,
    storage: &SharedStorage,
    user: &UserId,
) -> Result<(), String> {
    rt.block_on(storage.delete_storage(user, Precondition::None))
        .map(|_| ())
        .map_err(|e| e.message)
}

/// One collection of `user show`.
#[derive(Debug, Clone, Serialize)]
struct Collection {
    modified: i64,
    records: i64,
    bytes: i64,
}

/// The user's collections as `/info/collections`, `/info/collection_counts` and
/// `/info/collection_usage` show them (live records).
fn collections(
    rt: &tokio::runtime::Runtime,
    storage: &SharedStorage,
    user: &UserId,
) -> Result<BTreeMap<String, Collection>, String> {
    let info = |kind| {
        rt.block_on(storage.info(user, kind, Precondition::None))
            .map(|i| i.body)
            .map_err(|e| e.message)
    };
    let mut out = BTreeMap::new();
    if let InfoBody::Timestamps(ts) = info(InfoKind::Collections)? {
        for (name, t) in ts {
            out.insert(
                name,
                Collection {
                    modified: t.as_i64(),
                    records: 0,
                    bytes: 0,
                },
            );
        }
    }
    if let InfoBody::Counts(counts) = info(InfoKind::Counts)? {
        for (name, n) in counts {
            if let Some(c) = out.get_mut(&name) {
                c.records = n;
            }
        }
    }
    if let InfoBody::Usage(kib) = info(InfoKind::Usage)? {
        for (name, k) in kib {
            if let Some(c) = out.get_mut(&name) {
                c.bytes = (k * 1024.0).round() as i64;
            }
        }
    }
    Ok(out)
}

fn render_rows(
    rows: &[UserRow],
    nodes: &BTreeMap<i64, String>,
    json: bool,
) -> Result<String, String> {
    if json {
        return serde_json::to_string_pretty(rows)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string());
    }
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.uid.to_string(),
                r.email.clone(),
                r.generation.to_string(),
                opt(r.keys_changed_at),
                if r.client_state.is_empty() {
                    "-".into()
                } else {
                    r.client_state.clone()
                },
                r.created_at.to_string(),
                opt(r.replaced_at),
                nodes
                    .get(&r.nodeid)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", r.nodeid)),
            ]
        })
        .collect();
    Ok(table(
        &[
            "uid",
            "email",
            "generation",
            "keys_changed_at",
            "client_state",
            "created_at",
            "replaced_at",
            "node",
        ],
        &lines,
    ))
}

/// `purge-replaced` options.
#[derive(Debug, Clone)]
pub struct PurgeReplaced {
    /// Rows replaced longer ago than this go.
    pub grace: Duration,
    pub dry_run: bool,
    /// Rows looked at per step.
    pub rows_per_chunk: u32,
    pub pause: Duration,
}

/// Deletes user rows replaced (a new client state, or the account deleted) before the grace
/// period, each with its storage unless an unreplaced row of the account keys the same
/// storage (on Spanner storage is keyed by FxA uid and key id, not by uid).
pub fn purge_replaced(settings: Settings, options: PurgeReplaced) -> Result<(), String> {
    let rt = runtime()?;
    let (db, _service) = settings_tokenserver(&rt, &settings)?;
    let storage = settings_storage(&rt, &settings)?;
    let before_ms = now_ms() - options.grace.as_millis() as i64;
    let (mut after, mut rows_done, mut storage_done, mut records) = (0i64, 0usize, 0usize, 0i64);
    loop {
        let op = AdminOp::Replaced {
            before_ms,
            after,
            limit: i64::from(options.rows_per_chunk.max(1)),
        };
        let rows = users(ts_admin(&rt, &db, op)?)?;
        let Some(last) = rows.last() else { break };
        after = last.uid;
        for row in &rows {
            let key = row.storage_user();
            let account = users(ts_admin(
                &rt,
                &db,
                AdminOp::FindUser(UserSelector::Email(row.email.clone())),
            )?)?;
            let needed = account
                .iter()
                .any(|r| r.replaced_at.is_none() && r.storage_user() == key);
            if !needed {
                let summary = rt.block_on(storage.summary(&key)).map_err(|e| e.message)?;
                if !summary.is_empty() {
                    storage_done += 1;
                    records += summary.records();
                    if !options.dry_run {
                        delete_storage(&rt, &storage, &key)?;
                    }
                }
            }
            if !options.dry_run {
                ts_admin(
                    &rt,
                    &db,
                    AdminOp::DeleteUsers {
                        uids: vec![row.uid],
                    },
                )?;
            }
            rows_done += 1;
        }
        eprintln!(
            "syncserver: purge-replaced: {rows_done} rows, {storage_done} with storage ({records} records) so far"
        );
        if !options.pause.is_zero() {
            std::thread::sleep(options.pause);
        }
    }
    let verb = if options.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    eprintln!(
        "syncserver: purge-replaced {verb} {rows_done} replaced user rows and the storage of \
         {storage_done} of them ({records} records)"
    );
    Ok(())
}
