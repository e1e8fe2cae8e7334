//! SPEC section 6, "Storage — deletes and timestamps" (cases 54 to 67), tested over HTTP.
#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

backend_matrix!();
proxy_matrix!();

/// The client clock, truncated to the server's 10 ms resolution.
fn now_tick() -> u64 {
    let ms = now_ms() as u64;
    ms - ms % 10
}

/// Asserts a successful `DELETE ?ids=` / collection delete answering a bare timestamp; returns it.
fn bare_ts(r: &Resp) -> u64 {
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v.is_number(), "body must be a bare timestamp: {:?}", r.body);
    json_ts(&v)
}

/// A request with extra headers and an optional JSON body.
async fn with_headers(
    user: &User<'_>,
    method: Method,
    rest: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Resp {
    let mut rb = user.request(method, rest);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    user.send(rb).await
}

fn three_items() -> Value {
    json!([
        {"id": "12", "payload": "a"},
        {"id": "13", "payload": "b"},
        {"id": "14", "payload": "c"},
    ])
}

// SPEC 6.54
#[tokio::test]
async fn delete_collection_then_delete_by_ids() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = user.delete("/storage/xxx_col2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids_in(&user, "xxx_col2").await, BTreeSet::new());

    let t0 = post_ok(&user, "xxx_col2", three_items()).await;
    assert_eq!(ids_in(&user, "xxx_col2").await, set(["12", "13", "14"]));
    let r = user.delete("/storage/xxx_col2?ids=12,14").await;
    let t1 = bare_ts(&r);
    assert_eq!(r.last_modified(), t1);
    assert!(t1 > t0);
    assert_eq!(ids_in(&user, "xxx_col2").await, set(["13"]));
    assert_eq!(
        user.get("/storage/xxx_col2/13").await.json()["payload"],
        "b"
    );

    let r = user.delete("/storage/xxx_col2?ids=13").await;
    let t2 = bare_ts(&r);
    assert_eq!(r.last_modified(), t2);
    assert!(t2 > t1);
    let r = user.get("/storage/xxx_col2").await;
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.last_modified(), t2);
    // The collection stays listed after all its BSOs were deleted by id.
    let (info, lm) = info_collections(&user).await;
    assert_eq!(info.as_object().unwrap().len(), 1, "{info}");
    assert_eq!(json_ts(&info["xxx_col2"]), t2);
    assert_eq!(lm, t2);
}

// SPEC 6.54 (SPEC 1.6: ids list may be percent-encoded; missing ids are ignored)
#[tokio::test]
async fn delete_by_ids_ignores_unknown_ids_and_accepts_encoded_commas() {
    let server = TestServer::start().await;
    let user = server.user(1);
    post_ok(&user, "col", three_items()).await;
    let r = user.delete("/storage/col?ids=12%2C14,nope").await;
    bare_ts(&r);
    assert_eq!(ids_in(&user, "col").await, set(["13"]));
}

// SPEC 6.55
#[tokio::test]
async fn delete_item_then_absent_item_is_404() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t0 = post_ok(&user, "xxx_col2", three_items()).await;
    let (_, lm0) = info_collections(&user).await;
    assert_eq!(lm0, t0);

    let r = user.delete("/storage/xxx_col2/13").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    let t1 = json_ts(&body["modified"]);
    assert_eq!(r.last_modified(), t1);
    assert!(t1 > t0);
    assert_eq!(ids_in(&user, "xxx_col2").await, set(["12", "14"]));
    assert_json_error(&user.get("/storage/xxx_col2/13").await, 404, 0);

    let (info, lm1) = info_collections(&user).await;
    assert!(lm1 > lm0, "{lm1} > {lm0}");
    assert_eq!(lm1, t1);
    assert_eq!(json_ts(&info["xxx_col2"]), t1);

    // Deleting an absent item (or one already deleted) is 404 and changes nothing.
    for id in ["13", "nope"] {
        let r = user.delete(&format!("/storage/xxx_col2/{id}")).await;
        assert_json_error(&r, 404, 0);
    }
    let r = user.delete("/storage/never_written/x").await;
    assert_json_error(&r, 404, 0);
    assert_eq!(info_collections(&user).await, (info, lm1));
    assert_eq!(ids_in(&user, "xxx_col2").await, set(["12", "14"]));
}

// SPEC 6.56
#[tokio::test]
async fn delete_storage_empties_everything() {
    let server = TestServer::start().await;
    let user = server.user(1);
    put_ok(&user, "col1", "a", json!({"payload": "x"})).await;
    let t = post_ok(&user, "xxx_col2", three_items()).await;

    let r = user.delete("/storage").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), Value::Null);
    assert_eq!(
        r.last_modified(),
        t,
        "X-Last-Modified = storage ts before the delete"
    );

    let r = user.get("/storage/xxx_col2").await;
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_json_error(&user.get("/storage/col1/a").await, 404, 0);
    let r = user.get("/info/collections").await;
    assert_eq!(r.json(), json!({}));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_eq!(user.get("/info/collection_counts").await.json(), json!({}));

    // Deleting the (now absent) collection still succeeds, answering the storage ts (0).
    let r = user.delete("/storage/xxx_col2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), "0.00");
    assert_eq!(info_collections(&user).await, (json!({}), 0));
}

// SPEC 6.57
#[tokio::test]
async fn delete_user_root_and_storage_answer_null() {
    let server = TestServer::start().await;
    let user = server.user(42);
    for rest in ["", "/storage"] {
        put_ok(&user, "col", "a", json!({"payload": "x"})).await;
        put_ok(&user, "other", "b", json!({"payload": "y"})).await;
        let r = user.delete(rest).await;
        assert_eq!(r.status, 200, "DELETE /1.5/42{rest}: {}", r.body);
        assert_eq!(r.body.trim(), "null");
        assert!(r.header("X-Weave-Timestamp").is_some());
        assert_eq!(info_collections(&user).await, (json!({}), 0));
        assert_eq!(ids_in(&user, "col").await, BTreeSet::new());
        assert_eq!(ids_in(&user, "other").await, BTreeSet::new());
    }
    // Deleting an already-empty account is fine too.
    let r = user.delete("").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), "null");
}

// SPEC 6.57 (deleting one user's storage leaves other users alone)
#[tokio::test]
async fn delete_user_storage_leaves_other_users() {
    let server = TestServer::start().await;
    let alice = server.user(42);
    let bob = server.user(43);
    put_ok(&alice, "col", "a", json!({"payload": "x"})).await;
    let tb = put_ok(&bob, "col", "b", json!({"payload": "y"})).await;
    assert_eq!(alice.delete("").await.status, 200);
    assert_eq!(info_collections(&alice).await, (json!({}), 0));
    let (info, lm) = info_collections(&bob).await;
    assert_eq!(json_ts(&info["col"]), tb);
    assert_eq!(lm, tb);
    assert_eq!(ids_in(&bob, "col").await, set(["b"]));
}

// SPEC 6.58
#[tokio::test]
async fn delete_never_written_collection_answers_storage_timestamp() {
    let server = TestServer::start().await;
    let fresh = server.user(1);
    let r = fresh.delete("/storage/never").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), "0.00");
    assert_eq!(info_collections(&fresh).await, (json!({}), 0));

    // A user with data: the body is the unchanged storage timestamp.
    let user = server.user(2);
    let t = put_ok(&user, "col", "a", json!({"payload": "x"})).await;
    let before = info_collections(&user).await;
    let r = user.delete("/storage/never").await;
    assert_eq!(bare_ts(&r), t);
    assert_eq!(r.body.trim(), ts_text(t));
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.58
#[tokio::test]
async fn delete_ids_on_never_written_collection_creates_it() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let start = now_tick();
    let r = user.delete("/storage/never?ids=1,").await;
    let t = bare_ts(&r);
    assert!(t >= start, "{t} >= {start}");
    assert_eq!(r.last_modified(), t);
    let (info, lm) = info_collections(&user).await;
    assert_eq!(info.as_object().unwrap().len(), 1, "{info}");
    assert_eq!(json_ts(&info["never"]), t);
    assert_eq!(lm, t);
    let r = user.get("/storage/never").await;
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.last_modified(), t);
}

// SPEC 6.59
#[tokio::test]
async fn delete_collection_keeps_storage_timestamp_from_going_backwards() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t1 = put_ok(&user, "col_a", "x", json!({"payload": "a"})).await;
    next_tick().await; // different collections may share a tick
    let t2 = put_ok(&user, "col_b", "y", json!({"payload": "b"})).await;
    assert!(t2 > t1);

    let r = user.delete("/storage/col_b").await;
    let t3 = bare_ts(&r);
    assert!(t3 > t2, "{t3} > {t2}");
    assert_eq!(
        r.last_modified(),
        t2,
        "X-Last-Modified = the collection's pre-delete timestamp"
    );
    // For a write X-Weave-Timestamp is its T, even though X-Last-Modified is older here.
    assert_eq!(r.ts_header("X-Weave-Timestamp"), t3);

    let r = user.get("/info/collections").await;
    assert_eq!(r.json().as_object().unwrap().len(), 1, "{}", r.body);
    assert_eq!(json_ts(&r.json()["col_a"]), t1);
    assert_eq!(r.header("X-Weave-Records"), Some("1"));
    assert_eq!(r.last_modified(), t3, "storage ts is the delete's T");
    let r = user.get("/storage/col_b").await;
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_json_error(&user.get("/storage/col_b/y").await, 404, 0);
    assert_eq!(ids_in(&user, "col_a").await, set(["x"]));

    // Deleting the last collection still leaves a non-zero storage timestamp.
    next_tick().await; // deletes of different collections may share a tick
    let r = user.delete("/storage/col_a").await;
    let t4 = bare_ts(&r);
    assert!(t4 > t3, "{t4} > {t3}");
    assert_eq!(info_collections(&user).await, (json!({}), t4));
    // Deleting an absent collection changes nothing and answers the storage ts.
    let r = user.delete("/storage/col_a").await;
    assert_eq!(bare_ts(&r), t4);
    assert_eq!(info_collections(&user).await, (json!({}), t4));
}

// SPEC 6.60
#[tokio::test]
async fn deleting_ids_in_one_collection_leaves_same_id_elsewhere() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let tc = put_ok(&user, "crypto", "b1", json!({"payload": "crypto"})).await;
    put_ok(&user, "clients", "b1", json!({"payload": "client"})).await;
    put_ok(&user, "clients", "b2", json!({"payload": "client2"})).await;
    let r = user.delete("/storage/clients?ids=b1").await;
    bare_ts(&r);
    assert_eq!(ids_in(&user, "clients").await, set(["b2"]));
    let r = user.get("/storage/crypto/b1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["payload"], "crypto");
    assert_eq!(json_ts(&r.json()["modified"]), tc);

    // The same through the item route.
    let r = user.delete("/storage/clients/b2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(user.get("/storage/crypto/b1").await.status, 200);
    let (info, _) = info_collections(&user).await;
    assert_eq!(json_ts(&info["crypto"]), tc);
}

// SPEC 6.61
#[tokio::test]
async fn if_unmodified_since_before_resource_is_412_everywhere() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t_item = put_ok(&user, "col", "TEST", json!({"payload": "orig"})).await;
    let t_coll = put_ok(&user, "col", "OTHER", json!({"payload": "other"})).await;
    assert!(t_coll > t_item);
    let before = info_collections(&user).await;
    let item_old = ts_text(t_item - 10);
    let coll_old = ts_text(t_coll - 10);
    let cases: Vec<(Method, &str, &str, Option<Value>, u64)> = vec![
        (
            Method::PUT,
            "/storage/col/TEST",
            &item_old,
            Some(json!({"payload": "changed"})),
            t_item,
        ),
        (Method::DELETE, "/storage/col/TEST", &item_old, None, t_item),
        (
            Method::POST,
            "/storage/col",
            &coll_old,
            Some(json!([{"id": "TEST", "payload": "changed"}, {"id": "NEW"}])),
            t_coll,
        ),
        (
            Method::DELETE,
            "/storage/col?ids=TEST",
            &coll_old,
            None,
            t_coll,
        ),
        (Method::DELETE, "/storage/col", &coll_old, None, t_coll),
        (Method::GET, "/storage/col/TEST", &item_old, None, t_item),
        (Method::GET, "/storage/col", &coll_old, None, t_coll),
    ];
    for (method, rest, since, body, resource_ts) in cases {
        let what = format!("{method} {rest}");
        let r = with_headers(
            &user,
            method,
            rest,
            &[("X-If-Unmodified-Since", since)],
            body,
        )
        .await;
        assert_eq!(r.status, 412, "{what}: {}", r.body);
        assert_eq!(r.body, "", "{what}");
        assert_eq!(r.last_modified(), resource_ts, "{what}");
    }
    let r = user.get("/storage/col/TEST").await;
    assert_eq!(r.json()["payload"], "orig");
    assert_eq!(json_ts(&r.json()["modified"]), t_item);
    assert_eq!(ids_in(&user, "col").await, set(["TEST", "OTHER"]));
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.61 (SPEC 1.7: storage-level resources use the storage timestamp)
#[tokio::test]
async fn if_unmodified_since_on_storage_delete_uses_storage_timestamp() {
    let server = TestServer::start().await;
    let user = server.user(1);
    put_ok(&user, "col1", "a", json!({"payload": "x"})).await;
    let t = put_ok(&user, "col2", "b", json!({"payload": "y"})).await;
    let old = ts_text(t - 10);
    for rest in ["/storage", ""] {
        let r = with_headers(
            &user,
            Method::DELETE,
            rest,
            &[("X-If-Unmodified-Since", &old)],
            None,
        )
        .await;
        assert_eq!(r.status, 412, "DELETE {rest}: {}", r.body);
        assert_eq!(r.last_modified(), t);
    }
    assert_eq!(ids_in(&user, "col1").await, set(["a"]));
    let r = with_headers(
        &user,
        Method::DELETE,
        "/storage",
        &[("X-If-Unmodified-Since", &ts_text(t))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(info_collections(&user).await, (json!({}), 0));
}

// SPEC 6.62
#[tokio::test]
async fn delete_ids_precondition_uses_collection_timestamp() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t_item = put_ok(&user, "col", "12345", json!({"payload": "x"})).await;
    let t_other = put_ok(&user, "col", "other", json!({"payload": "y"})).await;
    assert!(t_other > t_item);
    let r = with_headers(
        &user,
        Method::DELETE,
        "/storage/col?ids=12345",
        &[("X-If-Unmodified-Since", &ts_text(t_item))],
        None,
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(r.last_modified(), t_other);
    assert_eq!(ids_in(&user, "col").await, set(["12345", "other"]));
    // The item route uses the item's own timestamp, so the same header passes there.
    let r = with_headers(
        &user,
        Method::DELETE,
        "/storage/col/12345",
        &[("X-If-Unmodified-Since", &ts_text(t_item))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids_in(&user, "col").await, set(["other"]));
}

// SPEC 6.63
#[tokio::test]
async fn if_unmodified_since_equal_to_resource_succeeds() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t0 = post_ok(&user, "col", three_items()).await;

    let r = with_headers(
        &user,
        Method::POST,
        "/storage/col",
        &[("X-If-Unmodified-Since", &ts_text(t0))],
        Some(json!([{"id": "15", "payload": "d"}])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t1 = r.last_modified();
    assert!(t1 > t0);

    let r = with_headers(
        &user,
        Method::GET,
        "/storage/col",
        &[("X-If-Unmodified-Since", &ts_text(t1))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.last_modified(), t1);
    assert_eq!(r.json().as_array().unwrap().len(), 4);

    let r = with_headers(
        &user,
        Method::DELETE,
        "/storage/col?ids=12",
        &[("X-If-Unmodified-Since", &ts_text(t1))],
        None,
    )
    .await;
    let t2 = bare_ts(&r);
    assert!(t2 > t1);

    // Item 13 was written at t0; the item resource uses the item's timestamp.
    let r = with_headers(
        &user,
        Method::DELETE,
        "/storage/col/13",
        &[("X-If-Unmodified-Since", &ts_text(t0))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t3 = json_ts(&r.json()["modified"]);

    let r = with_headers(
        &user,
        Method::DELETE,
        "/storage/col",
        &[("X-If-Unmodified-Since", &ts_text(t3))],
        None,
    )
    .await;
    let t4 = bare_ts(&r);
    assert!(t4 > t3);
    assert_eq!(ids_in(&user, "col").await, BTreeSet::new());
}

// SPEC 6.63 (SPEC 1.5: X-If-Unmodified-Since: 0 gives create-only PUT semantics)
#[tokio::test]
async fn if_unmodified_since_zero_is_create_only() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = with_headers(
        &user,
        Method::PUT,
        "/storage/col/new",
        &[("X-If-Unmodified-Since", "0")],
        Some(json!({"payload": "first"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.last_modified();
    let r = with_headers(
        &user,
        Method::PUT,
        "/storage/col/new",
        &[("X-If-Unmodified-Since", "0")],
        Some(json!({"payload": "second"})),
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(r.last_modified(), t);
    let r = user.get("/storage/col/new").await;
    assert_eq!(r.json()["payload"], "first");
    assert_eq!(json_ts(&r.json()["modified"]), t);
}

// SPEC 6.64
#[tokio::test]
async fn x_weave_timestamp_is_at_least_request_start() {
    let server = TestServer::start().await;
    let user = server.user(1);

    let start = now_tick();
    let r = user.put("/storage/col/a", json!({"payload": "x"})).await;
    let end = now_tick();
    assert_eq!(r.status, 200, "{}", r.body);
    let xwt = r.ts_header("X-Weave-Timestamp");
    assert!(start <= xwt && xwt <= end, "{start} <= {xwt} <= {end}");
    assert_eq!(xwt, r.last_modified(), "for writes X-Weave-Timestamp = T");

    let start = now_tick();
    let r = user
        .post("/storage/col", json!([{"id": "b", "payload": "y"}]))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let xwt = r.ts_header("X-Weave-Timestamp");
    assert!(xwt >= start, "{xwt} >= {start}");
    assert_eq!(xwt, r.last_modified());

    let start = now_tick();
    for rest in ["/storage/col", "/storage/col/a", "/info/collections"] {
        let r = user.get(rest).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let xwt = r.ts_header("X-Weave-Timestamp");
        assert!(xwt >= start, "{rest}: {xwt} >= {start}");
        assert!(xwt >= r.last_modified(), "{rest}");
    }
    // Error responses carry it too.
    let start = now_tick();
    let r = user.get("/storage/col/missing").await;
    assert_eq!(r.status, 404);
    assert!(r.ts_header("X-Weave-Timestamp") >= start);
}

// SPEC 6.65
#[tokio::test]
async fn info_collections_tracks_each_collection_timestamp() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let ts1 = post_ok(&user, "col1", json!([{"id": "a", "payload": "x"}])).await;
    next_tick().await; // different collections may share a tick
    let ts2 = post_ok(&user, "col2", json!([{"id": "b", "payload": "y"}])).await;
    assert!(ts2 > ts1);
    let r = user.get("/info/collections").await;
    assert_eq!(r.status, 200);
    let info = r.json();
    assert_eq!(info.as_object().unwrap().len(), 2, "{info}");
    assert_eq!(json_ts(&info["col1"]), ts1);
    assert_eq!(json_ts(&info["col2"]), ts2);
    assert_eq!(r.header("X-Weave-Records"), Some("2"));
    assert_eq!(r.last_modified(), ts2);

    let ts3 = post_ok(&user, "col2", json!([{"id": "c", "payload": "z"}])).await;
    assert!(ts3 > ts2);
    let (info, lm) = info_collections(&user).await;
    assert_eq!(info.as_object().unwrap().len(), 2, "{info}");
    assert_eq!(json_ts(&info["col1"]), ts1);
    assert_eq!(json_ts(&info["col2"]), ts3);
    assert_eq!(lm, ts3);
}

// SPEC 6.66
#[tokio::test]
async fn new_collection_appears_after_info_collections_was_read() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let other = server.user(2);
    put_ok(&user, "first_col", "a", json!({"payload": "x"})).await;
    let (info, _) = info_collections(&user).await;
    assert_eq!(info.as_object().unwrap().len(), 1, "{info}");

    let t = put_ok(&user, "brand_new_col", "b", json!({"payload": "y"})).await;
    let (info, lm) = info_collections(&user).await;
    assert_eq!(info.as_object().unwrap().len(), 2, "{info}");
    assert_eq!(json_ts(&info["brand_new_col"]), t);
    assert_eq!(lm, t);

    // A name another user created (already mapped to an id) also shows up for this one.
    put_ok(&other, "shared_name", "c", json!({"payload": "z"})).await;
    assert_eq!(
        info_collections(&user).await.0.as_object().unwrap().len(),
        2
    );
    let t2 = put_ok(&user, "shared_name", "d", json!({"payload": "w"})).await;
    let (info, _) = info_collections(&user).await;
    assert_eq!(info.as_object().unwrap().len(), 3, "{info}");
    assert_eq!(json_ts(&info["shared_name"]), t2);
    assert_eq!(ids_in(&user, "shared_name").await, set(["d"]));
}

// SPEC 6.67
#[tokio::test]
async fn meta_global_lifecycle() {
    let server = TestServer::start().await;
    let user = server.user(1);
    assert_json_error(&user.get("/storage/meta/global").await, 404, 0);
    let r = user.get("/storage/meta").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.header("X-Weave-Records"), Some("0"));
    let payload = r#"{"syncID":"foo","storageVersion":5}"#;
    let t = put_ok(&user, "meta", "global", json!({"payload": payload})).await;
    let r = user.get("/storage/meta").await;
    assert_eq!(r.json(), json!(["global"]));
    assert_eq!(r.last_modified(), t);
    let r = user.get("/storage/meta/global").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], payload);
    assert_eq!(r.last_modified(), t);
}
