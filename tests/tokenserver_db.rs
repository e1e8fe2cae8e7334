//! The `TokenserverDb` trait called directly (no HTTP): every method on SQLite, MySQL and
//! PostgreSQL (SPEC 3.6-3.8). With Spanner storage the tokenserver tables live in SQLite (the
//! Spanner schema has none), so this binary does not run on Spanner: `on_spanner` is ignored.
//!
//! On MySQL and PostgreSQL the tests of a re-run share one database; each test works in a
//! service row of its own, so its nodes and users are its own.
#[macro_use]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::backends::ScratchDatabase;
use common::db::{AnyConnection, NodeRow, UserRow, connect, sql_query};
use syncserver::db::sql::PoolSettings;
use syncserver::tokenserver::TokenserverError;
use syncserver::tokenserver::db::{
    RowOrigin, SYNC_SERVICE, SelfNode, Service, SharedTokenserverDb, UserLookup, UserRecord,
    UserUpdate, open_tokenserver_db,
};
use syncserver::tokenserver::users::{NewRow, RETIRED};

backend_matrix!(
    not_spanner: "with Spanner storage the tokenserver tables are in SQLite (the SQLite run covers them)"
);

struct Ts {
    db: SharedTokenserverDb,
    url: String,
    /// This test's service.
    service: Service,
    _dir: tempfile::TempDir,
}

fn open_url(url: &str, migrate: bool) -> SharedTokenserverDb {
    let pool = PoolSettings {
        run_migrations: migrate,
        ..PoolSettings::default()
    };
    open_tokenserver_db(url, &pool).unwrap_or_else(|e| panic!("open {url}: {e}"))
}

static NEXT_SERVICE: AtomicU32 = AtomicU32::new(1);

/// The tokenserver database of the engine under test (the re-run's shared database, migrated
/// once, or a SQLite file of its own) with a fresh service row for this test.
async fn open() -> Ts {
    static MIGRATED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = tempfile::tempdir().unwrap();
    let url = match ScratchDatabase::shared() {
        Some(shared) => {
            MIGRATED.get_or_init(|| drop(open_url(&shared.url, true)));
            shared.url.clone()
        }
        None => format!("sqlite:{}", dir.path().join("tokenserver.db").display()),
    };
    let db = open_url(&url, url.starts_with("sqlite:"));
    let name = format!("test-{}", NEXT_SERVICE.fetch_add(1, Ordering::SeqCst));
    sql_query("INSERT INTO services (service, pattern) VALUES (?, '{node}/1.5/{uid}')")
        .bind(name.as_str())
        .execute(&mut connect(&url))
        .unwrap();
    let service = db.service(&name).await.unwrap().expect("the new service");
    Ts {
        db,
        url,
        service,
        _dir: dir,
    }
}

const EMAIL: &str = "someone@api.accounts.firefox.com";

/// A get-or-create request for `email` (generation 1, client state "aa", no keys_changed_at).
fn lookup(ts: &Ts, email: &str) -> UserLookup {
    UserLookup {
        service: ts.service.id,
        email: email.into(),
        request: NewRow {
            generation: 1,
            client_state: "aa".into(),
            keys_changed_at: None,
        },
        allow_new_users: true,
        now_ms: common::now_ms(),
        node_capacity_release_rate: 0.1,
        pinned_node: None,
    }
}

fn update(ts: &Ts, current: &UserRecord) -> UserUpdate {
    UserUpdate {
        service: ts.service.id,
        email: EMAIL.into(),
        current: current.clone(),
        generation: current.generation,
        keys_changed_at: current.keys_changed_at,
        client_state: current.client_state.clone(),
        now_ms: common::now_ms(),
    }
}

impl Ts {
    fn conn(&self) -> AnyConnection {
        connect(&self.url)
    }

    /// The service's rows for `email`, oldest first.
    fn users(&self, email: &str) -> Vec<UserRow> {
        sql_query(
            "SELECT uid, generation, client_state, created_at, replaced_at, nodeid, keys_changed_at \
             FROM users WHERE service = ? AND email = ? ORDER BY uid",
        )
        .bind(i64::from(self.service.id))
        .bind(email)
        .load(&mut self.conn())
        .unwrap()
    }

    /// The service's nodes in id order.
    fn nodes(&self) -> Vec<NodeRow> {
        sql_query(
            "SELECT id, node, available, current_load, capacity FROM nodes WHERE service = ? ORDER BY id",
        )
        .bind(i64::from(self.service.id))
        .load(&mut self.conn())
        .unwrap()
    }

    fn node(&self, url: &str) -> NodeRow {
        self.nodes()
            .into_iter()
            .find(|n| n.node == url)
            .unwrap_or_else(|| panic!("no node {url}"))
    }

    /// Adds a node through the trait, then gives it this state.
    async fn add_node(&self, url: &str, capacity: i32, load: i32, available: i32) -> i64 {
        self.db
            .ensure_node(self.service.id, url, capacity)
            .await
            .unwrap();
        let id = self.node(url).id;
        self.exec(&format!(
            "UPDATE nodes SET current_load = {load}, available = {available} WHERE id = {id}"
        ));
        id
    }

    fn exec(&self, sql: &str) {
        sql_query(sql).execute(&mut self.conn()).unwrap();
    }

    async fn get_or_create(&self, l: UserLookup) -> UserRecord {
        self.db
            .get_or_create_user(l)
            .await
            .expect("get_or_create_user")
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, TokenserverError>) -> (u16, &'static str) {
    let e = r.expect_err("an error");
    (e.http_status, e.status)
}

// ---- service, ensure_node, ensure_self_node ----

#[tokio::test]
async fn service_finds_rows_by_name() {
    let ts = open().await;
    let sync = ts
        .db
        .service(SYNC_SERVICE)
        .await
        .unwrap()
        .expect("seeded by the migrations");
    assert_eq!(sync.pattern, "{node}/1.5/{uid}");
    assert_ne!(sync.id, ts.service.id);
    assert_eq!(ts.service.pattern, "{node}/1.5/{uid}");
    assert_eq!(ts.db.service("no-such-service").await.unwrap(), None);
}

#[tokio::test]
async fn ensure_node_inserts_each_node_once() {
    let ts = open().await;
    for _ in 0..2 {
        ts.db
            .ensure_node(ts.service.id, "https://a.example", 50)
            .await
            .unwrap();
    }
    ts.db
        .ensure_node(ts.service.id, "https://b.example", 7)
        .await
        .unwrap();
    let nodes = ts.nodes();
    assert_eq!(
        nodes
            .iter()
            .map(|n| (n.node.as_str(), n.available, n.current_load, n.capacity))
            .collect::<Vec<_>>(),
        vec![
            ("https://a.example", 50, 0, 50),
            ("https://b.example", 7, 0, 7)
        ]
    );
    // The same URL for another service is another node.
    let other = open().await;
    assert!(other.nodes().is_empty());
}

#[tokio::test]
async fn ensure_self_node_inserts_keeps_renames_or_leaves_alone() {
    let ts = open().await;
    let svc = ts.service.id;
    let me = |url: &'static str| ts.db.ensure_self_node(svc, url, 100);
    assert_eq!(me("http://first:8000").await.unwrap(), SelfNode::Inserted);
    assert_eq!(me("http://first:8000").await.unwrap(), SelfNode::Kept);
    // The only node, no users yet: it follows the server's public_url.
    assert_eq!(
        me("https://sync.example").await.unwrap(),
        SelfNode::Renamed("http://first:8000".into())
    );
    assert_eq!(ts.nodes().len(), 1);
    assert_eq!(ts.nodes()[0].node, "https://sync.example");
    // Once a user is on it, it is left alone.
    ts.get_or_create(lookup(&ts, EMAIL)).await;
    assert_eq!(
        me("https://elsewhere.example").await.unwrap(),
        SelfNode::Assigned("https://sync.example".into())
    );
    assert_eq!(ts.nodes()[0].node, "https://sync.example");
    ts.db
        .ensure_node(svc, "https://second.example", 10)
        .await
        .unwrap();
    assert_eq!(
        me("https://third.example").await.unwrap(),
        SelfNode::Several
    );
    assert_eq!(ts.nodes().len(), 2);
}

// ---- get_or_create_user ----

#[tokio::test]
async fn a_new_user_gets_a_row_on_a_node() {
    let ts = open().await;
    let node = ts.add_node("https://n.example", 10, 0, 10).await;
    let mut l = lookup(&ts, EMAIL);
    l.request = NewRow {
        generation: 7,
        client_state: "ab".into(),
        keys_changed_at: Some(6),
    };
    let now = l.now_ms;
    let user = ts.get_or_create(l).await;
    assert_eq!(
        (
            user.nodeid,
            user.node.as_str(),
            user.generation,
            user.keys_changed_at,
            user.client_state.as_str(),
            user.created_at,
            user.first_seen_at
        ),
        (node, "https://n.example", 7, Some(6), "ab", now, now)
    );
    assert!(user.old_client_states.is_empty());
    assert_eq!(
        ts.users(EMAIL),
        vec![UserRow {
            uid: user.uid,
            generation: 7,
            client_state: "ab".into(),
            created_at: now,
            replaced_at: None,
            nodeid: node,
            keys_changed_at: Some(6)
        }]
    );
    let n = ts.node("https://n.example");
    assert_eq!((n.current_load, n.available), (1, 9));
}

#[tokio::test]
async fn an_existing_user_keeps_its_row() {
    let ts = open().await;
    ts.add_node("https://n.example", 10, 0, 10).await;
    let first = ts.get_or_create(lookup(&ts, EMAIL)).await;
    let mut again = lookup(&ts, EMAIL);
    again.allow_new_users = false;
    again.now_ms += 5_000;
    again.request.generation = 99;
    let second = ts.get_or_create(again).await;
    assert_eq!(first.origin, RowOrigin::FirstRow);
    assert_eq!(
        second,
        UserRecord {
            origin: RowOrigin::Existing,
            ..first.clone()
        },
        "the stored row, not the request"
    );
    assert_eq!(ts.users(EMAIL).len(), 1);
    assert_eq!(ts.node("https://n.example").current_load, 1);
    // Another email is another user.
    let other = ts.get_or_create(lookup(&ts, "other@example.com")).await;
    assert_ne!(other.uid, first.uid);
}

#[tokio::test]
async fn new_users_can_be_refused() {
    let ts = open().await;
    ts.add_node("https://n.example", 10, 0, 10).await;
    let mut l = lookup(&ts, EMAIL);
    l.allow_new_users = false;
    assert_eq!(
        refused(ts.db.get_or_create_user(l).await),
        (403, "new-users-disabled")
    );
    assert!(ts.users(EMAIL).is_empty());
    assert_eq!(ts.node("https://n.example").current_load, 0);
}

#[tokio::test]
async fn no_usable_node_is_503_and_writes_nothing() {
    let ts = open().await;
    assert_eq!(
        refused(ts.db.get_or_create_user(lookup(&ts, EMAIL)).await).0,
        503
    );
    let id = ts.add_node("https://down.example", 10, 0, 10).await;
    ts.exec(&format!("UPDATE nodes SET downed = 1 WHERE id = {id}"));
    assert_eq!(
        refused(ts.db.get_or_create_user(lookup(&ts, EMAIL)).await).0,
        503
    );
    // Full: at capacity, nothing to release.
    let full = ts.add_node("https://full.example", 3, 3, 0).await;
    assert_eq!(
        refused(ts.db.get_or_create_user(lookup(&ts, EMAIL)).await).0,
        503
    );
    assert!(ts.users(EMAIL).is_empty());
    assert_eq!(ts.node("https://full.example").id, full);
    assert_eq!(ts.node("https://full.example").current_load, 3);
}

// SPEC 3.7: least loaded by log(load)/log(capacity), ties to the lowest id; downed and
// backed-off nodes get no one.
#[tokio::test]
async fn nodes_are_chosen_by_load_then_id() {
    let ts = open().await;
    ts.add_node("https://busy.example", 100, 50, 50).await;
    let b = ts.add_node("https://b.example", 100, 2, 98).await;
    let c = ts.add_node("https://c.example", 100, 2, 98).await;
    let down = ts.add_node("https://down.example", 100, 0, 100).await;
    let backoff = ts.add_node("https://backoff.example", 100, 0, 100).await;
    ts.exec(&format!("UPDATE nodes SET downed = 1 WHERE id = {down}"));
    ts.exec(&format!(
        "UPDATE nodes SET backoff = 1 WHERE id = {backoff}"
    ));
    let first = ts.get_or_create(lookup(&ts, "u1@example.com")).await;
    assert_eq!(first.nodeid, b, "a tie goes to the lowest id");
    let second = ts.get_or_create(lookup(&ts, "u2@example.com")).await;
    assert_eq!(second.nodeid, c, "b is now the more loaded");
    let loads: Vec<(String, i32, i32)> = ts
        .nodes()
        .into_iter()
        .map(|n| (n.node, n.current_load, n.available))
        .collect();
    assert_eq!(
        loads,
        vec![
            ("https://busy.example".into(), 50, 50),
            ("https://b.example".into(), 3, 97),
            ("https://c.example".into(), 3, 97),
            ("https://down.example".into(), 0, 100),
            ("https://backoff.example".into(), 0, 100),
        ]
    );
}

// SPEC 3.7: when every node is out of availability but under capacity, capacity is released
// (capacity x rate) and written back.
#[tokio::test]
async fn full_nodes_release_capacity() {
    let ts = open().await;
    let id = ts.add_node("https://n.example", 100, 40, 0).await;
    let user = ts.get_or_create(lookup(&ts, EMAIL)).await;
    assert_eq!(user.nodeid, id);
    let n = ts.node("https://n.example");
    assert_eq!((n.current_load, n.available), (41, 9));
}

// tokenserver.spanner_node_id: every allocation goes to that node, however loaded.
#[tokio::test]
async fn a_pinned_node_takes_every_new_user() {
    let ts = open().await;
    ts.add_node("https://idle.example", 100, 0, 100).await;
    let pinned = ts.add_node("https://pinned.example", 100, 90, 0).await;
    let mut l = lookup(&ts, EMAIL);
    l.pinned_node = Some(pinned);
    let user = ts.get_or_create(l).await;
    assert_eq!(
        (user.nodeid, user.node.as_str()),
        (pinned, "https://pinned.example")
    );
    assert_eq!(ts.node("https://pinned.example").current_load, 91);
    assert_eq!(ts.node("https://idle.example").current_load, 0);
    let mut l = lookup(&ts, "other@example.com");
    l.pinned_node = Some(pinned + 1_000_000);
    assert_eq!(refused(ts.db.get_or_create_user(l).await).0, 503);
}

// Two first requests for one user at once get one uid (the allocation locks the service's
// nodes and reads the rows again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_get_one_uid() {
    let ts = open().await;
    ts.add_node("https://n.example", 100, 0, 100).await;
    let calls = (0..6).map(|_| ts.db.get_or_create_user(lookup(&ts, EMAIL)));
    let users = futures::future::join_all(calls).await;
    let uids: std::collections::BTreeSet<i64> = users
        .into_iter()
        .map(|u| u.expect("get_or_create").uid)
        .collect();
    assert_eq!(uids.len(), 1, "{uids:?}");
    assert_eq!(ts.users(EMAIL).len(), 1);
    assert_eq!(ts.node("https://n.example").current_load, 1);
}

// SPEC 3.6: a replaced current row, or one whose node is gone, gets a new row that carries
// the old row's values (not the request's).
#[tokio::test]
async fn replaced_or_nodeless_rows_are_reallocated_with_their_own_values() {
    let ts = open().await;
    let node = ts.add_node("https://n.example", 100, 0, 100).await;
    let mut l = lookup(&ts, EMAIL);
    l.request = NewRow {
        generation: 5,
        client_state: "bb".into(),
        keys_changed_at: Some(4),
    };
    let first = ts.get_or_create(l).await;
    ts.exec(&format!(
        "UPDATE users SET replaced_at = {} WHERE uid = {}",
        first.created_at + 1,
        first.uid
    ));
    let mut l = lookup(&ts, EMAIL);
    l.now_ms = first.created_at + 10;
    let second = ts.get_or_create(l).await;
    assert_ne!(second.uid, first.uid);
    assert_eq!(
        (first.origin, second.origin),
        (RowOrigin::FirstRow, RowOrigin::Replacement)
    );
    assert_eq!(
        (
            second.generation,
            second.client_state.as_str(),
            second.keys_changed_at,
            second.nodeid,
            second.first_seen_at
        ),
        (5, "bb", Some(4), node, first.created_at)
    );
    // Its node removed by the operator: allocated again, on a node that exists.
    ts.exec(&format!("DELETE FROM nodes WHERE id = {node}"));
    let other = ts.add_node("https://other.example", 100, 0, 100).await;
    let mut l = lookup(&ts, EMAIL);
    l.now_ms = first.created_at + 20;
    let third = ts.get_or_create(l).await;
    assert_ne!(third.uid, second.uid);
    assert_eq!(third.origin, RowOrigin::Replacement);
    assert_eq!((third.nodeid, third.generation), (other, 5));
    assert_eq!(ts.users(EMAIL).len(), 3);
}

// SPEC 3.6 race repair: of several unreplaced rows the current one (greatest generation, then
// created_at) stands and the others are marked replaced at its created_at.
#[tokio::test]
async fn unreplaced_older_rows_are_repaired() {
    let ts = open().await;
    let node = ts.add_node("https://n.example", 100, 0, 100).await;
    let svc = ts.service.id;
    for (generation, created_at, client_state) in
        [(3, 1_000, "c3"), (4, 900, "c4"), (2, 2_000, "c2")]
    {
        ts.exec(&format!(
            "INSERT INTO users (service, email, generation, client_state, created_at, replaced_at, nodeid, keys_changed_at) \
             VALUES ({svc}, '{EMAIL}', {generation}, '{client_state}', {created_at}, NULL, {node}, NULL)"
        ));
    }
    let user = ts.get_or_create(lookup(&ts, EMAIL)).await;
    assert_eq!(
        (user.generation, user.client_state.as_str(), user.created_at),
        (4, "c4", 900)
    );
    let mut old = user.old_client_states.clone();
    old.sort();
    assert_eq!(old, vec!["c2", "c3"]);
    assert_eq!(user.first_seen_at, 900);
    let replaced: Vec<(String, Option<i64>)> = ts
        .users(EMAIL)
        .into_iter()
        .map(|r| (r.client_state, r.replaced_at))
        .collect();
    assert_eq!(
        replaced,
        vec![
            ("c3".into(), Some(900)),
            ("c4".into(), None),
            ("c2".into(), Some(900)),
        ]
    );
}

// ---- update_user ----

#[tokio::test]
async fn update_user_records_a_new_generation_and_keys_changed_at() {
    let ts = open().await;
    ts.add_node("https://n.example", 100, 0, 100).await;
    let user = ts.get_or_create(lookup(&ts, EMAIL)).await;
    let mut u = update(&ts, &user);
    u.generation = 10;
    u.keys_changed_at = Some(9);
    assert_eq!(ts.db.update_user(u).await.unwrap(), user.uid);
    let rows = ts.users(EMAIL);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].generation, rows[0].keys_changed_at), (10, Some(9)));
    let again = ts.get_or_create(lookup(&ts, EMAIL)).await;
    assert_eq!((again.uid, again.generation), (user.uid, 10));
}

// The update is guarded: one based on a stale read never lowers what a newer one wrote.
#[tokio::test]
async fn update_user_never_undoes_a_newer_update() {
    let ts = open().await;
    ts.add_node("https://n.example", 100, 0, 100).await;
    let stale = ts.get_or_create(lookup(&ts, EMAIL)).await;
    let mut newer = update(&ts, &stale);
    newer.generation = 20;
    newer.keys_changed_at = Some(20);
    ts.db.update_user(newer).await.unwrap();
    let mut late = update(&ts, &stale);
    late.generation = 15;
    late.keys_changed_at = Some(15);
    assert_eq!(ts.db.update_user(late).await.unwrap(), stale.uid);
    let row = &ts.users(EMAIL)[0];
    assert_eq!((row.generation, row.keys_changed_at), (20, Some(20)));
}

// SPEC 3.6: a new client state is a new row (new uid, same node); the old row is replaced at
// that moment and its client state is remembered.
#[tokio::test]
async fn update_user_with_a_new_client_state_makes_a_new_row() {
    let ts = open().await;
    let node = ts.add_node("https://n.example", 100, 0, 100).await;
    let user = ts.get_or_create(lookup(&ts, EMAIL)).await;
    let mut u = update(&ts, &user);
    u.client_state = "bb".into();
    u.generation = 2;
    u.now_ms = user.created_at + 1_000;
    let uid = ts.db.update_user(u).await.unwrap();
    assert_ne!(uid, user.uid);
    let rows = ts.users(EMAIL);
    assert_eq!(
        rows.iter()
            .map(|r| (
                r.uid,
                r.client_state.as_str(),
                r.generation,
                r.replaced_at,
                r.nodeid
            ))
            .collect::<Vec<_>>(),
        vec![
            (user.uid, "aa", 1, Some(user.created_at + 1_000), node),
            (uid, "bb", 2, None, node),
        ]
    );
    assert_eq!(
        ts.node("https://n.example").current_load,
        1,
        "the same node"
    );
    let current = ts.get_or_create(lookup(&ts, EMAIL)).await;
    assert_eq!(current.uid, uid);
    assert_eq!(current.old_client_states, vec!["aa"]);
}

// ---- webhook events ----

#[tokio::test]
async fn retire_user_retires_every_unreplaced_row() {
    let ts = open().await;
    ts.add_node("https://n.example", 100, 0, 100).await;
    let user = ts.get_or_create(lookup(&ts, EMAIL)).await;
    let bystander = ts.get_or_create(lookup(&ts, "other@example.com")).await;
    let now = user.created_at + 500;
    ts.db.retire_user(ts.service.id, EMAIL, now).await.unwrap();
    let row = &ts.users(EMAIL)[0];
    assert_eq!((row.generation, row.replaced_at), (RETIRED, Some(now)));
    // The retired row stands (no new allocation): it can only present generation = max.
    let again = ts.get_or_create(lookup(&ts, EMAIL)).await;
    assert_eq!((again.uid, again.generation), (user.uid, RETIRED));
    assert_eq!(ts.users(EMAIL).len(), 1);
    let other = &ts.users("other@example.com")[0];
    assert_eq!(
        (other.uid, other.generation, other.replaced_at),
        (bystander.uid, 1, None)
    );
    // Retiring an unknown email is not an error.
    ts.db
        .retire_user(ts.service.id, "nobody@example.com", now)
        .await
        .unwrap();
}

#[tokio::test]
async fn raise_generation_raises_but_never_lowers() {
    let ts = open().await;
    ts.add_node("https://n.example", 100, 0, 100).await;
    let user = ts.get_or_create(lookup(&ts, EMAIL)).await;
    ts.db
        .raise_generation(ts.service.id, EMAIL, 10)
        .await
        .unwrap();
    assert_eq!(ts.users(EMAIL)[0].generation, 10);
    ts.db
        .raise_generation(ts.service.id, EMAIL, 5)
        .await
        .unwrap();
    assert_eq!(ts.users(EMAIL)[0].generation, 10);
    // Replaced rows are history: left alone.
    ts.exec(&format!(
        "UPDATE users SET replaced_at = {} WHERE uid = {}",
        user.created_at + 1,
        user.uid
    ));
    ts.db
        .raise_generation(ts.service.id, EMAIL, 50)
        .await
        .unwrap();
    assert_eq!(ts.users(EMAIL)[0].generation, 10);
}

#[tokio::test]
async fn check_answers() {
    let ts = open().await;
    ts.db.check().await.expect("check");
}
