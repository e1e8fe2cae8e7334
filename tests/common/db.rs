//! Direct reads and writes of the server's SQLite file, for checks HTTP cannot make.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::TestServer;

/// A connection to the server's real SQLite file.
pub fn db(server: &TestServer) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(server.db_path().to_str().unwrap())
        .expect("open the server's database");
    conn.batch_execute("PRAGMA busy_timeout = 15000;").unwrap();
    conn
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

pub fn collection_id(conn: &mut SqliteConnection, name: &str) -> i64 {
    diesel::sql_query("SELECT id AS v FROM collections WHERE name = ?")
        .bind::<Text, _>(name)
        .get_result::<Num>(conn)
        .unwrap_or_else(|e| panic!("collection {name}: {e}"))
        .v
}

/// The single integer `sql` selects `AS v`.
pub fn count(conn: &mut SqliteConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Num>(conn).unwrap().v
}

/// Every row of the per-user tables as text, to prove a request wrote nothing.
pub fn db_snapshot(server: &TestServer) -> String {
    let mut conn = db(server);
    let queries = [
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT userid || '|' || collection || '|' || id || '|' || \
         ifnull(sortindex, '-') || '|' || payload || '|' || modified || '|' || ttl AS r FROM bso \
         ORDER BY userid, collection, id)",
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT userid || '|' || collection || '|' || last_modified || \
         '|' || ifnull(count, '-') || '|' || ifnull(total_bytes, '-') AS r FROM user_collections \
         ORDER BY userid, collection)",
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT batch || '|' || userid || '|' || collection AS r \
         FROM batch_uploads ORDER BY batch, userid)",
        "SELECT group_concat(r, char(10)) AS v FROM (SELECT batch || '|' || userid || '|' || id || '|' || \
         ifnull(sortindex, '-') || '|' || ifnull(payload, '-') || '|' || ifnull(ttl_offset, '-') AS r \
         FROM batch_upload_items ORDER BY batch, userid, id)",
    ];
    queries
        .iter()
        .map(|q| {
            diesel::sql_query(*q)
                .get_result::<MaybeText>(&mut conn)
                .unwrap()
                .v
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n--\n")
}
