//! The backend conformance story, writes: `put_bso`, `post_bsos` (plain and batches),
//! `delete_bso`, `delete_bsos`, `delete_collection`, `delete_storage` and quota, called on the
//! `StorageDb` trait directly (no HTTP), on every engine via `backend_matrix!`. Reads and the
//! cross-method rules: `conformance.rs`.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::storage::*;
use syncserver::db::{BsoRef, DeleteBsos, InfoBody, InfoKind, PostBsos, PutBso};
use syncserver::error::ErrorKind;
use syncserver::protocol::post::PostItems;
use syncserver::protocol::{BatchRequest, Bso, Precondition, SyncTimestamp};

backend_matrix!();

fn before(t: SyncTimestamp) -> SyncTimestamp {
    SyncTimestamp::from_millis(t.as_millis() - 10)
}

fn with_batch_limits(records: u32, bytes: u32) -> syncserver::db::StorageConfig {
    let mut c = config();
    c.limits.max_total_records = records;
    c.limits.max_total_bytes = bytes;
    c
}

// ---- put_bso ----

#[tokio::test]
async fn put_creates_a_record_at_t() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", upd("a", Some("A"), Some(2), None)).await;
    assert_eq!(
        b.get(&u, "c", "a").await,
        Some(Bso {
            id: "a".into(),
            modified: t,
            payload: "A".into(),
            sortindex: Some(2)
        })
    );
    assert_eq!(b.timestamps(&u).await, [("c".into(), t)].into());
    assert_eq!(b.storage_ts(&u).await, t);
}

#[tokio::test]
async fn put_without_a_payload_creates_an_empty_one() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", upd("a", None, Some(1), None)).await;
    let a = b.get(&u, "c", "a").await.unwrap();
    assert_eq!((a.payload.as_str(), a.sortindex), ("", Some(1)));
}

// SPEC 6.53: partial updates keep the fields they do not name; payload or sortindex move
// `modified` to T.
#[tokio::test]
async fn partial_updates_keep_other_fields() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", upd("x", Some("p"), Some(3), None)).await;
    let t2 = b.put(&u, "c", upd("x", None, Some(7), None)).await;
    let x = b.get(&u, "c", "x").await.unwrap();
    assert_eq!(
        (x.payload.as_str(), x.sortindex, x.modified),
        ("p", Some(7), t2)
    );
    let t3 = b.put(&u, "c", upd("x", Some("q"), None, None)).await;
    let x = b.get(&u, "c", "x").await.unwrap();
    assert_eq!(
        (x.payload.as_str(), x.sortindex, x.modified),
        ("q", Some(7), t3)
    );
}

// SPEC 6.52: a ttl-only update keeps `modified` (the collection still moves to T) and
// re-bases the expiry on T.
#[tokio::test]
async fn ttl_only_update_keeps_modified_and_moves_expiry() {
    let b = Backend::open().await;
    let u = b.user();
    let t1 = b.put(&u, "c", upd("x", Some("p"), None, Some(1))).await;
    let t2 = b.put(&u, "c", upd("x", None, None, Some(100))).await;
    assert_eq!(b.timestamps(&u).await, [("c".into(), t2)].into());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let x = b
        .get(&u, "c", "x")
        .await
        .expect("still alive after the first ttl");
    assert_eq!((x.modified, x.payload.as_str()), (t1, "p"));
}

// SPEC 1.3, 1.15 and 6.49: a ttl hides the record once past; an expired row not yet purged
// is overwritten as if it existed: with a new ttl it is alive again with the new payload,
// without one it inherits its past expiry (upstream's behaviour) and stays hidden.
#[tokio::test]
async fn put_with_a_ttl_expires_the_record_and_expired_rows_are_overwritten() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", upd("short", Some("x"), Some(1), Some(0)))
        .await;
    b.put(&u, "c", upd("inherits", Some("x"), None, Some(0)))
        .await;
    b.put(&u, "c", upd("long", Some("x"), None, Some(3600)))
        .await;
    let_expire().await;
    assert_eq!(b.get(&u, "c", "short").await, None);
    assert_eq!(b.ids(&u, "c").await, strs(&["long"]));
    let t = b
        .put(&u, "c", upd("short", Some("again"), None, Some(42)))
        .await;
    let again = b.get(&u, "c", "short").await.unwrap();
    assert_eq!(
        (again.payload.as_str(), again.sortindex, again.modified),
        ("again", Some(1), t)
    );
    b.put(&u, "c", rec("inherits", "again")).await;
    assert_eq!(b.get(&u, "c", "inherits").await, None);
    assert_eq!(b.ids(&u, "c").await, strs(&["long", "short"]));
}

// SPEC 1.5: X-If-Unmodified-Since: 0 on a PUT is create-only.
#[tokio::test]
async fn put_if_unmodified_since_zero_creates_only() {
    let b = Backend::open().await;
    let u = b.user();
    let create = |payload: &str| {
        b.db.put_bso(PutBso {
            target: coll_if(
                &u,
                "c",
                Precondition::IfUnmodifiedSince(SyncTimestamp::ZERO),
            ),
            bso: rec("a", payload),
        })
    };
    let t = create("first").await.expect("absent: created");
    assert_eq!(
        err_kind(create("second").await),
        ErrorKind::PreconditionFailed(t)
    );
    assert_eq!(b.get(&u, "c", "a").await.unwrap().payload, "first");
}

// The precondition of a PUT is the record's timestamp; when it fails nothing is written:
// not the record, not the collection's or the user's timestamp.
#[tokio::test]
async fn put_precondition_failure_writes_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", upd("a", Some("abc"), Some(1), None)).await;
    let t2 = b.put(&u, "c", rec("b", "x")).await;
    // The collection moved on, the record did not: unmodified since t.
    b.db.put_bso(PutBso {
        target: coll_if(&u, "c", Precondition::IfUnmodifiedSince(t)),
        bso: upd("a", None, Some(2), None),
    })
    .await
    .expect("record unmodified since t");
    let t3 = b.storage_ts(&u).await;
    let stale = b.db.put_bso(PutBso {
        target: coll_if(&u, "c", Precondition::IfUnmodifiedSince(t2)),
        bso: rec("a", "lost"),
    });
    assert_eq!(err_kind(stale.await), ErrorKind::PreconditionFailed(t3));
    let a = b.get(&u, "c", "a").await.unwrap();
    assert_eq!((a.payload.as_str(), a.sortindex), ("abc", Some(2)));
    assert_eq!(b.storage_ts(&u).await, t3);
    assert_eq!(b.timestamps(&u).await, [("c".into(), t3)].into());
}

// ---- post_bsos (no batch) ----

#[tokio::test]
async fn post_writes_every_item_at_one_t() {
    let b = Backend::open().await;
    let u = b.user();
    let r = b
        .post(
            &u,
            "c",
            vec![
                rec("a", "A"),
                upd("b", Some("B"), Some(3), None),
                upd("c", Some("C"), None, Some(60)),
            ],
            BatchRequest::None,
        )
        .await;
    assert_eq!(r.batch, None);
    assert_eq!(r.success, strs(&["a", "b", "c"]));
    assert!(r.failed.is_empty());
    let page = b
        .list(
            &u,
            "c",
            syncserver::protocol::BsoQuery {
                full: true,
                ..Default::default()
            },
        )
        .await;
    assert!(page.items.iter().all(|i| i.modified == r.last_modified));
    assert_eq!(page.items.len(), 3);
    assert_eq!(b.storage_ts(&u).await, r.last_modified);
}

#[tokio::test]
async fn post_passes_failed_items_through_and_still_moves_the_collection() {
    let b = Backend::open().await;
    let u = b.user();
    let t0 = b.put(&u, "c", rec("a", "x")).await;
    let failed: BTreeMap<String, String> =
        [("bad".to_string(), "invalid payload".to_string())].into();
    let r =
        b.db.post_bsos(PostBsos {
            target: coll(&u, "c"),
            items: PostItems {
                valid: vec![],
                failed: failed.clone(),
            },
            batch: BatchRequest::None,
        })
        .await
        .unwrap();
    assert_eq!((r.success.len(), r.failed), (0, failed));
    assert!(
        r.last_modified > t0,
        "the collection is bumped even when nothing was valid"
    );
    assert_eq!(
        b.timestamps(&u).await,
        [("c".into(), r.last_modified)].into()
    );
    assert_eq!(b.ids(&u, "c").await, strs(&["a"]));
}

#[tokio::test]
async fn post_updates_existing_records_field_by_field() {
    let b = Backend::open().await;
    let u = b.user();
    b.post(
        &u,
        "c",
        vec![
            upd("a", Some("A"), Some(1), None),
            upd("b", Some("B"), Some(2), None),
        ],
        BatchRequest::None,
    )
    .await;
    let r = b
        .post(
            &u,
            "c",
            vec![
                upd("a", None, Some(9), None),
                upd("b", Some("B2"), None, None),
            ],
            BatchRequest::None,
        )
        .await;
    let a = b.get(&u, "c", "a").await.unwrap();
    let bb = b.get(&u, "c", "b").await.unwrap();
    assert_eq!(
        (a.payload.as_str(), a.sortindex, a.modified),
        ("A", Some(9), r.last_modified)
    );
    assert_eq!(
        (bb.payload.as_str(), bb.sortindex, bb.modified),
        ("B2", Some(2), r.last_modified)
    );
}

// A POST whose records all bring a payload is written without reading the rows first
// (`tx::Overwrite::Given`): what each record leaves out stays the row's own, with records with
// and without a ttl, new and existing, in one POST. An expired row keeps its past expiry.
#[tokio::test]
async fn post_of_payloads_keeps_what_each_record_leaves_out() {
    let b = Backend::open().await;
    let u = b.user();
    b.post(
        &u,
        "c",
        vec![
            upd("x", Some("X"), Some(1), Some(0)),
            upd("y", Some("Y"), Some(2), Some(3600)),
            upd("z", Some("Z"), Some(4), Some(3600)),
        ],
        BatchRequest::None,
    )
    .await;
    let_expire().await;
    let r = b
        .post(
            &u,
            "c",
            vec![
                rec("x", "X2"),
                upd("y", Some("Y2"), None, Some(0)),
                rec("z", "Z2"),
                rec("n", "N"),
            ],
            BatchRequest::None,
        )
        .await;
    let_expire().await;
    assert_eq!(b.ids(&u, "c").await, strs(&["n", "z"]));
    let z = b.get(&u, "c", "z").await.unwrap();
    assert_eq!(
        (z.payload.as_str(), z.sortindex, z.modified),
        ("Z2", Some(4), r.last_modified)
    );
    let n = b.get(&u, "c", "n").await.unwrap();
    assert_eq!((n.payload.as_str(), n.sortindex), ("N", None));
    // The expired row took the new payload and kept its sortindex and expiry: a new ttl
    // brings it back with both.
    b.put(&u, "c", upd("x", None, None, Some(60))).await;
    let x = b.get(&u, "c", "x").await.unwrap();
    assert_eq!((x.payload.as_str(), x.sortindex), ("X2", Some(1)));
}

// SPEC 1.14: a POST treats each item as a PUT: a ttl-only item keeps its `modified`.
#[tokio::test]
async fn post_ttl_only_items_keep_their_modified() {
    let b = Backend::open().await;
    let u = b.user();
    let t1 = b.put(&u, "c", rec("a", "A")).await;
    let r = b
        .post(
            &u,
            "c",
            vec![upd("a", None, None, Some(3600)), rec("b", "B")],
            BatchRequest::None,
        )
        .await;
    let a = b.get(&u, "c", "a").await.unwrap();
    assert_eq!((a.payload.as_str(), a.modified), ("A", t1));
    assert_eq!(b.get(&u, "c", "b").await.unwrap().modified, r.last_modified);
    assert_eq!(
        b.timestamps(&u).await,
        [("c".into(), r.last_modified)].into()
    );
}

// The precondition of a POST is the collection's timestamp.
#[tokio::test]
async fn post_precondition_failure_writes_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let post = |p| {
        b.db.post_bsos(PostBsos {
            target: coll_if(&u, "c", p),
            items: PostItems {
                valid: vec![rec("a", "changed"), rec("b", "new")],
                failed: BTreeMap::new(),
            },
            batch: BatchRequest::None,
        })
    };
    assert_eq!(
        err_kind(post(Precondition::IfUnmodifiedSince(before(t))).await),
        ErrorKind::PreconditionFailed(t)
    );
    assert_eq!(b.ids(&u, "c").await, strs(&["a"]));
    assert_eq!(b.get(&u, "c", "a").await.unwrap().payload, "x");
    assert_eq!(b.storage_ts(&u).await, t);
    let ok = post(Precondition::IfUnmodifiedSince(t)).await.unwrap();
    assert!(ok.last_modified > t);
}

// ---- batches ----

// SPEC 6.83: opening a batch on a new collection does not make the storage timestamp
// non-zero; its commit stamps every record with the commit T (6.68, 6.69).
#[tokio::test]
async fn batches_are_invisible_until_committed() {
    let b = Backend::open().await;
    let u = b.user();
    let r = b
        .post(&u, "fresh", vec![rec("a", "A")], BatchRequest::Start)
        .await;
    let id = r.batch.expect("a batch id");
    assert_eq!(r.last_modified, SyncTimestamp::ZERO);
    assert_eq!(r.success, strs(&["a"]));
    assert_eq!(b.storage_ts(&u).await, SyncTimestamp::ZERO);
    assert!(b.ids(&u, "fresh").await.is_empty());
    let r = b
        .post(
            &u,
            "fresh",
            vec![rec("b", "B")],
            BatchRequest::Append(id.clone()),
        )
        .await;
    assert_eq!(r.batch.as_deref(), Some(id.as_str()));
    assert!(b.ids(&u, "fresh").await.is_empty());
    assert!(b.timestamps(&u).await.is_empty());
    let r = b
        .post(
            &u,
            "fresh",
            vec![upd("a", Some("A2"), Some(1), None)],
            BatchRequest::Commit(id.clone()),
        )
        .await;
    assert!(r.batch.is_none());
    assert_eq!(b.ids(&u, "fresh").await, strs(&["a", "b"]));
    let a = b.get(&u, "fresh", "a").await.unwrap();
    assert_eq!(
        (a.payload.as_str(), a.sortindex, a.modified),
        ("A2", Some(1), r.last_modified)
    );
    assert_eq!(
        b.get(&u, "fresh", "b").await.unwrap().modified,
        r.last_modified
    );
    assert_eq!(b.storage_ts(&u).await, r.last_modified);
    // A committed batch is spent.
    let again = b
        .try_post(&u, "fresh", vec![], BatchRequest::Commit(id))
        .await;
    assert_eq!(err_kind(again), ErrorKind::BadRequest);
}

// A batch on an existing collection leaves its timestamp alone until the commit, which gives
// staged and sent records alike the commit's T and merges over existing records.
#[tokio::test]
async fn batch_commit_gives_every_record_one_t_and_merges_over_existing_ones() {
    let b = Backend::open().await;
    let u = b.user();
    let t0 = b
        .post(
            &u,
            "c",
            vec![upd("old", Some("O"), Some(5), None), rec("untouched", "U")],
            BatchRequest::None,
        )
        .await
        .last_modified;
    let id = b
        .start_batch(
            &u,
            "c",
            (0..5).map(|i| rec(&format!("n{i}"), "N")).collect(),
        )
        .await;
    let r = b
        .post(
            &u,
            "c",
            vec![upd("old", Some("O2"), None, None)],
            BatchRequest::Append(id.clone()),
        )
        .await;
    assert_eq!(
        r.last_modified, t0,
        "staging leaves the collection timestamp"
    );
    assert_eq!(b.timestamps(&u).await, [("c".into(), t0)].into());
    let r = b
        .post(&u, "c", vec![rec("n9", "N")], BatchRequest::Commit(id))
        .await;
    let t = r.last_modified;
    assert!(t > t0);
    let page = b
        .list(
            &u,
            "c",
            syncserver::protocol::BsoQuery {
                full: true,
                ..Default::default()
            },
        )
        .await;
    let at_t: Vec<&str> = page
        .items
        .iter()
        .filter(|i| i.modified == t)
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(at_t.len(), 7, "{at_t:?}");
    let old = b.get(&u, "c", "old").await.unwrap();
    assert_eq!(
        (old.payload.as_str(), old.sortindex, old.modified),
        ("O2", Some(5), t)
    );
    assert_eq!(b.get(&u, "c", "untouched").await.unwrap().modified, t0);
    assert_eq!(b.timestamps(&u).await, [("c".into(), t)].into());
}

// SPEC 6.73: an id sent again to the same batch is merged field by field with what was
// staged for it, and counts once.
#[tokio::test]
async fn batch_resent_ids_are_merged() {
    let b = Backend::open().await;
    let u = b.user();
    let id = b
        .start_batch(
            &u,
            "c",
            vec![upd("a", Some("A"), None, Some(3600)), rec("b", "B")],
        )
        .await;
    b.post(
        &u,
        "c",
        vec![upd("a", None, Some(4), None)],
        BatchRequest::Append(id.clone()),
    )
    .await;
    b.post(
        &u,
        "c",
        vec![upd("b", Some("B2"), None, None)],
        BatchRequest::Commit(id),
    )
    .await;
    let a = b.get(&u, "c", "a").await.unwrap();
    assert_eq!((a.payload.as_str(), a.sortindex), ("A", Some(4)));
    assert_eq!(b.get(&u, "c", "b").await.unwrap().payload, "B2");
    assert_eq!(b.counts(&u).await, [("c".into(), 2)].into());
}

// SPEC 1.14: unlike a PUT, a commit gives every record it touches the commit's T, a
// ttl-only one included.
#[tokio::test]
async fn a_batch_commit_always_moves_modified() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", upd("a", Some("A"), Some(3), None)).await;
    let id = b
        .start_batch(&u, "c", vec![upd("a", None, None, Some(3600))])
        .await;
    let r = b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
    let a = b.get(&u, "c", "a").await.unwrap();
    assert_eq!(
        (a.payload.as_str(), a.sortindex, a.modified),
        ("A", Some(3), r.last_modified)
    );
}

// A commit applies its records `rules::COMMIT_CHUNK` (100) at a time: a batch of several
// chunks, with the commit request's own records overlapping staged ids across chunk
// boundaries, is applied whole, every record at the commit's T.
#[tokio::test]
async fn a_batch_of_several_chunks_commits_whole() {
    let b = Backend::open().await;
    let u = b.user();
    let id = b
        .start_batch(
            &u,
            "c",
            (0..120)
                .map(|i| rec(&format!("r{i:03}"), "staged"))
                .collect(),
        )
        .await;
    b.post(
        &u,
        "c",
        (120..230)
            .map(|i| rec(&format!("r{i:03}"), "staged"))
            .collect(),
        BatchRequest::Append(id.clone()),
    )
    .await;
    // Overlapping staged ids in the first, second and third chunk, and new ones.
    let resent = [5, 99, 100, 150, 199, 200, 229, 230, 231];
    let r = b
        .post(
            &u,
            "c",
            resent
                .iter()
                .map(|i| upd(&format!("r{i:03}"), Some("committed"), Some(*i), None))
                .collect(),
            BatchRequest::Commit(id),
        )
        .await;
    let page = b
        .list(
            &u,
            "c",
            syncserver::protocol::BsoQuery {
                full: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(page.items.len(), 232);
    assert!(page.items.iter().all(|i| i.modified == r.last_modified));
    for item in &page.items {
        let n: i32 = item.id[1..].parse().unwrap();
        let expected = if resent.contains(&n) {
            ("committed", Some(n))
        } else {
            ("staged", None)
        };
        assert_eq!(
            (item.payload.as_str(), item.sortindex),
            expected,
            "{}",
            item.id
        );
    }
}

#[tokio::test]
async fn batch_ttls_count_from_the_commit() {
    let b = Backend::open().await;
    let u = b.user();
    let id = b
        .start_batch(
            &u,
            "c",
            vec![
                upd("short", Some("x"), None, Some(0)),
                upd("long", Some("x"), None, Some(3600)),
            ],
        )
        .await;
    b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
    let_expire().await;
    assert_eq!(b.ids(&u, "c").await, strs(&["long"]));
}

#[tokio::test]
async fn an_empty_batch_commits_and_moves_the_collection() {
    let b = Backend::open().await;
    let u = b.user();
    let t0 = b.put(&u, "c", rec("a", "x")).await;
    let id = b.start_batch(&u, "c", vec![]).await;
    let r = b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
    assert!(r.last_modified > t0);
    assert_eq!(
        b.timestamps(&u).await,
        [("c".into(), r.last_modified)].into()
    );
    assert_eq!(b.get(&u, "c", "a").await.unwrap().modified, t0);
}

#[tokio::test]
async fn two_open_batches_of_one_collection_stay_apart() {
    let b = Backend::open().await;
    let u = b.user();
    let first = b.start_batch(&u, "c", vec![rec("a", "1")]).await;
    let second = b.start_batch(&u, "c", vec![rec("b", "2")]).await;
    assert_ne!(first, second);
    b.post(
        &u,
        "c",
        vec![rec("c", "1")],
        BatchRequest::Append(first.clone()),
    )
    .await;
    b.post(&u, "c", vec![], BatchRequest::Commit(second)).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["b"]));
    b.post(&u, "c", vec![], BatchRequest::Commit(first)).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["a", "b", "c"]));
}

// Unknown, malformed, spent and expired ids are refused (400) and apply nothing.
#[tokio::test]
async fn unknown_or_expired_batch_ids_are_refused() {
    let b = Backend::open().await;
    let u = b.user();
    let spent = b.start_batch(&u, "c", vec![]).await;
    b.post(&u, "c", vec![], BatchRequest::Commit(spent.clone()))
        .await;
    let expired = b.start_batch(&u, "c", vec![rec("staged", "x")]).await;
    let expired = b.expire_batch(&u, &expired);
    let t = b.storage_ts(&u).await;
    for id in ["not-a-batch-id", "", &spent, &expired] {
        for batch in [
            BatchRequest::Append(id.to_string()),
            BatchRequest::Commit(id.to_string()),
        ] {
            let e = b
                .try_post(&u, "c", vec![rec("new", "x")], batch.clone())
                .await;
            assert_eq!(err_kind(e), ErrorKind::BadRequest, "{batch:?}");
        }
    }
    assert!(b.ids(&u, "c").await.is_empty());
    assert_eq!(b.storage_ts(&u).await, t);
}

// SPEC 6.74-6.76: a batch id belongs to its user and its collection.
#[tokio::test]
async fn a_batch_of_another_user_or_collection_is_refused() {
    let b = Backend::open().await;
    let (alice, bob) = (b.user(), b.user());
    let id = b.start_batch(&alice, "c", vec![rec("a", "alice")]).await;
    for (who, c) in [(&bob, "c"), (&alice, "other")] {
        for batch in [
            BatchRequest::Append(id.clone()),
            BatchRequest::Commit(id.clone()),
        ] {
            let e = b.try_post(who, c, vec![rec("x", "intruder")], batch).await;
            assert_eq!(err_kind(e), ErrorKind::BadRequest, "{c}");
        }
    }
    assert!(b.ids(&bob, "c").await.is_empty());
    assert!(b.ids(&alice, "other").await.is_empty());
    b.post(&alice, "c", vec![], BatchRequest::Commit(id)).await;
    assert_eq!(b.ids(&alice, "c").await, strs(&["a"]));
    assert_eq!(b.get(&alice, "c", "a").await.unwrap().payload, "alice");
}

// The request that starts a batch is held to max_total_records / max_total_bytes too (its
// totals are counted without a statement: the batch is new), and stages nothing when refused.
#[tokio::test]
async fn a_batch_start_over_the_limits_is_refused() {
    let b = Backend::with(with_batch_limits(3, 1_000)).await;
    let u = b.user();
    let four = ["a", "b", "c", "d"].map(|id| rec(id, "x")).to_vec();
    let e = b.try_post(&u, "c", four, BatchRequest::Start).await;
    assert_eq!(err_kind(e), ErrorKind::SizeLimit);
    let big = vec![rec("a", &"x".repeat(600)), rec("b", &"y".repeat(401))];
    let e = b.try_post(&u, "c", big, BatchRequest::Start).await;
    assert_eq!(err_kind(e), ErrorKind::SizeLimit);
    let fits = vec![rec("a", &"x".repeat(600)), rec("b", &"y".repeat(400))];
    let id = b.start_batch(&u, "c", fits).await;
    b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["a", "b"]));
}

// Beyond upstream: max_total_records / max_total_bytes hold on what a batch actually stages
// (400, code 17); the refused request stages nothing, the batch stays usable.
#[tokio::test]
async fn batch_totals_over_the_limits_are_refused() {
    let b = Backend::with(with_batch_limits(3, 1_000)).await;
    let u = b.user();
    let id = b
        .start_batch(&u, "c", vec![rec("a", "x"), rec("b", "x")])
        .await;
    // Re-sending a staged id does not count twice.
    b.post(
        &u,
        "c",
        vec![rec("a", "y"), rec("c", "x")],
        BatchRequest::Append(id.clone()),
    )
    .await;
    let e = b
        .try_post(
            &u,
            "c",
            vec![rec("d", "x")],
            BatchRequest::Append(id.clone()),
        )
        .await;
    assert_eq!(err_kind(e), ErrorKind::SizeLimit);
    let e = b
        .try_post(
            &u,
            "c",
            vec![rec("e", "x")],
            BatchRequest::Commit(id.clone()),
        )
        .await;
    assert_eq!(err_kind(e), ErrorKind::SizeLimit);
    b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["a", "b", "c"]));
    assert_eq!(b.get(&u, "c", "a").await.unwrap().payload, "y");

    let id = b
        .start_batch(&u, "bytes", vec![rec("a", &"x".repeat(600))])
        .await;
    // Replacing a's 600 bytes by 900: within 1000; another 200 bytes are not.
    b.post(
        &u,
        "bytes",
        vec![rec("a", &"y".repeat(900))],
        BatchRequest::Append(id.clone()),
    )
    .await;
    let e = b
        .try_post(
            &u,
            "bytes",
            vec![rec("b", &"z".repeat(200))],
            BatchRequest::Append(id.clone()),
        )
        .await;
    assert_eq!(err_kind(e), ErrorKind::SizeLimit);
    b.post(&u, "bytes", vec![], BatchRequest::Commit(id)).await;
    assert_eq!(b.ids(&u, "bytes").await, strs(&["a"]));
}

// A failed commit precondition rolls the commit back whole: the batch is still there.
#[tokio::test]
async fn batch_commit_precondition_failure_keeps_the_batch() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let id = b.start_batch(&u, "c", vec![rec("b", "x")]).await;
    let t2 = b.put(&u, "c", rec("z", "x")).await;
    let e =
        b.db.post_bsos(PostBsos {
            target: coll_if(&u, "c", Precondition::IfUnmodifiedSince(t)),
            items: PostItems::default(),
            batch: BatchRequest::Commit(id.clone()),
        })
        .await;
    assert_eq!(err_kind(e), ErrorKind::PreconditionFailed(t2));
    assert_eq!(b.ids(&u, "c").await, strs(&["a", "z"]));
    b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["a", "b", "z"]));
}

#[tokio::test]
async fn deleting_a_collection_or_the_storage_drops_its_pending_batches() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", rec("a", "x")).await;
    let in_c = b.start_batch(&u, "c", vec![rec("b", "x")]).await;
    let in_d = b.start_batch(&u, "d", vec![rec("b", "x")]).await;
    b.db.delete_collection(coll(&u, "c")).await.unwrap();
    let e = b
        .try_post(&u, "c", vec![], BatchRequest::Commit(in_c))
        .await;
    assert_eq!(err_kind(e), ErrorKind::BadRequest);
    assert!(b.ids(&u, "c").await.is_empty());
    b.db.delete_storage(&u, Precondition::None).await.unwrap();
    let e = b
        .try_post(&u, "d", vec![], BatchRequest::Commit(in_d))
        .await;
    assert_eq!(err_kind(e), ErrorKind::BadRequest);
    assert!(b.ids(&u, "d").await.is_empty());
}

// ---- delete_bso ----

#[tokio::test]
async fn delete_bso_removes_the_record_and_moves_the_collection() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", rec("a", "x")).await;
    b.put(&u, "c", rec("b", "x")).await;
    let t = b.db.delete_bso(bso_ref(&u, "c", "a")).await.unwrap();
    assert_eq!(b.ids(&u, "c").await, strs(&["b"]));
    assert_eq!(b.timestamps(&u).await, [("c".into(), t)].into());
    assert_eq!(b.storage_ts(&u).await, t);
}

// SPEC 1.5: 404 when the record is absent or expired; nothing moves.
#[tokio::test]
async fn delete_bso_of_a_missing_or_expired_record_is_not_found() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", rec("a", "x")).await;
    let t = b.put(&u, "c", upd("short", Some("x"), None, Some(0))).await;
    let_expire().await;
    for (c, id) in [("c", "missing"), ("nothing", "a"), ("c", "short")] {
        let e = b.db.delete_bso(bso_ref(&u, c, id)).await;
        assert_eq!(err_kind(e), ErrorKind::NotFound, "{c}/{id}");
    }
    assert_eq!(b.storage_ts(&u).await, t);
    assert_eq!(b.timestamps(&u).await, [("c".into(), t)].into());
}

#[tokio::test]
async fn delete_bso_precondition_is_the_record_timestamp() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let t2 = b.put(&u, "c", rec("b", "x")).await;
    let del = |id: &str, p| {
        b.db.delete_bso(BsoRef {
            precondition: p,
            ..bso_ref(&u, "c", id)
        })
    };
    assert_eq!(
        err_kind(del("a", Precondition::IfUnmodifiedSince(before(t))).await),
        ErrorKind::PreconditionFailed(t)
    );
    assert_eq!(b.ids(&u, "c").await, strs(&["a", "b"]));
    assert_eq!(b.storage_ts(&u).await, t2);
    // The collection moved on to t2, the record did not.
    del("a", Precondition::IfUnmodifiedSince(t)).await.unwrap();
    assert_eq!(b.ids(&u, "c").await, strs(&["b"]));
}

// ---- delete_bsos ----

#[tokio::test]
async fn delete_bsos_removes_the_named_ids_in_that_collection_only() {
    let b = Backend::open().await;
    let u = b.user();
    for c in ["c", "d"] {
        b.post(
            &u,
            c,
            vec![rec("a", "x"), rec("b", "x"), rec("c", "x")],
            BatchRequest::None,
        )
        .await;
    }
    let t = b.delete_ids(&u, "c", &["a", "c", "missing"]).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["b"]));
    assert_eq!(b.ids(&u, "d").await, strs(&["a", "b", "c"]));
    assert_eq!(b.timestamps(&u).await["c"], t);
    assert_eq!(b.storage_ts(&u).await, t);
}

// SPEC 1.6: up to 100 ids in one delete.
#[tokio::test]
async fn delete_bsos_with_a_hundred_ids() {
    let b = Backend::open().await;
    let u = b.user();
    let items = (0..110).map(|i| rec(&format!("id{i:03}"), "x")).collect();
    b.post(&u, "c", items, BatchRequest::None).await;
    let ids: Vec<String> = (0..100).map(|i| format!("id{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    b.delete_ids(&u, "c", &refs).await;
    assert_eq!(
        b.ids(&u, "c").await,
        (100..110).map(|i| format!("id{i:03}")).collect::<Vec<_>>()
    );
}

// SPEC 1.5: deleting ids in a collection that does not exist still writes T and creates the
// collection (it then shows in info/collections).
#[tokio::test]
async fn delete_bsos_on_a_missing_collection_creates_it_at_t() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.delete_ids(&u, "ghost", &["a"]).await;
    assert!(t > SyncTimestamp::ZERO);
    assert_eq!(b.timestamps(&u).await, [("ghost".into(), t)].into());
    assert!(b.ids(&u, "ghost").await.is_empty());
}

#[tokio::test]
async fn delete_bsos_precondition_failure_deletes_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let e =
        b.db.delete_bsos(DeleteBsos {
            target: coll_if(&u, "c", Precondition::IfUnmodifiedSince(before(t))),
            ids: strs(&["a"]),
        })
        .await;
    assert_eq!(err_kind(e), ErrorKind::PreconditionFailed(t));
    assert_eq!(b.ids(&u, "c").await, strs(&["a"]));
    assert_eq!(b.storage_ts(&u).await, t);
}

// ---- delete_collection ----

// SPEC 6.59 and 6.60: a collection delete leaves the storage timestamp at its T (tombstone,
// never listed); other collections keep their records and timestamps.
#[tokio::test]
async fn delete_collection_leaves_a_tombstone() {
    let b = Backend::open().await;
    let u = b.user();
    let tc = b.put(&u, "clients", rec("b1", "c")).await;
    let t = b.put(&u, "crypto", rec("b1", "k")).await;
    let deleted = b.db.delete_collection(coll(&u, "crypto")).await.unwrap();
    assert_eq!(deleted.previous_ts, t);
    assert!(deleted.storage_ts > t);
    assert_eq!(b.storage_ts(&u).await, deleted.storage_ts);
    assert_eq!(b.timestamps(&u).await, [("clients".into(), tc)].into());
    assert!(b.ids(&u, "crypto").await.is_empty());
    assert_eq!(b.get(&u, "clients", "b1").await.unwrap().payload, "c");
    assert_eq!(
        b.list(&u, "crypto", Default::default()).await.collection_ts,
        SyncTimestamp::ZERO
    );
}

// The storage timestamp never goes backwards: deleting the newest collection, then the only
// one left, then writing again.
#[tokio::test]
async fn the_storage_timestamp_never_goes_backwards() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "old", rec("a", "x")).await;
    let newest = b.put(&u, "new", rec("a", "x")).await;
    let d1 = b.db.delete_collection(coll(&u, "new")).await.unwrap();
    assert!(d1.storage_ts > newest);
    let d2 = b.db.delete_collection(coll(&u, "old")).await.unwrap();
    assert!(d2.storage_ts > d1.storage_ts);
    assert!(b.timestamps(&u).await.is_empty());
    assert_eq!(b.storage_ts(&u).await, d2.storage_ts);
    let t = b.put(&u, "new", rec("b", "x")).await;
    assert!(t > d2.storage_ts);
    assert_eq!(
        b.ids(&u, "new").await,
        strs(&["b"]),
        "the old records stay gone"
    );
    assert_eq!(b.storage_ts(&u).await, t);
}

// A collection emptied by deletes still exists (it has a timestamp): deleting it leaves the
// tombstone; one that only has a pending batch (an invisible placeholder) does not.
#[tokio::test]
async fn delete_collection_of_an_empty_or_only_pending_collection() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "emptied", rec("a", "x")).await;
    let t = b.delete_ids(&u, "emptied", &["a"]).await;
    let d = b.db.delete_collection(coll(&u, "emptied")).await.unwrap();
    assert_eq!(d.previous_ts, t);
    assert!(d.storage_ts > t);
    assert!(b.timestamps(&u).await.is_empty());
    assert_eq!(b.storage_ts(&u).await, d.storage_ts);

    let fresh = b.user();
    let id = b.start_batch(&fresh, "pending", vec![rec("a", "x")]).await;
    let d =
        b.db.delete_collection(coll(&fresh, "pending"))
            .await
            .unwrap();
    assert_eq!(
        (d.previous_ts, d.storage_ts),
        (SyncTimestamp::ZERO, SyncTimestamp::ZERO)
    );
    assert_eq!(b.storage_ts(&fresh).await, SyncTimestamp::ZERO);
    let e = b
        .try_post(&fresh, "pending", vec![], BatchRequest::Commit(id))
        .await;
    assert_eq!(err_kind(e), ErrorKind::BadRequest);
}

// After a collection delete its records are gone for every method.
#[tokio::test]
async fn deleted_records_are_gone_for_every_method() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", upd("a", Some("x"), Some(1), None)).await;
    b.db.delete_collection(coll(&u, "c")).await.unwrap();
    assert_eq!(b.get(&u, "c", "a").await, None);
    assert_eq!(
        err_kind(b.db.delete_bso(bso_ref(&u, "c", "a")).await),
        ErrorKind::NotFound
    );
    // A partial update finds nothing to merge with: a fresh record.
    let t = b.put(&u, "c", upd("a", None, Some(2), None)).await;
    let a = b.get(&u, "c", "a").await.unwrap();
    assert_eq!(
        (a.payload.as_str(), a.sortindex, a.modified),
        ("", Some(2), t)
    );
}

// SPEC 1.5: deleting a collection that does not exist changes nothing.
#[tokio::test]
async fn delete_collection_of_a_missing_collection_changes_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    for name in ["never", "clients"] {
        let d = b.db.delete_collection(coll(&u, name)).await.unwrap();
        assert_eq!((d.previous_ts, d.storage_ts), (SyncTimestamp::ZERO, t));
    }
    assert_eq!(b.storage_ts(&u).await, t);
    let fresh = b.user();
    let d = b.db.delete_collection(coll(&fresh, "c")).await.unwrap();
    assert_eq!(d.storage_ts, SyncTimestamp::ZERO);
    assert_eq!(b.storage_ts(&fresh).await, SyncTimestamp::ZERO);
}

#[tokio::test]
async fn delete_collection_precondition_failure_deletes_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let e =
        b.db.delete_collection(coll_if(&u, "c", Precondition::IfUnmodifiedSince(before(t))))
            .await;
    assert_eq!(err_kind(e), ErrorKind::PreconditionFailed(t));
    assert_eq!(b.ids(&u, "c").await, strs(&["a"]));
    assert_eq!(b.storage_ts(&u).await, t);
    let d =
        b.db.delete_collection(coll_if(&u, "c", Precondition::IfUnmodifiedSince(t)))
            .await
            .unwrap();
    assert_eq!(d.previous_ts, t);
}

// ---- delete_storage ----

#[tokio::test]
async fn delete_storage_removes_everything_of_the_user_only() {
    let b = Backend::open().await;
    let (u, other) = (b.user(), b.user());
    b.put(&u, "a", rec("x", "x")).await;
    b.put(&u, "b", rec("x", "x")).await;
    b.db.delete_collection(coll(&u, "b")).await.unwrap();
    let last = b.put(&u, "c", rec("x", "x")).await;
    b.put(&other, "a", rec("x", "other")).await;
    let before_ts = b.db.delete_storage(&u, Precondition::None).await.unwrap();
    assert_eq!(before_ts, last, "the storage timestamp before the delete");
    assert_eq!(
        b.storage_ts(&u).await,
        SyncTimestamp::ZERO,
        "tombstone included"
    );
    assert!(b.timestamps(&u).await.is_empty());
    assert!(b.counts(&u).await.is_empty());
    assert_eq!(b.info(&u, InfoKind::Quota).await.body, InfoBody::Quota(0.0));
    assert_eq!(b.get(&u, "a", "x").await, None);
    assert_eq!(b.get(&other, "a", "x").await.unwrap().payload, "other");
    // The user starts afresh.
    let t = b.put(&u, "a", rec("y", "y")).await;
    assert_eq!(b.ids(&u, "a").await, strs(&["y"]));
    assert_eq!(b.storage_ts(&u).await, t);
    // A user with nothing: timestamp 0 before and after.
    let fresh = b.user();
    assert_eq!(
        b.db.delete_storage(&fresh, Precondition::None)
            .await
            .unwrap(),
        SyncTimestamp::ZERO
    );
}

#[tokio::test]
async fn delete_storage_precondition_failure_deletes_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "a", rec("x", "x")).await;
    let t = b.put(&u, "b", rec("x", "x")).await;
    let e =
        b.db.delete_storage(&u, Precondition::IfUnmodifiedSince(before(t)))
            .await;
    assert_eq!(err_kind(e), ErrorKind::PreconditionFailed(t));
    assert_eq!(b.timestamps(&u).await.len(), 2);
    b.db.delete_storage(&u, Precondition::IfUnmodifiedSince(t))
        .await
        .unwrap();
    assert!(b.timestamps(&u).await.is_empty());
}

// ---- quota ----

// SPEC 6.84 and 6.89: with quota enforced, pending batch bytes count; a re-sent id replaces
// its bytes; a user at the limit gets 403 before the write.
#[tokio::test]
async fn quota_counts_staged_bytes() {
    let b = Backend::with(quota(1000)).await;
    let u = b.user();
    let id = b
        .start_batch(&u, "c", vec![rec("a", &"x".repeat(600))])
        .await;
    // Re-sending "a" replaces its 600 bytes: 700 < 1000.
    b.post(
        &u,
        "c",
        vec![rec("a", &"y".repeat(700))],
        BatchRequest::Append(id.clone()),
    )
    .await;
    let over = b
        .try_post(
            &u,
            "c",
            vec![rec("b", &"z".repeat(400))],
            BatchRequest::Append(id),
        )
        .await;
    assert_eq!(err_kind(over), ErrorKind::OverQuota);
}

// Every kind of write is refused once the user is at the limit, and writes nothing; deleting
// records brings the user under it again.
#[tokio::test]
async fn over_quota_refuses_every_write_until_records_are_deleted() {
    let b = Backend::with(quota(500)).await;
    let u = b.user();
    // One write may overshoot: the check is before the write.
    let t = b.put(&u, "c", rec("big", &"p".repeat(600))).await;
    assert_eq!(
        err_kind(b.try_put(&u, "c", rec("b", "q")).await),
        ErrorKind::OverQuota
    );
    assert_eq!(
        err_kind(
            b.try_post(&u, "d", vec![rec("b", "q")], BatchRequest::None)
                .await
        ),
        ErrorKind::OverQuota
    );
    assert_eq!(
        err_kind(
            b.try_post(&u, "d", vec![rec("b", "q")], BatchRequest::Start)
                .await
        ),
        ErrorKind::OverQuota
    );
    assert_eq!(b.storage_ts(&u).await, t);
    assert_eq!(b.ids(&u, "c").await, strs(&["big"]));
    b.db.delete_bso(bso_ref(&u, "c", "big")).await.unwrap();
    b.put(&u, "c", rec("b", "q")).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["b"]));
}

// Quota is per user; committed batches count like any write.
#[tokio::test]
async fn quota_is_per_user_and_counts_committed_batches() {
    let b = Backend::with(quota(1000)).await;
    let (full, other) = (b.user(), b.user());
    let id = b
        .start_batch(&full, "c", vec![rec("a", &"x".repeat(700))])
        .await;
    b.post(
        &full,
        "c",
        vec![rec("b", &"x".repeat(200))],
        BatchRequest::Commit(id),
    )
    .await;
    assert_eq!(
        b.info(&full, InfoKind::Quota).await.body,
        InfoBody::Quota(900.0 / 1024.0)
    );
    // Under the limit before the write: allowed, and now over it.
    b.put(&full, "d", rec("c", &"x".repeat(200))).await;
    assert_eq!(
        err_kind(b.try_put(&full, "d", rec("d", "x")).await),
        ErrorKind::OverQuota
    );
    b.put(&other, "c", rec("a", &"y".repeat(900))).await;
    assert_eq!(b.ids(&other, "c").await, strs(&["a"]));
}

#[tokio::test]
async fn quota_off_or_not_enforced_never_refuses() {
    let mut not_enforced = quota(5);
    not_enforced.enforce_quota = false;
    let mut off = quota(5);
    off.enable_quota = false;
    off.enforce_quota = false;
    for config in [not_enforced, off] {
        let b = Backend::with(config).await;
        let u = b.user();
        b.put(&u, "c", rec("a", &"p".repeat(100))).await;
        b.put(&u, "c", rec("b", &"p".repeat(100))).await;
        b.post(&u, "c", vec![rec("c", "x")], BatchRequest::None)
            .await;
        let id = b.start_batch(&u, "c", vec![rec("d", "x")]).await;
        b.post(&u, "c", vec![], BatchRequest::Commit(id)).await;
        assert_eq!(b.ids(&u, "c").await.len(), 4);
    }
}

#[tokio::test]
async fn expired_records_do_not_count_toward_quota() {
    let b = Backend::with(quota(500)).await;
    let u = b.user();
    b.put(&u, "c", upd("big", Some(&"p".repeat(600)), None, Some(0)))
        .await;
    let_expire().await;
    b.put(&u, "c", rec("small", "q")).await;
    assert_eq!(
        b.info(&u, InfoKind::Quota).await.body,
        InfoBody::Quota(1.0 / 1024.0)
    );
}
