#[macro_use]
mod common;

// Black-box tests of batch uploads (SPEC 1.10, 1.15, 5.1; SPEC 6 cases 68-84).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::db::*;
use common::*;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Value, json};

backend_matrix!();
proxy_matrix!();

/// Two hours plus 11 ms, the smallest age SPEC 6 case 82 calls expired.
const EXPIRED_AGE_MS: i64 = 2 * 60 * 60 * 1000 + 11;

// ---- helpers ----

/// A batch id as it goes into a query string (ids may contain `=`, `+`, `/`).
fn enc(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

/// The number inside a batch id: base64 of its decimal text.
fn batch_number(id: &str) -> i64 {
    let bytes = STANDARD
        .decode(id)
        .unwrap_or_else(|e| panic!("batch id {id:?} is not base64: {e}"));
    String::from_utf8(bytes)
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("batch id {id:?}: {e}"))
}

fn batch_id_for(number: i64) -> String {
    STANDARD.encode(number.to_string())
}

/// The ids of a full listing (objects), sorted.
fn sorted_item_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn by_id(list: &Value, id: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
        .clone()
}

/// Opens a batch in `coll` with `items`; asserts the 202 shape and returns the id.
async fn open_batch(user: &User<'_>, coll: &str, items: Value) -> String {
    let r = user
        .post(&format!("/storage/{coll}?batch=true"), items)
        .await;
    assert_eq!(r.status, 202, "open batch: {}", r.body);
    let body = r.json();
    assert!(body["failed"].is_object(), "{body}");
    assert!(body["success"].is_array(), "{body}");
    body["batch"]
        .as_str()
        .unwrap_or_else(|| panic!("no batch id: {body}"))
        .to_owned()
}

async fn append(user: &User<'_>, coll: &str, batch: &str, items: Value) -> Resp {
    user.post(&format!("/storage/{coll}?batch={}", enc(batch)), items)
        .await
}

async fn commit(user: &User<'_>, coll: &str, batch: &str, items: Value) -> Resp {
    user.post(
        &format!("/storage/{coll}?batch={}&commit=true", enc(batch)),
        items,
    )
    .await
}

async fn listing(user: &User<'_>, coll: &str) -> Value {
    let r = user.get(&format!("/storage/{coll}?full=1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

// ---- SPEC 6 cases 68-84 ----

/// Case 68: staged records are invisible until the commit, which stamps them all with one T.
#[tokio::test]
async fn full_batch_upload_commits_with_one_timestamp() {
    let server = TestServer::start().await;
    let user = server.user(42);
    let r = user
        .post(
            "/storage/xxx_col",
            json!([{"id": "12", "payload": "twelve"}, {"id": "13", "payload": "x"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ts0 = r.last_modified();
    next_tick().await;

    let r = user
        .post(
            "/storage/xxx_col?batch=true",
            json!([{"id": "a", "payload": "A"}, {"id": "b", "payload": "B"}]),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.last_modified(),
        ts0,
        "creating a batch must not move X-Last-Modified"
    );
    let body = r.json();
    assert_eq!(body["success"], json!(["a", "b"]));
    assert_eq!(body["failed"], json!({}));
    assert!(
        body.get("modified").is_none(),
        "a 202 has no modified: {body}"
    );
    let batch = body["batch"].as_str().expect("batch id").to_owned();

    let r = user.get("/storage/xxx_col").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        sorted_ids(&r.json()),
        strs(&["12", "13"]),
        "staged records must stay invisible"
    );
    assert_eq!(r.header("X-Weave-Records"), Some("2"));
    assert_eq!(r.last_modified(), ts0);
    let r = user.get("/info/collections").await;
    assert_eq!(json_ts(&r.json()["xxx_col"]), ts0);
    next_tick().await;

    let r = commit(
        &user,
        "xxx_col",
        &batch,
        json!([{"id": "c", "payload": "C"}, {"id": "13", "payload": "portnoy"}, {"id": "14", "payload": "fourteen"}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert!(
        body.get("batch").is_none(),
        "a commit answers without batch: {body}"
    );
    assert_eq!(body["success"], json!(["c", "13", "14"]));
    assert_eq!(body["failed"], json!({}));
    let t = json_ts(&body["modified"]);
    assert_eq!(r.last_modified(), t);
    assert!(t > ts0);
    let r = user.get("/info/collections").await;
    assert_eq!(json_ts(&r.json()["xxx_col"]), t);

    let list = listing(&user, "xxx_col").await;
    assert_eq!(
        sorted_item_ids(&list),
        strs(&["12", "13", "14", "a", "b", "c"])
    );
    for id in ["a", "b", "c", "13", "14"] {
        assert_eq!(
            json_ts(&by_id(&list, id)["modified"]),
            t,
            "{id} must carry the commit timestamp"
        );
    }
    assert_eq!(
        json_ts(&by_id(&list, "12")["modified"]),
        ts0,
        "untouched 12 keeps its timestamp"
    );
    assert_eq!(by_id(&list, "13")["payload"], "portnoy");
    assert_eq!(by_id(&list, "a")["payload"], "A");
    assert_eq!(by_id(&list, "14")["payload"], "fourteen");
    // The batch is gone once committed.
    assert_eq!(batch_rows(&mut db(&server), 42), (0, 0));
}

/// Case 69: an empty commit later on stamps the staged records with the commit time.
#[tokio::test]
async fn empty_commit_uses_commit_time_not_append_time() {
    let server = TestServer::start().await;
    let user = server.user(3);
    let r = user
        .post(
            "/storage/col?batch=true",
            json!([{"id": "a", "payload": "A"}, {"id": "b", "payload": "B"}]),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let staged_at = r.ts_header("X-Weave-Timestamp");
    let batch = r.json()["batch"].as_str().unwrap().to_owned();
    sleep_ms(300).await;
    let r = post_raw(
        &user,
        &format!("/storage/col?batch={}&commit=true", enc(&batch)),
        "application/json",
        "[]",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = json_ts(&r.json()["modified"]);
    assert_eq!(r.json()["success"], json!([]));
    assert!(
        t > staged_at,
        "commit ts {t} must be later than the append ({staged_at})"
    );
    let list = listing(&user, "col").await;
    assert_eq!(sorted_item_ids(&list), strs(&["a", "b"]));
    for b in list.as_array().unwrap() {
        assert_eq!(json_ts(&b["modified"]), t, "{b}");
    }
}

/// Case 70: the commit request's own copy of a staged id wins.
#[tokio::test]
async fn commit_body_overrides_staged_record() {
    let server = TestServer::start().await;
    let user = server.user(5);
    let batch = open_batch(
        &user,
        "col",
        json!([{"id": "b0", "payload": "staged", "sortindex": 4}]),
    )
    .await;
    let r = commit(
        &user,
        "col",
        &batch,
        json!([{"id": "b0", "payload": "committed"}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["failed"], json!({}));
    assert_eq!(r.json()["success"], json!(["b0"]));
    let r = user.get("/storage/col/b0").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], "committed");
    // The staged sortindex was not overridden, so it survives the merge.
    assert_eq!(r.json()["sortindex"], 4);
}

mod mysql_layout_only {
    use super::*;

    /// Case 71: invalid batch/commit parameters are 400 with body 0, and write nothing.
    #[tokio::test]
    async fn bad_batch_parameters_are_rejected() {
        let server = TestServer::start().await;
        let user = server.user(6);
        let r = user
            .put("/storage/col/existing", json!({"payload": "keep"}))
            .await;
        assert_eq!(r.status, 200);
        let open = open_batch(&user, "col", json!([{"id": "staged", "payload": "s"}])).await;
        let before = db_snapshot(&server);
        // The snapshot must see what it guards, or comparing it proves nothing.
        for row in [
            "|existing|-|keep|",
            "|6|staged|-|s|-",
            &format!("{}|6|", batch_number(&open)),
        ] {
            assert!(before.contains(row), "{row} not in the snapshot:\n{before}");
        }
        let items = json!([{"id": "new", "payload": "n"}]);
        let unknown = batch_id_for(1_234_567);
        for query in [
            "batch=sammich".to_owned(),
            "commit=true".to_owned(),
            "batch=sammich&commit=true".to_owned(),
            format!("batch={}&commit=yes", enc(&open)),
            format!("batch={}&commit=false", enc(&open)),
            "batch=true&commit=nope".to_owned(),
            format!("batch={}", enc(&unknown)),
            format!("batch={}&commit=true", enc(&unknown)),
            format!("batch={}", enc(&STANDARD.encode("-5"))),
            format!("batch={}", enc(&STANDARD.encode("12abc"))),
            "batch=%21%21%21".to_owned(),
        ] {
            let r = user
                .post(&format!("/storage/col?{query}"), items.clone())
                .await;
            assert_error(&r, 400, "0", &query);
        }
        assert_eq!(
            db_snapshot(&server),
            before,
            "a rejected batch request wrote something"
        );
        assert_eq!(
            sorted_ids(&user.get("/storage/col").await.json()),
            strs(&["existing"])
        );
        // The open batch is still usable.
        let r = commit(&user, "col", &open, json!([])).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            sorted_ids(&user.get("/storage/col").await.json()),
            strs(&["existing", "staged"])
        );
    }

    /// Case 74: uids 3 and 13 get the same id when they open a batch in the same 10 ms tick; the
    /// data must still stay apart.
    #[tokio::test]
    async fn same_batch_id_for_two_users_keeps_data_apart() {
        let server = TestServer::start().await;
        let a = server.user(3);
        let b = server.user(13);
        let mut shared = None;
        for _ in 0..100 {
            let (ra, rb) = tokio::join!(
                a.post("/storage/col?batch=true", json!([])),
                b.post("/storage/col?batch=true", json!([]))
            );
            assert_eq!(
                (ra.status, rb.status),
                (202, 202),
                "{} / {}",
                ra.body,
                rb.body
            );
            let (ia, ib) = (
                ra.json()["batch"].as_str().unwrap().to_owned(),
                rb.json()["batch"].as_str().unwrap().to_owned(),
            );
            if ia == ib {
                shared = Some(ia);
                break;
            }
            // Start the next attempt without open batches: a user's own open batches push its
            // next id up by one, and would keep the two users' ids apart.
            assert_eq!(a.delete("/storage").await.status, 200);
            assert_eq!(b.delete("/storage").await.status, 200);
        }
        let id = match shared {
            Some(id) => id,
            None => {
                // No natural collision: give b a batch with a's id, as the id scheme allows.
                let id = open_batch(&a, "col", json!([])).await;
                let mut conn = db(&server);
                let cid = collection_id(&mut conn, "col");
                sql_query(
                    "INSERT INTO batch_uploads (batch, userid, collection) VALUES (?, 13, ?)",
                )
                .bind(batch_number(&id))
                .bind(cid)
                .execute(&mut conn)
                .unwrap();
                id
            }
        };
        let r = append(
            &a,
            "col",
            &id,
            json!([{"id": "x", "payload": "from a"}, {"id": "only_a", "payload": "a"}]),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let r = append(
            &b,
            "col",
            &id,
            json!([{"id": "x", "payload": "from b"}, {"id": "only_b", "payload": "b"}]),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let r = commit(&a, "col", &id, json!([])).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let la = listing(&a, "col").await;
        assert_eq!(sorted_item_ids(&la), strs(&["only_a", "x"]));
        assert_eq!(by_id(&la, "x")["payload"], "from a");
        // b's batch survived a's commit.
        let r = commit(&b, "col", &id, json!([{"id": "late_b", "payload": "b"}])).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let lb = listing(&b, "col").await;
        assert_eq!(sorted_item_ids(&lb), strs(&["late_b", "only_b", "x"]));
        assert_eq!(by_id(&lb, "x")["payload"], "from b");
        assert_eq!(
            sorted_item_ids(&listing(&a, "col").await),
            strs(&["only_a", "x"])
        );
    }

    /// Case 75: a committed id is spent; and an id issued again starts empty even if records
    /// staged under that number are still lying around.
    #[tokio::test]
    async fn committed_batch_id_is_spent_and_reissued_ids_start_empty() {
        let server = TestServer::start().await;
        let user = server.user(24);
        let batch = open_batch(&user, "col", json!([{"id": "a", "payload": "A"}])).await;
        let r = commit(&user, "col", &batch, json!([])).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let before = db_snapshot(&server);
        let r = append(&user, "col", &batch, json!([{"id": "b", "payload": "B"}])).await;
        assert_error(&r, 400, "0", "append to a committed batch");
        let r = commit(&user, "col", &batch, json!([{"id": "b", "payload": "B"}])).await;
        assert_error(&r, 400, "0", "commit a committed batch");
        assert_eq!(db_snapshot(&server), before);
        assert_eq!(
            sorted_ids(&user.get("/storage/col").await.json()),
            strs(&["a"])
        );

        // Leftover staged rows for every id this user could be issued in the next 30 s.
        let start = now_ms() / 10 * 10 - 100 + 24 % 10;
        let end = start + 30_000;
        let mut conn = db(&server);
        let rows: Vec<String> = (start..=end)
            .step_by(10)
            .map(|v| format!("({v}, 24, 'ghost', 'boo', 3)"))
            .collect();
        sql_query(format!(
            "INSERT INTO batch_upload_items (batch, userid, id, payload, payload_size) VALUES {}",
            rows.join(", ")
        ))
        .execute(&mut conn)
        .unwrap();
        let reissued = open_batch(&user, "col2", json!([{"id": "fresh", "payload": "F"}])).await;
        let n = batch_number(&reissued);
        assert!(
            (start..=end).contains(&n),
            "batch number {n} outside the seeded range {start}..={end}"
        );
        let r = commit(&user, "col2", &reissued, json!([])).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            sorted_item_ids(&listing(&user, "col2").await),
            strs(&["fresh"]),
            "stale staged rows resurfaced"
        );
    }

    /// Case 82: a batch older than 2 h (its id's time, SPEC 5.1) is gone for append and commit.
    #[tokio::test]
    async fn batches_expire_after_two_hours() {
        let server = TestServer::start().await;
        let user = server.user(15);
        let mut conn = db(&server);

        // Moved 2 h + 11 ms into the past.
        let fresh = open_batch(&user, "col", json!([{"id": "a", "payload": "A"}])).await;
        let old = batch_number(&fresh) - EXPIRED_AGE_MS;
        for table in ["batch_uploads", "batch_upload_items"] {
            let n = sql_query(format!(
                "UPDATE {table} SET batch = ? WHERE batch = ? AND userid = 15"
            ))
            .bind(old)
            .bind(batch_number(&fresh))
            .execute(&mut conn)
            .unwrap();
            assert_eq!(n, 1, "{table}: the batch row was not found to move");
        }
        let expired = batch_id_for(old);
        // Created directly in the past (a second older still, so it cannot clash with the moved one).
        let cid = collection_id(&mut conn, "col");
        let created = now_ms() - EXPIRED_AGE_MS - 1_000;
        sql_query("INSERT INTO batch_uploads (batch, userid, collection) VALUES (?, 15, ?)")
            .bind(created)
            .bind(cid)
            .execute(&mut conn)
            .unwrap();
        sql_query(
        "INSERT INTO batch_upload_items (batch, userid, id, payload, payload_size) VALUES (?, 15, 'b', 'B', 1)",
    )
    .bind(created)
    .execute(&mut conn)
    .unwrap();

        for id in [expired, batch_id_for(created)] {
            let r = append(&user, "col", &id, json!([{"id": "c", "payload": "C"}])).await;
            assert_error(&r, 400, "0", "append to an expired batch");
            let r = commit(&user, "col", &id, json!([{"id": "c", "payload": "C"}])).await;
            assert_error(&r, 400, "0", "commit an expired batch");
            let r = user.get("/storage/col").await;
            assert_eq!(r.json(), json!([]), "an expired batch was applied");
            assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
        }

        // Control: the same edit to just under 2 h leaves the batch usable.
        let young = open_batch(&user, "col", json!([{"id": "y", "payload": "Y"}])).await;
        let moved = batch_number(&young) - (2 * 60 * 60 * 1000 - 10_000);
        for table in ["batch_uploads", "batch_upload_items"] {
            sql_query(format!(
                "UPDATE {table} SET batch = ? WHERE batch = ? AND userid = 15"
            ))
            .bind(moved)
            .bind(batch_number(&young))
            .execute(&mut conn)
            .unwrap();
        }
        let r = commit(&user, "col", &batch_id_for(moved), json!([])).await;
        assert_eq!(
            r.status, 200,
            "a batch 1 h 59 min 50 s old must still commit: {}",
            r.body
        );
        assert_eq!(
            sorted_ids(&user.get("/storage/col").await.json()),
            strs(&["y"])
        );
    }
}

/// SPEC 1.10: `batch=true` in any case, `batch=` and a bare `batch` all open a batch; `commit`
/// is case-insensitive.
#[tokio::test]
async fn batch_start_and_commit_spellings() {
    let server = TestServer::start().await;
    let user = server.user(26);
    let mut ids = Vec::new();
    for (i, query) in ["batch=true", "batch=TRUE", "batch=True", "batch=", "batch"]
        .into_iter()
        .enumerate()
    {
        let r = user
            .post(
                &format!("/storage/col?{query}"),
                json!([{"id": format!("i{i}"), "payload": "x"}]),
            )
            .await;
        assert_eq!(r.status, 202, "?{query}: {}", r.body);
        let id = r.json()["batch"]
            .as_str()
            .unwrap_or_else(|| panic!("?{query}: no batch id"))
            .to_owned();
        assert!(!ids.contains(&id), "?{query} reused an open batch id");
        ids.push(id);
    }
    assert_eq!(user.get("/storage/col").await.json(), json!([]));
    for (i, (id, commit)) in ids
        .iter()
        .zip(["true", "TRUE", "True", "tRuE", "true"])
        .enumerate()
    {
        let r = user
            .post(
                &format!("/storage/col?batch={}&commit={commit}", enc(id)),
                json!([]),
            )
            .await;
        assert_eq!(r.status, 200, "commit={commit}: {}", r.body);
        assert_eq!(
            user.get("/storage/col")
                .await
                .json()
                .as_array()
                .unwrap()
                .len(),
            i + 1
        );
    }
}

/// SPEC 1.10: every batch request carries the client's X-If-Unmodified-Since; a concurrent
/// writer makes the next one 412 and nothing is committed.
#[tokio::test]
async fn batch_requests_honour_x_if_unmodified_since() {
    let server = TestServer::start().await;
    let user = server.user(27);
    let r = user.put("/storage/col/a", json!({"payload": "A"})).await;
    let ts0 = r.last_modified();
    let since = r.header("X-Last-Modified").unwrap().to_owned();
    let with_since = |query: String, items: Value| {
        user.request(Method::POST, &format!("/storage/col?{query}"))
            .header("X-If-Unmodified-Since", since.clone())
            .header("Content-Type", "application/json")
            .body(items.to_string())
    };
    let r = user
        .send(with_since(
            "batch=true".into(),
            json!([{"id": "b", "payload": "B"}]),
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.json()["batch"].as_str().unwrap().to_owned();
    let r = user
        .send(with_since(
            format!("batch={}", enc(&batch)),
            json!([{"id": "c", "payload": "C"}]),
        ))
        .await;
    assert_eq!(
        r.status, 202,
        "staging does not move the collection: {}",
        r.body
    );
    next_tick().await;
    let r = user
        .put("/storage/col/other", json!({"payload": "concurrent"}))
        .await;
    assert_eq!(r.status, 200);
    let ts1 = r.last_modified();
    let before = db_snapshot(&server);
    let r = user
        .send(with_since(
            format!("batch={}", enc(&batch)),
            json!([{"id": "d", "payload": "D"}]),
        ))
        .await;
    assert_eq!(r.status, 412, "append after a concurrent write: {}", r.body);
    assert_eq!(r.last_modified(), ts1);
    let r = user
        .send(with_since(
            format!("batch={}&commit=true", enc(&batch)),
            json!([]),
        ))
        .await;
    assert_eq!(r.status, 412, "commit after a concurrent write: {}", r.body);
    assert_eq!(r.last_modified(), ts1);
    assert_eq!(
        db_snapshot(&server),
        before,
        "a 412 batch request wrote something"
    );
    assert_eq!(
        sorted_ids(&user.get("/storage/col").await.json()),
        strs(&["a", "other"])
    );
    assert!(ts1 > ts0);
}

/// SPEC 1.5: deleting all storage removes open batches too.
#[tokio::test]
async fn deleting_storage_drops_open_batches() {
    let server = TestServer::start().await;
    let user = server.user(28);
    let batch = open_batch(&user, "col", json!([{"id": "a", "payload": "A"}])).await;
    let r = user.delete("/storage").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(batch_rows(&mut db(&server), 28), (0, 0));
    let r = commit(&user, "col", &batch, json!([])).await;
    assert_error(&r, 400, "0", "commit after DELETE /storage");
    assert_eq!(user.get("/storage/col").await.json(), json!([]));
    assert_eq!(user.get("/info/collections").await.json(), json!({}));
}

/// Case 72: a batch belongs to the collection it was opened in.
#[tokio::test]
async fn batch_id_from_another_collection_is_rejected() {
    let server = TestServer::start().await;
    let user = server.user(7);
    let batch = open_batch(&user, "col1", json!([{"id": "a", "payload": "A"}])).await;
    let before = db_snapshot(&server);
    let r = append(&user, "col2", &batch, json!([{"id": "b", "payload": "B"}])).await;
    assert_error(&r, 400, "0", "append in col2");
    let r = commit(&user, "col2", &batch, json!([{"id": "b", "payload": "B"}])).await;
    assert_error(&r, 400, "0", "commit in col2");
    assert_eq!(db_snapshot(&server), before);
    let r = user.get("/storage/col2").await;
    assert_eq!(r.json(), json!([]));
    assert!(
        user.get("/info/collections")
            .await
            .json()
            .get("col2")
            .is_none()
    );

    let r = append(&user, "col1", &batch, json!([{"id": "c", "payload": "C"}])).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = commit(&user, "col1", &batch, json!([])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sorted_ids(&user.get("/storage/col1").await.json()),
        strs(&["a", "c"])
    );
    assert_eq!(user.get("/storage/col2").await.json(), json!([]));
}

/// Case 73: another user cannot use, see or commit a user's batch.
#[tokio::test]
async fn batch_id_of_another_user_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.user(17);
    let bob = server.user(18);
    let batch = open_batch(&alice, "col", json!([{"id": "a", "payload": "alice"}])).await;
    let before = db_snapshot(&server);
    let r = append(&bob, "col", &batch, json!([{"id": "b", "payload": "bob"}])).await;
    assert_error(&r, 400, "0", "bob appends");
    let r = commit(&bob, "col", &batch, json!([])).await;
    assert_error(&r, 400, "0", "bob commits");
    assert_eq!(db_snapshot(&server), before);
    assert_eq!(bob.get("/storage/col").await.json(), json!([]));
    assert_eq!(bob.get("/info/collections").await.json(), json!({}));

    let r = append(
        &alice,
        "col",
        &batch,
        json!([{"id": "c", "payload": "alice2"}]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = commit(&alice, "col", &batch, json!([])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sorted_ids(&alice.get("/storage/col").await.json()),
        strs(&["a", "c"])
    );
    assert_eq!(bob.get("/storage/col").await.json(), json!([]));
}

/// Case 76: a staged partial update keeps the fields it does not name.
#[tokio::test]
async fn batch_partial_update_keeps_other_fields() {
    let server = TestServer::start().await;
    let user = server.user(8);
    let r = user
        .put("/storage/col/a", json!({"payload": "aaa", "sortindex": 3}))
        .await;
    assert_eq!(r.status, 200);
    let ta = r.last_modified();
    next_tick().await;
    let r = user
        .put("/storage/col/b", json!({"payload": "bbb", "sortindex": 17}))
        .await;
    assert_eq!(r.status, 200);
    next_tick().await;
    let batch = open_batch(&user, "col", json!([{"id": "b", "payload": "bii"}])).await;
    let r = commit(&user, "col", &batch, json!([])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = json_ts(&r.json()["modified"]);
    let list = listing(&user, "col").await;
    let b = by_id(&list, "b");
    assert_eq!(b["payload"], "bii");
    assert_eq!(b["sortindex"], 17);
    assert_eq!(json_ts(&b["modified"]), t);
    let a = by_id(&list, "a");
    assert_eq!(json_ts(&a["modified"]), ta);
    assert_eq!(a["payload"], "aaa");
    assert_eq!(a["sortindex"], 3);
}

/// Case 77: ttl-only staged records keep their payloads and expire with the new ttl.
#[tokio::test]
async fn batch_ttl_only_updates() {
    let server = TestServer::start().await;
    let user = server.user(9);
    let r = user
        .post("/storage/col", json!([{"id": "a", "payload": "A"}, {"id": "b", "payload": "B"}, {"id": "c", "payload": "C"}]))
        .await;
    assert_eq!(r.status, 200);
    next_tick().await;
    let batch = open_batch(
        &user,
        "col",
        json!([{"id": "a", "ttl": 1}, {"id": "b", "ttl": 1}]),
    )
    .await;
    let r = commit(&user, "col", &batch, json!([])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = json_ts(&r.json()["modified"]);
    let list = listing(&user, "col").await;
    assert_eq!(sorted_item_ids(&list), strs(&["a", "b", "c"]));
    for (id, payload) in [("a", "A"), ("b", "B"), ("c", "C")] {
        assert_eq!(by_id(&list, id)["payload"], payload);
    }
    assert_eq!(
        json_ts(&by_id(&list, "a")["modified"]),
        t,
        "committed items get modified = T"
    );
    sleep_ms(1200).await;
    assert_eq!(user.get("/storage/col").await.json(), json!(["c"]));
}

/// Case 78: a staged ttl counts from the commit, not from the upload.
#[tokio::test]
async fn batch_ttl_counts_from_commit() {
    let server = TestServer::start().await;
    let user = server.user(10);
    let batch = open_batch(&user, "col", json!([{"id": "x", "payload": "X", "ttl": 2}])).await;
    sleep_ms(1200).await;
    let r = commit(&user, "col", &batch, json!([])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    sleep_ms(1300).await; // 2.5 s after the upload, 1.3 s after the commit
    let r = user.get("/storage/col/x").await;
    assert_eq!(
        r.status, 200,
        "expired by upload time instead of commit time"
    );
    sleep_ms(1000).await; // 2.3 s after the commit
    let r = user.get("/storage/col/x").await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// Case 79: `batch=true&commit=true` is a plain POST.
#[tokio::test]
async fn batch_true_with_commit_is_a_plain_post() {
    let server = TestServer::start().await;
    let user = server.user(11);
    let r = user
        .post(
            "/storage/col?batch=true&commit=true",
            json!([{"id": "a", "payload": "A"}, {"id": "b", "payload": "B"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert!(body.get("batch").is_none(), "{body}");
    assert_eq!(body["success"], json!(["a", "b"]));
    let t = json_ts(&body["modified"]);
    assert_eq!(r.last_modified(), t);
    assert_eq!(
        json_ts(&user.get("/info/collections").await.json()["col"]),
        t
    );
    assert_eq!(
        sorted_ids(&user.get("/storage/col").await.json()),
        strs(&["a", "b"])
    );
    assert_eq!(batch_rows(&mut db(&server), 11).0, 0);
}

/// Case 80: invalid items are reported and never staged or committed.
#[tokio::test]
async fn invalid_items_in_a_batch_fail_alone() {
    let server = TestServer::start().await;
    let user = server.user(12);
    let r = user
        .post(
            "/storage/col?batch=true",
            json!([{"id": "a", "payload": "A"}, {"id": "b\n", "payload": "B"}]),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let body = r.json();
    assert_eq!(body["success"], json!(["a"]));
    assert_eq!(keys(&body["failed"]), set(["b\n"]));
    let batch = body["batch"].as_str().unwrap().to_owned();
    let r = commit(
        &user,
        "col",
        &batch,
        json!([{"id": "c", "payload": "C"}, {"id": "d", "payload": "D", "ttl": -12}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["success"], json!(["c"]));
    assert_eq!(keys(&body["failed"]), set(["d"]));
    assert_eq!(
        sorted_ids(&user.get("/storage/col").await.json()),
        strs(&["a", "c"])
    );
}

/// Case 81: which empty commit bodies are acceptable.
#[tokio::test]
async fn empty_commit_bodies() {
    let server = TestServer::start().await;
    let user = server.user(14);
    let cases = [
        ("application/json", "[]", 200),
        ("application/json", "{}", 400),
        ("application/json", "", 400),
        ("application/newlines", "", 200),
        ("application/newlines", "\n", 400),
        ("application/newlines", "{}", 400),
        ("application/newlines", "[]", 400),
    ];
    for (i, (content_type, body, status)) in cases.into_iter().enumerate() {
        let coll = format!("c{i}");
        let batch = open_batch(&user, &coll, json!([{"id": "a", "payload": "A"}])).await;
        let what = format!("{content_type} {body:?}");
        let before = db_snapshot(&server);
        let r = post_raw(
            &user,
            &format!("/storage/{coll}?batch={}&commit=true", enc(&batch)),
            content_type,
            body,
        )
        .await;
        if status == 200 {
            assert_eq!(r.status, 200, "{what}: {}", r.body);
            assert_eq!(
                sorted_ids(&user.get(&format!("/storage/{coll}")).await.json()),
                strs(&["a"]),
                "{what}"
            );
        } else {
            assert_error(&r, 400, "8", &what);
            assert_eq!(db_snapshot(&server), before, "{what} wrote something");
            let r = user.get(&format!("/storage/{coll}")).await;
            assert_eq!(r.json(), json!([]), "{what}");
            assert_eq!(r.header("X-Last-Modified"), Some("0.00"), "{what}");
            // The batch is intact and can still be committed properly.
            let r = commit(&user, &coll, &batch, json!([])).await;
            assert_eq!(r.status, 200, "{what}: {}", r.body);
            assert_eq!(
                sorted_ids(&user.get(&format!("/storage/{coll}")).await.json()),
                strs(&["a"]),
                "{what}"
            );
        }
    }
}

mod uuid_batches_only {
    use super::*;

    /// Case 82 on PostgreSQL, whose batches carry an `expiry` column (SPEC 5.2): once it has
    /// passed, the batch is gone for append and commit; a live one still works.
    #[tokio::test]
    #[ignore = "not on SQLite: batches with an expiry column, PostgreSQL and Spanner (on_postgres, on_spanner)"]
    async fn uuid_batches_expire_by_their_expiry_column() {
        let server = TestServer::start().await;
        let user = server.user(16);
        let old = open_batch(&user, "col", json!([{"id": "a", "payload": "A"}])).await;
        let live = open_batch(&user, "col", json!([{"id": "b", "payload": "B"}])).await;
        let n = sql_query(if spanner(&server) {
        "UPDATE batches SET expiry = TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 11 MILLISECOND) \
         WHERE batch_id = ?"
    } else {
        "UPDATE batches SET expiry = now() - interval '11 milliseconds' WHERE batch_id = ?::uuid"
    })
    .bind(old.as_str())
    .execute(&mut db(&server))
    .unwrap();
        assert_eq!(n, 1);
        assert_error(
            &append(&user, "col", &old, json!([{"id": "c"}])).await,
            400,
            "0",
            "append to an expired batch",
        );
        assert_error(
            &commit(&user, "col", &old, json!([])).await,
            400,
            "0",
            "commit of an expired batch",
        );
        assert_eq!(commit(&user, "col", &live, json!([])).await.status, 200);
        assert_eq!(
            sorted_ids(&user.get("/storage/col").await.json()),
            strs(&["b"])
        );
    }
}

/// Case 83: opening a batch in a new collection leaves every timestamp at zero.
#[tokio::test]
async fn opening_a_batch_does_not_touch_timestamps() {
    let server = TestServer::start().await;
    let user = server.user(16);
    let r = user
        .post(
            "/storage/brandnew?batch=true",
            json!([{"id": "a", "payload": "A"}]),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    let batch = r.json()["batch"].as_str().unwrap().to_owned();
    let r = append(
        &user,
        "brandnew",
        &batch,
        json!([{"id": "b", "payload": "B"}]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    let r = user.get("/info/collections").await;
    assert_eq!(r.json(), json!({}));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
    assert_eq!(r.header("X-Weave-Records"), Some("0"));
    assert_eq!(user.get("/info/collection_counts").await.json(), json!({}));
    let r = user.get("/storage/brandnew").await;
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.header("X-Last-Modified"), Some("0.00"));
}

/// Case 84: staged bytes count toward the quota; re-sending an id replaces its bytes.
#[tokio::test]
async fn staged_bytes_count_toward_quota() {
    let server = TestServer::start_with(|s| {
        s.syncstorage.enable_quota = true;
        s.syncstorage.enforce_quota = true;
        s.syncstorage.limits.max_quota_limit = 100;
    })
    .await;
    let user = server.user(19);
    let batch = open_batch(
        &user,
        "col",
        json!([{"id": "a", "payload": "x".repeat(60)}]),
    )
    .await;
    let r = append(
        &user,
        "col",
        &batch,
        json!([{"id": "a", "payload": "y".repeat(60)}]),
    )
    .await;
    assert_eq!(
        r.status, 202,
        "re-sending a must replace its 60 bytes, not add to them: {}",
        r.body
    );
    let before = db_snapshot(&server);
    let r = append(
        &user,
        "col",
        &batch,
        json!([{"id": "b", "payload": "z".repeat(50)}]),
    )
    .await;
    assert_error(
        &r,
        403,
        "14",
        "60 staged + 50 new bytes over a 100-byte quota",
    );
    assert_eq!(
        db_snapshot(&server),
        before,
        "a refused append staged something"
    );
    let r = commit(&user, "col", &batch, json!([])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = listing(&user, "col").await;
    assert_eq!(sorted_item_ids(&list), strs(&["a"]));
    assert_eq!(by_id(&list, "a")["payload"], "y".repeat(60));
    let quota = user.get("/info/quota").await.json();
    assert_eq!(quota, json!([60.0 / 1024.0, null]));
}

/// The largest batch info/configuration advertises commits in one unit: nothing is visible
/// while it is staged, one record more is refused without touching it, and after the commit
/// every record is there with the commit's timestamp (on Spanner: within one transaction's
/// mutation budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_advertised_batch_commits_atomically() {
    // The Spanner emulator takes about a minute for this commit (Spanner itself takes seconds),
    // as long as the unit-of-work deadline (twice database_pool_connection_timeout there,
    // database_request_timeout elsewhere): the test is about atomicity and the mutation
    // budget, so it gives the commit longer rather than go 503 on a slow day.
    let server = TestServer::start_with(|s| {
        s.syncstorage.database_pool_connection_timeout = 300;
        s.syncstorage.database_request_timeout = 600;
    })
    .await;
    let user = server.user(77);
    let config = user.get("/info/configuration").await.json();
    let total = config["max_total_records"].as_u64().unwrap() as usize;
    let per_post = config["max_post_records"].as_u64().unwrap() as usize;
    let records = |from: usize, to: usize| -> Value {
        (from..to)
            .map(|i| json!({"id": format!("r{i:05}"), "payload": "x"}))
            .collect()
    };
    let r = user
        .post("/storage/big?batch=true", records(0, per_post.min(total)))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.json()["batch"].as_str().unwrap().to_owned();
    let mut staged = per_post.min(total);
    while staged < total {
        let end = (staged + per_post).min(total);
        let r = user
            .post(&format!("/storage/big?batch={batch}"), records(staged, end))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        staged = end;
    }
    assert_eq!(user.get("/info/collection_counts").await.json(), json!({}));
    // One more is over the limit: refused, and the batch keeps what it had.
    let r = user
        .post(
            &format!("/storage/big?batch={batch}"),
            records(total, total + 1),
        )
        .await;
    assert_json_error(&r, 400, 17);
    let r = user
        .post(
            &format!("/storage/big?batch={batch}&commit=true"),
            json!([]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.last_modified();
    assert_eq!(
        user.get("/info/collection_counts").await.json(),
        json!({"big": total})
    );
    let r = user.get("/storage/big?newer=0&sort=oldest&limit=1").await;
    assert_eq!(r.json(), json!(["r00000"]));
    let r = user
        .get(&format!("/storage/big?older={}&limit=1", ts_text(t)))
        .await;
    assert_eq!(
        r.json(),
        json!([]),
        "every record carries the commit's timestamp"
    );
}
