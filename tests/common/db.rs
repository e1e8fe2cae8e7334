//! Direct reads and writes of the server's real database (SQLite file or MySQL database),
//! for checks HTTP cannot make. The SQL is written once: `?` placeholders, and MySQL sessions
//! run with PIPES_AS_CONCAT so `||` concatenates as in SQLite.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::AsyncMysqlConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;

use super::TestServer;

/// A blocking connection to whichever engine the server under test uses.
pub enum AnyConnection {
    Sqlite(SqliteConnection),
    /// Used on a thread of its own per query: the wrapper blocks on its own runtime, which
    /// cannot happen on an async test's thread.
    Mysql(Option<AsyncConnectionWrapper<AsyncMysqlConnection>>),
}

type MysqlConn = AsyncConnectionWrapper<AsyncMysqlConnection>;

impl Drop for AnyConnection {
    fn drop(&mut self) {
        // The MySQL wrapper owns a runtime, which may not be dropped on an async thread.
        if let AnyConnection::Mysql(slot) = self
            && let Some(conn) = slot.take()
        {
            std::thread::spawn(move || drop(conn)).join().unwrap();
        }
    }
}

/// Runs `f` with the MySQL connection on a plain thread and puts the connection back.
fn off_thread<R: Send + 'static>(
    slot: &mut Option<MysqlConn>,
    f: impl FnOnce(&mut MysqlConn) -> R + Send + 'static,
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

impl Sql {
    pub fn bind<V: Into<Val>>(mut self, v: V) -> Self {
        self.binds.push(v.into());
        self
    }

    pub fn execute(self, conn: &mut AnyConnection) -> QueryResult<usize> {
        match conn {
            AnyConnection::Sqlite(c) => {
                boxed_with_binds!(diesel::sqlite::Sqlite, self.text, self.binds).execute(c)
            }
            AnyConnection::Mysql(slot) => off_thread(slot, move |c| {
                boxed_with_binds!(diesel::mysql::Mysql, self.text, self.binds).execute(c)
            }),
        }
    }

    pub fn get_result<U>(self, conn: &mut AnyConnection) -> QueryResult<U>
    where
        U: QueryableByName<diesel::sqlite::Sqlite>
            + QueryableByName<diesel::mysql::Mysql>
            + Send
            + 'static,
    {
        match conn {
            AnyConnection::Sqlite(c) => {
                boxed_with_binds!(diesel::sqlite::Sqlite, self.text, self.binds).get_result(c)
            }
            AnyConnection::Mysql(slot) => off_thread(slot, move |c| {
                boxed_with_binds!(diesel::mysql::Mysql, self.text, self.binds).get_result(c)
            }),
        }
    }
}

/// A connection to the server's real database.
pub fn db(server: &TestServer) -> AnyConnection {
    let url = server.database_url.clone();
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
    } else {
        let mut conn = SqliteConnection::establish(server.db_path().to_str().unwrap())
            .expect("open the server's database");
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
    sql_query("SELECT id AS v FROM collections WHERE name = ?")
        .bind(name)
        .get_result::<Num>(conn)
        .unwrap_or_else(|e| panic!("collection {name}: {e}"))
        .v
}

/// The single integer `sql` selects `AS v`.
pub fn count(conn: &mut AnyConnection, sql: &str) -> i64 {
    sql_query(sql).get_result::<Num>(conn).unwrap().v
}

/// Every row of the per-user tables as text, to prove a request wrote nothing.
pub fn db_snapshot(server: &TestServer) -> String {
    let mut conn = db(server);
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
