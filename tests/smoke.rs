#[macro_use]
mod common;

use common::*;
use serde_json::json;

backend_matrix!();

#[tokio::test]
async fn put_then_get_round_trip() {
    let server = TestServer::start().await;
    let user = server.user(42);
    let r = user
        .put(
            "/storage/bookmarks/abc",
            json!({"payload": "hello", "sortindex": 3}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.last_modified();
    assert_eq!(json_ts(&r.json()), t);
    let r = user.get("/storage/bookmarks/abc").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], "hello");
    assert_eq!(r.json()["sortindex"], 3);
    assert_eq!(json_ts(&r.json()["modified"]), t);
    let r = user.get("/info/collections").await;
    assert_eq!(json_ts(&r.json()["bookmarks"]), t);
    assert_eq!(r.header("X-Weave-Records"), Some("1"));
}
