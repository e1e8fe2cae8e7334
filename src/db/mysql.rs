//! The MySQL/MariaDB backend: syncstorage-rs's MySQL tables (SPEC 5.1), diesel-async over the
//! pure-Rust mysql_async driver. A write is one READ COMMITTED transaction that starts with
//! `SELECT ... FOR UPDATE` on the user's collection row, so concurrent writers to one
//! collection serialize; a read that needs one snapshot runs in a consistent-snapshot
//! transaction, the others statement by statement (`units::ReadOp::needs_snapshot`).

use diesel_async::AsyncMysqlConnection;

pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://")
}

/// The storage database on MySQL/MariaDB.
pub type MysqlStorage = crate::db::pooled::PooledStorage<AsyncMysqlConnection>;

// The locking read comes first; later reads must see rows other writers committed while we
// waited for it.
impl crate::db::pooled::ServerConn for AsyncMysqlConnection {
    /// A lock wait outlasts the request's deadline, so the deadline (503) decides, not
    /// InnoDB's timeout (error 1205, whose SQLSTATE HY000 says nothing).
    fn session(settings: &crate::db::sql::PoolSettings) -> String {
        format!(
            "SET SESSION innodb_lock_wait_timeout = {}",
            settings.request_timeout_secs.clamp(1, 1 << 20) + 5
        )
    }
    /// InnoDB's default REPEATABLE READ reads one snapshot.
    const BEGIN_READ: &'static str = "START TRANSACTION READ ONLY";
    /// Both statements in one round trip (the driver allows several per query).
    const BEGIN_WRITE: &'static str =
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";
}

/// The invisible placeholder row (last_modified 0, which every read ignores).
async fn insert_placeholder(
    conn: &mut AsyncMysqlConnection,
    uid: i64,
    cid: i32,
) -> diesel::QueryResult<usize> {
    use crate::db::sql::{Ms, schema::user_collections};
    use diesel::ExpressionMethods;
    use diesel_async::RunQueryDsl;
    diesel::insert_or_ignore_into(user_collections::table)
        .values((
            user_collections::userid.eq(uid),
            user_collections::collection.eq(cid),
            user_collections::last_modified.eq(Ms(0)),
        ))
        .execute(conn)
        .await
}

crate::db::sql::statements::sql_statements!(
    conn = AsyncMysqlConnection,
    db = diesel::mysql::Mysql,
    schema = crate::db::sql::schema,
    // Bytes as MySQL counts them; rows written by syncstorage-rs leave payload_size at 0.
    bytes_sum = "CAST(SUM(LENGTH(payload)) AS SIGNED)",
    lock = rows(insert_placeholder),
    run = diesel_async::RunQueryDsl,
    [.await]
);
crate::db::sql::mysql_layout::mysql_layout!(
    conn = AsyncMysqlConnection,
    db = diesel::mysql::Mysql,
    staged_bytes_sum = "CAST(SUM(payload_size) AS SIGNED)",
    upsert = duplicate_keys,
    run = diesel_async::RunQueryDsl,
    [.await]
);
