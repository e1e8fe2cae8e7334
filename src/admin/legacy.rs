//! `syncserver import-legacy --from URL`: the old Python syncserver's database (SQLite, MySQL
//! or PostgreSQL; layout in SPEC-side `LEGACY.md`) into this server's databases.
//!
//! What comes over: every token row (staticnode's or sqlnode's `users`, replaced rows included,
//! retired accounts left out) with its uid, generation, keys_changed_at and client state, on
//! this server's node; and for each account's current uid, its collections with their
//! timestamps and its live records with `modified` kept and expiry converted (absolute seconds
//! to ms; the 2036 "no expiry" constant to this server's). Collections are re-keyed by name;
//! sharded `bso0..N` tables are read too; batches are skipped (clients restart them). Each
//! user is checked after it is written (collections, timestamps, record counts).
//!
//! The legacy database is only read, through its own connection, on this thread (the MySQL
//! and PostgreSQL drivers' blocking wrappers run their own runtime); writes go through the
//! same units of work as `copy`.

use std::collections::{BTreeMap, HashMap};

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};

use super::ts_admin;
use crate::db::UserId;
use crate::protocol::{StoredBso, SyncTimestamp};
use crate::settings::Settings;
use crate::tokenserver::db::SYNC_SERVICE;
use crate::tokenserver::db::admin::{AdminOp, AdminOut, UserRow};

/// `syncserver import-legacy`'s options (the command line's, through clap).
#[derive(Debug, Clone, clap::Args)]
pub struct ImportOptions {
    /// The Python server's database URL (its sqluri: sqlite:PATH, mysql://, postgres://).
    #[arg(long)]
    pub from: String,
    /// Count what would be imported, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also import the storage of replaced rows (old keys: no client reads it again).
    #[arg(long)]
    pub include_replaced: bool,
    /// The node URL the imported users get (default: public_url).
    #[arg(long)]
    pub node: Option<String>,
}

/// The Python server's "no expiry" ttl (seconds; 2036-07-18).
const LEGACY_MAX_TTL: i64 = 2_100_000_000;
/// sqlnode's mark of a deleted account.
const MAX_GENERATION: i64 = i64::MAX;
/// Rows read and written per step.
const CHUNK: i64 = 500;
/// The collection ids the Python server fixes in `standard_collections` mode: the same list
/// as ours.
use crate::db::rules::STANDARD_COLLECTIONS as STANDARD;

enum LegacyConn {
    Sqlite(diesel::SqliteConnection),
    Mysql(Box<AsyncConnectionWrapper<AsyncMysqlConnection>>),
    Pg(Box<AsyncConnectionWrapper<AsyncPgConnection>>),
}

enum Val {
    Int(i64),
    Text(String),
}

macro_rules! with_binds {
    ($db:ty, $text:expr, $binds:expr) => {{
        let mut q = diesel::sql_query($text).into_boxed::<$db>();
        for b in $binds {
            q = match b {
                Val::Int(i) => q.bind::<BigInt, _>(*i),
                Val::Text(t) => q.bind::<Text, _>(t.clone()),
            };
        }
        q
    }};
}

/// `SQLAlchemy` URLs as the Python server's settings have them, as well as ours.
fn connect(url: &str) -> Result<LegacyConn, String> {
    let redacted = crate::secret::redact_url(url);
    let fail = |e: diesel::ConnectionError| format!("import-legacy: {redacted}: {e}");
    let (scheme, rest) = url.split_once(':').ok_or_else(|| {
        format!("import-legacy: {redacted}: expected sqlite:PATH, mysql:// or postgres://")
    })?;
    let scheme = scheme.split('+').next().unwrap_or(scheme);
    match scheme {
        "sqlite" => {
            // sqlite:////abs, sqlite:///relative (SQLAlchemy) or sqlite:PATH (ours).
            let path = match rest.strip_prefix("///") {
                Some(p) => p,
                None => rest.strip_prefix("//").unwrap_or(rest),
            };
            if !std::path::Path::new(path).exists() {
                return Err(format!("import-legacy: {path} does not exist"));
            }
            let mut conn = diesel::SqliteConnection::establish(path).map_err(fail)?;
            conn.batch_execute("PRAGMA query_only = ON; PRAGMA busy_timeout = 10000;")
                .map_err(|e| e.to_string())?;
            Ok(LegacyConn::Sqlite(conn))
        }
        "mysql" | "pymysql" => Ok(LegacyConn::Mysql(Box::new(
            Connection::establish(&format!("mysql:{rest}")).map_err(fail)?,
        ))),
        "postgres" | "postgresql" => Ok(LegacyConn::Pg(Box::new(
            Connection::establish(&format!("postgres:{rest}")).map_err(fail)?,
        ))),
        _ => Err(format!(
            "import-legacy: {redacted}: expected sqlite:PATH, mysql:// or postgres://"
        )),
    }
}

impl LegacyConn {
    /// `?` placeholders (numbered for PostgreSQL).
    fn load<U>(&mut self, sql: &str, binds: &[Val]) -> Result<Vec<U>, String>
    where
        U: QueryableByName<diesel::sqlite::Sqlite>
            + QueryableByName<diesel::mysql::Mysql>
            + QueryableByName<diesel::pg::Pg>
            + 'static,
    {
        let result = match self {
            LegacyConn::Sqlite(c) => with_binds!(diesel::sqlite::Sqlite, sql, binds).load(c),
            LegacyConn::Mysql(c) => with_binds!(diesel::mysql::Mysql, sql, binds).load(&mut **c),
            LegacyConn::Pg(c) => {
                let mut n = 0;
                let numbered: String = sql
                    .chars()
                    .map(|ch| {
                        if ch == '?' {
                            n += 1;
                            format!("${n}")
                        } else {
                            ch.to_string()
                        }
                    })
                    .collect();
                with_binds!(diesel::pg::Pg, numbered, binds).load(&mut **c)
            }
        };
        result.map_err(|e| format!("import-legacy: reading the legacy database: {e}"))
    }

    /// An integer column as BIGINT in this dialect.
    fn int(&self, column: &str) -> String {
        match self {
            LegacyConn::Mysql(_) => format!("CAST({column} AS SIGNED)"),
            _ => format!("CAST({column} AS BIGINT)"),
        }
    }

    fn text(&self, column: &str) -> String {
        match self {
            LegacyConn::Mysql(_) => format!("CAST({column} AS CHAR)"),
            _ => format!("CAST({column} AS TEXT)"),
        }
    }

    fn tables(&mut self) -> Result<Vec<String>, String> {
        let sql = match self {
            LegacyConn::Sqlite(_) => "SELECT name FROM sqlite_master WHERE type = 'table'",
            LegacyConn::Mysql(_) => {
                "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables \
                 WHERE table_schema = DATABASE()"
            }
            LegacyConn::Pg(_) => {
                "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema()"
            }
        };
        Ok(self
            .load::<Name>(sql, &[])?
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    fn columns(&mut self, table: &str) -> Result<Vec<String>, String> {
        let sql = match self {
            LegacyConn::Sqlite(_) => "SELECT name FROM pragma_table_info(?)",
            LegacyConn::Mysql(_) => {
                "SELECT CAST(column_name AS CHAR) AS name FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = ?"
            }
            LegacyConn::Pg(_) => {
                "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = ?"
            }
        };
        Ok(self
            .load::<Name>(sql, &[Val::Text(table.to_owned())])?
            .into_iter()
            .map(|n| n.name.to_ascii_lowercase())
            .collect())
    }
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct LegacyUser {
    #[diesel(sql_type = BigInt)]
    uid: i64,
    #[diesel(sql_type = Nullable<Text>)]
    service: Option<String>,
    #[diesel(sql_type = Text)]
    email: String,
    #[diesel(sql_type = BigInt)]
    generation: i64,
    #[diesel(sql_type = Text)]
    client_state: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    replaced_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    keys_changed_at: Option<i64>,
}

#[derive(QueryableByName)]
struct IdName {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct CollectionTs {
    #[diesel(sql_type = BigInt)]
    collection: i64,
    #[diesel(sql_type = BigInt)]
    last_modified: i64,
}

#[derive(QueryableByName)]
struct LegacyBso {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    sortindex: Option<i64>,
    #[diesel(sql_type = BigInt)]
    modified: i64,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = BigInt)]
    ttl: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The legacy record's expiry in this server's terms (ms); "no expiry" as a write without a
/// ttl gets here.
fn expiry(modified_ms: i64, ttl_seconds: i64) -> i64 {
    if ttl_seconds >= LEGACY_MAX_TTL {
        SyncTimestamp::from_i64(modified_ms).expiry_after(None)
    } else {
        ttl_seconds.saturating_mul(1000)
    }
}

/// What the import found (and, unless a dry run, wrote).
#[derive(Debug, Default)]
struct Totals {
    token_rows: usize,
    retired: usize,
    accounts: usize,
    storage_users: usize,
    records: i64,
    expired: i64,
    collections: usize,
}

pub fn run(settings: Settings, options: ImportOptions) -> Result<(), String> {
    let mut legacy = connect(&options.from)?;
    let tables = legacy.tables()?;
    let bso_tables: Vec<String> = {
        let re = regex::Regex::new(r"^bso(\d+)?$").map_err(|e| e.to_string())?;
        let mut t: Vec<String> = tables.iter().filter(|t| re.is_match(t)).cloned().collect();
        // `bso` first, then shards in number order.
        t.sort_by_key(|name| name[3..].parse::<i64>().unwrap_or(-1));
        t
    };
    if bso_tables.is_empty() || !tables.iter().any(|t| t == "user_collections") {
        return Err(
            "import-legacy: no bso and user_collections tables: not a Python syncserver database"
                .into(),
        );
    }

    // The collection map: the table, without the '' placeholder, plus the fixed standard ids
    // the table does not hold.
    let mut names: HashMap<i64, String> = legacy
        .load::<IdName>(
            &format!(
                "SELECT {} AS id, name FROM collections",
                legacy.int("collectionid")
            ),
            &[],
        )?
        .into_iter()
        .filter(|c| !c.name.is_empty())
        .map(|c| (c.id, c.name))
        .collect();
    for (id, name) in STANDARD {
        names
            .entry(i64::from(id))
            .or_insert_with(|| name.to_owned());
    }

    // The token rows.
    let mut totals = Totals::default();
    let (users, sqlnode) = if tables.iter().any(|t| t == "users") {
        read_users(&mut legacy)?
    } else {
        eprintln!(
            "syncserver: import-legacy: no users table here (the tokenserver kept its own \
             database): storage is imported for every userid, the token rows are not"
        );
        (vec![], false)
    };
    let (users, retired): (Vec<LegacyUser>, Vec<LegacyUser>) = users
        .into_iter()
        .partition(|u| u.generation != MAX_GENERATION);
    totals.token_rows = users.len();
    totals.retired = retired.len();
    // The current row of each account: the newest unreplaced one, in the order its token
    // backend used (sqlnode: by generation first).
    let order = |u: &LegacyUser| {
        if sqlnode {
            (u.generation, u.created_at, u.uid)
        } else {
            (u.created_at, u.uid, 0)
        }
    };
    let mut current: BTreeMap<&str, &LegacyUser> = BTreeMap::new();
    for u in users.iter().filter(|u| u.replaced_at.is_none()) {
        let newer = current
            .get(u.email.as_str())
            .is_none_or(|c| order(u) > order(c));
        if newer {
            current.insert(&u.email, u);
        }
    }
    totals.accounts = current.len();
    let mut storage_uids: Vec<i64> = if options.include_replaced || users.is_empty() {
        let sql = format!(
            "SELECT DISTINCT {} AS n FROM user_collections",
            legacy.int("userid")
        );
        let all: Vec<i64> = legacy
            .load::<Count>(&sql, &[])?
            .into_iter()
            .map(|c| c.n)
            .collect();
        let retired_uids: Vec<i64> = retired.iter().map(|u| u.uid).collect();
        all.into_iter()
            .filter(|u| !retired_uids.contains(u))
            .collect()
    } else {
        current.values().map(|u| u.uid).collect()
    };
    storage_uids.sort_unstable();

    if let Some(domain) = users
        .first()
        .and_then(|u| u.email.split_once('@'))
        .map(|e| e.1)
        && domain != settings.tokenserver.fxa_email_domain
    {
        eprintln!(
            "syncserver: import-legacy: WARNING: the legacy emails end in @{domain} but \
             tokenserver.fxa_email_domain is {:?}; set it to {domain:?} or every imported user \
             gets a new, empty uid at its next sync",
            settings.tokenserver.fxa_email_domain
        );
    }

    let rt = super::runtime()?;
    let mut writer = if options.dry_run {
        None
    } else {
        let storage = super::settings_storage(&rt, &settings)?;
        let (ts, service) = super::settings_tokenserver(&rt, &settings)?;
        let node = options
            .node
            .clone()
            .or_else(|| settings.public_url.clone())
            .unwrap_or_else(|| format!("http://{}:{}", settings.host, settings.port));
        let node = node.trim_end_matches('/').to_owned();
        rt.block_on(ts.ensure_node(service, &node, settings.tokenserver.init_node_capacity))
            .map_err(super::ts_error)?;
        let AdminOut::Nodes(nodes) = ts_admin(
            &rt,
            &ts,
            AdminOp::Nodes {
                service: Some(service),
            },
        )?
        else {
            return Err("unexpected answer".into());
        };
        let nodeid = nodes
            .iter()
            .find(|n| n.node == node)
            .map(|n| n.id)
            .ok_or("import-legacy: the node was not created")?;
        let rows: Vec<UserRow> = users
            .iter()
            .map(|u| UserRow {
                uid: u.uid,
                service,
                email: u.email.clone(),
                generation: u.generation,
                client_state: u.client_state.clone(),
                created_at: u.created_at,
                replaced_at: u.replaced_at,
                nodeid,
                keys_changed_at: u.keys_changed_at.filter(|k| *k > 0),
            })
            .collect();
        for chunk in rows.chunks(CHUNK as usize) {
            ts_admin(
                &rt,
                &ts,
                AdminOp::Import {
                    services: vec![],
                    nodes: vec![],
                    users: chunk.to_vec(),
                },
            )?;
        }
        Some(storage)
    };

    let now_s = SyncTimestamp::now().as_i64() / 1000;
    for uid in storage_uids {
        let user = UserId::from_uid(uid as u64);
        let rows = legacy.load::<CollectionTs>(
            &format!(
                "SELECT {} AS collection, {} AS last_modified FROM user_collections WHERE userid = ?",
                legacy.int("collection"),
                legacy.int("last_modified")
            ),
            &[Val::Int(uid)],
        )?;
        // Collection name → (timestamp, records imported).
        let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for r in &rows {
            if let Some(name) = names.get(&r.collection) {
                expected.insert(name.clone(), (r.last_modified, 0));
            }
        }
        for table in &bso_tables {
            totals.expired += legacy
                .load::<Count>(
                    &format!("SELECT COUNT(*) AS n FROM {table} WHERE userid = ? AND ttl <= ?"),
                    &[Val::Int(uid), Val::Int(now_s)],
                )?
                .first()
                .map_or(0, |c| c.n);
            for r in &rows {
                let Some(name) = names.get(&r.collection) else {
                    continue;
                };
                let mut after = String::new();
                loop {
                    let sql = format!(
                        "SELECT id, {} AS sortindex, {} AS modified, payload, {} AS ttl FROM {table} \
                         WHERE userid = ? AND collection = ? AND ttl > ? AND id > ? \
                         ORDER BY id LIMIT {CHUNK}",
                        legacy.int("sortindex"),
                        legacy.int("modified"),
                        legacy.int("ttl"),
                    );
                    let chunk = legacy.load::<LegacyBso>(
                        &sql,
                        &[
                            Val::Int(uid),
                            Val::Int(r.collection),
                            Val::Int(now_s),
                            Val::Text(after.clone()),
                        ],
                    )?;
                    let Some(last) = chunk.last() else { break };
                    after = last.id.clone();
                    let n = chunk.len() as i64;
                    let entry = expected.entry(name.clone()).or_default();
                    entry.1 += n;
                    for b in &chunk {
                        // A collection is at least as new as its records.
                        entry.0 = entry.0.max(b.modified);
                    }
                    totals.records += n;
                    if let Some(storage) = &writer {
                        let rows: Vec<StoredBso> = chunk
                            .into_iter()
                            .map(|b| StoredBso {
                                expiry: expiry(b.modified, b.ttl),
                                id: b.id,
                                payload: b.payload,
                                sortindex: b.sortindex.and_then(|i| i32::try_from(i).ok()),
                                modified: b.modified,
                            })
                            .collect();
                        rt.block_on(storage.import_rows(&user, name, rows))
                            .map_err(|e| e.message)?;
                    }
                    if n < CHUNK {
                        break;
                    }
                }
            }
        }
        if expected.is_empty() {
            continue;
        }
        totals.storage_users += 1;
        totals.collections += expected.len();
        if let Some(storage) = &mut writer {
            let collections = expected
                .iter()
                .map(|(n, (ms, _))| (n.clone(), *ms))
                .collect();
            rt.block_on(storage.set_timestamps(&user, collections, 0))
                .map_err(|e| e.message)?;
            let got = rt.block_on(storage.summary(&user)).map_err(|e| e.message)?;
            let got: BTreeMap<String, (i64, i64)> = got
                .collections
                .into_iter()
                .map(|(n, (ms, count, _))| (n, (ms, count)))
                .collect();
            if got != expected {
                return Err(format!(
                    "import-legacy: uid {uid}: imported {got:?}, expected {expected:?} (was the \
                     target not empty?)"
                ));
            }
        }
    }
    let _ = writer.take();
    let verb = if options.dry_run {
        "would import"
    } else {
        "imported"
    };
    println!(
        "{verb}: {} token rows ({} accounts; {} retired rows skipped), {} users' storage: {} \
         collections, {} records ({} expired records skipped)",
        totals.token_rows,
        totals.accounts,
        totals.retired,
        totals.storage_users,
        totals.collections,
        totals.records,
        totals.expired
    );
    Ok(())
}

/// Every `users` row with the Sync service, whichever token backend wrote it: staticnode's
/// (service is the text `sync-1.5`) or sqlnode's (an id into `services`); columns missing from
/// old files read as NULL.
fn read_users(legacy: &mut LegacyConn) -> Result<(Vec<LegacyUser>, bool), String> {
    let columns = legacy.columns("users")?;
    let has = |c: &str| columns.iter().any(|x| x == c);
    let sqlnode = has("nodeid");
    let service = if sqlnode {
        format!(
            "(SELECT {} FROM services s WHERE s.id = users.service)",
            legacy.text("s.service")
        )
    } else {
        legacy.text("service")
    };
    let keys_changed_at = if has("keys_changed_at") {
        legacy.int("keys_changed_at")
    } else {
        legacy.int("NULL")
    };
    let sql = format!(
        "SELECT {} AS uid, {service} AS service, email, {} AS generation, client_state, \
         {} AS created_at, {} AS replaced_at, {keys_changed_at} AS keys_changed_at FROM users \
         ORDER BY uid",
        legacy.int("uid"),
        legacy.int("generation"),
        legacy.int("created_at"),
        legacy.int("replaced_at"),
    );
    let rows = legacy
        .load::<LegacyUser>(&sql, &[])?
        .into_iter()
        .filter(|u| u.service.as_deref() == Some(SYNC_SERVICE))
        .collect();
    Ok((rows, sqlnode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_expiry_becomes_ms_and_no_expiry_stays_far_away() {
        assert_eq!(expiry(1_600_000_000_000, 1_700_000_000), 1_700_000_000_000);
        assert_eq!(
            expiry(1_600_000_000_000, LEGACY_MAX_TTL),
            1_600_000_000_000 + 2_100_000_000_000
        );
    }
}
