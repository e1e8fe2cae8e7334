//! Issue 12: what every client and every upstream deployment relies on. Per-user monotonic
//! timestamps (two writes of one user never share a T, whatever collections they touch), the
//! info views' X-If-Modified-Since after a write to another collection, offsets in upstream's
//! `<ts_ms>:<skip>` form, and collection names that are not one of the standard ones. Every
//! test runs on each engine (`backend_matrix!`).
#[macro_use]
mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

backend_matrix!();

const INFO_VIEWS: [&str; 4] = [
    "/info/collections",
    "/info/collection_counts",
    "/info/collection_usage",
    "/info/quota",
];

/// The X-Last-Modified of a write of any kind, asserting it succeeded.
fn written(r: &Resp, what: &str) -> u64 {
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    r.last_modified()
}

fn coll_of(i: usize) -> &'static str {
    ["col1", "col2", "col3"][i % 3]
}

#[tokio::test]
async fn back_to_back_writes_across_collections_get_increasing_timestamps() {
    let server = TestServer::start().await;
    let user = server.user(21);
    let mut stamps = Vec::new();
    let mut batch_items = 0;
    for i in 0..200 {
        let coll = coll_of(i);
        let t = match i % 5 {
            // PUT of one record.
            0 => written(
                &user
                    .put(
                        &format!("/storage/{coll}/r{i}"),
                        json!({"payload": format!("p{i}")}),
                    )
                    .await,
                "PUT",
            ),
            // A plain POST.
            1 => written(
                &user
                    .post(
                        &format!("/storage/{coll}"),
                        json!([{"id": format!("r{i}"), "payload": "x"}]),
                    )
                    .await,
                "POST",
            ),
            // A one-request batch (start and commit at once).
            2 => {
                batch_items += 1;
                written(
                    &user
                        .post(
                            &format!("/storage/{coll}?batch=true&commit=true"),
                            json!([{"id": format!("b{i}"), "payload": "y"}]),
                        )
                        .await,
                    "batch commit",
                )
            }
            // DELETE of records (the POST's, two steps back).
            3 => written(
                &user
                    .delete(&format!("/storage/{}?ids=r{}", coll_of(i - 2), i - 2))
                    .await,
                "DELETE ids",
            ),
            // DELETE of one record that exists (the PUT's, four steps back).
            _ => written(
                &user
                    .delete(&format!("/storage/{}/r{}", coll_of(i - 4), i - 4))
                    .await,
                "DELETE item",
            ),
        };
        stamps.push(t);
    }
    for pair in stamps.windows(2) {
        assert!(pair[0] < pair[1], "timestamps not increasing: {stamps:?}");
    }
    // A collection delete and a storage delete move it on too.
    let before = *stamps.last().unwrap();
    let r = user.delete("/storage/col2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, storage_ts) = info_collections(&user).await;
    assert!(storage_ts > before, "{storage_ts} after {before}");
    let t = put_ok(&user, "col1", "after", json!({"payload": "z"})).await;
    assert!(
        t > storage_ts,
        "{t} after collection delete at {storage_ts}"
    );
    assert!(batch_items > 0);
}

#[tokio::test]
async fn info_views_see_a_write_to_another_collection_in_the_same_tick() {
    let server = TestServer::start().await;
    for round in 0..50 {
        let user = server.user(1000 + round);
        let ts1 = put_ok(&user, "col1", "a", json!({"payload": "1"})).await;
        let r = user.get("/storage/col1/a").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let ts2 = put_ok(&user, "col2", "b", json!({"payload": "2"})).await;
        assert!(ts2 > ts1, "round {round}: {ts2} not after {ts1}");
        for view in INFO_VIEWS {
            let since = |ts: u64| {
                user.request(Method::GET, view)
                    .header("X-If-Modified-Since", ts_text(ts))
            };
            let r = user.send(since(ts1)).await;
            assert_eq!(r.status, 200, "round {round}, {view} since ts1: {}", r.body);
            assert_eq!(r.last_modified(), ts2, "round {round}, {view}");
            let r = user.send(since(ts2)).await;
            assert_eq!(r.status, 304, "round {round}, {view} since ts2: {}", r.body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_of_one_user_to_different_collections_never_share_a_timestamp() {
    let server = TestServer::start().await;
    let user = server.user(31);
    let writes = (0..24).map(|i| {
        user.request(Method::PUT, &format!("/storage/c{}/item{i}", i % 6))
            .header("Content-Type", "application/json")
            .body(json!({"payload": i.to_string()}).to_string())
            .send()
    });
    let mut stamps = Vec::new();
    for r in futures::future::join_all(writes).await {
        let r = r.unwrap();
        let status = r.status().as_u16();
        let lm = r
            .headers()
            .get("X-Last-Modified")
            .map(|v| ts_millis(v.to_str().unwrap()));
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
        stamps.push(lm.unwrap());
    }
    let mut sorted = stamps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), stamps.len(), "shared timestamps: {stamps:?}");
    // Other users are not held up by this one's lock (they run beside it).
    let other = server.user(32);
    put_ok(&other, "c0", "x", json!({"payload": "x"})).await;
}

/// 12 records in three POSTs of four (groups of one `modified`).
async fn three_groups(user: &User<'_>, coll: &str) -> Vec<u64> {
    let mut stamps = Vec::new();
    for g in 0..3 {
        let items: Vec<Value> = (0..4)
            .map(|i| json!({"id": format!("g{g}i{i}"), "payload": "p", "sortindex": g * 4 + i}))
            .collect();
        stamps.push(post_ok(user, coll, Value::Array(items)).await);
    }
    stamps
}

#[tokio::test]
async fn upstream_offsets_are_accepted() {
    let server = TestServer::start().await;
    let user = server.user(41);
    let stamps = three_groups(&user, "history").await;
    let all_newest: Vec<String> = {
        let r = user.get("/storage/history?sort=newest").await;
        assert_eq!(r.status, 200, "{}", r.body);
        strings(&r.json())
    };
    assert_eq!(all_newest.len(), 12);
    // Upstream's MySQL/PostgreSQL token after a page ending inside the middle group: the
    // `modified` of the last item in ms, then how many items at the tail shared it.
    let token = format!("{}:2", stamps[1]);
    for (query, expected) in [
        // newest first: the last 2 of the middle group, then the oldest group.
        (
            format!("sort=newest&offset={token}"),
            all_newest[6..].to_vec(),
        ),
        (
            format!("sort=newest&full=1&offset={token}"),
            all_newest[6..].to_vec(),
        ),
        // A token with no items to skip at the bound.
        (
            format!("sort=newest&offset={}:0", stamps[0]),
            all_newest[8..].to_vec(),
        ),
    ] {
        let r = user.get(&format!("/storage/history?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        let got = if query.contains("full") {
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_owned())
                .collect()
        } else {
            strings(&r.json())
        };
        assert_eq!(got, expected, "{query}");
    }
    // Oldest first from a token inside the middle group.
    let all_oldest: Vec<String> = strings(&user.get("/storage/history?sort=oldest").await.json());
    let r = user
        .get(&format!(
            "/storage/history?sort=oldest&offset={}:1",
            stamps[1]
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(strings(&r.json()), all_oldest[5..].to_vec());
    // A plain numeric offset (upstream's id-only and Spanner form) on a timestamp sort, and a
    // bounded one on sort=index (whose order has no timestamp bound: the skip applies).
    let r = user.get("/storage/history?sort=newest&offset=3").await;
    assert_eq!(strings(&r.json()), all_newest[3..].to_vec());
    let all_index: Vec<String> = strings(&user.get("/storage/history?sort=index").await.json());
    let r = user
        .get(&format!(
            "/storage/history?sort=index&offset={}:4",
            stamps[2]
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(strings(&r.json()), all_index[4..].to_vec());
    // Paging with limits through our own tokens and upstream-shaped ones gives one listing.
    let mut seen = Vec::new();
    let mut offset: Option<String> = None;
    loop {
        let q = match &offset {
            Some(o) => format!("sort=newest&limit=5&offset={o}"),
            None => "sort=newest&limit=5".to_owned(),
        };
        let r = user.get(&format!("/storage/history?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        seen.extend(strings(&r.json()));
        match r.header("X-Weave-Next-Offset") {
            Some(o) => {
                let (b, n) = o.split_once(':').expect("a bounded token");
                assert!(b.parse::<u64>().is_ok() && n.parse::<u64>().is_ok(), "{o}");
                offset = Some(o.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, all_newest);
    // Garbage is still refused.
    for bad in ["x", "1:x", "x:1", "-1:2"] {
        let r = user.get(&format!("/storage/history?offset={bad}")).await;
        assert_eq!(r.status, 400, "offset={bad}: {}", r.body);
    }
}

#[tokio::test]
async fn custom_collection_names_work() {
    let server = TestServer::start().await;
    let user = server.user(51);
    let names = [
        "Zen-Workspaces",
        "newtab-images",
        "a.b_c-D9",
        &"Z".repeat(32),
    ];
    let mut last = 0;
    for (i, name) in names.iter().enumerate() {
        let t = put_ok(&user, name, "one", json!({"payload": format!("v{i}")})).await;
        assert!(t > last);
        last = post_ok(
            &user,
            name,
            json!([{"id": "two", "payload": "w"}, {"id": "three", "payload": "x"}]),
        )
        .await;
        let r = user.get(&format!("/storage/{name}/one")).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.json()["payload"], format!("v{i}"));
        assert_eq!(ids_in(&user, name).await, set(["one", "three", "two"]));
    }
    let (info, _) = info_collections(&user).await;
    for name in names {
        assert!(json_ts(&info[name]) > 0, "{name} in {info}");
    }
    let counts = user.get("/info/collection_counts").await.json();
    for name in names {
        assert_eq!(counts[name], 3, "{counts}");
    }
    // Case matters: another spelling is another collection.
    let r = user.get("/storage/zen-workspaces").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!([]));
    // Another user sees the same name mapping, and none of the first user's records.
    let other = server.user(52);
    put_ok(&other, "Zen-Workspaces", "mine", json!({"payload": "o"})).await;
    assert_eq!(ids_in(&other, "Zen-Workspaces").await, set(["mine"]));
    // A custom collection is deleted like any other.
    let r = user.delete("/storage/Zen-Workspaces").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (info, _) = info_collections(&user).await;
    assert!(info.get("Zen-Workspaces").is_none(), "{info}");
    assert!(info.get("newtab-images").is_some(), "{info}");
    // Names outside the pattern are 404s (no route), as upstream.
    for bad in ["has space", "ünicode", &"x".repeat(33)] {
        let r = user
            .get(&format!(
                "/storage/{}",
                percent_encoding::utf8_percent_encode(bad, percent_encoding::NON_ALPHANUMERIC)
            ))
            .await;
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
    }
}
