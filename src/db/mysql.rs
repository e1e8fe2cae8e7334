//! The MySQL/MariaDB backend: syncstorage-rs's MySQL tables (SPEC 5.1), diesel-async over the
//! pure-Rust mysql_async driver. A write is one READ COMMITTED transaction that starts with
//! `SELECT ... FOR UPDATE` on the user's collection row, so concurrent writers to one
//! collection serialize; reads run in one consistent-snapshot transaction.

use diesel_async::AsyncMysqlConnection;

pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://")
}

// The locking read comes first; later reads must see rows other writers committed while we
// waited for it.
crate::db::pooled::pooled_backend!(
    MysqlStorage,
    AsyncMysqlConnection,
    // A lock wait outlasts the request's deadline, so the deadline (503) decides, not
    // InnoDB's timeout (error 1205, whose SQLSTATE HY000 says nothing).
    session = |s| format!(
        "SET SESSION innodb_lock_wait_timeout = {}",
        s.request_timeout_secs.max(1) + 5
    ),
    before_write = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
    // InnoDB's default REPEATABLE READ already reads one snapshot.
    read_start = ""
);

/// The shared operations, compiled for diesel-async's MySQL connection.
mod ops {
    use diesel_async::RunQueryDsl;

    pub type Conn = diesel_async::AsyncMysqlConnection;
    type Db = diesel::mysql::Mysql;

    /// Bytes as MySQL counts them; rows written by syncstorage-rs leave payload_size at 0.
    const BSO_BYTES_SUM: &str = "CAST(SUM(LENGTH(payload)) AS SIGNED)";
    const STAGED_BYTES_SUM: &str = "CAST(SUM(payload_size) AS SIGNED)";

    /// The invisible placeholder row (last_modified 0, which every read ignores).
    async fn insert_placeholder(conn: &mut Conn, uid: i64, cid: i32) -> QueryResult<usize> {
        diesel::insert_or_ignore_into(user_collections::table)
            .values((
                user_collections::userid.eq(uid),
                user_collections::collection.eq(cid),
                user_collections::last_modified.eq(Ms(0)),
            ))
            .execute(conn)
            .await
    }

    crate::db::pooled::locking_collection_ts!();

    async fn pause(ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }

    async fn emit(
        out: &crate::db::listing::ListingSender,
        item: crate::error::ApiResult<crate::db::listing::Listing>,
    ) -> crate::error::ApiResult<()> {
        crate::db::listing::send(out, item).await
    }

    crate::db::sql::ops::storage_ops!(schema = crate::db::sql::schema, [async] [.await]);
    crate::db::sql::mysql_layout::mysql_layout_ops!([async] [.await]);
}
