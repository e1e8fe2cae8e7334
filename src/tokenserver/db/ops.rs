//! The tokenserver's statements, written once. `tokenserver_ops!` is instantiated per connection
//! type (a macro for the same reasons as `db::sql::statements`: diesel's per-connection query
//! types and SQLite's synchronous connection): `conn = C, run = RunQueryDsl`, `[async] [.await]`
//! or `[] []`, then `[for_update]` where the engine has row locks (MySQL, PostgreSQL; SQLite's
//! `BEGIN IMMEDIATE` already holds the file), then the SQL that reads the last auto-increment
//! id. Each function runs inside a transaction the backend opened; none commits.

/// The operations; see the module comment for the arguments.
macro_rules! tokenserver_ops {
    (conn = $Conn:ty, run = $Run:path, [$($asy:tt)*] [$($aw:tt)*] [$($lock:ident)?] last_insert_id = $last_id:expr) => {
        pub type Conn = $Conn;
        #[allow(unused_imports)]
        use $Run;
        use diesel::dsl::sql;
        use diesel::sql_types::BigInt;
        use diesel::{BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, QueryResult};

        use $crate::tokenserver::db::schema::{nodes, services, users};
        use $crate::tokenserver::db::{RowOrigin, Service, TsResult, UserLookup, UserRecord, UserUpdate};
        use $crate::tokenserver::TokenserverError;
        use $crate::tokenserver::nodes::{Node, assign};
        use $crate::tokenserver::users::{MAX_ROWS, NewRow, Plan, RETIRED, UserRow, decide};

        pub $($asy)* fn service(conn: &mut Conn, name: &str) -> QueryResult<Option<Service>> {
            let row = services::table
                .filter(services::service.eq(name))
                .select((services::id, services::pattern))
                .first::<(i32, Option<String>)>(conn)
                $($aw)*
                .optional()?;
            Ok(row.map(|(id, pattern)| Service { id, pattern: pattern.unwrap_or_default() }))
        }

        /// The user's most recent rows, each with its node's URL (None when the node is gone).
        $($asy)* fn load_rows(conn: &mut Conn, service: i32, email: &str) -> QueryResult<Vec<UserRow>> {
            type Row = (i64, i64, String, i64, Option<i64>, i64, Option<i64>);
            let rows: Vec<Row> = users::table
                .filter(users::service.eq(service))
                .filter(users::email.eq(email))
                .order((users::created_at.desc(), users::uid.desc()))
                .limit(MAX_ROWS)
                .select((
                    users::uid,
                    users::generation,
                    users::client_state,
                    users::created_at,
                    users::replaced_at,
                    users::nodeid,
                    users::keys_changed_at,
                ))
                .load(conn)
                $($aw)*?;
            let ids: Vec<i64> = rows.iter().map(|r| r.5).collect();
            let urls: Vec<(i64, String)> = if ids.is_empty() {
                vec![]
            } else {
                nodes::table
                    .filter(nodes::id.eq_any(ids))
                    .select((nodes::id, nodes::node))
                    .load(conn)
                    $($aw)*?
            };
            Ok(rows
                .into_iter()
                .map(|(uid, generation, client_state, created_at, replaced_at, nodeid, keys_changed_at)| UserRow {
                    uid,
                    generation,
                    client_state,
                    created_at,
                    replaced_at,
                    nodeid,
                    keys_changed_at,
                    node: urls.iter().find(|(id, _)| *id == nodeid).map(|(_, url)| url.clone()),
                })
                .collect())
        }

        /// Picks a node and counts the new user on it (SPEC 3.7), with the service's node rows
        /// locked so that concurrent allocations see each other's counts.
        $($asy)* fn allocate_node(conn: &mut Conn, lookup: &UserLookup) -> TsResult<(i64, String)> {
            if let Some(id) = lookup.pinned_node {
                let url = nodes::table
                    .find(id)
                    .select(nodes::node)
                    $(.$lock())?
                    .first::<String>(conn)
                    $($aw)*
                    .optional()?
                    .ok_or_else(|| TokenserverError::no_node())?;
                diesel::update(nodes::table.find(id))
                    .set(nodes::current_load.eq(nodes::current_load + 1))
                    .execute(conn)
                    $($aw)*?;
                return Ok((id, url));
            }
            type Row = (i64, i32, i32, i32, i32, i32, String);
            let rows: Vec<Row> = nodes::table
                .filter(nodes::service.eq(lookup.service))
                .order(nodes::id.asc())
                .select((
                    nodes::id,
                    nodes::available,
                    nodes::current_load,
                    nodes::capacity,
                    nodes::downed,
                    nodes::backoff,
                    nodes::node,
                ))
                $(.$lock())?
                .load(conn)
                $($aw)*?;
            let before: Vec<Node> = rows
                .iter()
                .map(|(id, available, load, capacity, downed, backoff, _)| Node {
                    id: *id,
                    available: (*available).into(),
                    current_load: (*load).into(),
                    capacity: (*capacity).into(),
                    downed: *downed != 0,
                    backoff: *backoff != 0,
                })
                .collect();
            let mut after = before.clone();
            let chosen = assign(&mut after, lookup.node_capacity_release_rate)
                .ok_or_else(|| TokenserverError::no_node())?;
            for (old, new) in before.iter().zip(&after).filter(|(old, new)| old != new) {
                // Each value was derived from an int column, so it fits back into one.
                diesel::update(nodes::table.find(old.id))
                    .set((
                        nodes::available.eq(new.available as i32),
                        nodes::current_load.eq(new.current_load as i32),
                    ))
                    .execute(conn)
                    $($aw)*?;
            }
            let url = rows.into_iter().find(|r| r.0 == chosen).map(|r| r.6).unwrap_or_default();
            Ok((chosen, url))
        }

        $($asy)* fn insert_user(
            conn: &mut Conn,
            service: i32,
            email: &str,
            row: &NewRow,
            nodeid: i64,
            created_at: i64,
        ) -> QueryResult<i64> {
            diesel::insert_into(users::table)
                .values((
                    users::service.eq(service),
                    users::email.eq(email),
                    users::generation.eq(row.generation),
                    users::client_state.eq(&row.client_state),
                    users::created_at.eq(created_at),
                    users::replaced_at.eq(None::<i64>),
                    users::nodeid.eq(nodeid),
                    users::keys_changed_at.eq(row.keys_changed_at),
                ))
                .execute(conn)
                $($aw)*?;
            diesel::select(sql::<BigInt>($last_id)).get_result(conn) $($aw)*
        }

        /// SPEC 3.6 get-or-create, in the caller's transaction.
        pub $($asy)* fn get_or_create_user(conn: &mut Conn, lookup: &UserLookup) -> TsResult<UserRecord> {
            let rows = load_rows(conn, lookup.service, &lookup.email) $($aw)*?;
            let mut decision = decide(rows, lookup.request.clone(), lookup.allow_new_users)?;
            if matches!(decision.plan, Plan::Allocate(_)) {
                // Lock the nodes, then look again: a concurrent request for the same user may
                // have allocated while we read, and then its row is the one to use.
                let _ = allocate_lock(conn, lookup.service) $($aw)*?;
                let rows = load_rows(conn, lookup.service, &lookup.email) $($aw)*?;
                decision = decide(rows, lookup.request.clone(), lookup.allow_new_users)?;
            }
            if !decision.repair.is_empty() {
                diesel::update(users::table.filter(users::uid.eq_any(&decision.repair)))
                    .filter(users::replaced_at.is_null())
                    .set(users::replaced_at.eq(decision.repair_at))
                    .execute(conn)
                    $($aw)*?;
            }
            let first_seen_at = decision.first_seen_at.unwrap_or(lookup.now_ms);
            match decision.plan {
                Plan::Use(row) => Ok(UserRecord {
                    uid: row.uid,
                    nodeid: row.nodeid,
                    node: row.node.unwrap_or_default(),
                    generation: row.generation,
                    keys_changed_at: row.keys_changed_at,
                    client_state: row.client_state,
                    old_client_states: decision.old_client_states,
                    created_at: row.created_at,
                    first_seen_at,
                    origin: RowOrigin::Existing,
                }),
                Plan::Allocate(new) => {
                    let (nodeid, node) = allocate_node(conn, lookup) $($aw)*?;
                    let uid = insert_user(conn, lookup.service, &lookup.email, &new, nodeid, lookup.now_ms) $($aw)*?;
                    Ok(UserRecord {
                        uid,
                        nodeid,
                        node,
                        generation: new.generation,
                        keys_changed_at: new.keys_changed_at,
                        client_state: new.client_state,
                        old_client_states: decision.old_client_states,
                        created_at: lookup.now_ms,
                        first_seen_at,
                        origin: if decision.first_seen_at.is_some() {
                            RowOrigin::Replacement
                        } else {
                            RowOrigin::FirstRow
                        },
                    })
                }
            }
        }

        /// Serializes allocations of one service: the first row lock any allocation takes.
        $($asy)* fn allocate_lock(conn: &mut Conn, service: i32) -> QueryResult<Option<i32>> {
            services::table
                .find(service)
                .select(services::id)
                $(.$lock())?
                .first::<i32>(conn)
                $($aw)*
                .optional()
        }

        /// SPEC 3.6 update, in the caller's transaction.
        pub $($asy)* fn update_user(conn: &mut Conn, update: &UserUpdate) -> TsResult<i64> {
            let current = &update.current;
            if update.client_state != current.client_state {
                let row = NewRow {
                    generation: update.generation,
                    client_state: update.client_state.clone(),
                    keys_changed_at: update.keys_changed_at,
                };
                let uid = insert_user(conn, update.service, &update.email, &row, current.nodeid, update.now_ms) $($aw)*?;
                diesel::update(users::table)
                    .filter(users::service.eq(update.service))
                    .filter(users::email.eq(&update.email))
                    .filter(users::replaced_at.is_null())
                    .filter(users::created_at.lt(update.now_ms))
                    .set(users::replaced_at.eq(update.now_ms))
                    .execute(conn)
                    $($aw)*?;
                return Ok(uid);
            }
            if update.generation != current.generation || update.keys_changed_at != current.keys_changed_at {
                // Guarded so that a concurrent, newer update is never undone.
                let kca_bound = update.keys_changed_at.or(current.keys_changed_at).unwrap_or(0);
                diesel::update(users::table.find(current.uid))
                    .filter(users::generation.le(update.generation))
                    .filter(users::keys_changed_at.is_null().or(users::keys_changed_at.le(kca_bound)))
                    .filter(users::replaced_at.is_null())
                    .set((
                        users::generation.eq(update.generation),
                        users::keys_changed_at.eq(update.keys_changed_at),
                    ))
                    .execute(conn)
                    $($aw)*?;
            }
            Ok(current.uid)
        }

        /// Inserts the node unless the service has it; a concurrent insert of the same node
        /// (another instance starting) is as good as ours.
        pub $($asy)* fn ensure_node(conn: &mut Conn, service: i32, url: &str, capacity: i32) -> QueryResult<()> {
            let exists = nodes::table
                .filter(nodes::service.eq(service))
                .filter(nodes::node.eq(url))
                .select(nodes::id)
                .first::<i64>(conn)
                $($aw)*
                .optional()?
                .is_some();
            if !exists {
                let inserted = diesel::insert_into(nodes::table)
                    .values((
                        nodes::service.eq(service),
                        nodes::node.eq(url),
                        nodes::available.eq(capacity),
                        nodes::current_load.eq(0),
                        nodes::capacity.eq(capacity),
                        nodes::downed.eq(0),
                        nodes::backoff.eq(0),
                    ))
                    .execute(conn)
                    $($aw)*;
                match inserted {
                    Err(diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::UniqueViolation,
                        _,
                    )) => {}
                    other => {
                        other?;
                    }
                }
            }
            Ok(())
        }

        /// The server as its own node (no `init_node_url`): inserted when the service has no
        /// node; renamed to `url` when the service's only node has no users yet (the self-hoster
        /// set `public_url` after a first start). Anything else is the operator's and stays.
        pub $($asy)* fn ensure_self_node(conn: &mut Conn, service: i32, url: &str, capacity: i32) -> QueryResult<$crate::tokenserver::db::SelfNode> {
            use $crate::tokenserver::db::SelfNode;
            let _ = allocate_lock(conn, service) $($aw)*?;
            let existing: Vec<(i64, String)> = nodes::table
                .filter(nodes::service.eq(service))
                .select((nodes::id, nodes::node))
                $(.$lock())?
                .load(conn)
                $($aw)*?;
            match existing.as_slice() {
                [] => {
                    ensure_node(conn, service, url, capacity) $($aw)*?;
                    Ok(SelfNode::Inserted)
                }
                [(_, node)] if node == url => Ok(SelfNode::Kept),
                [(id, node)] => {
                    let users: i64 = users::table
                        .filter(users::nodeid.eq(*id))
                        .count()
                        .get_result(conn)
                        $($aw)*?;
                    if users > 0 {
                        return Ok(SelfNode::Assigned(node.clone()));
                    }
                    diesel::update(nodes::table.find(*id))
                        .set(nodes::node.eq(url))
                        .execute(conn)
                        $($aw)*?;
                    Ok(SelfNode::Renamed(node.clone()))
                }
                _ => Ok(SelfNode::Several),
            }
        }

        pub $($asy)* fn retire_user(conn: &mut Conn, service: i32, email: &str, now_ms: i64) -> QueryResult<usize> {
            diesel::update(users::table)
                .filter(users::service.eq(service))
                .filter(users::email.eq(email))
                .filter(users::replaced_at.is_null())
                .set((users::generation.eq(RETIRED), users::replaced_at.eq(now_ms)))
                .execute(conn)
                $($aw)*
        }

        pub $($asy)* fn raise_generation(conn: &mut Conn, service: i32, email: &str, generation: i64) -> QueryResult<usize> {
            diesel::update(users::table)
                .filter(users::service.eq(service))
                .filter(users::email.eq(email))
                .filter(users::replaced_at.is_null())
                .filter(users::generation.lt(generation))
                .set(users::generation.eq(generation))
                .execute(conn)
                $($aw)*
        }

        pub $($asy)* fn ping(conn: &mut Conn) -> QueryResult<usize> {
            diesel::sql_query("SELECT 1").execute(conn) $($aw)*
        }
    };
}
pub(crate) use tokenserver_ops;
