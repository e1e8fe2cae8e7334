#[macro_use]
mod common;

// SPEC 6, cases 1–30: "Storage — reads, filters, pagination", plus the pagination contract of
backend_matrix!();
proxy_matrix!();

// SPEC 1.6.2. Black-box: every check goes through HTTP.

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `/storage/{coll}` plus the given query parameters.
fn url(coll: &str, params: &[String]) -> String {
    if params.is_empty() {
        format!("/storage/{coll}")
    } else {
        format!("/storage/{coll}?{}", params.join("&"))
    }
}

/// The media type of a Content-Type header, without parameters.
fn media_type(r: &Resp) -> Option<String> {
    r.header("Content-Type").map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

/// `^[0-9]+\.[0-9][0-9]$`
fn is_two_decimal_ts(text: &str) -> bool {
    regex::Regex::new(r"^[0-9]+\.[0-9][0-9]$")
        .unwrap()
        .is_match(text)
}

/// X-Weave-Timestamp is on every storage response, in the 2-decimal form, and is at least
/// X-Last-Modified when that is present (SPEC 1.8).
fn assert_weave_timestamp(r: &Resp) {
    let wt = r
        .header("X-Weave-Timestamp")
        .unwrap_or_else(|| panic!("missing X-Weave-Timestamp: {r:?}"));
    assert!(is_two_decimal_ts(wt), "X-Weave-Timestamp {wt:?}");
    if let Some(lm) = r.header("X-Last-Modified") {
        assert!(
            ts_millis(wt) >= ts_millis(lm),
            "X-Weave-Timestamp {wt} < X-Last-Modified {lm}"
        );
    }
}

/// A storage error: `status`, `Content-Type: application/json`, body the bare Weave code.
fn assert_weave_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {:?}", r.body);
    assert_eq!(media_type(r).as_deref(), Some("application/json"), "{r:?}");
    assert_eq!(r.body, code, "{r:?}");
    assert_weave_timestamp(r);
}

/// A successful collection GET with a JSON body; returns the array.
fn listing(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "body: {:?}", r.body);
    assert_eq!(media_type(r).as_deref(), Some("application/json"), "{r:?}");
    assert_weave_timestamp(r);
    let items = r
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", r.body))
        .clone();
    let count = items.len().to_string();
    assert_eq!(r.header("X-Weave-Records"), Some(count.as_str()), "{r:?}");
    items
}

/// The ids of a listing (id strings, or the `id` of full objects).
fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Object(o) => o["id"].as_str().expect("id string").to_owned(),
            other => panic!("unexpected listing item {other}"),
        })
        .collect()
}

/// Random ASCII letters.
fn randtext(len: usize) -> String {
    use rand::Rng;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
        .collect()
}

/// GET with one extra request header.
async fn get_with(user: &User<'_>, rest: &str, name: &str, value: &str) -> Resp {
    user.send(user.request(Method::GET, rest).header(name, value))
        .await
}

/// The text of every `"modified": <number>` in a raw JSON body.
fn modified_texts(body: &str) -> Vec<String> {
    regex::Regex::new(r#""modified"\s*:\s*([^,}\]\s]+)"#)
        .unwrap()
        .captures_iter(body)
        .map(|c| c[1].to_owned())
        .collect()
}

/// Limit 2, then limit 3 with the returned offset, then the next offset without a limit must
/// reproduce the full listing exactly, with no next offset on the last page (SPEC 1.6.2).
async fn check_three_step_paging(
    user: &User<'_>,
    coll: &str,
    base: &[String],
    expected: &[String],
) {
    assert!(expected.len() > 5, "the data set must need three pages");
    let with = |extra: &[String]| {
        let mut p = base.to_vec();
        p.extend_from_slice(extra);
        url(coll, &p)
    };
    let r = user.get(&with(&[])).await;
    let all = listing(&r);
    assert_eq!(ids(&all), expected, "full listing for {base:?}");
    assert_eq!(
        r.header("X-Weave-Next-Offset"),
        None,
        "no limit, no next offset"
    );

    let r = user.get(&with(&["limit=2".into()])).await;
    assert_eq!(listing(&r), all[..2], "limit=2 page for {base:?}");
    let tok = r
        .header("X-Weave-Next-Offset")
        .unwrap_or_else(|| panic!("no X-Weave-Next-Offset after limit=2 for {base:?}"))
        .to_owned();

    let r = user
        .get(&with(&["limit=3".into(), format!("offset={tok}")]))
        .await;
    assert_eq!(listing(&r), all[2..5], "limit=3 page for {base:?}");
    let tok = r
        .header("X-Weave-Next-Offset")
        .unwrap_or_else(|| panic!("no X-Weave-Next-Offset after limit=3 for {base:?}"))
        .to_owned();

    let r = user.get(&with(&[format!("offset={tok}")])).await;
    assert_eq!(listing(&r), all[5..], "last page for {base:?}");
    assert_eq!(
        r.header("X-Weave-Next-Offset"),
        None,
        "last page has no next offset"
    );
}

/// `check_three_step_paging` for `base`, then again with `full=1` added.
async fn check_paging_ids_and_full(
    user: &User<'_>,
    coll: &str,
    base: &[&str],
    expected: &[String],
) {
    let mut params = strs(base);
    check_three_step_paging(user, coll, &params, expected).await;
    params.push("full=1".into());
    check_three_step_paging(user, coll, &params, expected).await;
}

/// Pages through `base` with `limit` until no X-Weave-Next-Offset is returned; checks the
/// per-page contract and returns every item in order.
async fn page_through(user: &User<'_>, coll: &str, base: &[String], limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut offset: Option<String> = None;
    for _ in 0..100 {
        let mut p = base.to_vec();
        p.push(format!("limit={limit}"));
        if let Some(o) = &offset {
            p.push(format!("offset={o}"));
        }
        let r = user.get(&url(coll, &p)).await;
        let page = listing(&r);
        assert!(
            page.len() <= limit,
            "page larger than limit {limit}: {}",
            r.body
        );
        if offset.is_some() {
            assert!(
                !page.is_empty(),
                "a next offset led to an empty page ({p:?})"
            );
        }
        items.extend(page.iter().cloned());
        match r.header("X-Weave-Next-Offset") {
            Some(tok) => {
                assert_eq!(
                    page.len(),
                    limit,
                    "a page followed by a next offset is full ({p:?})"
                );
                offset = Some(tok.to_owned());
            }
            None => return items,
        }
    }
    panic!("pagination of {base:?} with limit {limit} did not end");
}

/// A GET over a fresh connection with no `Accept` header at all (reqwest always adds one).
async fn get_without_accept(user: &User<'_>, rest: &str) -> (u16, Vec<(String, String)>, String) {
    let built = user.request(Method::GET, rest).build().unwrap();
    let auth = built.headers()["Authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    let target = match built.url().query() {
        Some(q) => format!("{}?{q}", built.url().path()),
        None => built.url().path().to_owned(),
    };
    let port = user.server.port;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        assert!(
            !headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
            "chunked response not handled by this helper"
        );
        (status, headers, body.to_owned())
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.1
// ---------------------------------------------------------------------------------------------

// SPEC 6.1
#[tokio::test]
async fn get_nonexistent_collection_is_empty_list_with_zero_headers() {
    let server = TestServer::start().await;
    let user = server.user(1);
    for rest in ["/storage/nonexistent", "/storage/nonexistent?full=1"] {
        let r = user.get(rest).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json(), json!([]));
        assert_eq!(media_type(&r).as_deref(), Some("application/json"));
        assert_eq!(r.header("X-Weave-Records"), Some("0"));
        assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
        assert_eq!(r.header("X-Weave-Next-Offset"), None);
        assert_weave_timestamp(&r);
    }
    // Also when the user has data in another collection.
    put_ok(&user, "bookmarks", "a", json!({"payload": "x"})).await;
    let r = user.get("/storage/nonexistent").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.header("X-Weave-Records"), Some("0"));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.2
// ---------------------------------------------------------------------------------------------

// SPEC 6.2
#[tokio::test]
async fn get_with_ids_returns_only_known_requested_ids() {
    let server = TestServer::start().await;
    let user = server.user(2);
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "x"}))
        .collect();
    let t = post_ok(&user, "xxx_col2", Value::Array(items)).await;
    let r = user.get("/storage/xxx_col2?ids=01,03,17").await;
    let got = listing(&r);
    // Same modified for all → default (newest) order falls back to id descending.
    assert_eq!(ids(&got), strs(&["03", "01"]));
    assert_eq!(r.last_modified(), t);
    assert_eq!(r.header("X-Weave-Next-Offset"), None);

    // Full objects for the same filter.
    let r = user.get("/storage/xxx_col2?ids=01,03,17&full=1").await;
    let got = listing(&r);
    assert_eq!(ids(&got), strs(&["03", "01"]));
    for item in &got {
        assert_eq!(item["payload"], "x");
        assert_eq!(json_ts(&item["modified"]), t);
    }

    // Only unknown ids → [].
    let r = user.get("/storage/xxx_col2?ids=17,18").await;
    assert!(listing(&r).is_empty());
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.3
// ---------------------------------------------------------------------------------------------

// SPEC 6.3
#[tokio::test]
async fn newer_and_older_are_strict_bounds() {
    let server = TestServer::start().await;
    let user = server.user(3);
    let ts1 = put_ok(&user, "xxx_col2", "first", json!({"payload": "1"})).await;
    next_tick().await;
    let ts2 = put_ok(&user, "xxx_col2", "second", json!({"payload": "2"})).await;
    assert!(ts1 < ts2);

    let get_ids = |q: String| {
        let user = &user;
        async move {
            let r = user.get(&format!("/storage/xxx_col2?{q}")).await;
            ids(&listing(&r))
        }
    };
    assert_eq!(
        get_ids(format!("newer={}", ts_text(ts1))).await,
        strs(&["second"])
    );
    assert_eq!(
        get_ids(format!("newer={}", ts_text(ts2))).await,
        Vec::<String>::new()
    );
    assert_eq!(
        get_ids(format!("older={}", ts_text(ts2))).await,
        strs(&["first"])
    );
    assert_eq!(
        get_ids(format!("older={}", ts_text(ts1))).await,
        Vec::<String>::new()
    );
    assert_eq!(
        get_ids(format!(
            "older={}&newer={}",
            ts_text(ts2 + 1000),
            ts_text(ts1)
        ))
        .await,
        strs(&["second"])
    );
    // One tick either side.
    assert_eq!(
        get_ids(format!("newer={}", ts_text(ts1 - 10))).await,
        strs(&["second", "first"])
    );
    assert_eq!(
        get_ids(format!("older={}", ts_text(ts2 + 10))).await,
        strs(&["second", "first"])
    );
    // Both bounds excluding everything.
    assert_eq!(
        get_ids(format!("older={}&newer={}", ts_text(ts2), ts_text(ts1))).await,
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.4
// ---------------------------------------------------------------------------------------------

// SPEC 6.4
#[tokio::test]
async fn full_objects_have_exactly_id_modified_payload_without_sortindex() {
    let server = TestServer::start().await;
    let user = server.user(4);
    let t = put_ok(
        &user,
        "xxx_col2",
        "plain",
        json!({"payload": "hello", "ttl": 3600}),
    )
    .await;
    let r = user.get("/storage/xxx_col2?full=1").await;
    let got = listing(&r);
    assert_eq!(got.len(), 1);
    let obj = &got[0];
    assert_eq!(keys(obj), set(["id", "modified", "payload"]));
    assert_eq!(obj["id"], "plain");
    assert_eq!(obj["payload"], "hello");
    assert_eq!(json_ts(&obj["modified"]), t);
}

// SPEC 6.4 (with a sortindex the key appears; SPEC 1.3 key order id, modified, payload, sortindex)
#[tokio::test]
async fn full_objects_add_sortindex_when_set_in_rs_key_order() {
    let server = TestServer::start().await;
    let user = server.user(4);
    post_ok(
        &user,
        "xxx_col2",
        json!([{"id": "a", "payload": "p", "sortindex": -5}, {"id": "b"}]),
    )
    .await;
    let r = user.get("/storage/xxx_col2?full=1&sort=oldest").await;
    let got = listing(&r);
    assert_eq!(ids(&got), strs(&["a", "b"]));
    let (a, b) = (&got[0], &got[1]);
    assert_eq!(keys(a), set(["id", "modified", "payload", "sortindex"]));
    assert_eq!(a["sortindex"], -5);
    assert_eq!(keys(b), set(["id", "modified", "payload"]));
    assert_eq!(b["payload"], "", "payload never set → empty string");
    // Raw key order of the first object.
    let first = &r.body[..r.body.find('}').unwrap()];
    let pos = |k: &str| {
        first
            .find(&format!("\"{k}\""))
            .unwrap_or_else(|| panic!("{k} in {first}"))
    };
    assert!(pos("id") < pos("modified"), "{first}");
    assert!(pos("modified") < pos("payload"), "{first}");
    assert!(pos("payload") < pos("sortindex"), "{first}");
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.5
// ---------------------------------------------------------------------------------------------

// SPEC 6.5
#[tokio::test]
async fn full_is_presence_only_even_empty_or_zero() {
    let server = TestServer::start().await;
    let user = server.user(5);
    let t = put_ok(
        &user,
        "xxx_col2",
        "x1",
        json!({"payload": "data", "sortindex": 7}),
    )
    .await;
    let expected = json!([{"id": "x1", "modified": null, "payload": "data", "sortindex": 7}]);
    for q in ["full", "full=", "full=0", "full=1", "full=false"] {
        let r = user.get(&format!("/storage/xxx_col2?{q}")).await;
        let mut got = listing(&r);
        assert_eq!(got.len(), 1, "{q}");
        assert!(got[0].is_object(), "{q}: {}", r.body);
        assert_eq!(json_ts(&got[0]["modified"]), t, "{q}");
        got[0]["modified"] = Value::Null;
        assert_eq!(Value::Array(got), expected, "{q}");
    }
    // Without `full` only ids.
    let r = user.get("/storage/xxx_col2").await;
    assert_eq!(listing(&r), vec![json!("x1")]);
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.6 / 6.7 / 1.6.2 (limit=2, limit=3&offset, offset)
// ---------------------------------------------------------------------------------------------

// SPEC 6.6
#[tokio::test]
async fn sort_index_paging_limit_then_offset_reproduces_listing() {
    let server = TestServer::start().await;
    let user = server.user(6);
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "xxx", "sortindex": i}))
        .collect();
    post_ok(&user, "xxx_col2", Value::Array(items)).await;
    // sortindex descending.
    let expected: Vec<String> = (0..10).rev().map(|i| format!("{i:02}")).collect();
    check_paging_ids_and_full(&user, "xxx_col2", &["sort=index"], &expected).await;
}

/// Ten items written in three POSTs (distinct timestamps, equal within a POST) with sortindex
/// ties; returns (id, modified ms, sortindex) for each.
async fn mixed_data_set(user: &User<'_>, coll: &str) -> Vec<(String, u64, i64)> {
    let groups: [&[(&str, i64)]; 3] = [
        &[("03", 5), ("07", 1), ("01", 5)],
        &[("09", 3), ("00", 8)],
        &[("05", 1), ("02", 3), ("08", -2), ("04", 5), ("06", 0)],
    ];
    let mut out = Vec::new();
    let mut last = 0;
    for (n, group) in groups.iter().enumerate() {
        if n > 0 {
            next_tick().await;
        }
        let body: Vec<Value> = group
            .iter()
            .map(|(id, si)| json!({"id": id, "payload": format!("p{id}"), "sortindex": si}))
            .collect();
        let t = post_ok(user, coll, Value::Array(body)).await;
        assert!(t > last, "each POST gets a later timestamp");
        last = t;
        out.extend(group.iter().map(|(id, si)| ((*id).to_owned(), t, *si)));
    }
    out
}

/// `mixed_data_set`'s ids in the order `cmp` sorts its (id, modified ms, sortindex) rows.
async fn mixed_ids_sorted_by(
    user: &User<'_>,
    coll: &str,
    cmp: impl FnMut(&(String, u64, i64), &(String, u64, i64)) -> std::cmp::Ordering,
) -> Vec<String> {
    let mut data = mixed_data_set(user, coll).await;
    data.sort_by(cmp);
    data.into_iter().map(|d| d.0).collect()
}

// SPEC 6.7
#[tokio::test]
async fn sort_newest_paging_limit_then_offset_reproduces_listing() {
    let server = TestServer::start().await;
    let user = server.user(7);
    let expected =
        mixed_ids_sorted_by(&user, "xxx_col2", |a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0))).await;
    assert_eq!(
        expected,
        strs(&["08", "06", "05", "04", "02", "09", "00", "07", "03", "01"])
    );
    check_paging_ids_and_full(&user, "xxx_col2", &["sort=newest"], &expected).await;
}

// SPEC 6.7
#[tokio::test]
async fn sort_oldest_paging_limit_then_offset_reproduces_listing() {
    let server = TestServer::start().await;
    let user = server.user(7);
    let expected =
        mixed_ids_sorted_by(&user, "xxx_col2", |a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0))).await;
    assert_eq!(
        expected,
        strs(&["01", "03", "07", "00", "09", "02", "04", "05", "06", "08"])
    );
    check_paging_ids_and_full(&user, "xxx_col2", &["sort=oldest"], &expected).await;
}

// SPEC 6.7 (no sort = newest first on this server)
#[tokio::test]
async fn default_sort_paging_limit_then_offset_reproduces_listing() {
    let server = TestServer::start().await;
    let user = server.user(7);
    let expected =
        mixed_ids_sorted_by(&user, "xxx_col2", |a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0))).await;
    check_paging_ids_and_full(&user, "xxx_col2", &[], &expected).await;
}

// SPEC 6.6 / 1.6.2 (sort=index across different timestamps and sortindex ties)
#[tokio::test]
async fn sort_index_paging_with_ties_reproduces_listing() {
    let server = TestServer::start().await;
    let user = server.user(7);
    let expected =
        mixed_ids_sorted_by(&user, "xxx_col2", |a, b| b.2.cmp(&a.2).then(b.0.cmp(&a.0))).await;
    assert_eq!(
        expected,
        strs(&["00", "04", "03", "01", "09", "02", "07", "05", "06", "08"])
    );
    check_paging_ids_and_full(&user, "xxx_col2", &["sort=index"], &expected).await;
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.8
// ---------------------------------------------------------------------------------------------

// SPEC 6.8
#[tokio::test]
async fn sort_orders_newest_oldest_index() {
    let server = TestServer::start().await;
    let user = server.user(8);
    for (n, (id, si)) in [("00", -1), ("01", 34), ("02", 12)].into_iter().enumerate() {
        if n > 0 {
            next_tick().await;
        }
        post_ok(
            &user,
            "xxx_col2",
            json!([{"id": id, "payload": "x", "sortindex": si}]),
        )
        .await;
    }
    for (sort, want) in [
        ("newest", ["02", "01", "00"]),
        ("oldest", ["00", "01", "02"]),
        ("index", ["01", "02", "00"]),
    ] {
        let r = user.get(&format!("/storage/xxx_col2?sort={sort}")).await;
        assert_eq!(ids(&listing(&r)), strs(&want), "sort={sort}");
        let r = user
            .get(&format!("/storage/xxx_col2?sort={sort}&full=1"))
            .await;
        assert_eq!(ids(&listing(&r)), strs(&want), "sort={sort}&full=1");
    }
    // No sort: newest first.
    let r = user.get("/storage/xxx_col2").await;
    assert_eq!(ids(&listing(&r)), strs(&["02", "01", "00"]));
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.9 / 6.10
// ---------------------------------------------------------------------------------------------

// SPEC 6.9
#[tokio::test]
async fn garbage_newer_older_limit_are_400() {
    let server = TestServer::start().await;
    let user = server.user(9);
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "x"}))
        .collect();
    post_ok(&user, "xxx_col2", Value::Array(items)).await;
    for arg in ["newer", "older", "limit"] {
        let value = randtext(10);
        let r = user.get(&format!("/storage/xxx_col2?{arg}={value}")).await;
        assert_weave_error(&r, 400, "0");
    }
    // Other malformed values of SPEC 1.6.
    for q in [
        "sort=random",
        "sort=NEWEST",
        "offset=garbage",
        "limit=1.5",
        "newer=-1",
        "older=-0.5",
    ] {
        let r = user.get(&format!("/storage/xxx_col2?{q}")).await;
        assert_weave_error(&r, 400, "0");
    }
}

// SPEC 6.10
#[tokio::test]
async fn negative_limit_and_precondition_timestamps_are_400() {
    let server = TestServer::start().await;
    let user = server.user(10);
    put_ok(&user, "xxx_col2", "exists", json!({"payload": "x"})).await;

    let r = user.get("/storage/xxx_col2?limit=-1").await;
    assert_weave_error(&r, 400, "0");

    let r = get_with(&user, "/storage/xxx_col2", "X-If-Modified-Since", "-3").await;
    assert_weave_error(&r, 400, "0");

    let rb = user
        .request(Method::PUT, "/storage/xxx_col2/new")
        .header("Content-Type", "application/json")
        .header("X-If-Unmodified-Since", "-3")
        .body(json!({"payload": "y"}).to_string());
    let r = user.send(rb).await;
    assert_weave_error(&r, 400, "0");
    // Nothing was written.
    let r = user.get("/storage/xxx_col2/new").await;
    assert_weave_error(&r, 404, "0");
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.11 / 6.12 / 6.13 / 6.14
// ---------------------------------------------------------------------------------------------

// SPEC 6.11
#[tokio::test]
async fn ids_accepts_100_and_rejects_101_on_get_and_delete() {
    let server = TestServer::start().await;
    let user = server.user(11);
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("id{i}"), "payload": "x"}))
        .collect();
    let t0 = post_ok(&user, "xxx_col2", Value::Array(items)).await;
    let hundred: Vec<String> = (0..100).map(|i| format!("id{i}")).collect();
    let hundred_one: Vec<String> = (0..101).map(|i| format!("id{i}")).collect();

    let r = user
        .get(&format!("/storage/xxx_col2?ids={}", hundred.join(",")))
        .await;
    assert_eq!(ids(&listing(&r)), strs(&["id2", "id1", "id0"]));

    let r = user
        .get(&format!("/storage/xxx_col2?ids={}", hundred_one.join(",")))
        .await;
    assert_weave_error(&r, 400, "0");

    // DELETE with 101 ids is rejected and deletes nothing.
    let r = user
        .delete(&format!("/storage/xxx_col2?ids={}", hundred_one.join(",")))
        .await;
    assert_weave_error(&r, 400, "0");
    let r = user.get("/storage/xxx_col2").await;
    assert_eq!(ids(&listing(&r)), strs(&["id2", "id1", "id0"]));
    assert_eq!(
        r.last_modified(),
        t0,
        "a rejected DELETE does not bump the collection"
    );

    next_tick().await;
    let r = user
        .delete(&format!("/storage/xxx_col2?ids={}", hundred.join(",")))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.last_modified();
    assert!(t > t0);
    assert_eq!(
        json_ts(&r.json()),
        t,
        "DELETE ?ids body is the bare new timestamp"
    );
    let r = user.get("/storage/xxx_col2").await;
    assert!(listing(&r).is_empty());
    assert_eq!(r.last_modified(), t);
}

// SPEC 6.12
#[tokio::test]
async fn hundred_random_ids_return_empty_list() {
    use rand::distributions::{Alphanumeric, DistString};
    let server = TestServer::start().await;
    let user = server.user(12);
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "x"}))
        .collect();
    post_ok(&user, "xxx_col2", Value::Array(items)).await;
    let random: Vec<String> = (0..100)
        .map(|_| Alphanumeric.sample_string(&mut rand::thread_rng(), 10))
        .collect();
    let r = user
        .get(&format!("/storage/xxx_col2?ids={}", random.join(",")))
        .await;
    assert!(listing(&r).is_empty(), "{}", r.body);
    let r = user
        .get(&format!(
            "/storage/xxx_col2?ids={}&full=1",
            random.join(",")
        ))
        .await;
    assert!(listing(&r).is_empty(), "{}", r.body);
}

// SPEC 6.13
#[tokio::test]
async fn delete_ids_with_percent_encoded_comma() {
    let server = TestServer::start().await;
    let user = server.user(13);
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("test-{i}"), "payload": "x"}))
        .collect();
    post_ok(&user, "xxx_col2", Value::Array(items)).await;
    let r = user.get("/storage/xxx_col2?ids=test-0%2Ctest-1").await;
    assert_eq!(
        ids(&listing(&r)),
        strs(&["test-1", "test-0"]),
        "encoded comma splits ids on GET"
    );
    next_tick().await;
    let r = user.delete("/storage/xxx_col2?ids=test-0%2Ctest-1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_ts(&r.json()), r.last_modified());
    let r = user.get("/storage/xxx_col2?ids=test-0%2Ctest-1").await;
    assert!(listing(&r).is_empty(), "{}", r.body);
    let r = user.get("/storage/xxx_col2").await;
    assert_eq!(ids(&listing(&r)), strs(&["test-2"]));
}

// SPEC 6.14
#[tokio::test]
async fn delete_ids_with_guid_ids_in_passwords() {
    let server = TestServer::start().await;
    let user = server.user(14);
    let plain = "6820f3ca-6e8a-4ff4-8af7-8b3625d7d650";
    let braced = "{9a3ee1c1-14a4-4f8e-9b31-2f1e6c7d0b55}";
    post_ok(
        &user,
        "passwords",
        json!([{"id": plain, "payload": "a"}, {"id": braced, "payload": "b"}, {"id": "keep", "payload": "c"}]),
    )
    .await;
    let encoded_braced = braced.replace('{', "%7B").replace('}', "%7D");
    let r = user
        .get(&format!("/storage/passwords/{encoded_braced}"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["id"], braced);

    next_tick().await;
    let r = user
        .delete(&format!("/storage/passwords?ids={plain},{encoded_braced}"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = user.get("/storage/passwords").await;
    assert_eq!(ids(&listing(&r)), strs(&["keep"]));
    let r = user.get(&format!("/storage/passwords/{plain}")).await;
    assert_weave_error(&r, 404, "0");
    let r = user
        .get(&format!("/storage/passwords/{encoded_braced}"))
        .await;
    assert_weave_error(&r, 404, "0");
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.15
// ---------------------------------------------------------------------------------------------

// SPEC 6.15
#[tokio::test]
async fn bounded_offset_outside_newer_or_older_is_400() {
    let server = TestServer::start().await;
    let user = server.user(15);
    let items: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "x", "sortindex": i}))
        .collect();
    post_ok(&user, "xxx_col2", Value::Array(items)).await;
    // B (ms) below `newer` / above `older` → 400, for every timestamp sort.
    for sort in ["sort=newest&", "sort=oldest&", ""] {
        let r = user
            .get(&format!("/storage/xxx_col2?{sort}newer=2.22&offset=1111:1"))
            .await;
        assert_weave_error(&r, 400, "0");
        let r = user
            .get(&format!("/storage/xxx_col2?{sort}older=2.22&offset=5858:1"))
            .await;
        assert_weave_error(&r, 400, "0");
    }
    // Bounds inside newer/older are fine.
    for q in [
        "sort=newest&newer=2.22&offset=2230:1",
        "sort=newest&older=2.22&offset=2210:1",
        "sort=newest&newer=2.22&older=2.24&offset=2230:0",
        "sort=oldest&newer=2.22&offset=2230:1",
        "sort=oldest&older=2.22&offset=2210:1",
    ] {
        let r = user.get(&format!("/storage/xxx_col2?{q}")).await;
        listing(&r);
    }
    // The same out-of-range bounds are fine with sort=index.
    for q in [
        "sort=index&newer=2.22&offset=1111:1",
        "sort=index&older=2.22&offset=5858:1",
    ] {
        let r = user.get(&format!("/storage/xxx_col2?{q}")).await;
        listing(&r);
    }
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.16 / 1.6.2 (limits 2..6 over three equal-timestamp groups)
// ---------------------------------------------------------------------------------------------

/// Twelve items "00".."11" written in three POSTs of four; returns the three timestamps.
async fn twelve_in_three_groups(user: &User<'_>, coll: &str) -> Vec<u64> {
    let mut ts = Vec::new();
    for g in 0..3 {
        if g > 0 {
            next_tick().await;
        }
        let body: Vec<Value> = (g * 4..g * 4 + 4)
            .map(|i| json!({"id": format!("{i:02}"), "payload": "x"}))
            .collect();
        ts.push(post_ok(user, coll, Value::Array(body)).await);
    }
    assert!(ts[0] < ts[1] && ts[1] < ts[2]);
    ts
}

// SPEC 6.16
#[tokio::test]
async fn paging_sort_oldest_with_newer_returns_each_later_item_once_in_order() {
    let server = TestServer::start().await;
    let user = server.user(16);
    let ts = twelve_in_three_groups(&user, "xxx_col2").await;
    // (newer, first id expected)
    let mut cases: Vec<(u64, usize)> = vec![(0, 0)];
    cases.extend(ts.iter().enumerate().map(|(g, &t)| (t, (g + 1) * 4)));
    for limit in 2..=6 {
        for &(newer, first) in &cases {
            let base = vec![
                "full=true".into(),
                "sort=oldest".into(),
                format!("newer={}", ts_text(newer)),
            ];
            let items = page_through(&user, "xxx_col2", &base, limit).await;
            let mods: Vec<u64> = items.iter().map(|i| json_ts(&i["modified"])).collect();
            assert!(
                mods.windows(2).all(|w| w[0] <= w[1]),
                "non-decreasing modified (limit {limit})"
            );
            assert!(mods.iter().all(|&m| m > newer));
            let want: Vec<String> = (first..12).map(|i| format!("{i:02}")).collect();
            assert_eq!(ids(&items), want, "limit {limit}, newer {newer}");
        }
    }
}

// SPEC 6.16
#[tokio::test]
async fn paging_sort_newest_with_older_returns_each_earlier_item_once_in_order() {
    let server = TestServer::start().await;
    let user = server.user(16);
    let ts = twelve_in_three_groups(&user, "xxx_col2").await;
    // (older, number of items expected: ids below that group)
    let mut cases: Vec<(u64, usize)> = ts.iter().enumerate().map(|(g, &t)| (t, g * 4)).collect();
    cases.push((ts[2] + 10, 12));
    for limit in 2..=6 {
        for &(older, count) in &cases {
            let base = vec![
                "full=true".into(),
                "sort=newest".into(),
                format!("older={}", ts_text(older)),
            ];
            let items = page_through(&user, "xxx_col2", &base, limit).await;
            let mods: Vec<u64> = items.iter().map(|i| json_ts(&i["modified"])).collect();
            assert!(
                mods.windows(2).all(|w| w[0] >= w[1]),
                "non-increasing modified (limit {limit})"
            );
            assert!(mods.iter().all(|&m| m < older));
            let want: Vec<String> = (0..count).rev().map(|i| format!("{i:02}")).collect();
            assert_eq!(ids(&items), want, "limit {limit}, older {older}");
        }
    }
}

// SPEC 6.16 / 1.6.2 (same groups, id-only listings and no sort)
#[tokio::test]
async fn paging_id_listings_through_equal_timestamp_groups() {
    let server = TestServer::start().await;
    let user = server.user(16);
    twelve_in_three_groups(&user, "xxx_col2").await;
    let newest: Vec<String> = (0..12).rev().map(|i| format!("{i:02}")).collect();
    let oldest: Vec<String> = (0..12).map(|i| format!("{i:02}")).collect();
    for limit in 2..=6 {
        for (base, want) in [
            (vec![], &newest),
            (vec!["sort=newest".to_owned()], &newest),
            (vec!["sort=oldest".to_owned()], &oldest),
            (vec!["sort=index".to_owned()], &newest),
        ] {
            let items = page_through(&user, "xxx_col2", &base, limit).await;
            assert_eq!(&ids(&items), want, "limit {limit}, {base:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.17 / 6.18
// ---------------------------------------------------------------------------------------------

// SPEC 6.17
#[tokio::test]
async fn newlines_output_one_json_value_per_line() {
    let server = TestServer::start().await;
    let user = server.user(17);
    let payloads = [
        ("a", "line1\nline2"),
        ("b", "plain"),
        ("c", "\n\n"),
        ("d", "crlf\r\nend\n"),
    ];
    let body: Vec<Value> = payloads
        .iter()
        .map(|(id, p)| json!({"id": id, "payload": p}))
        .collect();
    let t = post_ok(&user, "xxx_col2", Value::Array(body)).await;

    let r = get_with(
        &user,
        "/storage/xxx_col2?full=1&sort=oldest",
        "Accept",
        "application/newlines",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(media_type(&r).as_deref(), Some("application/newlines"));
    assert_eq!(r.header("X-Weave-Records"), Some("4"));
    assert_eq!(r.last_modified(), t);
    assert_weave_timestamp(&r);
    assert!(r.body.ends_with('\n'), "{:?}", r.body);
    let lines: Vec<&str> = r.body.split_terminator('\n').collect();
    assert_eq!(lines.len(), payloads.len(), "{:?}", r.body);
    for (line, (id, payload)) in lines.iter().zip(payloads) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(v["id"], id);
        assert_eq!(v["payload"], payload, "payload round-trips exactly");
        assert_eq!(json_ts(&v["modified"]), t);
    }

    // Id-only listing: one JSON string per line.
    let r = get_with(
        &user,
        "/storage/xxx_col2?sort=oldest",
        "Accept",
        "application/newlines",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(media_type(&r).as_deref(), Some("application/newlines"));
    assert_eq!(r.body, "\"a\"\n\"b\"\n\"c\"\n\"d\"\n");

    // Empty listing: empty body.
    let r = get_with(
        &user,
        "/storage/nothing_here",
        "Accept",
        "application/newlines",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(media_type(&r).as_deref(), Some("application/newlines"));
    assert_eq!(r.header("X-Weave-Records"), Some("0"));
    assert_eq!(r.body, "");
}

// SPEC 6.18
#[tokio::test]
async fn accept_unsatisfiable_is_406_zero() {
    let server = TestServer::start().await;
    let user = server.user(18);
    put_ok(&user, "xxx_col2", "a", json!({"payload": "x"})).await;
    for accept in [
        "x/yy",
        "application/json;q=0.9,text/plain",
        "text/plain",
        "application/*",
    ] {
        let r = get_with(&user, "/storage/xxx_col2", "Accept", accept).await;
        assert_weave_error(&r, 406, "0");
    }
}

// SPEC 6.18
#[tokio::test]
async fn no_accept_header_gives_json() {
    let server = TestServer::start().await;
    let user = server.user(18);
    let t = put_ok(&user, "xxx_col2", "a", json!({"payload": "x"})).await;
    let (status, headers, body) = get_without_accept(&user, "/storage/xxx_col2?full=1").await;
    let h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h("content-type").map(|v| v.split(';').next().unwrap().trim()),
        Some("application/json")
    );
    assert_eq!(h("x-weave-records"), Some("1"));
    assert_eq!(h("x-last-modified").map(ts_millis), Some(t));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["id"], "a");
    assert_eq!(v[0]["payload"], "x");
}

// SPEC 6.18 (SPEC 1.7.1 examples)
#[tokio::test]
async fn accept_negotiation_picks_json_or_newlines() {
    let server = TestServer::start().await;
    let user = server.user(18);
    put_ok(&user, "xxx_col2", "a", json!({"payload": "x"})).await;
    for (accept, want) in [
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("*/*;q=0.2,foo/bar", "application/json"),
        ("", "application/json"),
        ("application/newlines", "application/newlines"),
        ("APPLICATION/NEWLINES", "application/newlines"),
        (
            "application/json;q=0.5,application/newlines",
            "application/newlines",
        ),
        ("foo/bar,application/json;q=0.1", "application/json"),
    ] {
        let r = get_with(&user, "/storage/xxx_col2", "Accept", accept).await;
        assert_eq!(r.status, 200, "Accept {accept:?}: {r:?}");
        assert_eq!(media_type(&r).as_deref(), Some(want), "Accept {accept:?}");
        let body = if want == "application/json" {
            "[\"a\"]"
        } else {
            "\"a\"\n"
        };
        assert_eq!(r.body, body, "Accept {accept:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.19 / 6.20 / 6.21
// ---------------------------------------------------------------------------------------------

// SPEC 6.19
#[tokio::test]
async fn unknown_query_parameter_is_ignored() {
    let server = TestServer::start().await;
    let user = server.user(19);
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "x"}))
        .collect();
    post_ok(&user, "xxx_col2", Value::Array(items)).await;
    let plain = user.get("/storage/xxx_col2").await;
    let r = user.get("/storage/xxx_col2?blabla=1").await;
    assert_eq!(listing(&r), listing(&plain));
    assert_eq!(ids(&listing(&r)), strs(&["02", "01", "00"]));
}

// SPEC 6.20
#[tokio::test]
async fn get_absent_item_is_404_zero() {
    let server = TestServer::start().await;
    let user = server.user(20);
    let r = user.get("/storage/xxx_col2/99").await;
    assert_weave_error(&r, 404, "0");
    put_ok(&user, "xxx_col2", "98", json!({"payload": "x"})).await;
    let r = user.get("/storage/xxx_col2/99").await;
    assert_weave_error(&r, 404, "0");
}

// SPEC 6.21
#[tokio::test]
async fn unknown_url_is_404_json_zero() {
    let server = TestServer::start().await;
    let user = server.user(21);
    let r = user.get("/nonexistent/url").await;
    assert_weave_error(&r, 404, "0");
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.22 / 6.23 / 6.24 / 6.25
// ---------------------------------------------------------------------------------------------

/// A 304: empty body and the resource's X-Last-Modified.
fn assert_not_modified(r: &Resp, last_modified: u64) {
    assert_eq!(r.status, 304, "{r:?}");
    assert_eq!(r.body, "");
    assert_eq!(r.last_modified(), last_modified, "{r:?}");
    assert_weave_timestamp(r);
}

// SPEC 6.22
#[tokio::test]
async fn item_get_if_modified_since() {
    let server = TestServer::start().await;
    let user = server.user(22);
    let t = put_ok(&user, "xxx_col2", "item", json!({"payload": "x"})).await;
    next_tick().await;
    // A later write to the collection does not change the item's own timestamp.
    let t_other = put_ok(&user, "xxx_col2", "other", json!({"payload": "y"})).await;
    assert!(t_other > t);

    let r = user.get("/storage/xxx_col2/item").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.last_modified(), t);

    for since in [ts_text(t), ts_text(t + 1000), ts_text(t + 10)] {
        let r = get_with(
            &user,
            "/storage/xxx_col2/item",
            "X-If-Modified-Since",
            &since,
        )
        .await;
        assert_not_modified(&r, t);
    }
    for since in [ts_text(t - 1000), ts_text(t - 10)] {
        let r = get_with(
            &user,
            "/storage/xxx_col2/item",
            "X-If-Modified-Since",
            &since,
        )
        .await;
        assert_eq!(r.status, 200, "since {since}: {r:?}");
        assert_eq!(r.json()["payload"], "x");
        assert_eq!(r.last_modified(), t);
    }
}

// SPEC 6.23
#[tokio::test]
async fn collection_get_if_modified_since() {
    let server = TestServer::start().await;
    let user = server.user(23);
    let t_min = put_ok(&user, "xxx_col2", "a", json!({"payload": "x"})).await;
    next_tick().await;
    let t_max = put_ok(&user, "xxx_col2", "b", json!({"payload": "y"})).await;
    assert!(t_min < t_max);

    let r = get_with(
        &user,
        "/storage/xxx_col2",
        "X-If-Modified-Since",
        &ts_text(t_max),
    )
    .await;
    assert_not_modified(&r, t_max);
    assert_eq!(r.header("X-Weave-Records"), None);

    let r = get_with(
        &user,
        "/storage/xxx_col2",
        "X-If-Modified-Since",
        &ts_text(t_min),
    )
    .await;
    assert_eq!(ids(&listing(&r)), strs(&["b", "a"]));
    assert_eq!(r.last_modified(), t_max);

    // Absent collection: resource timestamp 0 → any since ≥ 0 gives 304.
    let r = get_with(&user, "/storage/absent", "X-If-Modified-Since", "0").await;
    assert_not_modified(&r, 0);
}

// SPEC 6.24
#[tokio::test]
async fn every_get_carries_x_last_modified() {
    let server = TestServer::start().await;
    let user = server.user(24);
    let t1 = put_ok(&user, "col_a", "item", json!({"payload": "x"})).await;
    next_tick().await;
    let t2 = put_ok(&user, "col_b", "other", json!({"payload": "y"})).await;
    assert!(t1 < t2);
    for (rest, want) in [
        ("/info/collections", t2),
        ("/info/collection_counts", t2),
        ("/info/collection_usage", t2),
        ("/info/quota", t2),
        ("/storage/col_a", t1),
        ("/storage/col_a?full=1", t1),
        ("/storage/col_a/item", t1),
        ("/storage/col_b", t2),
    ] {
        let r = user.get(rest).await;
        assert_eq!(r.status, 200, "{rest}: {r:?}");
        let lm = r
            .header("X-Last-Modified")
            .unwrap_or_else(|| panic!("{rest}: no X-Last-Modified"));
        assert!(is_two_decimal_ts(lm), "{rest}: {lm}");
        assert_eq!(ts_millis(lm), want, "{rest}");
        assert_weave_timestamp(&r);
    }
    let r = user.get("/info/collections").await;
    assert_eq!(r.header("X-Weave-Records"), Some("2"));
    assert_eq!(json_ts(&r.json()["col_a"]), t1);
    assert_eq!(json_ts(&r.json()["col_b"]), t2);
    let r = user.get("/info/collection_counts").await;
    assert_eq!(r.json(), json!({"col_a": 1, "col_b": 1}));
    assert_eq!(r.header("X-Weave-Records"), Some("2"));
}

// SPEC 6.25
#[tokio::test]
async fn info_views_honour_if_modified_since() {
    let server = TestServer::start().await;
    let user = server.user(25);
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "xxx"}))
        .collect();
    post_ok(&user, "xxx_col1", Value::Array(items)).await;
    let views = [
        "/info/collections",
        "/info/quota",
        "/info/collection_usage",
        "/info/collection_counts",
    ];

    let ts1 = user.get("/info/collections").await.last_modified();
    assert!(ts1 > 0);
    for since in [ts_text(ts1 - 1000), ts_text(ts1 - 10)] {
        for view in views {
            let r = get_with(&user, view, "X-If-Modified-Since", &since).await;
            assert_eq!(r.status, 200, "{view} since {since}: {r:?}");
            assert_eq!(r.last_modified(), ts1);
        }
    }
    for view in views {
        let r = get_with(&user, view, "X-If-Modified-Since", &ts_text(ts1)).await;
        assert_not_modified(&r, ts1);
    }

    next_tick().await;
    let ts2 = put_ok(&user, "xxx_col2", "TEST", json!({"payload": "TEST"})).await;
    assert!(ts2 > ts1);
    for view in views {
        let r = get_with(&user, view, "X-If-Modified-Since", &ts_text(ts1)).await;
        assert_eq!(r.status, 200, "{view}: {r:?}");
        assert_eq!(r.last_modified(), ts2);
        let r = get_with(&user, view, "X-If-Modified-Since", &ts_text(ts2)).await;
        assert_not_modified(&r, ts2);
    }
    // The 200 after the write shows the new data.
    let r = get_with(
        &user,
        "/info/collection_counts",
        "X-If-Modified-Since",
        &ts_text(ts1),
    )
    .await;
    assert_eq!(r.json(), json!({"xxx_col1": 3, "xxx_col2": 1}));
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.26
// ---------------------------------------------------------------------------------------------

const DEFAULT_CONFIGURATION: &str = "{\"max_post_bytes\":2621440,\"max_post_records\":100,\
\"max_record_payload_bytes\":2621440,\"max_request_bytes\":2625536,\"max_total_bytes\":262144000,\
\"max_total_records\":10000,\"max_quota_limit\":2097152000}";

// SPEC 6.26
#[tokio::test]
async fn info_configuration_is_the_default_limits() {
    let server = TestServer::start().await;
    let user = server.user(26);
    let r = user.get("/info/configuration").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(media_type(&r).as_deref(), Some("application/json"));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_weave_timestamp(&r);
    let body = r.json();
    for key in [
        "max_post_bytes",
        "max_post_records",
        "max_record_payload_bytes",
        "max_request_bytes",
        "max_total_bytes",
        "max_total_records",
    ] {
        assert!(body[key].is_u64(), "{key} missing in {}", r.body);
    }
    let expected = default_configuration(&server);
    let want: Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(body, want);
    assert_eq!(r.body, expected, "serialized in struct order");
    // X-Last-Modified stays 0.00 even after writes.
    put_ok(&user, "xxx_col2", "a", json!({"payload": "x"})).await;
    let r = user.get("/info/configuration").await;
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_eq!(r.body, default_configuration(&server));
}

/// The default limits as this server advertises them: on Spanner a batch must fit one
/// transaction, so max_total_bytes/records are clamped (SPEC 5.3).
fn default_configuration(server: &TestServer) -> String {
    if common::db::spanner(server) {
        DEFAULT_CONFIGURATION
            .replace(
                "\"max_total_bytes\":262144000",
                "\"max_total_bytes\":100000000",
            )
            .replace("\"max_total_records\":10000", "\"max_total_records\":9984")
    } else {
        DEFAULT_CONFIGURATION.to_owned()
    }
}

// SPEC 6.26 (no auth in RS, SPEC 1.5)
#[tokio::test]
async fn info_configuration_needs_no_auth() {
    let server = TestServer::start().await;
    let r = server.raw(Method::GET, "/1.5/26/info/configuration").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_eq!(r.body, default_configuration(&server));
}

// SPEC 6.26 (body is the configured limits, not a constant)
#[tokio::test]
async fn info_configuration_reflects_configured_limits() {
    let server = TestServer::start_with(|s| {
        s.syncstorage.limits.max_post_records = 50;
        s.syncstorage.limits.max_total_records = 5000;
    })
    .await;
    let user = server.user(26);
    let r = user.get("/info/configuration").await;
    assert_eq!(r.status, 200);
    let mut want: Value = serde_json::from_str(&default_configuration(&server)).unwrap();
    want["max_post_records"] = json!(50);
    want["max_total_records"] = json!(5000);
    assert_eq!(r.json(), want);
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.27 / 6.28
// ---------------------------------------------------------------------------------------------

// SPEC 6.27
#[tokio::test]
async fn collection_usage_is_payload_bytes_over_1024() {
    let server = TestServer::start().await;
    let user = server.user(27);
    let r = user.get("/info/collection_usage").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({}));
    assert_eq!(r.header("X-Weave-Records"), Some("0"));

    let big = "*".repeat(500);
    post_ok(
        &user,
        "xxx_col2",
        json!([{"id": "13", "payload": "XyX"}, {"id": "14", "payload": big}]),
    )
    .await;
    let r = user.get("/info/collection_usage").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Weave-Records"), Some("1"));
    let usage = r.json();
    assert_eq!(usage.as_object().unwrap().len(), 1, "{}", r.body);
    assert_eq!(
        usage["xxx_col2"].as_f64(),
        Some(503.0 / 1024.0),
        "{}",
        r.body
    );
}

// SPEC 6.27 (SPEC 1.3: size = UTF-8 byte length)
#[tokio::test]
async fn collection_usage_counts_utf8_bytes() {
    let server = TestServer::start().await;
    let user = server.user(27);
    // "é" is 2 bytes, "€" is 3 bytes: 5 bytes, 2 characters.
    put_ok(&user, "forms", "u", json!({"payload": "é€"})).await;
    let r = user.get("/info/collection_usage").await;
    assert_eq!(r.json()["forms"].as_f64(), Some(5.0 / 1024.0), "{}", r.body);
}

// SPEC 6.28
#[tokio::test]
async fn quota_used_grows_by_payload_size() {
    let server = TestServer::start().await;
    let user = server.user(28);
    let before = user.get("/info/quota").await;
    assert_eq!(before.status, 200);
    let old_used = before.json()[0].as_f64().expect("used is a number");

    let t = put_ok(
        &user,
        "xxx_col2",
        "myid",
        json!({"payload": "*".repeat(500)}),
    )
    .await;
    let r = user.get("/info/quota").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.last_modified(), t);
    let body = r.json();
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{}", r.body);
    assert_eq!(body[1], Value::Null);
    let used = body[0].as_f64().unwrap();
    assert_eq!(used - old_used, 500.0 / 1024.0);

    next_tick().await;
    put_ok(&user, "other", "x", json!({"payload": "*".repeat(500)})).await;
    let used2 = user.get("/info/quota").await.json()[0].as_f64().unwrap();
    assert_eq!(
        used2 - used,
        500.0 / 1024.0,
        "quota is across all collections"
    );
}

// SPEC 6.28
#[tokio::test]
async fn quota_for_empty_user_is_zero_and_null() {
    let server = TestServer::start().await;
    let user = server.user(28);
    let r = user.get("/info/quota").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(media_type(&r).as_deref(), Some("application/json"));
    assert_eq!(r.body, "[0.0,null]");
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
}

// ---------------------------------------------------------------------------------------------
// SPEC 6.29 / 6.30
// ---------------------------------------------------------------------------------------------

// SPEC 6.29
#[tokio::test]
async fn full_timestamps_have_at_most_two_decimals_and_newer_selects_two_newest() {
    let server = TestServer::start().await;
    let user = server.user(29);
    let mut written = Vec::new();
    for i in 0..5 {
        if i > 0 {
            next_tick().await;
        }
        written.push(
            post_ok(
                &user,
                "xxx_col2",
                json!([{"id": format!("{i:02}"), "payload": "xxx"}]),
            )
            .await,
        );
    }
    let r = user.get("/storage/xxx_col2?full=1").await;
    let items = listing(&r);
    assert_eq!(items.len(), 5);
    let texts = modified_texts(&r.body);
    assert_eq!(texts.len(), 5, "{}", r.body);
    let mut stamps: Vec<u64> = Vec::new();
    for text in &texts {
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 2, "timestamp {text} has more than two decimals");
        stamps.push(ts_millis(text));
    }
    stamps.sort_unstable();
    assert_eq!(stamps, written);
    let third_newest = stamps[2];
    let r = user
        .get(&format!(
            "/storage/xxx_col2?newer={}",
            ts_text(third_newest)
        ))
        .await;
    assert_eq!(ids(&listing(&r)), strs(&["04", "03"]));
    // The server's own text form of the timestamp works as well.
    let r = user
        .get(&format!("/storage/xxx_col2?newer={}", texts[2]))
        .await;
    assert_eq!(ids(&listing(&r)), strs(&["04", "03"]));
}

// SPEC 6.30
#[tokio::test]
async fn modified_always_has_exactly_two_decimals() {
    let server = TestServer::start().await;
    let user = server.user(30);
    // Keep writing until a timestamp's hundredths digit is 0 (e.g. 1700000000.10).
    let mut found = None;
    for _ in 0..400 {
        next_tick().await;
        let r = user
            .put("/storage/meta/global", json!({"payload": "{}"}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let lm = r.header("X-Last-Modified").unwrap().to_owned();
        assert!(is_two_decimal_ts(&lm), "X-Last-Modified {lm}");
        assert!(is_two_decimal_ts(r.body.trim()), "PUT body {:?}", r.body);
        assert_eq!(r.body.trim(), lm, "PUT body is the bare T");
        if r.last_modified() % 100 == 0 {
            found = Some(r.last_modified());
            break;
        }
    }
    let t = found.expect("no timestamp with a zero hundredths digit in 400 writes");
    assert!(ts_text(t).ends_with('0'));

    let check = |what: &str, r: &Resp, min: usize| {
        assert_eq!(r.status, 200, "{what}: {r:?}");
        let texts = modified_texts(&r.body);
        assert!(texts.len() >= min, "{what}: {}", r.body);
        for text in texts {
            assert!(
                is_two_decimal_ts(&text),
                "{what}: modified {text} in {}",
                r.body
            );
        }
        for h in ["X-Last-Modified", "X-Weave-Timestamp"] {
            let v = r.header(h).unwrap_or_else(|| panic!("{what}: no {h}"));
            assert!(is_two_decimal_ts(v), "{what}: {h} {v}");
        }
    };
    let r = user.get("/storage/meta/global").await;
    check("GET item", &r, 1);
    assert_eq!(modified_texts(&r.body), vec![ts_text(t)]);
    let r = user.get("/storage/meta?full=1").await;
    check("GET ?full", &r, 1);
    assert_eq!(modified_texts(&r.body), vec![ts_text(t)]);
    let r = user.get("/info/collections").await;
    check("info/collections", &r, 0);
    assert_eq!(r.body, format!("{{\"meta\":{}}}", ts_text(t)));

    next_tick().await;
    let r = user
        .post("/storage/meta", json!([{"id": "other", "payload": "x"}]))
        .await;
    check("POST", &r, 1);
    next_tick().await;
    let r = user.delete("/storage/meta/other").await;
    check("DELETE item", &r, 1);
}
