//! The tokenserver's tables behind one async trait (SPEC 3.6-3.8). Each method is a whole
//! transaction and reads the rows as they are now: operators edit `users` and `nodes` by hand,
//! so nothing here is cached.

use std::sync::Arc;

use async_trait::async_trait;

use crate::tokenserver::users::NewRow;

pub mod admin;
pub mod backends;
pub mod ops;
pub mod schema;

pub use crate::tokenserver::TsResult;

/// The service every Sync 1.5 user row belongs to.
pub const SYNC_SERVICE: &str = "sync-1.5";

/// A `services` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: i32,
    /// `{node}/1.5/{uid}`.
    pub pattern: String,
}

/// Get-or-create input (SPEC 3.6).
#[derive(Debug, Clone)]
pub struct UserLookup {
    pub service: i32,
    pub email: String,
    /// The values a brand-new user starts with (from the request).
    pub request: NewRow,
    pub allow_new_users: bool,
    pub now_ms: i64,
    pub node_capacity_release_rate: f64,
    /// `tokenserver.spanner_node_id`: every allocation goes to this node.
    pub pinned_node: Option<i64>,
}

/// The user's current row after get-or-create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub uid: i64,
    pub nodeid: i64,
    pub node: String,
    pub generation: i64,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
    pub old_client_states: Vec<String>,
    pub created_at: i64,
    pub first_seen_at: i64,
    /// Whether this request made the row.
    pub origin: RowOrigin,
}

/// Where the user row `get_or_create_user` returns comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrigin {
    /// It was there.
    Existing,
    /// The account's first row, made now.
    FirstRow,
    /// Made now to replace rows that could not be used (their node is gone or downed).
    Replacement,
}

/// The record update after validation (SPEC 3.6 "update").
#[derive(Debug, Clone)]
pub struct UserUpdate {
    pub service: i32,
    pub email: String,
    pub current: UserRecord,
    pub generation: i64,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
    pub now_ms: i64,
}

/// What start-up did about the server's own node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfNode {
    Inserted,
    Kept,
    /// From this URL: the only node, with no users yet.
    Renamed(String),
    /// The only node is another URL and has users: left alone.
    Assigned(String),
    /// The operator manages several nodes: left alone.
    Several,
}

#[async_trait]
pub trait TokenserverDb: Send + Sync {
    /// The `services` row by name; `None` when it does not exist.
    async fn service(&self, name: &str) -> TsResult<Option<Service>>;
    /// Loads the user's rows, repairs races, allocates a row (and a node) when needed.
    async fn get_or_create_user(&self, lookup: UserLookup) -> TsResult<UserRecord>;
    /// Applies a validated change; returns the uid now current (new on a client-state change).
    async fn update_user(&self, update: UserUpdate) -> TsResult<i64>;
    /// Inserts the node unless the service already has it (`init_node_url`, the self node).
    async fn ensure_node(&self, service: i32, url: &str, capacity: i32) -> TsResult<()>;
    /// The server as its own node (see `SelfNode`).
    async fn ensure_self_node(&self, service: i32, url: &str, capacity: i32) -> TsResult<SelfNode>;
    /// Account deletion: retires every unreplaced row of the email (webhook).
    async fn retire_user(&self, service: i32, email: &str, now_ms: i64) -> TsResult<()>;
    /// Password change: raises the generation of unreplaced rows, never lowering it (webhook).
    async fn raise_generation(&self, service: i32, email: &str, generation: i64) -> TsResult<()>;
    /// One operator operation (`syncserver node|user|purge-replaced|copy`), one transaction.
    async fn admin(&self, op: admin::AdminOp) -> TsResult<admin::AdminOut>;
    /// Whether the database answers (`__heartbeat__`).
    async fn check(&self) -> TsResult<()>;
    /// Its connection pool, for the metrics.
    fn pool_state(&self) -> crate::db::PoolState;
}

pub type SharedTokenserverDb = Arc<dyn TokenserverDb>;

/// Opens the tokenserver database named by the URL's scheme (sqlite:, mysql://, postgres://).
pub fn open_tokenserver_db(
    url: &str,
    pool: &crate::db::sql::PoolSettings,
) -> Result<SharedTokenserverDb, String> {
    backends::open(url, pool)
}
