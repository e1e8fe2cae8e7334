//! SPEC section 6, "Storage — writes and validation" (cases 31 to 53), tested over HTTP.
#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

// Default limits from SPEC section 0 / 1.11.
backend_matrix!();
proxy_matrix!();

const MAX_POST_RECORDS: usize = 100;
const MAX_POST_BYTES: usize = 2_621_440;
/// The batch limits the server advertises (clamped on Spanner to one transaction's budget).
fn max_total_records(server: &TestServer) -> u64 {
    if common::db::spanner(server) {
        9_984
    } else {
        10_000
    }
}

fn max_total_bytes(server: &TestServer) -> u64 {
    if common::db::spanner(server) {
        100_000_000
    } else {
        262_144_000
    }
}

// SPEC 6.31
#[tokio::test]
async fn put_overwrites_existing_payload() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t1 = put_ok(&user, "col2", "TEST", json!({"payload": "XXX"})).await;
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.json()["payload"], "XXX");
    let t2 = put_ok(&user, "col2", "TEST", json!({"payload": "YYY"})).await;
    assert!(t2 > t1, "{t2} > {t1}");
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], "YYY");
    assert_eq!(json_ts(&r.json()["modified"]), t2);
    assert_eq!(r.last_modified(), t2);
    assert_eq!(ids_in(&user, "col2").await, set(["TEST"]));
}

// SPEC 6.32
#[tokio::test]
async fn put_empty_object_creates_item_with_empty_payload() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t = put_ok(&user, "col2", "empty", json!({})).await;
    let r = user.get("/storage/col2/empty").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(keys(&v), set(["id", "modified", "payload"]), "{v}");
    assert_eq!(v["id"], "empty");
    assert_eq!(v["payload"], "");
    assert_eq!(json_ts(&v["modified"]), t);
    let (info, lm) = info_collections(&user).await;
    assert_eq!(json_ts(&info["col2"]), t);
    assert_eq!(lm, t);
}

// SPEC 6.33
#[tokio::test]
async fn put_non_object_or_malformed_bso_is_400_code_8_and_writes_nothing() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t = put_ok(&user, "col2", "TEST", json!({"payload": "orig"})).await;
    let before = info_collections(&user).await;
    let bodies = [
        json!("notabso"),
        json!(42),
        json!({"id": ["01", "02"], "payload": {"3": "4"}}),
    ];
    for body in bodies {
        // Both onto an existing item and onto a new one.
        for id in ["TEST", "NEW"] {
            let r = user.put(&format!("/storage/col2/{id}"), body.clone()).await;
            assert_json_error(&r, 400, 8);
        }
    }
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.json()["payload"], "orig");
    assert_eq!(json_ts(&r.json()["modified"]), t);
    assert_json_error(&user.get("/storage/col2/NEW").await, 404, 0);
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.33
#[tokio::test]
async fn put_body_that_is_not_json_is_400_code_8() {
    let server = TestServer::start().await;
    let user = server.user(1);
    for body in ["", "{", "not json at all", "[]", "null"] {
        let r = send_raw(
            &user,
            Method::PUT,
            "/storage/col2/x",
            Some("application/json"),
            body,
        )
        .await;
        assert_json_error(&r, 400, 8);
    }
    assert_json_error(&user.get("/storage/col2/x").await, 404, 0);
    assert_eq!(info_collections(&user).await.0, json!({}));
}

// SPEC 6.34
#[tokio::test]
async fn post_non_list_body_is_400_code_8() {
    let server = TestServer::start().await;
    let user = server.user(1);
    for body in [
        json!("notalist"),
        json!(42),
        json!({"id": "01", "payload": "x"}),
    ] {
        let r = user.post("/storage/col2", body).await;
        assert_json_error(&r, 400, 8);
    }
    assert_eq!(ids_in(&user, "col2").await, BTreeSet::new());
    assert_eq!(info_collections(&user).await, (json!({}), 0));
}

// SPEC 6.34
#[tokio::test]
async fn post_list_with_non_object_element_rejects_whole_request() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t = put_ok(&user, "col2", "01", json!({"payload": "OLD"})).await;
    let before = info_collections(&user).await;
    for bad in [json!("BAD"), json!(42), json!(null), json!(["x"])] {
        let r = user
            .post(
                "/storage/col2",
                json!([{"id": "01", "payload": "GOOD"}, bad]),
            )
            .await;
        assert_json_error(&r, 400, 8);
    }
    // The good item was not written either.
    let r = user.get("/storage/col2/01").await;
    assert_eq!(r.json()["payload"], "OLD");
    assert_eq!(json_ts(&r.json()["modified"]), t);
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.34 (SPEC 1.9: missing/non-string id, duplicate id → whole request 400/8)
#[tokio::test]
async fn post_item_without_string_id_or_with_duplicate_id_rejects_whole_request() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let bodies = [
        json!([{"id": "01", "payload": "GOOD"}, {"payload": "no id"}]),
        json!([{"id": "01", "payload": "GOOD"}, {"id": 2, "payload": "numeric id"}]),
        json!([{"id": "01", "payload": "GOOD"}, {"id": null, "payload": "null id"}]),
        json!([{"id": "01", "payload": "GOOD"}, {"id": "01", "payload": "dup"}]),
    ];
    for body in bodies {
        assert_json_error(&user.post("/storage/col2", body).await, 400, 8);
    }
    assert_eq!(ids_in(&user, "col2").await, BTreeSet::new());
    assert_eq!(info_collections(&user).await, (json!({}), 0));
}

// SPEC 6.35
#[tokio::test]
async fn post_item_with_unknown_field_fails_only_that_item() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = user
        .post(
            "/storage/col2",
            json!([{"id": "01", "payload": "GOOD"}, {"id": "02", "invalid": "ya"}]),
        )
        .await;
    let (t, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["01"]);
    assert_eq!(keys(&failed), set(["02"]));
    assert_eq!(failed["02"], "unknown field invalid");
    assert_eq!(ids_in(&user, "col2").await, set(["01"]));
    let r = user.get("/storage/col2/01").await;
    assert_eq!(r.json()["payload"], "GOOD");
    assert_eq!(json_ts(&r.json()["modified"]), t);
}

// SPEC 6.36
#[tokio::test]
async fn post_items_with_invalid_ids_fail_individually() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let long = "X".repeat(65);
    let max = "X".repeat(64);
    let bad = ["A\nB", "A\n", "\nN", "A\tB", "", long.as_str(), "caf\u{e9}"];
    let mut items: Vec<Value> = bad
        .iter()
        .map(|id| json!({"id": id, "payload": "x"}))
        .collect();
    items.push(json!({"id": "ok", "payload": "x"}));
    items.push(json!({"id": max, "payload": "x"}));
    items.push(json!({"id": " ~{}", "payload": "x"}));
    let r = user.post("/storage/col2", Value::Array(items)).await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(
        success,
        vec!["ok".to_string(), max.clone(), " ~{}".to_string()]
    );
    let expected: BTreeSet<String> = bad.iter().map(|s| s.to_string()).collect();
    assert_eq!(keys(&failed), expected);
    let stored = ids_in(&user, "col2").await;
    assert_eq!(
        stored,
        [String::from("ok"), max, " ~{}".into()]
            .into_iter()
            .collect()
    );
}

// SPEC 6.36 (SPEC 1.5: `modified` present and collection bumped even if every item failed)
#[tokio::test]
async fn post_where_every_item_fails_still_bumps_collection() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t0 = put_ok(&user, "col2", "keep", json!({"payload": "k"})).await;
    let r = user
        .post("/storage/col2", json!([{"id": "A\nB", "payload": "x"}]))
        .await;
    let (t, success, failed) = assert_post_ok(&r);
    assert!(success.is_empty(), "{success:?}");
    assert_eq!(keys(&failed), set(["A\nB"]));
    assert!(t > t0, "{t} > {t0}");
    let (info, lm) = info_collections(&user).await;
    assert_eq!(json_ts(&info["col2"]), t);
    assert_eq!(lm, t);
    assert_eq!(ids_in(&user, "col2").await, set(["keep"]));
    let r = user.get("/storage/col2/keep").await;
    assert_eq!(json_ts(&r.json()["modified"]), t0);
}

/// Field values that make a BSO invalid (SPEC 6.37).
fn invalid_field_bsos() -> Vec<(&'static str, Value)> {
    vec![
        ("si_text", json!({"payload": "x", "sortindex": "xxx_meh"})),
        ("si_str_float", json!({"payload": "x", "sortindex": "2.6"})),
        (
            "si_str_big",
            json!({"payload": "x", "sortindex": "1000000000"}),
        ),
        ("si_str_int", json!({"payload": "x", "sortindex": "12"})),
        ("si_float", json!({"payload": "x", "sortindex": 2.6})),
        (
            "si_big",
            json!({"payload": "x", "sortindex": 1_000_000_000}),
        ),
        (
            "si_small",
            json!({"payload": "x", "sortindex": -1_000_000_000}),
        ),
        ("payload_num", json!({"payload": 42})),
        ("payload_obj", json!({"payload": {"3": "4"}})),
        ("ttl_text", json!({"payload": "x", "ttl": "eh?"})),
        ("ttl_str_float", json!({"payload": "x", "ttl": "4.2"})),
        ("ttl_float", json!({"payload": "x", "ttl": 4.2})),
        ("ttl_negative", json!({"payload": "x", "ttl": -1})),
        ("ttl_big", json!({"payload": "x", "ttl": 1_000_000_000})),
        ("unknown", json!({"payload": "x", "what": "ever"})),
        ("payload_size", json!({"payload": "x", "payload_size": 1})),
    ]
}

// SPEC 6.37
#[tokio::test]
async fn post_items_with_invalid_fields_fail_individually() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let mut items = Vec::new();
    for (id, mut bso) in invalid_field_bsos() {
        bso["id"] = json!(id);
        items.push(bso);
    }
    items.push(json!({"id": "good", "payload": "x", "sortindex": 999_999_999, "ttl": 3600}));
    items.push(json!({"id": "good2", "payload": "x", "sortindex": -999_999_999}));
    let r = user.post("/storage/col2", Value::Array(items)).await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["good", "good2"]);
    let expected: BTreeSet<String> = invalid_field_bsos()
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(keys(&failed), expected);
    for (id, reason) in failed.as_object().unwrap() {
        assert!(reason.is_string(), "{id}: {reason}");
    }
    assert_eq!(ids_in(&user, "col2").await, set(["good", "good2"]));
    let r = user.get("/storage/col2/good").await;
    assert_eq!(r.json()["sortindex"], 999_999_999);
    let r = user.get("/storage/col2/good2").await;
    assert_eq!(r.json()["sortindex"], -999_999_999);
}

// SPEC 6.37
#[tokio::test]
async fn put_with_invalid_field_is_400_code_8_and_item_unchanged() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t = put_ok(
        &user,
        "col2",
        "TEST",
        json!({"payload": "orig", "sortindex": 5}),
    )
    .await;
    let before = info_collections(&user).await;
    for (name, bso) in invalid_field_bsos() {
        let r = user.put("/storage/col2/TEST", bso.clone()).await;
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert_json_error(&r, 400, 8);
        let r = user.put("/storage/col2/NEW", bso).await;
        assert_json_error(&r, 400, 8);
    }
    // A PUT body id is still validated even though the URL id wins.
    let r = user
        .put("/storage/col2/TEST", json!({"id": "A\nB", "payload": "x"}))
        .await;
    assert_json_error(&r, 400, 8);
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(
        r.json(),
        json!({"id": "TEST", "modified": r.json()["modified"], "payload": "orig", "sortindex": 5})
    );
    assert_eq!(json_ts(&r.json()["modified"]), t);
    assert_json_error(&user.get("/storage/col2/NEW").await, 404, 0);
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.37 (SPEC 1.3: a PUT body id other than the URL id is ignored)
#[tokio::test]
async fn put_body_id_is_ignored_in_favour_of_url_id() {
    let server = TestServer::start().await;
    let user = server.user(1);
    put_ok(
        &user,
        "col2",
        "url_id",
        json!({"id": "body_id", "payload": "x"}),
    )
    .await;
    assert_eq!(ids_in(&user, "col2").await, set(["url_id"]));
    let r = user.get("/storage/col2/url_id").await;
    assert_eq!(r.json()["id"], "url_id");
}

// SPEC 6.38
#[tokio::test]
async fn put_negative_ttl_is_400_but_negative_sortindex_is_accepted() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = user
        .put("/storage/col2/TEST", json!({"payload": "x", "ttl": -1}))
        .await;
    assert_json_error(&r, 400, 8);
    assert_json_error(&user.get("/storage/col2/TEST").await, 404, 0);
    assert_eq!(info_collections(&user).await.0, json!({}));

    let t = put_ok(
        &user,
        "col2",
        "TEST",
        json!({"payload": "x", "sortindex": -42}),
    )
    .await;
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sortindex"], -42);
    assert_eq!(json_ts(&r.json()["modified"]), t);
}

// SPEC 6.39
#[tokio::test]
async fn post_ttl_upper_bound_is_999_999_999() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = user
        .post(
            "/storage/col2",
            json!([
                {"id": "three_years", "payload": "x", "ttl": 94_608_000},
                {"id": "max", "payload": "x", "ttl": 999_999_999},
                {"id": "zero_ok", "payload": "x", "ttl": 0},
                {"id": "too_big", "payload": "x", "ttl": 1_000_000_000},
            ]),
        )
        .await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["three_years", "max", "zero_ok"]);
    assert_eq!(keys(&failed), set(["too_big"]));
    assert_eq!(ids_in(&user, "col2").await, set(["three_years", "max"]));
}

// SPEC 6.40
#[tokio::test]
async fn collection_field_is_accepted_in_post_and_put() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = user
        .post(
            "/storage/meta",
            json!([{"id": "global", "collection": "meta", "payload": "g"}]),
        )
        .await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["global"]);
    assert_eq!(failed, json!({}));
    // The field is ignored: the URL collection wins.
    put_ok(
        &user,
        "col2",
        "x",
        json!({"collection": "other", "payload": "p"}),
    )
    .await;
    assert_eq!(ids_in(&user, "meta").await, set(["global"]));
    assert_eq!(ids_in(&user, "col2").await, set(["x"]));
    assert_eq!(ids_in(&user, "other").await, BTreeSet::new());
    let r = user.get("/storage/meta/global").await;
    assert_eq!(keys(&r.json()), set(["id", "modified", "payload"]));
}

// SPEC 6.40
#[tokio::test]
async fn client_supplied_modified_is_ignored() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = user
        .put(
            "/storage/col2/TEST",
            json!({"payload": "x", "modified": 12}),
        )
        .await;
    let t = assert_put_ok(&r);
    assert_eq!(r.ts_header("X-Weave-Timestamp"), t);
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(json_ts(&r.json()["modified"]), t);
    assert_ne!(json_ts(&r.json()["modified"]), 12_000);

    let r = user
        .post(
            "/storage/col2",
            json!([{"id": "p", "payload": "x", "modified": 12}]),
        )
        .await;
    let (t2, success, _) = assert_post_ok(&r);
    assert_eq!(success, vec!["p"]);
    let r = user.get("/storage/col2/p").await;
    assert_eq!(json_ts(&r.json()["modified"]), t2);
}

// SPEC 6.41
#[tokio::test]
async fn post_application_newlines_stores_each_line() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let body = "{\"id\": \"1\", \"payload\": \"one\\nline\"}\n{\"id\": \"2\", \"payload\": \"two\", \"sortindex\": 2}\n";
    let r = send_raw(
        &user,
        Method::POST,
        "/storage/col2",
        Some("application/newlines"),
        body,
    )
    .await;
    let (t, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["1", "2"]);
    assert_eq!(failed, json!({}));
    let r = user.get("/storage/col2/1").await;
    assert_eq!(r.json()["payload"], "one\nline");
    assert_eq!(json_ts(&r.json()["modified"]), t);
    let r = user.get("/storage/col2/2").await;
    assert_eq!(r.json()["payload"], "two");
    assert_eq!(r.json()["sortindex"], 2);
}

// SPEC 6.41
#[tokio::test]
async fn post_text_plain_and_json_with_charset_are_accepted() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = send_raw(
        &user,
        Method::POST,
        "/storage/col2",
        Some("text/plain"),
        r#"[{"id": "tp", "payload": "x"}]"#,
    )
    .await;
    assert_eq!(assert_post_ok(&r).1, vec!["tp"]);
    let r = send_raw(
        &user,
        Method::POST,
        "/storage/col2",
        Some("application/json; charset=utf-8"),
        r#"[{"id": "cs", "payload": "x"}]"#,
    )
    .await;
    assert_eq!(assert_post_ok(&r).1, vec!["cs"]);
    assert_eq!(ids_in(&user, "col2").await, set(["tp", "cs"]));
}

// SPEC 6.41
#[tokio::test]
async fn put_text_plain_json_is_accepted() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = send_raw(
        &user,
        Method::PUT,
        "/storage/col2/TEST",
        Some("text/plain"),
        r#"{"payload": "plain", "sortindex": 4}"#,
    )
    .await;
    let t = assert_put_ok(&r);
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.json()["payload"], "plain");
    assert_eq!(r.json()["sortindex"], 4);
    assert_eq!(json_ts(&r.json()["modified"]), t);
}

// SPEC 6.41
#[tokio::test]
async fn unsupported_or_missing_content_type_is_415_and_stores_nothing() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t = put_ok(&user, "col2", "TEST", json!({"payload": "orig"})).await;
    let before = info_collections(&user).await;
    for ct in [
        Some("application/octet-stream"),
        Some("application/javascript"),
        Some("text/html"),
        None,
    ] {
        for (method, rest, body) in [
            (
                Method::PUT,
                "/storage/col2/TEST",
                r#"{"payload": "changed"}"#,
            ),
            (Method::PUT, "/storage/col2/NEW", r#"{"payload": "new"}"#),
            (
                Method::POST,
                "/storage/col2",
                r#"[{"id": "NEW", "payload": "new"}, {"id": "TEST", "payload": "changed"}]"#,
            ),
        ] {
            let r = send_raw(&user, method, rest, ct, body).await;
            assert_json_error(&r, 415, 0);
        }
    }
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.json()["payload"], "orig");
    assert_eq!(json_ts(&r.json()["modified"]), t);
    assert_eq!(ids_in(&user, "col2").await, set(["TEST"]));
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.41 (SPEC 1.7: PUT with application/newlines passes the 415 check, then fails as JSON)
#[tokio::test]
async fn put_application_newlines_is_400_code_8() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let r = send_raw(
        &user,
        Method::PUT,
        "/storage/col2/TEST",
        Some("application/newlines"),
        "{\"payload\": \"x\"}\n{\"payload\": \"y\"}\n",
    )
    .await;
    assert_json_error(&r, 400, 8);
    assert_json_error(&user.get("/storage/col2/TEST").await, 404, 0);
}

fn numbered_items(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("{i:03}"), "payload": "x"}))
            .collect(),
    )
}

// SPEC 6.42
#[tokio::test]
async fn post_below_max_post_records_all_succeed() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let n = MAX_POST_RECORDS - 5;
    let r = user.post("/storage/col2", numbered_items(n)).await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success.len(), n);
    assert_eq!(failed, json!({}));
    let r = user.get("/info/collection_counts").await;
    assert_eq!(r.json()["col2"], n);
}

// SPEC 6.42
#[tokio::test]
async fn post_above_max_post_records_fails_the_excess_with_retry_bso() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let max = MAX_POST_RECORDS;
    let r = user.post("/storage/col2", numbered_items(max + 5)).await;
    let (_, success, failed) = assert_post_ok(&r);
    let expected_success: Vec<String> = (0..max).map(|i| format!("{i:03}")).collect();
    assert_eq!(success, expected_success);
    let failed = failed.as_object().unwrap().clone();
    assert_eq!(failed.len(), 5);
    for i in max..max + 5 {
        assert_eq!(failed[&format!("{i:03}")], "retry bso");
    }
    let r = user.get("/info/collection_counts").await;
    assert_eq!(r.json()["col2"], max);
    assert_json_error(&user.get(&format!("/storage/col2/{max:03}")).await, 404, 0);
}

// SPEC 6.42 (the limit is configurable and served by info/configuration)
#[tokio::test]
async fn post_records_limit_follows_settings() {
    let server = TestServer::start_with(|s| s.syncstorage.limits.max_post_records = 3).await;
    let user = server.user(1);
    let r = user.post("/storage/col2", numbered_items(5)).await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["000", "001", "002"]);
    assert_eq!(failed, json!({"003": "retry bso", "004": "retry bso"}));
    // Invalid items do not count towards the limit.
    let r = user
        .post(
            "/storage/col3",
            json!([
                {"id": "a", "payload": 1},
                {"id": "b", "payload": "x"},
                {"id": "c", "payload": "x"},
                {"id": "d", "payload": "x"},
            ]),
        )
        .await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["b", "c", "d"]);
    assert_eq!(keys(&failed), set(["a"]));
}

// SPEC 6.43
#[tokio::test]
async fn post_bytes_over_max_post_bytes_fail_exactly_the_overflowing_item() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let max = MAX_POST_BYTES;
    let item = 227 * 1024;
    let n = max / item;
    let leftover = max - n * item;
    let mut items: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "X".repeat(item)}))
        .collect();
    items.push(json!({"id": "last", "payload": "X".repeat(leftover + 1)}));
    let r = user.post("/storage/col2", Value::Array(items)).await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success.len(), n);
    assert_eq!(failed, json!({"last": "retry bytes"}));
    let r = user.get("/info/collection_counts").await;
    assert_eq!(r.json()["col2"], n);
    assert_json_error(&user.get("/storage/col2/last").await, 404, 0);

    // Exactly filling the limit is fine.
    let mut items: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "Y".repeat(item)}))
        .collect();
    items.push(json!({"id": "last", "payload": "Y".repeat(leftover)}));
    let r = user.post("/storage/col3", Value::Array(items)).await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success.len(), n + 1);
    assert_eq!(failed, json!({}));
}

// SPEC 6.43 (SPEC 1.9: the running total keeps growing, so later items with payloads fail too)
#[tokio::test]
async fn post_bytes_running_total_fails_every_later_item_with_payload() {
    let server = TestServer::start_with(|s| s.syncstorage.limits.max_post_bytes = 10).await;
    let user = server.user(1);
    let r = user
        .post(
            "/storage/col2",
            json!([
                {"id": "a", "payload": "123456"},
                {"id": "b", "payload": "12345"},
                {"id": "c", "payload": "1"},
                {"id": "d", "sortindex": 1},
            ]),
        )
        .await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["a", "d"]);
    assert_eq!(failed, json!({"b": "retry bytes", "c": "retry bytes"}));
    assert_eq!(ids_in(&user, "col2").await, set(["a", "d"]));
}

// SPEC 6.43 (SPEC 1.5/1.11: oversized payloads: PUT → 400/8, POST item → "retry bytes")
#[tokio::test]
async fn payload_over_max_record_payload_bytes_is_rejected() {
    let server =
        TestServer::start_with(|s| s.syncstorage.limits.max_record_payload_bytes = 5).await;
    let user = server.user(1);
    put_ok(&user, "col2", "ok", json!({"payload": "12345"})).await;
    let r = user
        .put("/storage/col2/ok", json!({"payload": "123456"}))
        .await;
    assert_json_error(&r, 400, 8);
    assert_eq!(
        user.get("/storage/col2/ok").await.json()["payload"],
        "12345"
    );
    let r = user
        .post(
            "/storage/col2",
            json!([{"id": "big", "payload": "123456"}, {"id": "small", "payload": "1"}]),
        )
        .await;
    let (_, success, failed) = assert_post_ok(&r);
    assert_eq!(success, vec!["small"]);
    assert_eq!(failed, json!({"big": "retry bytes"}));
    assert_eq!(ids_in(&user, "col2").await, set(["ok", "small"]));
}

// SPEC 6.44
#[tokio::test]
async fn batch_post_bytes_limit_counts_all_items() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let max = MAX_POST_BYTES;
    let mut bsos = json!([
        {"id": "little", "payload": "XXX"},
        {"id": "big", "payload": "X".repeat(max - 3)},
    ]);
    let r = user.post("/storage/col2?batch=true", bsos.clone()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let body = r.json();
    assert!(body["batch"].is_string(), "{body}");
    assert_eq!(body["failed"], json!({}));
    assert_eq!(strings(&body["success"]), vec!["little", "big"]);

    bsos[1]["payload"] = json!("X".repeat(max - 2));
    let r = user.post("/storage/col2?batch=true", bsos).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let body = r.json();
    assert_eq!(strings(&body["success"]), vec!["little"]);
    assert_eq!(body["failed"], json!({"big": "retry bytes"}));
    // Nothing is visible before a commit.
    assert_eq!(ids_in(&user, "col2").await, BTreeSet::new());
}

async fn post_with_header(
    user: &User<'_>,
    rest: &str,
    name: &str,
    value: &str,
    body: Value,
) -> Resp {
    let rb = user
        .request(Method::POST, rest)
        .header("Content-Type", "application/json")
        .header(name, value)
        .body(body.to_string());
    user.send(rb).await
}

// SPEC 6.45
#[tokio::test]
async fn x_weave_total_bytes_over_limit_is_400_code_17() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let max = max_total_bytes(&server);
    let item = json!([{"id": "a", "payload": "x"}]);
    let r = post_with_header(
        &user,
        "/storage/col2?batch=true",
        "X-Weave-Total-Bytes",
        &max.to_string(),
        item.clone(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post_with_header(
        &user,
        "/storage/col2",
        "X-Weave-Total-Bytes",
        &max.to_string(),
        item.clone(),
    )
    .await;
    assert_eq!(assert_post_ok(&r).1, vec!["a"]);
    let before = info_collections(&user).await;

    for rest in ["/storage/col2?batch=true", "/storage/col2"] {
        let r = post_with_header(
            &user,
            rest,
            "X-Weave-Total-Bytes",
            &(max + 1).to_string(),
            json!([{"id": "b", "payload": "y"}]),
        )
        .await;
        assert_json_error(&r, 400, 17);
    }
    assert_eq!(ids_in(&user, "col2").await, set(["a"]));
    assert_eq!(info_collections(&user).await, before);
}

// SPEC 6.45 (SPEC 1.7: the other X-Weave-* limit headers)
#[tokio::test]
async fn x_weave_limit_headers_over_limit_are_400_code_17() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let cases = [
        ("X-Weave-Records", MAX_POST_RECORDS as u64),
        ("X-Weave-Bytes", MAX_POST_BYTES as u64),
        ("X-Weave-Total-Records", max_total_records(&server)),
        ("X-Weave-Total-Bytes", max_total_bytes(&server)),
    ];
    for (name, max) in cases {
        let r = post_with_header(
            &user,
            "/storage/col2",
            name,
            &max.to_string(),
            json!([{"id": "ok", "payload": "x"}]),
        )
        .await;
        assert_eq!(r.status, 200, "{name}={max}: {}", r.body);
        let r = post_with_header(
            &user,
            "/storage/col2",
            name,
            &(max + 1).to_string(),
            json!([{"id": "no", "payload": "x"}]),
        )
        .await;
        assert_json_error(&r, 400, 17);
        for garbage in ["abc", "-1", "1.5"] {
            let r = post_with_header(
                &user,
                "/storage/col2",
                name,
                garbage,
                json!([{"id": "no", "payload": "x"}]),
            )
            .await;
            assert_json_error(&r, 400, 0);
        }
    }
    assert_eq!(ids_in(&user, "col2").await, set(["ok"]));
}

const BAD_IV_PAYLOAD: &str =
    r#"{"ciphertext": "abc", "IV": "AAAAAAAAAAAAAAAAAAAAAA==", "hmac": "def"}"#;

// SPEC 6.46
#[tokio::test]
async fn crypto_known_bad_payload_is_rejected() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let compact = r#"{"ciphertext":"abc","IV":"AAAAAAAAAAAAAAAAAAAAAA==","hmac":"def"}"#;
    for payload in [BAD_IV_PAYLOAD, compact] {
        for id in ["keys", "blerg"] {
            let r = user
                .put(
                    &format!("/storage/crypto/{id}"),
                    json!({"payload": payload}),
                )
                .await;
            assert_json_error(&r, 400, 8);
        }
        let r = user
            .post(
                "/storage/crypto",
                json!([{"id": "keys", "payload": payload}]),
            )
            .await;
        assert_json_error(&r, 400, 8);
        // One bad item fails the whole request, good items included.
        let r = user
            .post(
                "/storage/crypto",
                json!([{"id": "good", "payload": "fine"}, {"id": "keys", "payload": payload}]),
            )
            .await;
        assert_json_error(&r, 400, 8);
    }
    assert_eq!(ids_in(&user, "crypto").await, BTreeSet::new());
    assert_eq!(info_collections(&user).await, (json!({}), 0));

    // The same payload is fine elsewhere, and a normal IV is fine in crypto.
    put_ok(
        &user,
        "bookmarks",
        "keys",
        json!({"payload": BAD_IV_PAYLOAD}),
    )
    .await;
    let r = user
        .post(
            "/storage/bookmarks",
            json!([{"id": "blerg", "payload": BAD_IV_PAYLOAD}]),
        )
        .await;
    assert_eq!(assert_post_ok(&r).1, vec!["blerg"]);
    let good = r#"{"ciphertext": "abc", "IV": "AAAAAAAAAAAAAAAAAAAAAB==", "hmac": "def"}"#;
    put_ok(&user, "crypto", "keys", json!({"payload": good})).await;
    let r = user.get("/storage/bookmarks/keys").await;
    assert_eq!(r.json()["payload"], BAD_IV_PAYLOAD);
}

// SPEC 6.47
#[tokio::test]
async fn put_with_null_ttl_is_readable() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t = put_ok(&user, "col2", "TEST", json!({"payload": "x", "ttl": null})).await;
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["payload"], "x");
    assert_eq!(json_ts(&r.json()["modified"]), t);
    assert_eq!(ids_in(&user, "col2").await, set(["TEST"]));
    // null sortindex is like an absent one.
    put_ok(
        &user,
        "col2",
        "N",
        json!({"payload": "x", "sortindex": null}),
    )
    .await;
    let r = user.get("/storage/col2/N").await;
    assert_eq!(keys(&r.json()), set(["id", "modified", "payload"]));
}

// SPEC 6.47 (SPEC 1.3: ttl null on an existing BSO keeps its old expiry)
#[tokio::test]
async fn null_ttl_on_existing_item_keeps_its_expiry() {
    let server = TestServer::start().await;
    let user = server.user(1);
    put_ok(&user, "col2", "TEST", json!({"payload": "x", "ttl": 1})).await;
    put_ok(&user, "col2", "TEST", json!({"payload": "y", "ttl": null})).await;
    assert_eq!(user.get("/storage/col2/TEST").await.json()["payload"], "y");
    sleep_ms(1100).await;
    assert_json_error(&user.get("/storage/col2/TEST").await, 404, 0);
}

// SPEC 6.48
#[tokio::test]
async fn ttl_expired_items_disappear_from_listings() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t0 = put_ok(&user, "col2", "TEST1", json!({"payload": "xxx", "ttl": 0})).await;
    sleep_ms(1100).await;
    let r = user.get("/storage/col2").await;
    assert_eq!(r.json(), json!([]));
    // Expiry does not move the collection timestamp.
    assert_eq!(r.last_modified(), t0);

    let bso = json!({"payload": "xxx", "ttl": 2});
    put_ok(&user, "col2", "TEST2", bso.clone()).await;
    assert_eq!(ids_in(&user, "col2").await, set(["TEST2"]));
    let t2 = put_ok(&user, "col2", "TEST2", bso).await;
    assert_eq!(ids_in(&user, "col2").await, set(["TEST2"]));
    let r = user.get("/info/collection_counts").await;
    assert_eq!(r.json(), json!({"col2": 1}));
    sleep_ms(2100).await;
    let r = user.get("/storage/col2?full=1").await;
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.last_modified(), t2);
    // Expired items are invisible to every read.
    assert_json_error(&user.get("/storage/col2/TEST2").await, 404, 0);
    let r = user.get("/info/collection_counts").await;
    assert_eq!(r.json(), json!({}));
    let r = user.get("/info/quota").await;
    assert_eq!(r.json()[0].as_f64(), Some(0.0));
    let (info, _) = info_collections(&user).await;
    assert_eq!(json_ts(&info["col2"]), t2);
}

// SPEC 6.49
#[tokio::test]
async fn expired_item_is_404_and_can_be_overwritten() {
    let server = TestServer::start().await;
    let user = server.user(1);
    put_ok(&user, "col2", "TEST", json!({"payload": "x", "ttl": 0})).await;
    sleep_ms(30).await;
    assert_json_error(&user.get("/storage/col2/TEST").await, 404, 0);
    let t = put_ok(
        &user,
        "col2",
        "TEST",
        json!({"payload": "again", "ttl": 42}),
    )
    .await;
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["payload"], "again");
    assert_eq!(json_ts(&r.json()["modified"]), t);
    // Same through POST.
    put_ok(&user, "col2", "P", json!({"payload": "x", "ttl": 0})).await;
    sleep_ms(30).await;
    let r = user
        .post(
            "/storage/col2",
            json!([{"id": "P", "payload": "back", "ttl": 42}]),
        )
        .await;
    assert_eq!(assert_post_ok(&r).1, vec!["P"]);
    assert_eq!(user.get("/storage/col2/P").await.json()["payload"], "back");
}

// SPEC 6.50
#[tokio::test]
async fn ttl_only_put_extends_life_without_touching_modified() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let bso = json!({"payload": "x", "ttl": 1});
    put_ok(&user, "col2", "TEST1", bso.clone()).await;
    let ts2 = put_ok(&user, "col2", "TEST2", bso).await;
    sleep_ms(200).await;
    let t_ttl = put_ok(&user, "col2", "TEST2", json!({"ttl": 10})).await;
    let ts3 = put_ok(&user, "col2", "TEST3", json!({"ttl": 10})).await;
    put_ok(&user, "col2", "TEST1", json!({"sortindex": 3})).await;
    sleep_ms(900).await;

    assert_json_error(&user.get("/storage/col2/TEST1").await, 404, 0);
    let r = user.get("/storage/col2/TEST2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["payload"], "x");
    let m2 = json_ts(&r.json()["modified"]);
    assert_eq!(m2, ts2, "ttl-only PUT keeps modified");
    let r = user.get("/storage/col2/TEST3").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["payload"], "");
    let m3 = json_ts(&r.json()["modified"]);
    assert_eq!(m3, ts3);
    assert!(m2 < m3, "{m2} < {m3}");
    assert!(
        t_ttl > ts2,
        "the ttl-only PUT still answers a new timestamp"
    );
    assert_eq!(ids_in(&user, "col2").await, set(["TEST2", "TEST3"]));
}

// SPEC 6.51
#[tokio::test]
async fn ttl_only_post_items_keep_modified() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("0{i}"), "payload": "x", "ttl": 1}))
        .collect();
    let (ts1, success, _) = assert_post_ok(&user.post("/storage/col2", Value::Array(items)).await);
    assert_eq!(success.len(), 5);
    let mut items: Vec<Value> = (3..7)
        .map(|i| json!({"id": format!("0{i}"), "ttl": 10}))
        .collect();
    items[0]["payload"] = json!("xx");
    let (ts2, success, _) = assert_post_ok(&user.post("/storage/col2", Value::Array(items)).await);
    assert_eq!(success, vec!["03", "04", "05", "06"]);
    assert!(ts2 > ts1);
    sleep_ms(1050).await;

    let r = user.get("/storage/col2?full=1").await;
    let mut got: Vec<(String, String, u64)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_owned(),
                b["payload"].as_str().unwrap().to_owned(),
                json_ts(&b["modified"]),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String, u64)> = vec![
        ("03".into(), "xx".into(), ts2),
        ("04".into(), "x".into(), ts1),
        ("05".into(), "".into(), ts2),
        ("06".into(), "".into(), ts2),
    ];
    assert_eq!(got, want);
    assert_eq!(r.last_modified(), ts2);
}

// SPEC 6.52
#[tokio::test]
async fn ttl_only_put_rebases_expiry_on_its_own_timestamp() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t1 = put_ok(
        &user,
        "col2",
        "TEST",
        json!({"payload": "p", "sortindex": 2, "ttl": 1}),
    )
    .await;
    sleep_ms(600).await;
    let t2 = put_ok(&user, "col2", "TEST", json!({"ttl": 1})).await;
    assert!(t2 > t1);
    // The collection moved to T2, the BSO kept T1.
    let (info, lm) = info_collections(&user).await;
    assert_eq!(json_ts(&info["col2"]), t2);
    assert_eq!(lm, t2);
    let r = user.get("/storage/col2").await;
    assert_eq!(r.last_modified(), t2);
    sleep_ms(600).await;
    // Past the original expiry (T1 + 1 s), but not past T2 + 1 s.
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"id": "TEST", "modified": r.json()["modified"], "payload": "p", "sortindex": 2})
    );
    assert_eq!(json_ts(&r.json()["modified"]), t1);
    assert_eq!(r.last_modified(), t1);
    sleep_ms(600).await;
    assert_json_error(&user.get("/storage/col2/TEST").await, 404, 0);
}

// SPEC 6.53
#[tokio::test]
async fn partial_put_keeps_unspecified_fields_and_expiry() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let t1 = put_ok(
        &user,
        "col2",
        "TEST",
        json!({"payload": "p", "sortindex": 5, "ttl": 1}),
    )
    .await;
    let t2 = put_ok(&user, "col2", "TEST", json!({"sortindex": 7})).await;
    assert!(t2 > t1);
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.json()["payload"], "p");
    assert_eq!(r.json()["sortindex"], 7);
    assert_eq!(json_ts(&r.json()["modified"]), t2);
    let t3 = put_ok(&user, "col2", "TEST", json!({"payload": "q"})).await;
    assert!(t3 > t2);
    let r = user.get("/storage/col2/TEST").await;
    assert_eq!(r.json()["payload"], "q");
    assert_eq!(r.json()["sortindex"], 7);
    assert_eq!(json_ts(&r.json()["modified"]), t3);
    // Neither update reset the expiry set by the first PUT (T1 + 1 s).
    sleep_ms(1100).await;
    assert_json_error(&user.get("/storage/col2/TEST").await, 404, 0);
}

// SPEC 6.53 (same partial-update rules for POST items)
#[tokio::test]
async fn partial_post_keeps_unspecified_fields() {
    let server = TestServer::start().await;
    let user = server.user(1);
    let (t1, _, _) = assert_post_ok(
        &user
            .post(
                "/storage/col2",
                json!([{"id": "a", "payload": "pa", "sortindex": 1}, {"id": "b", "payload": "pb", "sortindex": 2}]),
            )
            .await,
    );
    let (t2, success, _) = assert_post_ok(
        &user
            .post(
                "/storage/col2",
                json!([{"id": "a", "sortindex": 10}, {"id": "b", "payload": "pb2"}]),
            )
            .await,
    );
    assert_eq!(success, vec!["a", "b"]);
    assert!(t2 > t1);
    let a = user.get("/storage/col2/a").await.json();
    assert_eq!(
        (
            a["payload"].clone(),
            a["sortindex"].clone(),
            json_ts(&a["modified"])
        ),
        (json!("pa"), json!(10), t2)
    );
    let b = user.get("/storage/col2/b").await.json();
    assert_eq!(
        (
            b["payload"].clone(),
            b["sortindex"].clone(),
            json_ts(&b["modified"])
        ),
        (json!("pb2"), json!(2), t2)
    );
}
