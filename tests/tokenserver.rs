//! The tokenserver (SPEC 3, cases 95-122 of SPEC 6) against the real server and its real
//! database, on every engine. FxA's OAuth server is the only stand-in (tests/common/fxa.rs):
//! it is on the internet, so a local HTTP server plays its JWKS and verify endpoints.

#[macro_use]
mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::db::{AnyConnection, NodeRow, Num, UserRow, sql_query, ts_db};
use common::fxa::{FakeFxa, SYNC_SCOPE, Signer, unix_now};
use common::*;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use syncserver::auth::Secrets;
use syncserver::settings::Settings;

backend_matrix!();

const DOMAIN: &str = "api.accounts.firefox.com";
const RETIRED: i64 = i64::MAX;

/// A server with the tokenserver on, trusting the stand-in FxA.
struct Env {
    fxa: FakeFxa,
    server: TestServer,
}

async fn ts_env() -> Env {
    ts_env_with(|_| {}).await
}

async fn ts_env_with(adjust: impl FnOnce(&mut Settings)) -> Env {
    let fxa = FakeFxa::start();
    let url = fxa.url.clone();
    let server = TestServer::start_with(move |s| {
        s.tokenserver.enabled = true;
        s.tokenserver.fxa_oauth_server_url = url;
        adjust(s);
    })
    .await;
    Env { fxa, server }
}

/// `X-KeyID` for keys_changed_at and a hex client state.
fn key_id(kca: i64, client_state: &str) -> String {
    format!(
        "{kca}-{}",
        URL_SAFE_NO_PAD.encode(hex::decode(client_state).unwrap())
    )
}

fn email(sub: &str) -> String {
    format!("{sub}@{DOMAIN}")
}

impl Env {
    /// `GET path` with the given headers.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut rb = self
            .server
            .client
            .get(format!("{}{path}", self.server.base));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        send_rb(rb).await
    }

    /// A token request with a bearer token and X-KeyID.
    async fn bearer(&self, bearer: &str, key_id: &str) -> Resp {
        let auth = format!("Bearer {bearer}");
        self.get(
            "/1.0/sync/1.5",
            &[("Authorization", &auth), ("X-KeyID", key_id)],
        )
        .await
    }

    /// A token request for `sub` with an FxA access token signed by FxA's current key.
    async fn token(&self, sub: &str, generation: Option<i64>, key_id: &str) -> Resp {
        self.bearer(&Signer::shared(0).access_token(sub, generation), key_id)
            .await
    }

    /// Like `token`, asserting 200; the body.
    async fn ok(&self, sub: &str, generation: Option<i64>, key_id: &str) -> Value {
        let r = self.token(sub, generation, key_id).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// A storage client holding the credentials of a token response.
    fn user(&self, body: &Value) -> User<'_> {
        User {
            server: &self.server,
            uid: body["uid"].as_u64().unwrap(),
            id: body["id"].as_str().unwrap().to_owned(),
            key: body["key"].as_str().unwrap().to_owned(),
        }
    }

    fn db(&self) -> AnyConnection {
        ts_db(&self.server)
    }

    fn exec(&self, sql: &str, binds: &[Bind]) {
        let mut q = sql_query(sql);
        for b in binds {
            q = match b {
                Bind::I(i) => q.bind(*i),
                Bind::T(t) => q.bind(t.as_str()),
            };
        }
        q.execute(&mut self.db()).unwrap();
    }

    /// The user's rows, oldest uid first.
    fn rows(&self, sub: &str) -> Vec<UserRow> {
        sql_query(
            "SELECT uid, generation, client_state, created_at, replaced_at, nodeid, \
             keys_changed_at FROM users WHERE email = ? ORDER BY uid",
        )
        .bind(email(sub))
        .load(&mut self.db())
        .unwrap()
    }

    fn nodes(&self) -> Vec<NodeRow> {
        sql_query("SELECT id, node, available, current_load, capacity FROM nodes ORDER BY id")
            .load(&mut self.db())
            .unwrap()
    }

    /// Inserts a user row as an operator's tool would; returns its uid.
    fn insert_user(&self, sub: &str, generation: i64, created_at: i64, cs: &str, node: i64) -> i64 {
        self.exec(
            "INSERT INTO users (service, email, generation, client_state, created_at, \
             replaced_at, nodeid, keys_changed_at) VALUES \
             ((SELECT id FROM services WHERE service = 'sync-1.5'), ?, ?, ?, ?, NULL, ?, NULL)",
            &[
                Bind::T(email(sub)),
                Bind::I(generation),
                Bind::T(cs.into()),
                Bind::I(created_at),
                Bind::I(node),
            ],
        );
        self.rows(sub).last().unwrap().uid
    }

    fn insert_node(
        &self,
        url: &str,
        (available, load, capacity): (i64, i64, i64),
        downed: i64,
        backoff: i64,
    ) {
        self.exec(
            "INSERT INTO nodes (service, node, available, current_load, capacity, downed, backoff) \
             VALUES ((SELECT id FROM services WHERE service = 'sync-1.5'), ?, ?, ?, ?, ?, ?)",
            &[
                Bind::T(url.into()),
                Bind::I(available),
                Bind::I(load),
                Bind::I(capacity),
                Bind::I(downed),
                Bind::I(backoff),
            ],
        );
    }

    /// The id of the server's own node.
    fn self_node(&self) -> i64 {
        self.nodes()[0].id
    }
}

enum Bind {
    I(i64),
    T(String),
}

/// A tokenserver error body: `{"status": status, "errors": [{location, name, description}]}`.
fn assert_ts_error(r: &Resp, http: u16, status: &str, description: &str) {
    assert_eq!(r.status, http, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], status, "{}", r.body);
    assert_eq!(body["errors"][0]["description"], description, "{}", r.body);
}

fn hmac_hex(key: &str, data: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// End to end

#[tokio::test]
async fn token_then_hawk_storage_then_client_state_change() {
    // SPEC 6.116, 6.117 and the end-to-end flow.
    let env = ts_env().await;
    let sub = "0123456789abcdef0123456789abcdef";
    let r = env.token(sub, Some(1234), "1234-qqo").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    let ts: i64 = r.header("X-Timestamp").unwrap().parse().unwrap();
    assert!((ts - unix_now()).abs() < 5);
    let body = r.json();
    assert_eq!(body["hashalg"], "sha256");
    assert_eq!(body["duration"], 3600);
    assert_eq!(body["node_type"], node_type(&env.server));
    assert_eq!(body["hashed_fxa_uid"], hmac_hex("secret", sub)[..32]);
    let uid = body["uid"].as_u64().unwrap();
    assert_eq!(
        body["api_endpoint"],
        format!("{}/1.5/{uid}", env.server.base)
    );
    // The token is tokenlib's, signed with the master secret; the key is its derived secret.
    let secrets = Secrets::new(MASTER_SECRET);
    let id = body["id"].as_str().unwrap();
    let payload = secrets.parse_token(id).unwrap();
    assert_eq!(payload.uid, uid);
    assert_eq!(payload.fxa_uid, sub);
    assert_eq!(payload.fxa_kid, "0000000001234-qqo");
    assert_eq!(payload.tokenserver_origin.as_deref(), Some("rust"));
    assert_eq!(payload.hashed_fxa_uid, hmac_hex("secret", sub)[..32]);
    assert_eq!(
        payload.hashed_device_id,
        hmac_hex("secret", &format!("{}none", &hmac_hex("secret", sub)[..32]))[..32]
    );
    assert_eq!(body["key"], secrets.derived_secret(id, &payload.salt));
    assert!((payload.expires - (unix_now() + 3600) as f64).abs() < 5.0);

    // Hawk-signed storage requests with those credentials.
    let user = env.user(&body);
    let r = user
        .put(
            "/storage/bookmarks/b1",
            json!({"payload": "secret bookmark"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = user.get("/storage/bookmarks/b1").await;
    assert_eq!(r.json()["payload"], "secret bookmark");

    // New keys (client state bbbb, later generation): a new uid, whose storage is empty, and
    // whose credentials cannot read the old uid's records.
    let body2 = env.ok(sub, Some(1235), &key_id(1235, "bbbb")).await;
    let uid2 = body2["uid"].as_u64().unwrap();
    assert_ne!(uid2, uid);
    let user2 = env.user(&body2);
    let r = user2.get("/info/collections").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({}));
    let r = user2.get("/storage/bookmarks?full=1").await;
    assert_eq!(r.json(), json!([]));
    let r = user2
        .send(user2.request_abs(Method::GET, &format!("/1.5/{uid}/storage/bookmarks/b1")))
        .await;
    assert_eq!(r.status, 400, "another uid's path is refused: {}", r.body);
    // The old client state is stale now.
    let r = env.token(sub, Some(1236), "1236-qqo").await;
    assert_ts_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value stale value",
    );
}

fn node_type(server: &TestServer) -> &'static str {
    let url = &server.database_url;
    if url.starts_with("mysql") {
        "mysql"
    } else if url.starts_with("postgres") {
        "postgres"
    } else if url.starts_with("spanner") {
        "spanner"
    } else {
        "sqlite"
    }
}

#[tokio::test]
async fn concurrent_first_requests_make_one_user() {
    let env = ts_env().await;
    let sub = "c0ffee";
    let requests = (0..8).map(|_| env.token(sub, Some(10), "10-qqo"));
    let responses = futures::future::join_all(requests).await;
    let uids: std::collections::BTreeSet<u64> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["uid"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(uids.len(), 1, "{uids:?}");
    assert_eq!(env.rows(sub).len(), 1);
    assert_eq!(env.nodes()[0].current_load, 1);
}

// ---------------------------------------------------------------------------------------------
// Request headers (SPEC 3.2)

#[tokio::test]
async fn authorization_and_key_id_headers() {
    let env = ts_env().await;
    // SPEC 6.95
    let r = env
        .get(
            "/1.0/sync/1.5",
            &[
                ("Authorization", "Unsupported-Auth-Scheme IHACKYOU"),
                ("X-KeyID", "1234-qqo"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"status":"error","errors":[{"description":"Unsupported","location":"body","name":""}]})
    );
    // SPEC 6.96
    let r = env.get("/1.0/sync/1.5", &[("X-KeyID", "1234-qqo")]).await;
    assert_ts_error(&r, 401, "error", "Unauthorized");
    let r = env
        .get(
            "/1.0/sync/1.5",
            &[("Authorization", "BearerNoSpace"), ("X-KeyID", "1234-qqo")],
        )
        .await;
    assert_ts_error(&r, 401, "error", "Unauthorized");
    // The scheme is case-insensitive.
    let jwt = Signer::shared(0).access_token("case", None);
    let r = env
        .get(
            "/1.0/sync/1.5",
            &[
                ("Authorization", &format!("bEaReR {jwt}")),
                ("X-KeyID", "1234-qqo"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // SPEC 6.97
    let r = env.token("kid", None, "1234-state!").await;
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    for bad in ["1234", "abc-qqo"] {
        let r = env.token("kid", None, bad).await;
        assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    }
    let auth = format!("Bearer {jwt}");
    let r = env.get("/1.0/sync/1.5", &[("Authorization", &auth)]).await;
    assert_ts_error(&r, 401, "invalid-key-id", "Missing X-KeyID header");
    assert_eq!(r.json()["errors"][0]["location"], "header");
    // SPEC 6.98
    let r = env
        .get(
            "/1.0/sync/1.5",
            &[
                ("Authorization", &auth),
                ("X-KeyID", "1234-qqo"),
                ("X-Client-State", "state!"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"status":"error","errors":[{"location":"header","name":"X-Client-State","description":"Invalid client state value"}]})
    );
    // SPEC 6.99
    let r = env
        .get(
            "/1.0/sync/1.5",
            &[
                ("Authorization", &auth),
                ("X-KeyID", "1234-qqo"),
                ("X-Client-State", "bbbb"),
            ],
        )
        .await;
    assert_ts_error(&r, 401, "invalid-client-state", "Unauthorized");
    assert_eq!(r.json()["errors"][0]["location"], "body");
    let r = env
        .get(
            "/1.0/sync/1.5",
            &[
                ("Authorization", &auth),
                ("X-KeyID", "1234-qqo"),
                ("X-Client-State", "aaaa"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn duration_parameter() {
    // SPEC 6.108
    let env = ts_env().await;
    let auth = format!("Bearer {}", Signer::shared(0).access_token("dur", None));
    for (query, expected) in [
        ("12", 12),
        ("4000", 3600),
        ("lolwut", 3600),
        ("-1", 3600),
        ("0", 0),
    ] {
        let r = env
            .get(
                &format!("/1.0/sync/1.5?duration={query}"),
                &[("Authorization", &auth), ("X-KeyID", "1-qqo")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["duration"], expected, "{query}");
        let token = r.json()["id"].as_str().unwrap().to_owned();
        let expires = Secrets::new(MASTER_SECRET)
            .parse_token(&token)
            .unwrap()
            .expires;
        assert!((expires - (unix_now() + expected) as f64).abs() < 5.0);
    }
}

#[tokio::test]
async fn unsupported_paths_and_methods() {
    // SPEC 6.109
    let env = ts_env().await;
    let auth = format!("Bearer {}", Signer::shared(0).access_token("paths", None));
    let headers = [("Authorization", auth.as_str()), ("X-KeyID", "1-qqo")];
    let r = env.get("/1.0/xXx/token", &headers).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"status":"error","errors":[{"location":"url","name":"application","description":"Unsupported application"}]})
    );
    let r = env.get("/1.0/sync/1.2", &headers).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["name"], "1.2");
    assert_eq!(
        r.json()["errors"][0]["description"],
        "Unsupported application version"
    );
    // Authentication comes first.
    let r = env.get("/1.0/sync/1.2", &[]).await;
    assert_eq!(r.status, 401);
    let r = env
        .server
        .client
        .post(format!("{}/1.0/sync/1.5", env.server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[tokio::test]
async fn old_paths_and_trailing_slashes_answer_like_the_standard_one() {
    // The old Python syncserver's path (self-hosting guides, Android's custom server setting).
    let env = ts_env().await;
    let auth = format!(
        "Bearer {}",
        Signer::shared(0).access_token("0123456789abcdef0123456789abcdea", Some(1234))
    );
    let headers = [("Authorization", auth.as_str()), ("X-KeyID", "1234-qqo")];
    let mut uids = Vec::new();
    for path in [
        "/1.0/sync/1.5",
        "/1.0/sync/1.5/",
        "/token/1.0/sync/1.5",
        "/token/1.0/sync/1.5/",
    ] {
        let r = env.get(path, &headers).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let ts: i64 = r.header("X-Timestamp").unwrap().parse().unwrap();
        assert!((ts - unix_now()).abs() < 5, "{path}");
        assert!(r.header("X-Weave-Timestamp").is_none(), "{path}");
        let body = r.json();
        assert_eq!(body["hashalg"], "sha256", "{path}");
        uids.push(body["uid"].as_u64().unwrap());
        // Errors are the same under every path, with X-Timestamp too.
        let r = env.get(&path.replace("1.5", "1.2"), &headers).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["errors"][0]["name"], "1.2", "{path}");
        assert!(r.header("X-Timestamp").is_some(), "{path}: 404");
    }
    uids.dedup();
    assert_eq!(uids.len(), 1, "one user whatever the path: {uids:?}");
}

#[tokio::test]
async fn every_tokenserver_error_carries_x_timestamp() {
    let env = ts_env().await;
    let good = format!("Bearer {}", Signer::shared(0).access_token("errs", None));
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![], 401),
        (vec![("Authorization", "Basic abc")], 401),
        (vec![("Authorization", "Bearer not-a-token")], 401),
        (
            vec![("Authorization", good.as_str()), ("X-KeyID", "garbage")],
            401,
        ),
    ];
    for path in ["/1.0/sync/1.5", "/token/1.0/sync/1.5"] {
        for (headers, status) in &cases {
            let r = env.get(path, headers).await;
            assert_eq!(r.status, *status, "{path} {headers:?}: {}", r.body);
            let ts: i64 = r
                .header("X-Timestamp")
                .unwrap_or_else(|| panic!("{path} {headers:?}: no X-Timestamp"))
                .parse()
                .unwrap();
            assert!((ts - unix_now()).abs() < 5);
        }
        // A method the route does not have.
        let r = env
            .server
            .client
            .post(format!("{}{path}", env.server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{path}");
        assert!(r.headers().get("X-Timestamp").is_some(), "{path}: 405");
    }
}

// ---------------------------------------------------------------------------------------------
// Claims against the user record (SPEC 3.5, 3.6)

#[tokio::test]
async fn keys_changed_at_rules() {
    // SPEC 6.100: user gen 1232 / kca 1234.
    let env = ts_env().await;
    let sub = "kca";
    env.ok(sub, Some(1232), &key_id(1234, "aaaa")).await;
    let r = env.token(sub, Some(1235), &key_id(1236, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-keysChangedAt", "Unauthorized");
    env.ok(sub, Some(1233), &key_id(1234, "aaaa")).await;
    env.ok(sub, None, &key_id(1235, "aaaa")).await;
    env.ok(sub, Some(1236), &key_id(1235, "aaaa")).await;
    let rows = env.rows(sub);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].generation, rows[0].keys_changed_at),
        (1236, Some(1235))
    );
    // A stored keys_changed_at cannot be dropped or lowered.
    let r = env.token(sub, Some(1237), &key_id(0, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-keysChangedAt", "Unauthorized");
    let r = env.token(sub, Some(1237), &key_id(1234, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-keysChangedAt", "Unauthorized");
}

#[tokio::test]
async fn client_state_rules() {
    let env = ts_env().await;
    // SPEC 6.101: a replaced row with aaaa, the current row bbbb.
    let sub = "stale";
    let first = env.ok(sub, Some(1), &key_id(1, "aaaa")).await;
    let second = env.ok(sub, Some(2), &key_id(2, "bbbb")).await;
    assert_ne!(first["uid"], second["uid"]);
    let r = env.token(sub, Some(3), &key_id(3, "aaaa")).await;
    assert_ts_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value stale value",
    );
    assert_eq!(r.json()["errors"][0]["location"], "header");
    assert_eq!(r.json()["errors"][0]["name"], "X-Client-State");
    let same = env.ok(sub, Some(2), &key_id(2, "bbbb")).await;
    assert_eq!(same["uid"], second["uid"]);
    let third = env.ok(sub, Some(1235), &key_id(1235, "cccc")).await;
    assert_ne!(third["uid"], second["uid"]);
    let r = env.token(sub, Some(1236), "1236-").await;
    assert_ts_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value empty string",
    );

    // SPEC 6.102: user gen 1234 state aaaa, no keys_changed_at.
    let sub = "gen-change";
    env.ok(sub, Some(1234), &key_id(0, "aaaa")).await;
    let r = env.token(sub, Some(1234), &key_id(0, "bbbb")).await;
    assert_ts_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value new value with no generation change",
    );
    env.ok(sub, None, &key_id(1235, "bbbb")).await;
    let current = env
        .rows(sub)
        .into_iter()
        .find(|r| r.replaced_at.is_none())
        .unwrap();
    assert_eq!(
        (current.generation, current.client_state.as_str()),
        (1235, "bbbb")
    );
    let r = env.token(sub, Some(1235), &key_id(1235, "cccc")).await;
    assert_ts_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value new value with no generation change",
    );
    env.ok(sub, Some(1236), &key_id(1236, "cccc")).await;

    // SPEC 6.103: user kca 1234 state aaaa.
    let sub = "kca-change";
    env.ok(sub, None, &key_id(1234, "aaaa")).await;
    let r = env.token(sub, Some(1235), &key_id(1234, "bbbb")).await;
    assert_ts_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value new value with no keys_changed_at change",
    );
    env.ok(sub, Some(1235), &key_id(1235, "bbbb")).await;
}

#[tokio::test]
async fn generation_rules() {
    // SPEC 6.104
    let env = ts_env().await;
    let sub = "gen";
    let first = env.ok(sub, Some(1234), &key_id(0, "aaaa")).await;
    let r = env.token(sub, Some(1233), &key_id(0, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-generation", "Unauthorized");
    for generation in [None, Some(1234), Some(1235)] {
        let body = env.ok(sub, generation, &key_id(0, "aaaa")).await;
        assert_eq!(body["uid"], first["uid"]);
    }
    assert_eq!(env.rows(sub)[0].generation, 1235);

    // SPEC 6.105: stored gen 0, kca 1234.
    let sub = "gen-from-kca";
    env.ok(sub, None, &key_id(1234, "aaaa")).await;
    env.ok(sub, None, &key_id(1234, "aaaa")).await;
    assert_eq!(env.rows(sub)[0].generation, 0);
    env.ok(sub, None, &key_id(1235, "aaaa")).await;
    let rows = env.rows(sub);
    assert_eq!(
        (rows[0].generation, rows[0].keys_changed_at),
        (1235, Some(1235))
    );

    // SPEC 6.106: stored gen 0, kca NULL.
    let sub = "gen-from-new-kca";
    env.ok(sub, None, &key_id(0, "aaaa")).await;
    assert_eq!(env.rows(sub)[0].keys_changed_at, None);
    env.ok(sub, None, &key_id(1234, "aaaa")).await;
    let rows = env.rows(sub);
    assert_eq!(
        (rows[0].generation, rows[0].keys_changed_at),
        (1234, Some(1234))
    );

    // SPEC 6.115: zero generation / keys_changed_at in the request count as absent.
    let sub = "zeros";
    env.ok(sub, Some(0), &key_id(0, "aaaa")).await;
    let rows = env.rows(sub);
    assert_eq!((rows[0].generation, rows[0].keys_changed_at), (0, None));
    env.ok(sub, Some(50), &key_id(60, "aaaa")).await;
    env.ok(sub, Some(0), &key_id(60, "aaaa")).await;
    let rows = env.rows(sub);
    assert_eq!(
        (rows[0].generation, rows[0].keys_changed_at),
        (50, Some(60))
    );
}

#[tokio::test]
async fn fxa_kid_and_new_uid_on_the_same_node() {
    // SPEC 6.107
    let env = ts_env().await;
    let sub = "kid";
    let first = env.ok(sub, None, &key_id(1234, "aaaa")).await;
    // An operator adds a second, emptier node: a client-state change still stays put.
    env.insert_node("https://other.example", (100, 0, 100), 0, 0);
    let body = env.ok(sub, None, &key_id(2345, "bbbb")).await;
    assert_ne!(body["uid"], first["uid"]);
    let payload = Secrets::new(MASTER_SECRET)
        .parse_token(body["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload.fxa_kid, "0000000002345-u7s");
    let rows = env.rows(sub);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].nodeid, rows[1].nodeid);
    assert!(
        body["api_endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&env.server.base)
    );
    // Without keys_changed_at the generation is the number in fxa_kid.
    let body = env.ok("kid-gen", Some(77), &key_id(0, "aaaa")).await;
    let payload = Secrets::new(MASTER_SECRET)
        .parse_token(body["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload.fxa_kid, "0000000000077-qqo");
}

// ---------------------------------------------------------------------------------------------
// Rows written by operators and earlier requests (SPEC 3.6)

#[tokio::test]
async fn current_row_and_race_repair() {
    let env = ts_env().await;
    let node = env.self_node();
    // SPEC 6.110
    let sub = "current";
    let a = env.insert_user(sub, 1234, 1234, "aaaa", node);
    let b = env.insert_user(sub, 1235, 1234, "aaaa", node);
    let c = env.insert_user(sub, 1234, 1235, "aaaa", node);
    let d = env.insert_user(sub, 1236, 1233, "aaaa", node);
    let body = env.ok(sub, Some(1236), &key_id(0, "aaaa")).await;
    assert_eq!(body["uid"], d);
    for row in env.rows(sub) {
        let expected = if row.uid == d { None } else { Some(1233) };
        assert_eq!(row.replaced_at, expected, "{row:?} ({a} {b} {c})");
    }

    // SPEC 6.111: rows created at 1234/1235 are repaired at 1240, the current row's time.
    let sub = "repair";
    env.insert_user(sub, 7, 1234, "aaaa", node);
    env.insert_user(sub, 7, 1235, "aaaa", node);
    let current = env.insert_user(sub, 7, 1240, "aaaa", node);
    let body = env.ok(sub, Some(7), &key_id(0, "aaaa")).await;
    assert_eq!(body["uid"], current);
    let replaced: Vec<_> = env.rows(sub).iter().map(|r| r.replaced_at).collect();
    assert_eq!(replaced, vec![Some(1240), Some(1240), None]);
    // The current row replaced by an operator: the next request gets a new uid, same values.
    env.exec(
        "UPDATE users SET replaced_at = 1300 WHERE uid = ?",
        &[Bind::I(current)],
    );
    let body = env.ok(sub, Some(7), &key_id(0, "aaaa")).await;
    let new_uid = body["uid"].as_i64().unwrap();
    assert!(new_uid > current);
    let rows = env.rows(sub);
    let last = rows.last().unwrap();
    assert_eq!(
        (
            last.uid,
            last.generation,
            last.client_state.as_str(),
            last.replaced_at
        ),
        (new_uid, 7, "aaaa", None)
    );
}

#[tokio::test]
async fn record_updates() {
    // SPEC 6.112
    let env = ts_env().await;
    let sub = "updates";
    env.ok(sub, Some(10), &key_id(10, "aaaa")).await;
    let before = env.rows(sub);
    env.ok(sub, Some(11), &key_id(11, "bbbb")).await;
    let rows = env.rows(sub);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].generation,
            rows[0].keys_changed_at,
            rows[0].client_state.as_str()
        ),
        (before[0].generation, before[0].keys_changed_at, "aaaa"),
        "the old row keeps its values"
    );
    assert!(rows[0].replaced_at.is_some());
    assert_eq!(
        (
            rows[1].generation,
            rows[1].keys_changed_at,
            rows[1].replaced_at
        ),
        (11, Some(11), None)
    );
    let sub = "in-place";
    env.ok(sub, Some(10), &key_id(10, "aaaa")).await;
    env.ok(sub, Some(13), &key_id(12, "aaaa")).await;
    let rows = env.rows(sub);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].generation, rows[0].keys_changed_at),
        (13, Some(12))
    );
}

#[tokio::test]
async fn retired_users_and_missing_nodes() {
    let env = ts_env().await;
    // SPEC 6.113
    let sub = "retired";
    env.ok(sub, Some(1234), &key_id(0, "aaaa")).await;
    env.exec(
        "UPDATE users SET generation = ? WHERE email = ?",
        &[Bind::I(RETIRED), Bind::T(email(sub))],
    );
    let r = env.token(sub, Some(1235), &key_id(0, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-generation", "Unauthorized");
    env.ok(sub, Some(RETIRED), &key_id(0, "aaaa")).await;

    // SPEC 6.114: retired and its node is gone → 500.
    let sub = "retired-nodeless";
    let uid = env.insert_user(sub, RETIRED, 1000, "aaaa", 987_654);
    env.exec(
        "UPDATE users SET replaced_at = 1001 WHERE uid = ?",
        &[Bind::I(uid)],
    );
    let r = env.token(sub, Some(RETIRED), &key_id(0, "aaaa")).await;
    assert_ts_error(&r, 500, "internal-error", "Server error");
    // Replaced with its node gone → a new row on a node that exists.
    let sub = "nodeless";
    let uid = env.insert_user(sub, 5, 1000, "aaaa", 987_654);
    env.exec(
        "UPDATE users SET replaced_at = 1001 WHERE uid = ?",
        &[Bind::I(uid)],
    );
    let body = env.ok(sub, Some(5), &key_id(0, "aaaa")).await;
    assert_ne!(body["uid"], uid);
    assert_eq!(env.rows(sub).last().unwrap().nodeid, env.self_node());
    assert_eq!(
        body["api_endpoint"],
        format!("{}/1.5/{}", env.server.base, body["uid"])
    );
}

#[tokio::test]
async fn operators_edits_are_seen_at_once() {
    let env = ts_env().await;
    let sub = "moved";
    let body = env.ok(sub, None, &key_id(5, "aaaa")).await;
    env.insert_node("https://elsewhere.example", (10, 0, 10), 0, 0);
    let other = env.nodes()[1].id;
    env.exec(
        "UPDATE users SET nodeid = ? WHERE email = ?",
        &[Bind::I(other), Bind::T(email(sub))],
    );
    let moved = env.ok(sub, None, &key_id(5, "aaaa")).await;
    assert_eq!(moved["uid"], body["uid"]);
    assert_eq!(
        moved["api_endpoint"],
        format!("https://elsewhere.example/1.5/{}", body["uid"])
    );
}

// ---------------------------------------------------------------------------------------------
// Nodes (SPEC 3.7)

#[tokio::test]
async fn node_selection() {
    // SPEC 6.118
    let env = ts_env().await;
    env.exec("DELETE FROM nodes", &[]);
    env.insert_node("https://backoff.example", (10, 1, 100), 0, 1);
    env.insert_node("https://downed.example", (10, 1, 100), 1, 0);
    env.insert_node("https://busy.example", (10, 50, 100), 0, 0);
    env.insert_node("https://quiet.example", (10, 20, 100), 0, 0);
    env.insert_node("https://quiet2.example", (10, 20, 100), 0, 0);
    let body = env.ok("n1", None, &key_id(1, "aaaa")).await;
    assert!(
        body["api_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://quiet.example/1.5/"),
        "{body}"
    );
    let quiet = &env.nodes()[3];
    assert_eq!((quiet.available, quiet.current_load), (9, 21));
    // Now quiet2 (20/100) is the least loaded.
    let body = env.ok("n2", None, &key_id(1, "aaaa")).await;
    assert!(
        body["api_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://quiet2.example/"),
        "{body}"
    );
    // An empty node sorts first.
    env.insert_node("https://empty.example", (5, 0, 100), 0, 0);
    let body = env.ok("n3", None, &key_id(1, "aaaa")).await;
    assert!(
        body["api_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://empty.example/"),
        "{body}"
    );
}

#[tokio::test]
async fn capacity_release_and_full_nodes() {
    // SPEC 6.119, the worked example of SPEC 3.7.
    let env = ts_env().await;
    env.exec("DELETE FROM nodes", &[]);
    env.insert_node("https://a.example", (0, 99, 100), 0, 0);
    env.insert_node("https://b.example", (0, 90, 100), 0, 0);
    env.insert_node("https://c.example", (0, 80, 81), 0, 0);
    env.insert_node("https://d.example", (0, 70, 71), 0, 1);
    env.insert_node("https://e.example", (0, 60, 61), 1, 0);
    let body = env.ok("release", None, &key_id(1, "aaaa")).await;
    assert!(
        body["api_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://b.example/"),
        "{body}"
    );
    let nodes = env.nodes();
    let available: Vec<i32> = nodes.iter().map(|n| n.available).collect();
    assert_eq!(available, vec![1, 9, 1, 1, 0]);
    assert_eq!(nodes[1].current_load, 91);
    // All full → 503.
    env.exec("UPDATE nodes SET current_load = capacity", &[]);
    let r = env.token("no-room", None, &key_id(1, "aaaa")).await;
    assert_ts_error(&r, 503, "internal-error", "Server error");
    assert!(env.rows("no-room").is_empty());
}

#[tokio::test]
async fn self_node_and_public_url() {
    // With nothing configured, the server itself is the one node.
    let env = ts_env().await;
    let nodes = env.nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node, env.server.base);
    assert_eq!((nodes[0].capacity, nodes[0].available), (100_000, 100_000));
    // public_url set after a first start: the node (no users yet) follows it.
    let ts_url = env.server.tokenserver_database_url.clone();
    let moved = ts_env_with(|s| {
        s.public_url = Some("https://first.example.org".into());
        s.tokenserver.database_url = Some(ts_url.into());
    })
    .await;
    let nodes = moved.nodes();
    assert_eq!(
        (nodes.len(), nodes[0].node.as_str()),
        (1, "https://first.example.org")
    );
    // Once it has users, it stays: they are not moved behind their back.
    moved.ok("first", None, &key_id(1, "aaaa")).await;
    let ts_url = moved.server.tokenserver_database_url.clone();
    let again = ts_env_with(|s| {
        s.public_url = Some("https://second.example.org".into());
        s.tokenserver.database_url = Some(ts_url.into());
    })
    .await;
    let nodes = again.nodes();
    assert_eq!(
        (nodes.len(), nodes[0].node.as_str()),
        (1, "https://first.example.org")
    );
    let env = ts_env_with(|s| s.public_url = Some("https://sync.example.org/".into())).await;
    let body = env.ok("pub", None, &key_id(1, "aaaa")).await;
    assert_eq!(
        body["api_endpoint"],
        format!("https://sync.example.org/1.5/{}", body["uid"])
    );
    let env = ts_env_with(|s| {
        s.tokenserver.init_node_url = Some("https://node.example".into());
        s.tokenserver.init_node_capacity = 5;
    })
    .await;
    let nodes = env.nodes();
    assert_eq!(
        (nodes.len(), nodes[0].node.as_str(), nodes[0].capacity),
        (1, "https://node.example", 5)
    );
}

#[tokio::test]
async fn new_users_can_be_refused() {
    // SPEC 6.120
    let env = ts_env_with(|s| s.tokenserver.allow_new_users = false).await;
    let r = env.token("newbie", None, &key_id(1, "aaaa")).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"status":"new-users-disabled","errors":[{"location":"body","name":"","description":"New users are not allowed"}]})
    );
    // Known users still get tokens.
    env.insert_user("known", 0, 1000, "aaaa", env.self_node());
    env.ok("known", None, &key_id(0, "aaaa")).await;
}

#[tokio::test]
async fn only_allowed_accounts_get_tokens_existing_users_included() {
    let family = "0123456789abcdef0123456789abcdef";
    let existing = "fedcba9876543210fedcba9876543210";
    let stranger = "00000000000000000000000000000001";
    let env = ts_env_with(move |s| {
        s.tokenserver.allowed_users = vec![family.to_owned()];
    })
    .await;
    // A user from before the list existed.
    env.insert_user(existing, 0, 1000, "aaaa", env.self_node());
    env.ok(family, None, &key_id(0, "aaaa")).await;
    for refused in [stranger, existing] {
        let r = env.token(refused, None, &key_id(0, "aaaa")).await;
        assert_eq!(r.status, 403, "{refused}: {}", r.body);
        assert_eq!(
            r.json(),
            json!({"status":"not-allowed","errors":[{"location":"body","name":"","description":"This account is not allowed on this server"}]})
        );
    }
    // Checked before any row is made.
    assert!(env.rows(stranger).is_empty());
}

#[test]
fn allowed_users_come_as_a_list_or_commas_and_must_be_uids() {
    let load = |value: &str| {
        Settings::load_from(
            None,
            vec![(
                "SYNC_TOKENSERVER__ALLOWED_USERS".to_owned(),
                value.to_owned(),
            )],
        )
    };
    let s = load("0123456789abcdef0123456789ABCDEF, fedcba9876543210fedcba9876543210").unwrap();
    assert_eq!(
        s.tokenserver.allowed_users,
        vec![
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210"
        ]
    );
    let e = load("me@example.com").unwrap_err();
    assert!(e.contains("never learns emails"), "{e}");
    assert!(load("not-a-uid").unwrap_err().contains("32 hex digits"));
}

// ---------------------------------------------------------------------------------------------
// OAuth verification (SPEC 3.4)

#[tokio::test]
async fn jwks_are_fetched_cached_and_refreshed() {
    let env = ts_env().await;
    env.ok("cache", None, &key_id(1, "aaaa")).await;
    env.ok("cache", None, &key_id(1, "aaaa")).await;
    assert_eq!(env.fxa.with(|s| s.jwks_requests), 1, "keys are cached");
    // A stranger's key, a wrong typ, an expired token, no Sync scope: 401, no remote call.
    let stranger = Signer::shared(2).access_token("cache", None);
    let r = env.bearer(&stranger, &key_id(1, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    let claims = |extra: Value| {
        let mut c = json!({"sub": "cache", "scope": SYNC_SCOPE, "exp": unix_now() + 300});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let signer = Signer::shared(0);
    for token in [
        signer.sign("JWT", &claims(json!({}))),
        signer.sign("at+jwt", &claims(json!({"exp": unix_now() - 3600}))),
        signer.sign(
            "at+jwt",
            &claims(json!({"scope": "profile https://identity.mozilla.com/apps/oldsync/extra"})),
        ),
    ] {
        let r = env.bearer(&token, &key_id(1, "aaaa")).await;
        assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    }
    assert!(env.fxa.with(|s| s.verify_requests.is_empty()));
    // FxA rotates to key 1: a token signed with it is accepted once the keys are refetched.
    env.fxa
        .with(|s| s.jwks = json!({"keys": [Signer::shared(0).jwk, Signer::shared(1).jwk]}));
    sleep_ms(5_100).await;
    let rotated = Signer::shared(1).access_token("cache", None);
    let r = env.bearer(&rotated, &key_id(1, "aaaa")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn configured_keys_are_used_without_fetching() {
    let primary: syncserver::tokenserver::oauth::Jwk =
        serde_json::from_value(Signer::shared(1).jwk.clone()).unwrap();
    let secondary: syncserver::tokenserver::oauth::Jwk =
        serde_json::from_value(Signer::shared(0).jwk.clone()).unwrap();
    let env = ts_env_with(move |s| {
        s.tokenserver.fxa_oauth_primary_jwk = Some(primary);
        s.tokenserver.fxa_oauth_secondary_jwk = Some(secondary);
    })
    .await;
    env.ok("configured", None, &key_id(1, "aaaa")).await;
    let r = env
        .bearer(
            &Signer::shared(2).access_token("configured", None),
            &key_id(1, "aaaa"),
        )
        .await;
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    assert_eq!(env.fxa.with(|s| s.jwks_requests), 0);
}

#[tokio::test]
async fn remote_verification() {
    // SPEC 6.122: tokens that are not JWTs go to FxA's verify endpoint.
    let env = ts_env_with(|s| s.tokenserver.fxa_oauth_request_timeout = 1).await;
    // FxA's opaque access tokens are 64 hex digits; each step uses a fresh one (refusals are
    // remembered for a minute).
    let opaque = |i: u32| format!("{i:064x}");
    let r = env.bearer(&opaque(1), &key_id(1, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    assert_eq!(
        env.fxa.with(|s| s.verify_requests.clone()),
        vec![json!({"token": opaque(1)})]
    );
    for (i, body) in [
        json!({"user": "remote"}),
        json!({"user": "remote", "scope": "not a list", "generation": 1}),
        json!({"user": "remote", "scope": ["profile"], "generation": 1}),
    ]
    .into_iter()
    .enumerate()
    {
        env.fxa.with(|s| {
            s.verify_status = 200;
            s.verify_body = body.clone();
        });
        let r = env.bearer(&opaque(10 + i as u32), &key_id(1, "aaaa")).await;
        assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    }
    env.fxa.with(|s| {
        s.verify_body = json!({"user": "remote", "scope": [SYNC_SCOPE], "generation": 42})
    });
    let body = {
        let r = env.bearer(&opaque(20), &key_id(1, "aaaa")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    assert_eq!(body["hashed_fxa_uid"], hmac_hex("secret", "remote")[..32]);
    assert_eq!(env.rows("remote")[0].generation, 42);
    // A refused token is refused again without asking FxA (negative cache).
    let asked = env.fxa.with(|s| s.verify_requests.len());
    let r = env.bearer(&opaque(1), &key_id(1, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    assert_eq!(env.fxa.with(|s| s.verify_requests.len()), asked);
    // Tokens of neither shape never reach FxA.
    for garbage in [
        "not-a-jwt",
        "has spaces in the token text",
        &"x".repeat(300),
    ] {
        let r = env.bearer(garbage, &key_id(1, "aaaa")).await;
        assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    }
    assert_eq!(env.fxa.with(|s| s.verify_requests.len()), asked);
    // FxA too slow: 503, the client retries later.
    env.fxa
        .with(|s| s.verify_delay = std::time::Duration::from_millis(2500));
    let r = env.bearer(&opaque(30), &key_id(1, "aaaa")).await;
    assert_ts_error(&r, 503, "error", "Resource is not available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalling_fxa_does_not_hold_up_tokens_it_need_not_be_asked_about() {
    let env = ts_env_with(|s| s.tokenserver.fxa_oauth_request_timeout = 3).await;
    // Keys are cached by a first request (and may be refetched 5 s later); then FxA stalls on
    // everything.
    env.ok("known0", None, &key_id(1, "aaaa")).await;
    sleep_ms(5_100).await;
    env.fxa.with(|s| {
        s.jwks_delay = std::time::Duration::from_secs(20);
        s.verify_delay = std::time::Duration::from_secs(20);
    });
    // A token signed with a key we do not have makes one request refetch the keys (and wait
    // out the timeout); meanwhile tokens signed with the known key are answered at once.
    let unknown_key = Signer::shared(2).access_token("stranger", None);
    let kid = key_id(1, "aaaa");
    let refetch = env.bearer(&unknown_key, &kid);
    let known = async {
        sleep_ms(200).await;
        let mut took = Vec::new();
        for i in 1..=4 {
            let start = std::time::Instant::now();
            env.ok(&format!("known{i}"), None, &key_id(1, "aaaa")).await;
            took.push(start.elapsed());
        }
        took
    };
    let (r, took) = futures::join!(refetch, known);
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    for t in &took {
        assert!(
            *t < std::time::Duration::from_secs(2),
            "known key took {t:?}"
        );
    }
    assert_eq!(env.fxa.with(|s| s.jwks_requests), 2, "one refetch");
    // JWT-shaped tokens are never sent to /v1/verify, whatever happens to the keys.
    assert!(env.fxa.with(|s| s.verify_requests.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_verify_circuit_opens_when_fxa_keeps_failing() {
    let env = ts_env_with(|s| s.tokenserver.fxa_oauth_request_timeout = 1).await;
    env.fxa
        .with(|s| s.verify_delay = std::time::Duration::from_secs(20));
    let opaque = |i: u32| format!("{i:064x}");
    // Five timeouts in a row (each waits the 1 s timeout)...
    for i in 0..5 {
        let r = env.bearer(&opaque(i), &key_id(1, "aaaa")).await;
        assert_ts_error(&r, 503, "error", "Resource is not available");
    }
    assert_eq!(env.fxa.with(|s| s.verify_requests.len()), 5);
    // ...then FxA is not asked any more for a while: 503 at once.
    for i in 5..25 {
        let start = std::time::Instant::now();
        let r = env.bearer(&opaque(i), &key_id(1, "aaaa")).await;
        assert_ts_error(&r, 503, "error", "Resource is not available");
        // Asking FxA would take the whole 1 s timeout.
        assert!(start.elapsed() < std::time::Duration::from_millis(900));
    }
    assert_eq!(env.fxa.with(|s| s.verify_requests.len()), 5);
    // Tokens verified with the cached keys are unaffected.
    env.ok("jwt-user", None, &key_id(1, "aaaa")).await;
}

// ---------------------------------------------------------------------------------------------
// The FxA webhook (SPEC 3.9)

fn security_event(signer: &Signer, aud: &str, sub: &str, events: Value) -> String {
    signer.sign(
        "secevent+jwt",
        &json!({"iss": "https://accounts.example", "aud": aud, "sub": sub, "iat": unix_now(), "events": events}),
    )
}

async fn webhook(env: &Env, token: Option<&str>) -> Resp {
    let mut rb = env
        .server
        .client
        .post(format!("{}/1.0/webhooks/fxa/events", env.server.base));
    if let Some(t) = token {
        rb = rb.header("Authorization", format!("Bearer {t}"));
    }
    send_rb(rb).await
}

fn webhook_settings(s: &mut Settings, with_keys: bool, metrics_only: bool) {
    s.tokenserver.fxa_webhook_enabled = true;
    s.tokenserver.fxa_webhook_metrics_only = metrics_only;
    s.tokenserver.fxa_webhook_set_client_id = Some("sync-client".into());
    s.tokenserver.fxa_webhook_set_issuer = Some("https://accounts.example".into());
    if with_keys {
        s.tokenserver.fxa_oauth_primary_jwk =
            Some(serde_json::from_value(Signer::shared(0).jwk.clone()).unwrap());
    }
}

#[tokio::test]
async fn fxa_webhook_events() {
    // SPEC 6.121
    let env = ts_env_with(|s| webhook_settings(s, true, false)).await;
    let signer = Signer::shared(0);
    let sub = "hooked";
    env.ok(sub, Some(1000), &key_id(0, "aaaa")).await;
    let password =
        json!({"https://schemas.accounts.firefox.com/event/password-change": {"changeTime": 5000}});
    assert_eq!(webhook(&env, None).await.status, 401);
    let wrong_key = security_event(Signer::shared(2), "sync-client", sub, password.clone());
    assert_ts_error(
        &webhook(&env, Some(&wrong_key)).await,
        401,
        "invalid-credentials",
        "Unauthorized",
    );
    let wrong_aud = security_event(signer, "other-client", sub, password.clone());
    assert_ts_error(
        &webhook(&env, Some(&wrong_aud)).await,
        401,
        "invalid-credentials",
        "Unauthorized",
    );
    assert_eq!(env.rows(sub)[0].generation, 1000);
    // Unknown events change nothing.
    let unknown = security_event(
        signer,
        "sync-client",
        sub,
        json!({"https://schemas.accounts.firefox.com/event/profile-change": {}}),
    );
    let r = webhook(&env, Some(&unknown)).await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(env.rows(sub)[0].generation, 1000);
    // Password change: generation = changeTime - 1.
    let r = webhook(
        &env,
        Some(&security_event(signer, "sync-client", sub, password)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.rows(sub)[0].generation, 4999);
    let r = env.token(sub, Some(1001), &key_id(0, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-generation", "Unauthorized");
    // Account deletion retires the user.
    let delete = json!({"https://schemas.accounts.firefox.com/event/delete-user": {}});
    let r = webhook(
        &env,
        Some(&security_event(signer, "sync-client", sub, delete)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let row = &env.rows(sub)[0];
    assert_eq!(row.generation, RETIRED);
    assert!(row.replaced_at.is_some());
    let r = env.token(sub, Some(5000), &key_id(0, "aaaa")).await;
    assert_ts_error(&r, 401, "invalid-generation", "Unauthorized");

    // Metrics only: events are counted, nothing changes.
    let env = ts_env_with(|s| webhook_settings(s, true, true)).await;
    env.ok(sub, Some(1000), &key_id(0, "aaaa")).await;
    let delete = json!({"https://schemas.accounts.firefox.com/event/delete-user": {}});
    let r = webhook(
        &env,
        Some(&security_event(signer, "sync-client", sub, delete.clone())),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(env.rows(sub)[0].generation, 1000);
    // No keys configured: nothing can be verified.
    let env = ts_env_with(|s| webhook_settings(s, false, false)).await;
    let r = webhook(
        &env,
        Some(&security_event(signer, "sync-client", sub, delete)),
    )
    .await;
    assert_ts_error(&r, 401, "invalid-credentials", "Unauthorized");
    // Disabled (the default): not routed.
    let env = ts_env().await;
    assert_eq!(webhook(&env, None).await.status, 404);
}

#[tokio::test]
async fn tokenserver_tables_count_one_service() {
    let env = ts_env().await;
    let n = sql_query("SELECT COUNT(*) AS v FROM services WHERE service = 'sync-1.5'")
        .get_result::<Num>(&mut env.db())
        .unwrap()
        .v;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn tokenserver_only_process() {
    // syncstorage.enabled = false: tokens for the nodes, no storage API here.
    let env = ts_env_with(|s| {
        s.syncstorage.enabled = false;
        s.tokenserver.init_node_url = Some("https://storage.example".into());
    })
    .await;
    let body = env.ok("only", None, &key_id(1, "aaaa")).await;
    assert_eq!(
        body["api_endpoint"],
        format!("https://storage.example/1.5/{}", body["uid"])
    );
    let user = env.user(&body);
    let r = user.get("/info/collections").await;
    assert_eq!((r.status, r.body.as_str()), (404, "0"));
    let r = env.server.raw(Method::GET, "/__heartbeat__").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tokenserver_database"], "Ok");
    assert!(r.json().get("database").is_none(), "{}", r.body);
    // Both off: nothing to serve, a start-up error naming the settings.
    let mut settings = Settings::load_from(None, Vec::new()).unwrap();
    settings.data_dir = env.server.dir.path().join("off");
    settings.port = 0;
    settings.syncstorage.enabled = false;
    settings.tokenserver.enabled = false;
    let e = syncserver::server::start(settings).await.err().unwrap();
    assert!(e.contains("syncstorage.enabled"), "{e}");
}
