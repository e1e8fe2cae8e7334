//! What an operator does to the tokenserver tables (`syncserver node|user|purge-replaced|copy`):
//! the operations as values (`AdminOp`, one `TokenserverDb::admin` call each, one transaction),
//! and their statements written once in `tokenserver_admin_ops!`, instantiated per connection
//! type beside `tokenserver_ops!` (same arguments, same reasons for a macro).

use serde::Serialize;

/// A `services` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    pub id: i32,
    pub service: Option<String>,
    pub pattern: Option<String>,
}

/// A `nodes` row, with how many unreplaced user rows point at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub id: i64,
    pub service: i32,
    pub node: String,
    pub available: i32,
    pub current_load: i32,
    pub capacity: i32,
    pub downed: i32,
    pub backoff: i32,
    /// Unreplaced user rows on this node (not a column).
    pub users: i64,
}

/// A `users` row, every column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    pub uid: i64,
    pub service: i32,
    pub email: String,
    pub generation: i64,
    pub client_state: String,
    pub created_at: i64,
    pub replaced_at: Option<i64>,
    pub nodeid: i64,
    pub keys_changed_at: Option<i64>,
}

impl UserRow {
    /// The FxA uid: the email's part before the `@`.
    pub fn fxa_uid(&self) -> &str {
        self.email.split('@').next().unwrap_or_default()
    }

    /// The `fxa_kid` of the tokens this row's client gets (which keys Spanner's rows).
    pub fn fxa_kid(&self) -> String {
        let number = self
            .keys_changed_at
            .filter(|k| *k > 0)
            .unwrap_or(self.generation);
        crate::tokenserver::hashes::fxa_kid(number, &self.client_state)
    }

    /// The key of this row's storage on any engine.
    pub fn storage_user(&self) -> crate::db::UserId {
        crate::db::UserId {
            legacy_id: self.uid as u64,
            fxa_uid: self.fxa_uid().to_owned(),
            fxa_kid: self.fxa_kid(),
        }
    }
}

/// Which account a `user` command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSelector {
    Uid(i64),
    Email(String),
    /// Every email whose part before the `@` is this.
    FxaUid(String),
}

/// Node columns to set (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    pub available: Option<i32>,
    pub capacity: Option<i32>,
    pub current_load: Option<i32>,
    pub downed: Option<i32>,
    pub backoff: Option<i32>,
}

#[derive(Debug, Clone)]
pub enum AdminOp {
    /// The service's nodes (every service's: `None`).
    Nodes { service: Option<i32> },
    AddNode {
        service: i32,
        url: String,
        change: NodeChange,
    },
    UpdateNode {
        service: i32,
        url: String,
        change: NodeChange,
    },
    /// Refused while user rows point at the node, unless they move to `reassign_to`.
    RemoveNode {
        service: i32,
        url: String,
        reassign_to: Option<String>,
    },
    /// User rows in uid order after `after`, at most `limit`.
    Users { after: i64, limit: i64 },
    /// Every row of the selected account(s), newest first.
    FindUser(UserSelector),
    /// Removes these user rows.
    DeleteUsers { uids: Vec<i64> },
    /// Rows replaced before `before_ms`, in uid order after `after`.
    Replaced {
        before_ms: i64,
        after: i64,
        limit: i64,
    },
    /// Every `services` row.
    Services,
    /// Inserts the rows whose keys are absent (services by id and name, nodes by id and
    /// (service, url), users by uid), keeping their ids; moves the engine's id sequences past them.
    Import {
        services: Vec<ServiceRow>,
        nodes: Vec<NodeRow>,
        users: Vec<UserRow>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOut {
    Nodes(Vec<NodeRow>),
    Users(Vec<UserRow>),
    Services(Vec<ServiceRow>),
    /// Rows changed.
    Count(usize),
    /// The operation was refused, for this reason; nothing was changed.
    Refused(String),
}

/// The admin statements; arguments as `tokenserver_ops!`, plus `reseed`: statements that move
/// the id sequences past explicitly inserted ids (PostgreSQL's identity columns; SQLite and
/// MySQL do it themselves).
macro_rules! tokenserver_admin_ops {
    (conn = $Conn:ty, run = $Run:path, [$($asy:tt)*] [$($aw:tt)*] reseed = [$($reseed:expr),*]) => {
        pub mod admin {
        #[allow(unused_imports)]
        use $Run;
        use diesel::{BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, TextExpressionMethods};

        use $crate::tokenserver::db::admin::{
            AdminOp, AdminOut, NodeChange, NodeRow, ServiceRow, UserRow, UserSelector,
        };
        use $crate::tokenserver::db::schema::{nodes, services, users};

        type AdminConn = $Conn;
        const RESEED: &[&str] = &[$($reseed),*];
        type NodeTuple = (i64, i32, String, i32, i32, i32, i32, i32);
        type UserTuple = (i64, i32, String, i64, String, i64, Option<i64>, i64, Option<i64>);

        const NODE_COLUMNS: (
            nodes::id, nodes::service, nodes::node, nodes::available, nodes::current_load,
            nodes::capacity, nodes::downed, nodes::backoff,
        ) = (
            nodes::id, nodes::service, nodes::node, nodes::available, nodes::current_load,
            nodes::capacity, nodes::downed, nodes::backoff,
        );
        const USER_COLUMNS: (
            users::uid, users::service, users::email, users::generation, users::client_state,
            users::created_at, users::replaced_at, users::nodeid, users::keys_changed_at,
        ) = (
            users::uid, users::service, users::email, users::generation, users::client_state,
            users::created_at, users::replaced_at, users::nodeid, users::keys_changed_at,
        );

        fn user_row(t: UserTuple) -> UserRow {
            UserRow {
                uid: t.0,
                service: t.1,
                email: t.2,
                generation: t.3,
                client_state: t.4,
                created_at: t.5,
                replaced_at: t.6,
                nodeid: t.7,
                keys_changed_at: t.8,
            }
        }

        $($asy)* fn node_rows(conn: &mut AdminConn, service: Option<i32>) -> QueryResult<Vec<NodeRow>> {
            let mut query = nodes::table.select(NODE_COLUMNS).order(nodes::id.asc()).into_boxed();
            if let Some(service) = service {
                query = query.filter(nodes::service.eq(service));
            }
            let rows: Vec<NodeTuple> = query.load(conn) $($aw)*?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, service, node, available, current_load, capacity, downed, backoff) in rows {
                let users: i64 = users::table
                    .filter(users::nodeid.eq(id))
                    .filter(users::replaced_at.is_null())
                    .count()
                    .get_result(conn)
                    $($aw)*?;
                out.push(NodeRow { id, service, node, available, current_load, capacity, downed, backoff, users });
            }
            Ok(out)
        }

        $($asy)* fn node_id(conn: &mut AdminConn, service: i32, url: &str) -> QueryResult<Option<i64>> {
            nodes::table
                .filter(nodes::service.eq(service))
                .filter(nodes::node.eq(url))
                .select(nodes::id)
                .first::<i64>(conn)
                $($aw)*
                .optional()
        }

        $($asy)* fn update_node(conn: &mut AdminConn, id: i64, change: &NodeChange) -> QueryResult<usize> {
            let mut n = 0;
            // One statement per column keeps the query types simple; it is one transaction.
            if let Some(v) = change.available {
                n = diesel::update(nodes::table.find(id)).set(nodes::available.eq(v)).execute(conn) $($aw)*?;
            }
            if let Some(v) = change.capacity {
                n = diesel::update(nodes::table.find(id)).set(nodes::capacity.eq(v)).execute(conn) $($aw)*?;
            }
            if let Some(v) = change.current_load {
                n = diesel::update(nodes::table.find(id)).set(nodes::current_load.eq(v)).execute(conn) $($aw)*?;
            }
            if let Some(v) = change.downed {
                n = diesel::update(nodes::table.find(id)).set(nodes::downed.eq(v)).execute(conn) $($aw)*?;
            }
            if let Some(v) = change.backoff {
                n = diesel::update(nodes::table.find(id)).set(nodes::backoff.eq(v)).execute(conn) $($aw)*?;
            }
            Ok(n)
        }

        $($asy)* fn find_users(conn: &mut AdminConn, selector: &UserSelector) -> QueryResult<Vec<UserRow>> {
            let query = users::table
                .select(USER_COLUMNS)
                .order((users::email.asc(), users::created_at.desc(), users::uid.desc()))
                .into_boxed();
            let rows: Vec<UserTuple> = match selector {
                UserSelector::Uid(uid) => {
                    // The account of that uid: all its rows.
                    let email: Option<String> = users::table
                        .find(*uid)
                        .select(users::email)
                        .first(conn)
                        $($aw)*
                        .optional()?;
                    match email {
                        Some(email) => query.filter(users::email.eq(email)).load(conn) $($aw)*?,
                        None => vec![],
                    }
                }
                UserSelector::Email(email) => query.filter(users::email.eq(email.clone())).load(conn) $($aw)*?,
                UserSelector::FxaUid(fxa_uid) => {
                    // LIKE narrows it down (`_` and `%` match too much, never too little);
                    // the exact comparison is below.
                    let rows: Vec<UserTuple> = query.filter(users::email.like(format!("{fxa_uid}@%"))).load(conn) $($aw)*?;
                    rows.into_iter().filter(|r| r.2.split('@').next() == Some(fxa_uid.as_str())).collect()
                }
            };
            Ok(rows.into_iter().map(user_row).collect())
        }

        /// One operator operation, in the caller's transaction.
        pub $($asy)* fn admin(conn: &mut AdminConn, op: &AdminOp) -> QueryResult<AdminOut> {
            Ok(match op {
                AdminOp::Nodes { service } => AdminOut::Nodes(node_rows(conn, *service) $($aw)*?),
                AdminOp::AddNode { service, url, change } => {
                    if node_id(conn, *service, url) $($aw)*?.is_some() {
                        return Ok(AdminOut::Refused(format!("node {url} exists already (use node update)")));
                    }
                    let capacity = change.capacity.unwrap_or(100);
                    let n = diesel::insert_into(nodes::table)
                        .values((
                            nodes::service.eq(*service),
                            nodes::node.eq(url),
                            nodes::available.eq(change.available.unwrap_or(capacity)),
                            nodes::current_load.eq(change.current_load.unwrap_or(0)),
                            nodes::capacity.eq(capacity),
                            nodes::downed.eq(change.downed.unwrap_or(0)),
                            nodes::backoff.eq(change.backoff.unwrap_or(0)),
                        ))
                        .execute(conn)
                        $($aw)*?;
                    AdminOut::Count(n)
                }
                AdminOp::UpdateNode { service, url, change } => {
                    let Some(id) = node_id(conn, *service, url) $($aw)*? else {
                        return Ok(AdminOut::Refused(format!("no node {url}")));
                    };
                    AdminOut::Count(update_node(conn, id, change) $($aw)*?)
                }
                AdminOp::RemoveNode { service, url, reassign_to } => {
                    let Some(id) = node_id(conn, *service, url) $($aw)*? else {
                        return Ok(AdminOut::Refused(format!("no node {url}")));
                    };
                    let rows: i64 = users::table
                        .filter(users::nodeid.eq(id))
                        .count()
                        .get_result(conn)
                        $($aw)*?;
                    let active: i64 = users::table
                        .filter(users::nodeid.eq(id))
                        .filter(users::replaced_at.is_null())
                        .count()
                        .get_result(conn)
                        $($aw)*?;
                    if rows > 0 {
                        let Some(target) = reassign_to else {
                            return Ok(AdminOut::Refused(format!(
                                "node {url} still has {rows} user rows ({active} current); give --reassign URL to move them to another node"
                            )));
                        };
                        let Some(target_id) = node_id(conn, *service, target) $($aw)*? else {
                            return Ok(AdminOut::Refused(format!("no node {target} to reassign to")));
                        };
                        if target_id == id {
                            return Ok(AdminOut::Refused("cannot reassign a node's users to itself".into()));
                        }
                        diesel::update(users::table.filter(users::nodeid.eq(id)))
                            .set(users::nodeid.eq(target_id))
                            .execute(conn)
                            $($aw)*?;
                        // The moved current users count on their new node.
                        let active = i32::try_from(active).unwrap_or(i32::MAX);
                        diesel::update(nodes::table.find(target_id))
                            .set(nodes::current_load.eq(nodes::current_load + active))
                            .execute(conn)
                            $($aw)*?;
                    }
                    AdminOut::Count(diesel::delete(nodes::table.find(id)).execute(conn) $($aw)*?)
                }
                AdminOp::Users { after, limit } => {
                    let rows: Vec<UserTuple> = users::table
                        .filter(users::uid.gt(*after))
                        .order(users::uid.asc())
                        .limit(*limit)
                        .select(USER_COLUMNS)
                        .load(conn)
                        $($aw)*?;
                    AdminOut::Users(rows.into_iter().map(user_row).collect())
                }
                AdminOp::FindUser(selector) => AdminOut::Users(find_users(conn, selector) $($aw)*?),
                AdminOp::DeleteUsers { uids } => {
                    AdminOut::Count(diesel::delete(users::table.filter(users::uid.eq_any(uids))).execute(conn) $($aw)*?)
                }
                AdminOp::Replaced { before_ms, after, limit } => {
                    let rows: Vec<UserTuple> = users::table
                        .filter(users::replaced_at.lt(*before_ms))
                        .filter(users::uid.gt(*after))
                        .order(users::uid.asc())
                        .limit(*limit)
                        .select(USER_COLUMNS)
                        .load(conn)
                        $($aw)*?;
                    AdminOut::Users(rows.into_iter().map(user_row).collect())
                }
                AdminOp::Services => {
                    let rows: Vec<(i32, Option<String>, Option<String>)> = services::table
                        .order(services::id.asc())
                        .select((services::id, services::service, services::pattern))
                        .load(conn)
                        $($aw)*?;
                    AdminOut::Services(
                        rows.into_iter()
                            .map(|(id, service, pattern)| ServiceRow { id, service, pattern })
                            .collect(),
                    )
                }
                AdminOp::Import { services: new_services, nodes: new_nodes, users: new_users } => {
                    let mut n = 0;
                    for s in new_services {
                        let exists = services::table
                            .filter(services::id.eq(s.id).or(services::service.eq(s.service.clone())))
                            .count()
                            .get_result::<i64>(conn)
                            $($aw)*? > 0;
                        if !exists {
                            n += diesel::insert_into(services::table)
                                .values((
                                    services::id.eq(s.id),
                                    services::service.eq(&s.service),
                                    services::pattern.eq(&s.pattern),
                                ))
                                .execute(conn)
                                $($aw)*?;
                        }
                    }
                    for node in new_nodes {
                        let exists = nodes::table
                            .filter(nodes::id.eq(node.id).or(nodes::service.eq(node.service).and(nodes::node.eq(node.node.clone()))))
                            .count()
                            .get_result::<i64>(conn)
                            $($aw)*? > 0;
                        if !exists {
                            n += diesel::insert_into(nodes::table)
                                .values((
                                    nodes::id.eq(node.id),
                                    nodes::service.eq(node.service),
                                    nodes::node.eq(&node.node),
                                    nodes::available.eq(node.available),
                                    nodes::current_load.eq(node.current_load),
                                    nodes::capacity.eq(node.capacity),
                                    nodes::downed.eq(node.downed),
                                    nodes::backoff.eq(node.backoff),
                                ))
                                .execute(conn)
                                $($aw)*?;
                        }
                    }
                    let uids: Vec<i64> = new_users.iter().map(|u| u.uid).collect();
                    let present: Vec<i64> = users::table
                        .filter(users::uid.eq_any(&uids))
                        .select(users::uid)
                        .load(conn)
                        $($aw)*?;
                    for u in new_users.iter().filter(|u| !present.contains(&u.uid)) {
                        n += diesel::insert_into(users::table)
                            .values((
                                users::uid.eq(u.uid),
                                users::service.eq(u.service),
                                users::email.eq(&u.email),
                                users::generation.eq(u.generation),
                                users::client_state.eq(&u.client_state),
                                users::created_at.eq(u.created_at),
                                users::replaced_at.eq(u.replaced_at),
                                users::nodeid.eq(u.nodeid),
                                users::keys_changed_at.eq(u.keys_changed_at),
                            ))
                            .execute(conn)
                            $($aw)*?;
                    }
                    for statement in RESEED {
                        diesel::sql_query(*statement).execute(conn) $($aw)*?;
                    }
                    AdminOut::Count(n)
                }
            })
        }
        }
    };
}
pub(crate) use tokenserver_admin_ops;
