//! Direct reads and writes of the server's real database (SQLite file, MySQL or PostgreSQL
//! database), for checks HTTP cannot make. SQL uses `?` placeholders (numbered for PostgreSQL
//! here); MySQL sessions run with PIPES_AS_CONCAT so `||` concatenates as in SQLite. The
//! PostgreSQL tables have their own names (SPEC 5.2): `mysql_layout()` tells which SQL to use.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};

use super::TestServer;

/// A blocking connection to whichever engine the server under test uses.
#[allow(clippy::large_enum_variant)] // one per test, briefly
pub enum AnyConnection {
    Sqlite(SqliteConnection),
    /// Used on a thread of its own per query: the wrapper blocks on its own runtime, which
    /// cannot happen on an async test's thread.
    Mysql(Option<AsyncConnectionWrapper<AsyncMysqlConnection>>),
    Pg(Option<AsyncConnectionWrapper<AsyncPgConnection>>),
    Spanner(SpannerConn),
}

/// The Spanner emulator database a server uses: statements run through the real gRPC client,
/// each on a thread with a runtime of its own. Only `execute`, `count` and the snapshot
/// helpers speak Spanner; typed `get_result`/`load` are for the SQL engines.
pub struct SpannerConn {
    database: String,
}

impl SpannerConn {
    fn run<R: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut gcloud_spanner::transaction_rw::ReadWriteTransaction,
        ) -> futures::future::BoxFuture<
            'c,
            Result<R, gcloud_spanner::client::Error>,
        > + Send
        + 'static,
    ) -> R {
        let database = self.database.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut config = gcloud_spanner::client::ClientConfig {
                    environment: gcloud_gax::conn::Environment::Emulator(
                        super::backends::spanner_emulator_host(),
                    ),
                    ..Default::default()
                };
                config.session_config.min_opened = 1;
                config.session_config.max_opened = 1;
                config.channel_config.num_channels = 1;
                let client = gcloud_spanner::client::Client::new(database, config)
                    .await
                    .expect("connect to the Spanner emulator");
                let mut tx = client.begin_read_write_transaction().await.unwrap();
                let result = f(&mut tx).await;
                let (_, out) = tx.end(result, None).await.expect("spanner statement");
                client.close().await;
                out
            })
        })
        .join()
        .unwrap()
    }

    /// `?` placeholders become `@p1`, `@p2`, ...
    fn statement(text: &str, binds: Vec<Val>) -> gcloud_spanner::statement::Statement {
        let mut sql = String::new();
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                sql.push_str(&format!("@p{n}"));
            } else {
                sql.push(c);
            }
        }
        let mut stmt = gcloud_spanner::statement::Statement::new(sql);
        for (i, b) in binds.into_iter().enumerate() {
            let name = format!("p{}", i + 1);
            match b {
                Val::Int(v) => stmt.add_param(&name, &v),
                Val::Text(v) => stmt.add_param(&name, &v),
            }
        }
        stmt
    }

    pub fn execute(&self, text: &str, binds: Vec<Val>) -> usize {
        let stmt = Self::statement(text, binds);
        self.run(move |tx| Box::pin(async move { Ok(tx.update(stmt).await? as usize) }))
    }

    /// The first column (`v`) of the first row, read as `T`.
    pub fn value<T: gcloud_spanner::row::TryFromValue + Send + 'static>(
        &self,
        text: &str,
        binds: Vec<Val>,
    ) -> T {
        let stmt = Self::statement(text, binds);
        self.run(move |tx| {
            Box::pin(async move {
                let mut rows = tx.query(stmt).await?;
                let row = rows.next().await?.expect("one row");
                Ok(row.column_by_name::<T>("v")?)
            })
        })
    }
}

type MysqlConn = AsyncConnectionWrapper<AsyncMysqlConnection>;
type PgConn = AsyncConnectionWrapper<AsyncPgConnection>;

/// Whether the server's tables are the MySQL layout (SQLite, MySQL) rather than PostgreSQL's.
pub fn mysql_layout(server: &TestServer) -> bool {
    !server.database_url.starts_with("postgres") && !spanner(server)
}

/// Whether the server stores into the Spanner emulator (tables keyed by fxa_uid/fxa_kid).
pub fn spanner(server: &TestServer) -> bool {
    server.database_url.starts_with("spanner://")
}

impl Drop for AnyConnection {
    fn drop(&mut self) {
        // The wrappers own a runtime, which may not be dropped on an async thread.
        match self {
            AnyConnection::Mysql(slot) => {
                if let Some(conn) = slot.take() {
                    std::thread::spawn(move || drop(conn)).join().unwrap();
                }
            }
            AnyConnection::Pg(slot) => {
                if let Some(conn) = slot.take() {
                    std::thread::spawn(move || drop(conn)).join().unwrap();
                }
            }
            AnyConnection::Sqlite(_) | AnyConnection::Spanner(_) => {}
        }
    }
}

/// `?` placeholders as PostgreSQL's `$1, $2, ...`.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `f` with a wrapper connection on a plain thread and puts the connection back.
fn off_thread<C: Send + 'static, R: Send + 'static>(
    slot: &mut Option<C>,
    f: impl FnOnce(&mut C) -> R + Send + 'static,
) -> R {
    let mut conn = slot.take().expect("connection");
    let (conn, out) = std::thread::spawn(move || {
        let out = f(&mut conn);
        (conn, out)
    })
    .join()
    .unwrap();
    *slot = Some(conn);
    out
}

/// A bound parameter.
pub enum Val {
    Int(i64),
    Text(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}

/// `diesel::sql_query` for either engine: `?` placeholders, binds applied per engine.
pub struct Sql {
    text: String,
    binds: Vec<Val>,
}

pub fn sql_query(text: impl Into<String>) -> Sql {
    Sql {
        text: text.into(),
        binds: Vec::new(),
    }
}

macro_rules! boxed_with_binds {
    ($db:ty, $text:expr, $binds:expr) => {{
        let mut q = diesel::sql_query($text).into_boxed::<$db>();
        for b in $binds {
            q = match b {
                Val::Int(i) => q.bind::<BigInt, _>(i),
                Val::Text(t) => q.bind::<Text, _>(t),
            };
        }
        q
    }};
}

/// Runs a `Sql` with diesel's `$method` on whichever SQL engine `$conn` is (binds applied per
/// engine; PostgreSQL gets numbered placeholders).
macro_rules! on_sql_engine {
    ($sql:expr, $conn:expr, $method:ident) => {{
        let sql: Sql = $sql;
        match $conn {
            AnyConnection::Sqlite(c) => {
                boxed_with_binds!(diesel::sqlite::Sqlite, sql.text, sql.binds).$method(c)
            }
            AnyConnection::Mysql(slot) => off_thread(slot, move |c| {
                boxed_with_binds!(diesel::mysql::Mysql, sql.text, sql.binds).$method(c)
            }),
            AnyConnection::Pg(slot) => off_thread(slot, move |c| {
                boxed_with_binds!(diesel::pg::Pg, numbered_placeholders(&sql.text), sql.binds)
                    .$method(c)
            }),
            AnyConnection::Spanner(_) => {
                panic!("typed diesel queries are not available on Spanner (use SpannerConn)")
            }
        }
    }};
}

impl Sql {
    pub fn bind<V: Into<Val>>(mut self, v: V) -> Self {
        self.binds.push(v.into());
        self
    }

    pub fn execute(self, conn: &mut AnyConnection) -> QueryResult<usize> {
        if let AnyConnection::Spanner(c) = conn {
            return Ok(c.execute(&self.text, self.binds));
        }
        on_sql_engine!(self, conn, execute)
    }

    pub fn load<U>(self, conn: &mut AnyConnection) -> QueryResult<Vec<U>>
    where
        U: QueryableByName<diesel::sqlite::Sqlite>
            + QueryableByName<diesel::mysql::Mysql>
            + QueryableByName<diesel::pg::Pg>
            + Send
            + 'static,
    {
        on_sql_engine!(self, conn, load)
    }

    pub fn get_result<U>(self, conn: &mut AnyConnection) -> QueryResult<U>
    where
        U: QueryableByName<diesel::sqlite::Sqlite>
            + QueryableByName<diesel::mysql::Mysql>
            + QueryableByName<diesel::pg::Pg>
            + Send
            + 'static,
    {
        on_sql_engine!(self, conn, get_result)
    }
}

/// A connection to the server's real storage database.
pub fn db(server: &TestServer) -> AnyConnection {
    connect(&server.database_url)
}

/// A connection to the server's real tokenserver database.
pub fn ts_db(server: &TestServer) -> AnyConnection {
    connect(&server.tokenserver_database_url)
}

/// A connection to a database URL (sqlite:PATH, mysql://, postgres://).
pub fn connect(url: &str) -> AnyConnection {
    let url = url.to_owned();
    if let Some(database) = url.strip_prefix("spanner://") {
        return AnyConnection::Spanner(SpannerConn {
            database: database.to_owned(),
        });
    }
    if url.starts_with("mysql://") {
        // The wrapper blocks on its own runtime: open and use it off the async test thread.
        let conn = std::thread::spawn(move || {
            let mut conn =
                <MysqlConn as Connection>::establish(&url).expect("open the server's database");
            conn.batch_execute(
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',PIPES_AS_CONCAT'); \
             SET SESSION group_concat_max_len = 100000000;",
            )
            .unwrap();
            conn
        })
        .join()
        .unwrap();
        AnyConnection::Mysql(Some(conn))
    } else if url.starts_with("postgres") {
        let conn = std::thread::spawn(move || {
            <PgConn as Connection>::establish(&url).expect("open the server's database")
        })
        .join()
        .unwrap();
        AnyConnection::Pg(Some(conn))
    } else {
        let path = url.strip_prefix("sqlite:").unwrap_or(&url);
        let mut conn = SqliteConnection::establish(path).expect("open the server's database");
        conn.batch_execute("PRAGMA busy_timeout = 15000;").unwrap();
        AnyConnection::Sqlite(conn)
    }
}

/// One integer column named `v`.
#[derive(QueryableByName)]
pub struct Num {
    #[diesel(sql_type = BigInt)]
    pub v: i64,
}

/// One nullable text column named `v`.
#[derive(QueryableByName)]
pub struct MaybeText {
    #[diesel(sql_type = Nullable<Text>)]
    pub v: Option<String>,
}

pub fn collection_id(conn: &mut AnyConnection, name: &str) -> i64 {
    if let AnyConnection::Spanner(c) = conn {
        return c.value(
            "SELECT collection_id AS v FROM collections WHERE name = ?",
            vec![Val::Text(name.into())],
        );
    }
    let sql = match conn {
        AnyConnection::Pg(_) => "SELECT collection_id::BIGINT AS v FROM collections WHERE name = ?",
        _ => "SELECT id AS v FROM collections WHERE name = ?",
    };
    sql_query(sql)
        .bind(name)
        .get_result::<Num>(conn)
        .unwrap_or_else(|e| panic!("collection {name}: {e}"))
        .v
}

/// How many batches `uid` has open, and how many records they stage, in either layout.
pub fn batch_rows(conn: &mut AnyConnection, uid: i64) -> (i64, i64) {
    if let AnyConnection::Spanner(c) = conn {
        let n = |table: &str| {
            c.value::<i64>(
                &format!("SELECT COUNT(*) AS v FROM {table} WHERE fxa_uid = FORMAT('%032x', ?)"),
                vec![Val::Int(uid)],
            )
        };
        return (n("batches"), n("batch_bsos"));
    }
    let (batches, items) = match conn {
        AnyConnection::Pg(_) => ("batches WHERE user_id", "batch_bsos WHERE user_id"),
        _ => (
            "batch_uploads WHERE userid",
            "batch_upload_items WHERE userid",
        ),
    };
    (
        count(
            conn,
            &format!("SELECT count(*) AS v FROM {batches} = {uid}"),
        ),
        count(conn, &format!("SELECT count(*) AS v FROM {items} = {uid}")),
    )
}

/// The single integer `sql` selects `AS v`.
pub fn count(conn: &mut AnyConnection, sql: &str) -> i64 {
    if let AnyConnection::Spanner(c) = conn {
        return c.value(sql, vec![]);
    }
    sql_query(sql).get_result::<Num>(conn).unwrap().v
}

/// Every row of the per-user tables as text, to prove a request wrote nothing.
pub fn db_snapshot(server: &TestServer) -> String {
    let mut conn = db(server);
    if let AnyConnection::Spanner(c) = &conn {
        // The emulator has no ORDER BY inside STRING_AGG: rows are ordered in an ARRAY first.
        let spanner_queries = [
            "SELECT ARRAY_TO_STRING(ARRAY(SELECT CONCAT(UID, '|', \
             CAST(collection_id AS STRING), '|', bso_id, '|', COALESCE(CAST(sortindex AS STRING), '-'), \
             '|', COALESCE(payload, '-'), '|', CAST(UNIX_MILLIS(modified) AS STRING), '|', \
             CAST(UNIX_MILLIS(expiry) AS STRING)) FROM bsos ORDER BY fxa_uid, collection_id, bso_id), \
             '\\n') AS v",
            "SELECT ARRAY_TO_STRING(ARRAY(SELECT CONCAT(UID, '|', CAST(collection_id AS STRING), '|', \
             CAST(UNIX_MILLIS(modified) AS STRING), '|', COALESCE(CAST(count AS STRING), '-'), '|', \
             COALESCE(CAST(total_bytes AS STRING), '-')) FROM user_collections \
             ORDER BY fxa_uid, collection_id), '\\n') AS v",
            "SELECT ARRAY_TO_STRING(ARRAY(SELECT CONCAT(UID, '|', CAST(collection_id AS STRING), '|', \
             batch_id, '|', CAST(UNIX_MILLIS(expiry) AS STRING)) FROM batches \
             ORDER BY fxa_uid, collection_id, batch_id), '\\n') AS v",
            "SELECT ARRAY_TO_STRING(ARRAY(SELECT CONCAT(batch_id, '|', UID, '|', batch_bso_id, '|', \
             COALESCE(CAST(sortindex AS STRING), '-'), '|', COALESCE(payload, '-'), '|', \
             COALESCE(CAST(ttl AS STRING), '-')) FROM batch_bsos ORDER BY batch_id, batch_bso_id), \
             '\\n') AS v",
        ];
        // Test users' fxa_uid is their uid in 32 hex digits: shown as the uid, as elsewhere.
        let uid = "COALESCE(CAST(SAFE_CAST(CONCAT('0x', fxa_uid) AS INT64) AS STRING), fxa_uid)";
        return spanner_queries
            .iter()
            .map(|q| {
                c.value::<Option<String>>(&q.replace("UID", uid), vec![])
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--\n");
    }
    let pg_queries = [
        "SELECT string_agg(user_id || '|' || collection_id || '|' || bso_id || '|' || coalesce(sortindex::text, '-') \
         || '|' || payload || '|' || modified || '|' || expiry, chr(10) ORDER BY user_id, collection_id, bso_id) AS v \
         FROM bsos",
        "SELECT string_agg(user_id || '|' || collection_id || '|' || modified || '|' || coalesce(count::text, '-') \
         || '|' || coalesce(total_bytes::text, '-'), chr(10) ORDER BY user_id, collection_id) AS v FROM user_collections",
        "SELECT string_agg(user_id || '|' || collection_id || '|' || batch_id || '|' || expiry, chr(10) \
         ORDER BY user_id, collection_id, batch_id) AS v FROM batches",
        "SELECT string_agg(batch_id || '|' || user_id || '|' || batch_bso_id || '|' || coalesce(sortindex::text, '-') || '|' \
         || coalesce(payload, '-') || '|' || coalesce(ttl::text, '-'), chr(10) ORDER BY batch_id, batch_bso_id) AS v \
         FROM batch_bsos",
    ];
    let queries = [
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT userid || '|' || collection || '|' || id || '|' || \
         ifnull(sortindex, '-') || '|' || payload || '|' || modified || '|' || ttl AS r FROM bso \
         ORDER BY userid, collection, id) AS t",
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT userid || '|' || collection || '|' || last_modified || \
         '|' || ifnull(count, '-') || '|' || ifnull(total_bytes, '-') AS r FROM user_collections \
         ORDER BY userid, collection) AS t",
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT batch || '|' || userid || '|' || collection AS r \
         FROM batch_uploads ORDER BY batch, userid) AS t",
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT batch || '|' || userid || '|' || id || '|' || \
         ifnull(sortindex, '-') || '|' || ifnull(payload, '-') || '|' || ifnull(ttl_offset, '-') AS r \
         FROM batch_upload_items ORDER BY batch, userid, id) AS t",
    ];
    let queries: &[&str] = if mysql_layout(server) {
        &queries
    } else {
        &pg_queries
    };
    queries
        .iter()
        .map(|q| {
            sql_query(*q)
                .get_result::<MaybeText>(&mut conn)
                .unwrap()
                .v
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n--\n")
}

/// A tokenserver `users` row as the tests read it.
#[derive(QueryableByName, Debug, Clone, PartialEq)]
pub struct UserRow {
    #[diesel(sql_type = BigInt)]
    pub uid: i64,
    #[diesel(sql_type = BigInt)]
    pub generation: i64,
    #[diesel(sql_type = Text)]
    pub client_state: String,
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub replaced_at: Option<i64>,
    #[diesel(sql_type = BigInt)]
    pub nodeid: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub keys_changed_at: Option<i64>,
}

/// A tokenserver `nodes` row as the tests read it.
#[derive(QueryableByName, Debug, Clone, PartialEq)]
pub struct NodeRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub node: String,
    #[diesel(sql_type = Integer)]
    pub available: i32,
    #[diesel(sql_type = Integer)]
    pub current_load: i32,
    #[diesel(sql_type = Integer)]
    pub capacity: i32,
}
