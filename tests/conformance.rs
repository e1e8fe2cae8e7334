//! The backend conformance story, reads: every read method of `StorageDb` (`info`, `get_bsos`,
//! `stream_bsos`, `get_bso`) and the rules that hold across methods (timestamps, concurrent
//! writers, `purge_expired`, `check`, `pool_state`), called on the trait directly (no HTTP), on
//! every engine via `backend_matrix!`. Writes: `conformance_writes.rs`.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::storage::*;
use syncserver::db::listing::{BsoStream, Listing};
use syncserver::db::{BsoPage, GetBsos, InfoBody, InfoKind, UserId};
use syncserver::error::ErrorKind;
use syncserver::protocol::{
    BatchRequest, Bso, BsoQuery, Offset, Precondition, Sort, SyncTimestamp,
};

backend_matrix!();

fn ts(ms: u64) -> SyncTimestamp {
    SyncTimestamp::from_millis(ms)
}

fn query(f: impl FnOnce(&mut BsoQuery)) -> BsoQuery {
    let mut q = BsoQuery::default();
    f(&mut q);
    q
}

fn full() -> BsoQuery {
    query(|q| q.full = true)
}

/// Writes `n` records `r00..` in posts of `per_post` (records of one post share a T), each
/// with sortindex = its number; returns the T of each post.
async fn fill(b: &Backend, u: &UserId, c: &str, n: usize, per_post: usize) -> Vec<SyncTimestamp> {
    let mut stamps = Vec::new();
    for first in (0..n).step_by(per_post) {
        let items = (first..(first + per_post).min(n))
            .map(|i| {
                upd(
                    &format!("r{i:02}"),
                    Some(&format!("p{i}")),
                    Some(i as i32),
                    None,
                )
            })
            .collect();
        stamps.push(b.post(u, c, items, BatchRequest::None).await.last_modified);
    }
    stamps
}

/// The whole listing `q` describes, page by page with `limit`, following the next offsets.
async fn walk(b: &Backend, u: &UserId, c: &str, q: &BsoQuery, limit: u32) -> Vec<Bso> {
    let mut out = Vec::new();
    let mut offset = Offset::default();
    for _ in 0..100 {
        let page = b
            .list(
                u,
                c,
                BsoQuery {
                    limit: Some(limit),
                    offset,
                    ..q.clone()
                },
            )
            .await;
        assert!(page.items.len() <= limit as usize);
        out.extend(page.items);
        match page.next_offset {
            Some(next) => offset = next,
            None => return out,
        }
    }
    panic!("paging did not end");
}

/// Everything a `stream_bsos` call sends, read back as the page `get_bsos` would return.
async fn drain(stream: BsoStream) -> BsoPage {
    let BsoStream { head, records } = stream;
    let Some(mut rx) = records else {
        return head;
    };
    // A bigger full page: the head has the page's ids, the records follow in chunks.
    let mut items = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg.expect("a chunk") {
            Listing::Records(chunk) => {
                assert!(!chunk.is_empty(), "empty chunk");
                items.extend(chunk);
            }
            Listing::Head { .. } => panic!("a second head"),
        }
    }
    assert_eq!(
        items.iter().map(|b| &b.id).collect::<Vec<_>>(),
        head.items.iter().map(|b| &b.id).collect::<Vec<_>>(),
        "the records are the head's ids, in order"
    );
    BsoPage { items, ..head }
}

async fn stream(b: &Backend, u: &UserId, c: &str, q: BsoQuery) -> BsoPage {
    let s =
        b.db.stream_bsos(GetBsos {
            target: coll(u, c),
            query: q,
        })
        .await
        .expect("stream_bsos");
    drain(s).await
}

fn same_page(a: &BsoPage, b: &BsoPage) {
    assert_eq!(a.collection_ts, b.collection_ts);
    assert_eq!(a.items, b.items);
    assert_eq!(a.next_offset, b.next_offset);
}

// ---- info ----

#[tokio::test]
async fn info_of_a_new_user_is_empty_at_zero() {
    let b = Backend::open().await;
    let u = b.user();
    for (kind, body) in [
        (InfoKind::Collections, InfoBody::Timestamps(BTreeMap::new())),
        (InfoKind::Counts, InfoBody::Counts(BTreeMap::new())),
        (InfoKind::Usage, InfoBody::Usage(BTreeMap::new())),
        (InfoKind::Quota, InfoBody::Quota(0.0)),
    ] {
        let info = b.info(&u, kind).await;
        assert_eq!((info.storage_ts, info.body), (SyncTimestamp::ZERO, body));
    }
}

#[tokio::test]
async fn info_collections_has_each_collection_at_its_last_write() {
    let b = Backend::open().await;
    let u = b.user();
    let t1 = b.put(&u, "bookmarks", rec("a", "x")).await;
    let t2 = b.put(&u, "history", rec("a", "x")).await;
    let t3 = b.put(&u, "bookmarks", rec("b", "x")).await;
    let info = b.info(&u, InfoKind::Collections).await;
    assert!(t1 < t2 && t2 < t3);
    assert_eq!(info.storage_ts, t3);
    assert_eq!(
        info.body,
        InfoBody::Timestamps([("bookmarks".into(), t3), ("history".into(), t2)].into())
    );
}

#[tokio::test]
async fn info_counts_and_usage_cover_live_records_only() {
    let b = Backend::open().await;
    let u = b.user();
    b.post(
        &u,
        "tabs",
        vec![
            rec("a", "1234"),
            rec("b", "12"),
            upd("gone", Some("123456"), None, Some(0)),
        ],
        BatchRequest::None,
    )
    .await;
    b.put(&u, "forms", rec("f", &"z".repeat(1024))).await;
    let_expire().await;
    assert_eq!(
        b.counts(&u).await,
        [("forms".to_string(), 1), ("tabs".to_string(), 2)].into()
    );
    let usage = b.info(&u, InfoKind::Usage).await.body;
    assert_eq!(
        usage,
        InfoBody::Usage([("forms".into(), 1.0), ("tabs".into(), 6.0 / 1024.0)].into())
    );
    let quota = b.info(&u, InfoKind::Quota).await.body;
    assert_eq!(quota, InfoBody::Quota(1030.0 / 1024.0));
}

// Usage is payload bytes (UTF-8), not characters; counts and usage follow deletes.
#[tokio::test]
async fn info_usage_is_bytes_and_follows_deletes() {
    let b = Backend::open().await;
    let u = b.user();
    // 2 + 3 + 4 bytes in 3 characters.
    b.put(&u, "c", rec("a", "\u{e9}\u{20ac}\u{1f600}")).await;
    b.post(
        &u,
        "d",
        vec![rec("a", "12345"), rec("b", "123"), rec("c", "1")],
        BatchRequest::None,
    )
    .await;
    let InfoBody::Usage(before) = b.info(&u, InfoKind::Usage).await.body else {
        panic!("usage")
    };
    assert_eq!(
        before,
        [("c".into(), 9.0 / 1024.0), ("d".into(), 9.0 / 1024.0)].into()
    );
    b.db.delete_bso(bso_ref(&u, "d", "a")).await.unwrap();
    b.delete_ids(&u, "d", &["c"]).await;
    b.delete_ids(&u, "c", &["a"]).await;
    let InfoBody::Usage(after) = b.info(&u, InfoKind::Usage).await.body else {
        panic!("usage")
    };
    assert_eq!(after, [("d".into(), 3.0 / 1024.0)].into());
    assert_eq!(b.counts(&u).await, [("d".into(), 1)].into());
    assert_eq!(
        b.info(&u, InfoKind::Quota).await.body,
        InfoBody::Quota(3.0 / 1024.0)
    );
}

#[tokio::test]
async fn info_if_modified_since_is_not_modified_until_a_write() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    for kind in [
        InfoKind::Collections,
        InfoKind::Counts,
        InfoKind::Usage,
        InfoKind::Quota,
    ] {
        let same = b.db.info(&u, kind, Precondition::IfModifiedSince(t)).await;
        assert_eq!(err_kind(same), ErrorKind::NotModified(t), "{kind:?}");
        let later =
            b.db.info(
                &u,
                kind,
                Precondition::IfModifiedSince(ts(t.as_millis() + 10)),
            )
            .await;
        assert_eq!(err_kind(later), ErrorKind::NotModified(t), "{kind:?}");
        let earlier =
            b.db.info(
                &u,
                kind,
                Precondition::IfModifiedSince(ts(t.as_millis() - 10)),
            )
            .await
            .expect("modified since");
        assert_eq!(earlier.storage_ts, t);
    }
    // A write to another collection moves the storage timestamp past the precondition.
    let t2 = b.put(&u, "d", rec("a", "x")).await;
    let info =
        b.db.info(&u, InfoKind::Collections, Precondition::IfModifiedSince(t))
            .await
            .unwrap();
    assert_eq!(info.storage_ts, t2);
}

#[tokio::test]
async fn info_if_unmodified_since_fails_after_a_write() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let ok =
        b.db.info(&u, InfoKind::Counts, Precondition::IfUnmodifiedSince(t))
            .await
            .expect("unmodified");
    assert_eq!(ok.body, InfoBody::Counts([("c".into(), 1)].into()));
    let before = ts(t.as_millis() - 10);
    let e =
        b.db.info(
            &u,
            InfoKind::Counts,
            Precondition::IfUnmodifiedSince(before),
        )
        .await;
    assert_eq!(err_kind(e), ErrorKind::PreconditionFailed(t));
    // A new user (timestamp 0) is unmodified since anything.
    let fresh = b.user();
    b.db.info(
        &fresh,
        InfoKind::Quota,
        Precondition::IfUnmodifiedSince(SyncTimestamp::ZERO),
    )
    .await
    .expect("a new user is unmodified");
}

#[tokio::test]
async fn info_never_lists_a_pending_batch_or_the_tombstone() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "kept", rec("a", "x")).await;
    b.put(&u, "deleted", rec("a", "x")).await;
    b.db.delete_collection(coll(&u, "deleted")).await.unwrap();
    b.start_batch(&u, "pending", vec![rec("p", "x")]).await;
    assert_eq!(
        b.timestamps(&u).await.into_keys().collect::<Vec<_>>(),
        vec!["kept"]
    );
    assert_eq!(b.counts(&u).await, [("kept".into(), 1)].into());
    let InfoBody::Usage(usage) = b.info(&u, InfoKind::Usage).await.body else {
        panic!("usage")
    };
    assert_eq!(usage.into_keys().collect::<Vec<_>>(), vec!["kept"]);
}

#[tokio::test]
async fn users_never_see_each_other() {
    let b = Backend::open().await;
    let (alice, bob) = (b.user(), b.user());
    b.put(&alice, "tabs", rec("a", "alice")).await;
    b.start_batch(&alice, "tabs", vec![rec("staged", "alice")])
        .await;
    assert_eq!(b.storage_ts(&bob).await, SyncTimestamp::ZERO);
    assert!(b.ids(&bob, "tabs").await.is_empty());
    assert_eq!(b.get(&bob, "tabs", "a").await, None);
    b.put(&bob, "tabs", rec("a", "bob")).await;
    assert_eq!(b.get(&alice, "tabs", "a").await.unwrap().payload, "alice");
    assert_eq!(b.get(&bob, "tabs", "a").await.unwrap().payload, "bob");
    b.db.delete_storage(&bob, Precondition::None).await.unwrap();
    assert_eq!(b.ids(&alice, "tabs").await, strs(&["a"]));
}

// ---- get_bsos ----

#[tokio::test]
async fn get_bsos_of_a_missing_collection_is_empty_at_zero() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "other", rec("a", "x")).await;
    for name in ["never-written", "clients"] {
        let page = b.list(&u, name, full()).await;
        assert_eq!(page.collection_ts, SyncTimestamp::ZERO);
        assert!(page.items.is_empty() && page.next_offset.is_none());
    }
    // Preconditions see timestamp 0.
    let e =
        b.db.get_bsos(GetBsos {
            target: coll_if(&u, "nothing", Precondition::IfModifiedSince(ts(0))),
            query: BsoQuery::default(),
        })
        .await;
    assert_eq!(err_kind(e), ErrorKind::NotModified(SyncTimestamp::ZERO));
}

#[tokio::test]
async fn get_bsos_full_has_every_field_and_ids_only_has_ids() {
    let b = Backend::open().await;
    let u = b.user();
    let t1 = b.put(&u, "c", upd("a", Some("A"), Some(5), None)).await;
    let t2 = b.put(&u, "c", upd("b", Some("B"), None, None)).await;
    let page = b.list(&u, "c", full()).await;
    assert_eq!(page.collection_ts, t2);
    assert_eq!(
        page.items,
        vec![
            Bso {
                id: "b".into(),
                modified: t2,
                payload: "B".into(),
                sortindex: None
            },
            Bso {
                id: "a".into(),
                modified: t1,
                payload: "A".into(),
                sortindex: Some(5)
            },
        ]
    );
    let ids = b.list(&u, "c", BsoQuery::default()).await;
    assert_eq!(page_ids(&ids), strs(&["b", "a"]));
}

#[tokio::test]
async fn get_bsos_newer_and_older_are_strict_and_combine() {
    let b = Backend::open().await;
    let u = b.user();
    let mut t = Vec::new();
    for id in ["a", "b", "c", "d"] {
        t.push(b.put(&u, "c", rec(id, id)).await);
    }
    let sorted = |q: BsoQuery| async {
        let mut ids = page_ids(&b.list(&u, "c", q).await);
        ids.sort();
        ids
    };
    assert_eq!(
        sorted(query(|q| q.newer = Some(t[1]))).await,
        strs(&["c", "d"])
    );
    assert_eq!(
        sorted(query(|q| q.older = Some(t[2]))).await,
        strs(&["a", "b"])
    );
    assert_eq!(
        sorted(query(|q| {
            q.newer = Some(t[0]);
            q.older = Some(t[3]);
        }))
        .await,
        strs(&["b", "c"])
    );
    assert!(sorted(query(|q| q.newer = Some(t[3]))).await.is_empty());
    assert_eq!(
        sorted(query(|q| q.newer = Some(SyncTimestamp::ZERO))).await,
        strs(&["a", "b", "c", "d"])
    );
}

#[tokio::test]
async fn get_bsos_sorts_newest_oldest_and_by_index() {
    let b = Backend::open().await;
    let u = b.user();
    // Two posts: x and y share a T, z is later; sortindexes cross the time order.
    b.post(
        &u,
        "c",
        vec![
            upd("y", Some("1"), Some(1), None),
            upd("x", Some("2"), Some(7), None),
        ],
        BatchRequest::None,
    )
    .await;
    b.put(&u, "c", upd("z", Some("3"), Some(4), None)).await;
    b.put(&u, "c", upd("w", Some("3"), Some(4), None)).await;
    let (b, u) = (&b, &u);
    let order =
        |sort| async move { page_ids(&b.list(u, "c", query(|q| q.sort = sort)).await).join(",") };
    assert_eq!(order(Sort::Newest).await, "w,z,y,x");
    assert_eq!(order(Sort::Oldest).await, "x,y,z,w");
    assert_eq!(order(Sort::Index).await, "x,z,w,y");
    assert_eq!(
        page_ids(&b.list(u, "c", BsoQuery::default()).await).join(","),
        "w,z,y,x",
        "newest first by default"
    );
}

#[tokio::test]
async fn get_bsos_limit_gives_a_next_offset_until_the_last_page() {
    let b = Backend::open().await;
    let u = b.user();
    fill(&b, &u, "c", 5, 5).await;
    let first = b.list(&u, "c", query(|q| q.limit = Some(2))).await;
    assert_eq!(page_ids(&first), strs(&["r04", "r03"]));
    let next = first.next_offset.expect("more to come");
    let second = b
        .list(
            &u,
            "c",
            query(|q| {
                q.limit = Some(3);
                q.offset = next;
            }),
        )
        .await;
    assert_eq!(page_ids(&second), strs(&["r02", "r01", "r00"]));
    assert_eq!(second.next_offset, None, "no token on the last page");
    let exact = b.list(&u, "c", query(|q| q.limit = Some(5))).await;
    assert_eq!((exact.items.len(), exact.next_offset), (5, None));
    // limit=0: an empty page, and (the collection not being empty) an offset to go on from.
    let zero = b.list(&u, "c", query(|q| q.limit = Some(0))).await;
    assert!(zero.items.is_empty());
    assert!(zero.next_offset.is_some());
}

// SPEC 1.6.2: every limit, every sort, records in groups sharing one timestamp: the pages
// together are the unpaged listing, each record once.
#[tokio::test]
async fn get_bsos_pages_reproduce_the_listing_for_every_sort_and_limit() {
    let b = Backend::open().await;
    let u = b.user();
    fill(&b, &u, "c", 12, 4).await;
    for sort in [Sort::Newest, Sort::Oldest, Sort::Index] {
        for full in [false, true] {
            let q = query(|q| {
                q.sort = sort;
                q.full = full;
            });
            let all = b.list(&u, "c", q.clone()).await.items;
            assert_eq!(all.len(), 12);
            for limit in [1, 2, 3, 5, 11] {
                assert_eq!(
                    walk(&b, &u, "c", &q, limit).await,
                    all,
                    "{sort:?} full={full} limit={limit}"
                );
            }
        }
    }
}

#[tokio::test]
async fn get_bsos_pages_with_newer_and_older_bounds() {
    let b = Backend::open().await;
    let u = b.user();
    let stamps = fill(&b, &u, "c", 12, 4).await;
    let newer = query(|q| {
        q.sort = Sort::Oldest;
        q.newer = Some(stamps[0]);
    });
    let older = query(|q| {
        q.sort = Sort::Newest;
        q.older = Some(stamps[2]);
    });
    for limit in 2..=6 {
        let ids: Vec<String> = walk(&b, &u, "c", &newer, limit)
            .await
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(
            ids,
            strs(&["r04", "r05", "r06", "r07", "r08", "r09", "r10", "r11"])
        );
        let ids: Vec<String> = walk(&b, &u, "c", &older, limit)
            .await
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(
            ids,
            strs(&["r07", "r06", "r05", "r04", "r03", "r02", "r01", "r00"])
        );
    }
}

#[tokio::test]
async fn get_bsos_default_limit_is_max_total_records() {
    let mut config = config();
    config.limits.max_total_records = 3;
    let b = Backend::with(config).await;
    let u = b.user();
    fill(&b, &u, "c", 5, 5).await;
    let page = b.list(&u, "c", BsoQuery::default()).await;
    assert_eq!(page.items.len(), 3);
    let rest = b
        .list(
            &u,
            "c",
            query(|q| q.offset = page.next_offset.expect("a next offset")),
        )
        .await;
    assert_eq!(page_ids(&rest), strs(&["r01", "r00"]));
    assert_eq!(rest.next_offset, None);
    // A larger limit is capped as well.
    let capped = b.list(&u, "c", query(|q| q.limit = Some(10))).await;
    assert_eq!(capped.items.len(), 3);
}

#[tokio::test]
async fn get_bsos_ids_filter_combines_with_the_others() {
    let b = Backend::open().await;
    let u = b.user();
    let stamps = fill(&b, &u, "c", 6, 3).await;
    let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let page = b
        .list(
            &u,
            "c",
            query(|q| q.ids = ids(&["r00", "r04", "missing", "r05"])),
        )
        .await;
    assert_eq!(page_ids(&page), strs(&["r05", "r04", "r00"]));
    let page = b
        .list(
            &u,
            "c",
            query(|q| {
                q.ids = ids(&["r00", "r04", "r05"]);
                q.newer = Some(stamps[0]);
                q.limit = Some(1);
                q.sort = Sort::Oldest;
            }),
        )
        .await;
    assert_eq!(page_ids(&page), strs(&["r04"]));
    assert!(page.next_offset.is_some());
    let none = b.list(&u, "c", query(|q| q.ids = ids(&["zzz"]))).await;
    assert!(none.items.is_empty());
}

#[tokio::test]
async fn get_bsos_hides_expired_records_and_keeps_the_collection_timestamp() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c", rec("live", "x")).await;
    let t = b
        .put(&u, "c", upd("short", Some("x"), Some(9), Some(0)))
        .await;
    let_expire().await;
    for sort in [Sort::Newest, Sort::Oldest, Sort::Index] {
        let page = b
            .list(
                &u,
                "c",
                query(|q| {
                    q.sort = sort;
                    q.full = true;
                }),
            )
            .await;
        assert_eq!(page_ids(&page), strs(&["live"]), "{sort:?}");
        assert_eq!(page.collection_ts, t, "expiry does not move the collection");
    }
    let by_id = b.list(&u, "c", query(|q| q.ids = strs(&["short"]))).await;
    assert!(by_id.items.is_empty());
}

#[tokio::test]
async fn get_bsos_preconditions_use_the_collection_timestamp() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let later = b.put(&u, "other", rec("a", "x")).await;
    let listing = |p| {
        b.db.get_bsos(GetBsos {
            target: coll_if(&u, "c", p),
            query: BsoQuery::default(),
        })
    };
    // The user's storage timestamp (later) does not matter: the collection's does.
    assert_eq!(
        err_kind(listing(Precondition::IfModifiedSince(t)).await),
        ErrorKind::NotModified(t)
    );
    let page = listing(Precondition::IfUnmodifiedSince(t)).await.unwrap();
    assert_eq!(page.collection_ts, t);
    assert!(later > t);
    assert_eq!(
        err_kind(listing(Precondition::IfUnmodifiedSince(ts(t.as_millis() - 10))).await),
        ErrorKind::PreconditionFailed(t)
    );
}

// ---- stream_bsos ----

#[tokio::test]
async fn stream_bsos_sends_the_same_small_pages_as_get_bsos() {
    let b = Backend::open().await;
    let u = b.user();
    fill(&b, &u, "c", 6, 3).await;
    for q in [
        BsoQuery::default(),
        full(),
        query(|q| {
            q.full = true;
            q.limit = Some(4);
            q.sort = Sort::Oldest;
        }),
        query(|q| {
            q.limit = Some(2);
            q.sort = Sort::Index;
        }),
    ] {
        same_page(
            &stream(&b, &u, "c", q.clone()).await,
            &b.list(&u, "c", q).await,
        );
    }
    let missing = stream(&b, &u, "nothing", full()).await;
    assert!(missing.items.is_empty() && missing.collection_ts == SyncTimestamp::ZERO);
}

// Pages bigger than a chunk (`listing::CHUNK_RECORDS`, 16): head first, then the records.
#[tokio::test]
async fn stream_bsos_sends_the_same_large_pages_as_get_bsos() {
    let b = Backend::open().await;
    let u = b.user();
    fill(&b, &u, "c", 40, 20).await;
    let ids_only = stream(&b, &u, "c", BsoQuery::default()).await;
    same_page(&ids_only, &b.list(&u, "c", BsoQuery::default()).await);
    assert_eq!(ids_only.items.len(), 40);
    for sort in [Sort::Newest, Sort::Oldest, Sort::Index] {
        for limit in [None, Some(17), Some(33)] {
            let q = query(|q| {
                q.full = true;
                q.sort = sort;
                q.limit = limit;
            });
            let streamed = stream(&b, &u, "c", q.clone()).await;
            same_page(&streamed, &b.list(&u, "c", q.clone()).await);
            assert_eq!(streamed.items.len(), limit.unwrap_or(40) as usize);
            // The next page from the streamed offset, streamed again.
            if let Some(offset) = streamed.next_offset {
                let q = BsoQuery { offset, ..q };
                same_page(
                    &stream(&b, &u, "c", q.clone()).await,
                    &b.list(&u, "c", q).await,
                );
            }
        }
    }
}

// A listing abandoned after its head (the client went away) ends its unit of work: the
// connection comes back to the pool and the user's writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_stream_holds_nothing() {
    let b = Backend::open().await;
    let u = b.user();
    fill(&b, &u, "c", 40, 40).await;
    let s =
        b.db.stream_bsos(GetBsos {
            target: coll(&u, "c"),
            query: full(),
        })
        .await
        .expect("stream_bsos");
    assert_eq!(s.head.items.len(), 40);
    assert!(s.records.is_some(), "a page bigger than a chunk streams");
    drop(s);
    let write = tokio::time::timeout(Duration::from_secs(10), b.put(&u, "c", rec("after", "x")));
    write.await.expect("the write is not held up");
    let mut active = b.db.pool_state().active;
    for _ in 0..100 {
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        active = b.db.pool_state().active;
    }
    assert_eq!(active, 0, "the listing's connection is back in the pool");
    assert_eq!(b.ids(&u, "c").await.len(), 41);
}

#[tokio::test]
async fn stream_bsos_fails_preconditions_before_the_head() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let s =
        b.db.stream_bsos(GetBsos {
            target: coll_if(&u, "c", Precondition::IfModifiedSince(t)),
            query: full(),
        })
        .await;
    assert_eq!(err_kind(s.map(|s| s.head)), ErrorKind::NotModified(t));
    let s =
        b.db.stream_bsos(GetBsos {
            target: coll_if(&u, "c", Precondition::IfUnmodifiedSince(ts(10))),
            query: full(),
        })
        .await;
    assert_eq!(
        err_kind(s.map(|s| s.head)),
        ErrorKind::PreconditionFailed(t)
    );
}

// ---- get_bso ----

#[tokio::test]
async fn get_bso_returns_the_record() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b
        .put(&u, "c", upd("a", Some("payload"), Some(-3), None))
        .await;
    assert_eq!(
        b.get(&u, "c", "a").await,
        Some(Bso {
            id: "a".into(),
            modified: t,
            payload: "payload".into(),
            sortindex: Some(-3)
        })
    );
}

#[tokio::test]
async fn get_bso_is_not_found_when_absent_or_expired() {
    let b = Backend::open().await;
    let (u, other) = (b.user(), b.user());
    b.put(&u, "c", rec("a", "x")).await;
    b.put(&u, "c", upd("short", Some("x"), None, Some(0))).await;
    let_expire().await;
    for (who, c, id) in [
        (&u, "c", "missing"),
        (&u, "nothing", "a"),
        (&u, "c", "short"),
        (&other, "c", "a"),
    ] {
        let e = b.db.get_bso(bso_ref(who, c, id)).await;
        assert_eq!(err_kind(e), ErrorKind::NotFound, "{c}/{id}");
    }
}

#[tokio::test]
async fn get_bso_preconditions_use_the_record_timestamp() {
    let b = Backend::open().await;
    let u = b.user();
    let t = b.put(&u, "c", rec("a", "x")).await;
    let later = b.put(&u, "c", rec("b", "x")).await;
    let read = |p| {
        b.db.get_bso(syncserver::db::BsoRef {
            precondition: p,
            ..bso_ref(&u, "c", "a")
        })
    };
    assert_eq!(
        err_kind(read(Precondition::IfModifiedSince(t)).await),
        ErrorKind::NotModified(t)
    );
    assert_eq!(
        read(Precondition::IfModifiedSince(ts(t.as_millis() - 10)))
            .await
            .unwrap()
            .payload,
        "x"
    );
    // The collection moved on (later), the record did not.
    assert_eq!(
        read(Precondition::IfUnmodifiedSince(t))
            .await
            .unwrap()
            .modified,
        t
    );
    assert!(later > t);
    assert_eq!(
        err_kind(read(Precondition::IfUnmodifiedSince(ts(t.as_millis() - 10))).await),
        ErrorKind::PreconditionFailed(t)
    );
}

// What goes in comes out: multi-byte and escaped payload text, 64-character ids, the ends of
// the sortindex range.
#[tokio::test]
async fn records_round_trip_exactly() {
    let b = Backend::open().await;
    let u = b.user();
    let long_id = "x".repeat(64);
    let payload = "{\"quote\": \"\\\"\", \"nl\": \"a\\nb\", \"emoji\": \"\u{1f600}\u{e9}\"}\n\ttab";
    let items = [
        (long_id.as_str(), payload, i32::MAX),
        ("min", "", i32::MIN),
        ("-_.~!*", "0", 0),
    ];
    for (id, p, si) in items {
        b.put(&u, "c", upd(id, Some(p), Some(si), None)).await;
        let got = b.get(&u, "c", id).await.unwrap();
        assert_eq!(
            (got.id.as_str(), got.payload.as_str(), got.sortindex),
            (id, p, Some(si))
        );
    }
    let page = b
        .list(
            &u,
            "c",
            query(|q| {
                q.full = true;
                q.sort = Sort::Index;
            }),
        )
        .await;
    assert_eq!(
        page_ids(&page),
        vec![long_id.clone(), "-_.~!*".into(), "min".into()]
    );
    assert_eq!(page.items[0].payload, payload);
}

// SPEC 1.6: at most 100 ids per request, each matched exactly.
#[tokio::test]
async fn get_bsos_with_a_hundred_ids() {
    let b = Backend::open().await;
    let u = b.user();
    let items = (0..120).map(|i| rec(&format!("id{i:03}"), "x")).collect();
    b.post(&u, "c", items, BatchRequest::None).await;
    let wanted: Vec<String> = (0..200).step_by(2).map(|i| format!("id{i:03}")).collect();
    assert_eq!(wanted.len(), 100);
    let page = b.list(&u, "c", query(|q| q.ids = wanted.clone())).await;
    let mut got = page_ids(&page);
    got.sort();
    assert_eq!(got, wanted[..60].to_vec());
}

// Ids are compared exactly on every engine: case matters, and so does a trailing space
// (MySQL's PAD SPACE collations would make "a" and "a " one key).
#[tokio::test]
async fn ids_are_exact() {
    let b = Backend::open().await;
    let u = b.user();
    for id in ["a", "a ", "A"] {
        b.put(&u, "c", rec(id, id)).await;
    }
    assert_eq!(b.ids(&u, "c").await, strs(&["A", "a", "a "]));
    assert_eq!(b.get(&u, "c", "a ").await.unwrap().payload, "a ");
    let r = b
        .post(
            &u,
            "d",
            vec![rec("x", "1"), rec("x ", "2")],
            BatchRequest::None,
        )
        .await;
    assert_eq!(r.success.len(), 2);
    assert_eq!(b.ids(&u, "d").await, strs(&["x", "x "]));
}

// ---- timestamps ----

// Every write of one user gets its own T, later than everything before, whatever the
// collection and whatever the kind of write; T is on the 10 ms grid and near the clock.
#[tokio::test]
async fn every_write_of_a_user_gets_a_later_timestamp() {
    let b = Backend::open().await;
    let u = b.user();
    let start = SyncTimestamp::now();
    let mut stamps = vec![
        b.put(&u, "a", rec("x", "1")).await,
        b.put(&u, "b", rec("x", "1")).await,
        b.post(&u, "a", vec![rec("y", "1")], BatchRequest::None)
            .await
            .last_modified,
        b.delete_ids(&u, "b", &["x"]).await,
    ];
    let batch = b.start_batch(&u, "c", vec![rec("z", "1")]).await;
    stamps.push(
        b.post(&u, "c", vec![], BatchRequest::Commit(batch))
            .await
            .last_modified,
    );
    stamps.push(b.db.delete_bso(bso_ref(&u, "a", "x")).await.unwrap());
    stamps.push(
        b.db.delete_collection(coll(&u, "c"))
            .await
            .unwrap()
            .storage_ts,
    );
    stamps.push(b.put(&u, "a", rec("x", "again")).await);
    for pair in stamps.windows(2) {
        assert!(pair[0] < pair[1], "{stamps:?}");
    }
    for t in &stamps {
        assert_eq!(t.as_millis() % 10, 0, "on the 10 ms grid: {t:?}");
    }
    assert!(stamps[0] >= start && *stamps.last().unwrap() <= SyncTimestamp::now());
    assert_eq!(b.storage_ts(&u).await, *stamps.last().unwrap());
}

#[tokio::test]
async fn two_users_have_independent_timestamps() {
    let b = Backend::open().await;
    let (alice, bob) = (b.user(), b.user());
    let ta = b.put(&alice, "c", rec("a", "x")).await;
    let tb = b.put(&bob, "c", rec("a", "x")).await;
    let ta2 = b.put(&alice, "d", rec("a", "x")).await;
    assert_eq!(b.storage_ts(&alice).await, ta2);
    assert_eq!(b.storage_ts(&bob).await, tb);
    assert_eq!(
        b.timestamps(&alice).await,
        [("c".into(), ta), ("d".into(), ta2)].into()
    );
    // Deleting bob's collection leaves alice's timestamps alone.
    b.db.delete_collection(coll(&bob, "c")).await.unwrap();
    assert_eq!(b.storage_ts(&alice).await, ta2);
}

// ---- concurrent writers ----

// SPEC 1.2 and 6.90: concurrent writers to one collection serialize; every write gets its own
// later timestamp and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_one_collection_serialize() {
    let b = Backend::open().await;
    let u = b.user();
    let writes = (0..12).map(|i| b.put(&u, "tabs", rec(&format!("t{i:02}"), "x")));
    let mut stamps: Vec<SyncTimestamp> = futures::future::join_all(writes).await;
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 12, "each write has its own timestamp");
    assert_eq!(b.ids(&u, "tabs").await.len(), 12);
    assert_eq!(b.counts(&u).await, [("tabs".to_string(), 12)].into());
    assert_eq!(b.storage_ts(&u).await, *stamps.last().unwrap());
}

// Writes of every kind to several collections of one user at once: all succeed, each with its
// own T, and the storage timestamp is the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_of_every_kind_across_collections() {
    let b = Backend::open().await;
    let u = b.user();
    b.put(&u, "c0", rec("old", "x")).await;
    let batch = b.start_batch(&u, "c3", vec![rec("s", "x")]).await;
    let tasks: Vec<futures::future::BoxFuture<'_, SyncTimestamp>> = vec![
        Box::pin(b.put(&u, "c1", rec("a", "x"))),
        Box::pin(b.put(&u, "c2", rec("a", "x"))),
        Box::pin(async {
            b.post(
                &u,
                "c1",
                vec![rec("b", "x"), rec("c", "x")],
                BatchRequest::None,
            )
            .await
            .last_modified
        }),
        Box::pin(async {
            b.post(
                &u,
                "c3",
                vec![rec("t", "x")],
                BatchRequest::Commit(batch.clone()),
            )
            .await
            .last_modified
        }),
        Box::pin(b.delete_ids(&u, "c0", &["old"])),
        Box::pin(b.put(&u, "c2", rec("b", "x"))),
    ];
    let mut stamps = futures::future::join_all(tasks).await;
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 6, "{stamps:?}");
    assert_eq!(b.storage_ts(&u).await, stamps[5]);
    assert_eq!(b.ids(&u, "c1").await, strs(&["a", "b", "c"]));
    assert_eq!(b.ids(&u, "c3").await, strs(&["s", "t"]));
    assert!(b.ids(&u, "c0").await.is_empty());
}

// Different users never wait on each other, and their writes all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_users_all_succeed() {
    let b = Backend::open().await;
    let users: Vec<UserId> = (0..4).map(|_| b.user()).collect();
    let pairs: Vec<(&UserId, String)> = users
        .iter()
        .flat_map(|u| (0..3).map(move |i| (u, format!("r{i}"))))
        .collect();
    let writes = pairs.iter().map(|(u, id)| b.put(u, "c", rec(id, "x")));
    futures::future::join_all(writes).await;
    for u in &users {
        assert_eq!(b.ids(u, "c").await, strs(&["r0", "r1", "r2"]));
    }
}

// Two commits of one batch at once: it is applied once; the other finds it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_of_one_batch_apply_it_once() {
    let b = Backend::open().await;
    let u = b.user();
    let id = b.start_batch(&u, "c", vec![rec("a", "staged")]).await;
    let commits = (0..2).map(|i| {
        b.try_post(
            &u,
            "c",
            vec![rec(&format!("by{i}"), "x")],
            BatchRequest::Commit(id.clone()),
        )
    });
    let results = futures::future::join_all(commits).await;
    let ok: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    let failed = results.iter().find(|r| r.is_err()).unwrap().clone();
    assert_eq!(err_kind(failed), ErrorKind::BadRequest);
    assert_eq!(
        b.ids(&u, "c").await.len(),
        2,
        "the staged record and one commit's own"
    );
}

// Collection deletes racing writes of the same user never move the storage timestamp back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deletes_and_writes_keep_the_storage_timestamp_rising() {
    let b = Backend::open().await;
    let u = b.user();
    for c in ["a", "b", "c"] {
        b.put(&u, c, rec("x", "x")).await;
    }
    let tasks: Vec<futures::future::BoxFuture<'_, SyncTimestamp>> = vec![
        Box::pin(async {
            b.db.delete_collection(coll(&u, "a"))
                .await
                .unwrap()
                .storage_ts
        }),
        Box::pin(async {
            b.db.delete_collection(coll(&u, "c"))
                .await
                .unwrap()
                .storage_ts
        }),
        Box::pin(b.put(&u, "b", rec("y", "y"))),
        Box::pin(b.put(&u, "d", rec("y", "y"))),
    ];
    let mut stamps = futures::future::join_all(tasks).await;
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 4, "{stamps:?}");
    assert_eq!(b.storage_ts(&u).await, stamps[3]);
    assert_eq!(
        b.timestamps(&u).await.into_keys().collect::<Vec<_>>(),
        vec!["b", "d"]
    );
}

// A listing is one snapshot: while a writer adds records, no page holds a record newer than
// the collection timestamp it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_are_snapshots_while_a_writer_writes() {
    let b = Backend::open().await;
    let u = b.user();
    let writer = async {
        for i in 0..8 {
            b.post(
                &u,
                "c",
                vec![rec(&format!("a{i}"), "x"), rec(&format!("b{i}"), "x")],
                BatchRequest::None,
            )
            .await;
        }
    };
    let reader = async {
        let mut pages = 0;
        for _ in 0..8 {
            let page = b.list(&u, "c", full()).await;
            assert!(page.items.iter().all(|r| r.modified <= page.collection_ts));
            assert_eq!(
                page.items.len() % 2,
                0,
                "a post is seen whole or not at all"
            );
            pages += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pages
    };
    let ((), pages) = futures::future::join(writer, reader).await;
    assert_eq!(pages, 8);
    assert_eq!(b.ids(&u, "c").await.len(), 16);
}

// ---- purge_expired (a database of its own: it counts every user's rows) ----

#[tokio::test]
async fn purge_expired_removes_expired_records_and_keeps_live_ones() {
    let b = Backend::own(config()).await;
    let u = b.user();
    let t = b
        .post(
            &u,
            "c",
            vec![
                rec("live", "x"),
                upd("gone1", Some("x"), None, Some(0)),
                upd("gone2", Some("x"), None, Some(0)),
                upd("later", Some("x"), None, Some(3600)),
            ],
            BatchRequest::None,
        )
        .await
        .last_modified;
    let_expire().await;
    let purged = b.db.purge_expired().await.unwrap();
    assert_eq!(purged.bsos, 2);
    assert_eq!(b.ids(&u, "c").await, strs(&["later", "live"]));
    // Expiry and purge leave the collection timestamp where it was.
    assert_eq!(b.timestamps(&u).await, [("c".into(), t)].into());
    let again = b.db.purge_expired().await.unwrap();
    assert_eq!((again.bsos, again.batches), (0, 0));
}

#[tokio::test]
async fn purge_expired_removes_expired_batches_and_keeps_live_ones() {
    let b = Backend::own(config()).await;
    let u = b.user();
    let old = b.start_batch(&u, "c", vec![rec("a", "x")]).await;
    let live = b.start_batch(&u, "c", vec![rec("b", "x")]).await;
    let old = b.expire_batch(&u, &old);
    let purged = b.db.purge_expired().await.unwrap();
    assert_eq!((purged.bsos, purged.batches), (0, 1));
    let mut conn = b.conn();
    assert_eq!(
        common::db::batch_rows(&mut conn, u.legacy_id as i64),
        (1, 1),
        "the live batch and its record stay"
    );
    drop(conn);
    let e = b.try_post(&u, "c", vec![], BatchRequest::Commit(old)).await;
    assert_eq!(err_kind(e), ErrorKind::BadRequest);
    b.post(&u, "c", vec![], BatchRequest::Commit(live)).await;
    assert_eq!(b.ids(&u, "c").await, strs(&["b"]));
}

/// Small chunks: several short transactions, progress after each, the same end result, and
/// a writer of another user goes on between the chunks.
#[tokio::test]
async fn purge_in_chunks_removes_everything_expired_a_bounded_number_at_a_time() {
    let b = Backend::own(config()).await;
    let (u, other) = (b.user(), b.user());
    let mut items: Vec<_> = (0..23)
        .map(|i| upd(&format!("gone{i:02}"), Some("x"), None, Some(0)))
        .collect();
    items.push(rec("live", "x"));
    b.post(&u, "c", items, BatchRequest::None).await;
    b.post(
        &u,
        "d",
        vec![upd("gone", Some("x"), None, Some(0))],
        BatchRequest::None,
    )
    .await;
    let_expire().await;
    let options = syncserver::db::purge::PurgeOptions {
        rows_per_chunk: 5,
        pause: Duration::from_millis(1),
        dry_run: false,
    };
    let mut steps = Vec::new();
    let db = b.db.clone();
    let writer = tokio::spawn({
        let (b_db, other) = (b.db.clone(), other.clone());
        async move {
            for i in 0..5 {
                b_db.put_bso(syncserver::db::PutBso {
                    target: syncserver::db::CollectionRef {
                        user: other.clone(),
                        collection: "w".into(),
                        precondition: Precondition::None,
                    },
                    bso: rec(&format!("w{i}"), "y"),
                })
                .await
                .expect("a write between purge chunks");
            }
        }
    });
    let total = syncserver::db::purge::purge_expired(db.as_ref(), &options, |so_far| {
        steps.push(so_far.bsos)
    })
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!(total.bsos, 24);
    if common::backends::current() == Some("spanner") {
        // Partitioned DML: Spanner splits the one statement into small transactions itself.
        assert_eq!(steps, [24]);
    } else {
        assert!(steps.len() >= 5, "24 records 5 at a time: {steps:?}");
        assert!(steps[0] <= 5, "{steps:?}");
        assert!(
            steps.windows(2).all(|w| w[1] >= w[0] && w[1] - w[0] <= 5),
            "{steps:?}"
        );
    }
    assert_eq!(b.ids(&u, "c").await, strs(&["live"]));
    assert_eq!(b.ids(&other, "w").await.len(), 5);
    let again = syncserver::db::purge::purge_expired(db.as_ref(), &options, |_| {})
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

// ---- check and pool_state ----

#[tokio::test]
async fn check_answers_and_pool_state_is_within_its_bounds() {
    let b = Backend::open().await;
    b.db.check().await.expect("check");
    let u = b.user();
    b.put(&u, "c", rec("a", "x")).await;
    b.db.check().await.expect("check after a write");
    let pool = b.db.pool_state();
    assert_eq!(pool.max_size, 10, "PoolSettings::default's max_size");
    assert!(pool.active + pool.idle <= pool.max_size, "{pool:?}");
    // Nothing is in flight between calls.
    assert_eq!(pool.active, 0, "{pool:?}");
}
