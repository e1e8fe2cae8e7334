//! The backend conformance story: every `StorageDb` method and the storage-level edge cases of
//! SPEC 5 and 6, called on the trait directly (no HTTP), on every engine via `backend_matrix!`.
#[macro_use]
mod common;

use std::time::Duration;

use serde_json::json;
use syncserver::db::sql::PoolSettings;
use syncserver::db::{
    BsoRef, CollectionRef, DeleteBsos, GetBsos, InfoBody, InfoKind, PostBsos, PutBso,
    SharedStorage, StorageConfig, UserId, open_storage,
};
use syncserver::protocol::post::PostItems;
use syncserver::protocol::{
    BatchRequest, BsoQuery, BsoUpdate, Limits, Precondition, SyncTimestamp,
};

backend_matrix!();

/// A backend on a database of its own (a SQLite file, or a scratch server database).
struct Backend {
    db: SharedStorage,
    _dir: tempfile::TempDir,
    _scratch: Option<common::backends::ScratchDatabase>,
}

async fn open(enable_quota: bool, quota_limit: u32) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let scratch = common::backends::ScratchDatabase::create();
    let url = match &scratch {
        Some(s) => s.url.clone(),
        None => format!("sqlite:{}", dir.path().join("c.db").display()),
    };
    let config = StorageConfig {
        limits: Limits {
            max_quota_limit: quota_limit,
            ..Limits::default()
        },
        enable_quota,
        enforce_quota: enable_quota,
    };
    let emulator = common::backends::spanner_emulator_host();
    let db = open_storage(&url, &PoolSettings::default(), Some(&emulator), config)
        .await
        .expect("open backend");
    Backend {
        db,
        _dir: dir,
        _scratch: scratch,
    }
}

/// A user as a token names it: the uid, and the fxa_uid/fxa_kid Spanner keys users by.
fn user(uid: u64) -> UserId {
    UserId {
        fxa_uid: format!("{uid:032x}"),
        fxa_kid: "0000000001234-qqo".into(),
        ..UserId::from_uid(uid)
    }
}

fn coll(uid: u64, name: &str) -> CollectionRef {
    CollectionRef {
        user: user(uid),
        collection: name.into(),
        precondition: Precondition::None,
    }
}

fn upd(id: &str, payload: Option<&str>, sortindex: Option<i32>, ttl: Option<u32>) -> BsoUpdate {
    BsoUpdate {
        id: id.into(),
        payload: payload.map(Into::into),
        sortindex,
        ttl,
    }
}

async fn put(b: &Backend, uid: u64, c: &str, u: BsoUpdate) -> SyncTimestamp {
    b.db.put_bso(PutBso {
        target: coll(uid, c),
        bso: u,
    })
    .await
    .expect("put")
}

async fn get(b: &Backend, uid: u64, c: &str, id: &str) -> Option<syncserver::protocol::Bso> {
    b.db.get_bso(BsoRef {
        user: user(uid),
        collection: c.into(),
        id: id.into(),
        precondition: Precondition::None,
    })
    .await
    .ok()
}

async fn ids(b: &Backend, uid: u64, c: &str) -> Vec<String> {
    let page =
        b.db.get_bsos(GetBsos {
            target: coll(uid, c),
            query: BsoQuery::default(),
        })
        .await
        .unwrap();
    let mut ids: Vec<String> = page.items.into_iter().map(|b| b.id).collect();
    ids.sort();
    ids
}

async fn post(
    b: &Backend,
    uid: u64,
    c: &str,
    items: Vec<BsoUpdate>,
    batch: BatchRequest,
) -> syncserver::db::PostResult {
    let items = PostItems {
        valid: items,
        failed: Default::default(),
    };
    b.db.post_bsos(PostBsos {
        target: coll(uid, c),
        items,
        batch,
    })
    .await
    .expect("post")
}

async fn storage_ts(b: &Backend, uid: u64) -> SyncTimestamp {
    b.db.info(&user(uid), InfoKind::Collections, Precondition::None)
        .await
        .unwrap()
        .storage_ts
}

async fn tick() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

// SPEC 6.52: a ttl-only update keeps `modified` and moves the expiry to T + ttl.
#[tokio::test]
async fn ttl_only_update_keeps_modified_and_moves_expiry() {
    let b = open(false, 1).await;
    let t1 = put(&b, 1, "c", upd("x", Some("p"), None, Some(1))).await;
    tick().await;
    put(&b, 1, "c", upd("x", None, None, Some(100))).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let x = get(&b, 1, "c", "x")
        .await
        .expect("still alive after the first ttl");
    assert_eq!((x.modified, x.payload.as_str()), (t1, "p"));
}

// SPEC 6.53: partial updates keep the fields they do not name.
#[tokio::test]
async fn partial_updates_keep_other_fields() {
    let b = open(false, 1).await;
    put(&b, 1, "c", upd("x", Some("p"), Some(3), None)).await;
    tick().await;
    let t2 = put(&b, 1, "c", upd("x", None, Some(7), None)).await;
    let x = get(&b, 1, "c", "x").await.unwrap();
    assert_eq!(
        (x.payload.as_str(), x.sortindex, x.modified),
        ("p", Some(7), t2)
    );
    tick().await;
    let t3 = put(&b, 1, "c", upd("x", Some("q"), None, None)).await;
    let x = get(&b, 1, "c", "x").await.unwrap();
    assert_eq!(
        (x.payload.as_str(), x.sortindex, x.modified),
        ("q", Some(7), t3)
    );
}

// SPEC 6.59 and 6.60: a collection delete leaves the storage timestamp at its T (tombstone,
// never listed); deleting ids in one collection leaves the same ids elsewhere.
#[tokio::test]
async fn deletes_and_the_tombstone() {
    let b = open(false, 1).await;
    put(&b, 1, "clients", upd("b1", Some("c"), None, None)).await;
    tick().await;
    let t = put(&b, 1, "crypto", upd("b1", Some("k"), None, None)).await;
    tick().await;
    b.db.delete_bsos(DeleteBsos {
        target: coll(1, "clients"),
        ids: vec!["b1".into()],
    })
    .await
    .unwrap();
    assert_eq!(ids(&b, 1, "crypto").await, vec!["b1"]);
    assert!(ids(&b, 1, "clients").await.is_empty());
    tick().await;
    let deleted = b.db.delete_collection(coll(1, "crypto")).await.unwrap();
    assert_eq!(deleted.previous_ts, t);
    assert!(deleted.storage_ts > t);
    assert_eq!(storage_ts(&b, 1).await, deleted.storage_ts);
    let info =
        b.db.info(&user(1), InfoKind::Collections, Precondition::None)
            .await
            .unwrap();
    let InfoBody::Timestamps(map) = info.body else {
        panic!("timestamps")
    };
    assert_eq!(map.keys().collect::<Vec<_>>(), vec!["clients"]);
    // Deleting all storage resets everything, including the tombstone.
    b.db.delete_storage(&user(1), Precondition::None)
        .await
        .unwrap();
    assert_eq!(storage_ts(&b, 1).await, SyncTimestamp::ZERO);
}

// SPEC 6.83: opening a batch on a new collection does not make the storage timestamp
// non-zero; its commit stamps every record with the commit T (6.68, 6.69).
#[tokio::test]
async fn batches_are_invisible_until_committed() {
    let b = open(false, 1).await;
    let r = post(
        &b,
        1,
        "fresh",
        vec![upd("a", Some("A"), None, None)],
        BatchRequest::Start,
    )
    .await;
    let id = r.batch.expect("a batch id");
    assert_eq!(storage_ts(&b, 1).await, SyncTimestamp::ZERO);
    assert!(ids(&b, 1, "fresh").await.is_empty());
    tick().await;
    post(
        &b,
        1,
        "fresh",
        vec![upd("b", Some("B"), None, None)],
        BatchRequest::Append(id.clone()),
    )
    .await;
    tick().await;
    let r = post(
        &b,
        1,
        "fresh",
        vec![upd("a", Some("A2"), Some(1), None)],
        BatchRequest::Commit(id.clone()),
    )
    .await;
    assert!(r.batch.is_none());
    assert_eq!(ids(&b, 1, "fresh").await, vec!["a", "b"]);
    let a = get(&b, 1, "fresh", "a").await.unwrap();
    assert_eq!(
        (a.payload.as_str(), a.sortindex, a.modified),
        ("A2", Some(1), r.last_modified)
    );
    assert_eq!(
        get(&b, 1, "fresh", "b").await.unwrap().modified,
        r.last_modified
    );
    assert_eq!(storage_ts(&b, 1).await, r.last_modified);
    // A committed batch is gone; another user's or collection's id is refused.
    let again = b.db.post_bsos(PostBsos {
        target: coll(1, "fresh"),
        items: PostItems::default(),
        batch: BatchRequest::Commit(id),
    });
    assert_eq!(again.await.unwrap_err().status(), 400);
}

// SPEC 6.84 and 6.89: with quota enforced, pending batch bytes count; a re-sent id replaces
// its bytes; a user at the limit gets 403 before the write.
#[tokio::test]
async fn quota_counts_staged_bytes() {
    let b = open(true, 1000).await;
    let r = post(
        &b,
        1,
        "c",
        vec![upd("a", Some(&"x".repeat(600)), None, None)],
        BatchRequest::Start,
    )
    .await;
    let id = r.batch.unwrap();
    // Re-sending "a" replaces its 600 bytes: 700 < 1000.
    post(
        &b,
        1,
        "c",
        vec![upd("a", Some(&"y".repeat(700)), None, None)],
        BatchRequest::Append(id.clone()),
    )
    .await;
    let over = b.db.post_bsos(PostBsos {
        target: coll(1, "c"),
        items: PostItems {
            valid: vec![upd("b", Some(&"z".repeat(400)), None, None)],
            failed: Default::default(),
        },
        batch: BatchRequest::Append(id),
    });
    assert_eq!(over.await.unwrap_err().status(), 403);
    let limited = open(true, 5).await;
    put(
        &limited,
        2,
        "c",
        upd("a", Some(&"p".repeat(500)), None, None),
    )
    .await;
    let e = limited
        .db
        .put_bso(PutBso {
            target: coll(2, "c"),
            bso: upd("b", Some("q"), None, None),
        })
        .await;
    assert_eq!(e.unwrap_err().status(), 403);
}

// SPEC 1.2 and 6.90: concurrent writers to one collection serialize; every write gets its own
// later timestamp and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_one_collection_serialize() {
    let b = open(false, 1).await;
    let writes = (0..12).map(|i| {
        put(
            &b,
            3,
            "tabs",
            upd(&format!("t{i:02}"), Some("x"), None, None),
        )
    });
    let mut stamps: Vec<SyncTimestamp> = futures::future::join_all(writes).await;
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 12, "each write has its own timestamp");
    assert_eq!(ids(&b, 3, "tabs").await.len(), 12);
    let info =
        b.db.info(&user(3), InfoKind::Counts, Precondition::None)
            .await
            .unwrap();
    assert_eq!(
        info.body,
        InfoBody::Counts([("tabs".to_string(), 12)].into())
    );
}

// The remaining methods: preconditions inside the unit of work, usage/quota, purge, health.
#[tokio::test]
async fn preconditions_usage_purge_and_health() {
    let b = open(false, 1).await;
    let t = put(&b, 4, "c", upd("a", Some("abc"), None, None)).await;
    let stale = b.db.put_bso(PutBso {
        target: CollectionRef {
            precondition: Precondition::IfUnmodifiedSince(SyncTimestamp::ZERO),
            ..coll(4, "c")
        },
        bso: upd("a", Some("lost"), None, None),
    });
    assert_eq!(stale.await.unwrap_err().status(), 412);
    assert_eq!(get(&b, 4, "c", "a").await.unwrap().payload, "abc");
    let not_modified =
        b.db.info(&user(4), InfoKind::Quota, Precondition::IfModifiedSince(t))
            .await;
    assert_eq!(not_modified.unwrap_err().status(), 304);
    let usage =
        b.db.info(&user(4), InfoKind::Usage, Precondition::None)
            .await
            .unwrap();
    assert_eq!(
        json!(match usage.body {
            InfoBody::Usage(m) => m["c"],
            _ => -1.0,
        }),
        json!(3.0 / 1024.0)
    );
    put(&b, 4, "c", upd("gone", Some("x"), None, Some(0))).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let purged = b.db.purge_expired().await.unwrap();
    assert_eq!(purged.bsos, 1);
    assert_eq!(ids(&b, 4, "c").await, vec!["a"]);
    b.db.check().await.unwrap();
    let pool = b.db.pool_state();
    assert!(pool.max_size >= 1 && pool.active <= pool.max_size);
}

// Ids are compared exactly on every engine: case matters, and so does a trailing space
// (MySQL's PAD SPACE collations would make "a" and "a " one key).
#[tokio::test]
async fn ids_are_exact() {
    let b = open(false, 1).await;
    for id in ["a", "a ", "A"] {
        put(&b, 5, "c", upd(id, Some(id), None, None)).await;
    }
    assert_eq!(ids(&b, 5, "c").await, vec!["A", "a", "a "]);
    assert_eq!(get(&b, 5, "c", "a ").await.unwrap().payload, "a ");
    let r = post(
        &b,
        5,
        "d",
        vec![
            upd("x", Some("1"), None, None),
            upd("x ", Some("2"), None, None),
        ],
        BatchRequest::None,
    )
    .await;
    assert_eq!(r.success.len(), 2);
}
