#[macro_use]
mod common;

// Black-box tests of authentication, concurrency and everything else at the edges (SPEC 1.1,
// 1.7, 1.12, 1.13, 2, 4.1; SPEC 6 cases 85-94), plus bad input of every kind: each must get the
// protocol's error, never a 500, and must not write anything.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use common::db::*;
use common::*;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use syncserver::auth::Secrets;
use syncserver::protocol::limits::CollectionLimits;

backend_matrix!();
// nginx answers some malformed paths itself (400 with its own page).
proxy_matrix!(not_through_nginx: ["bad_ids_in_the_path"]);

const OLD_IOS_UA: &str =
    "Firefox-iOS-Sync/18.0b1 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))";
const WEEK_SECS: u64 = 7 * 24 * 60 * 60;

// ---- helpers ----

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stored_collection_ts(conn: &mut AnyConnection, uid: i64, cid: i64) -> i64 {
    if let AnyConnection::Spanner(c) = conn {
        return c.value(
            "SELECT UNIX_MILLIS(modified) AS v FROM user_collections \
             WHERE fxa_uid = FORMAT('%032x', ?) AND collection_id = ?",
            vec![Val::Int(uid), Val::Int(cid)],
        );
    }
    sql_query(match conn {
        AnyConnection::Pg(_) => {
            "SELECT (extract(epoch FROM modified) * 1000)::BIGINT AS v FROM user_collections \
             WHERE user_id = ? AND collection_id = ?"
        }
        _ => "SELECT last_modified AS v FROM user_collections WHERE userid = ? AND collection = ?",
    })
    .bind(uid)
    .bind(cid)
    .get_result::<Num>(conn)
    .unwrap()
    .v
}

fn set_collection_ts(conn: &mut AnyConnection, uid: i64, cid: i64, ms: i64) {
    let n = sql_query(match conn {
        AnyConnection::Spanner(_) => {
            "UPDATE user_collections SET modified = TIMESTAMP_MILLIS(?) \
             WHERE fxa_uid = FORMAT('%032x', ?) AND collection_id = ?"
        }
        AnyConnection::Pg(_) => {
            "UPDATE user_collections SET modified = to_timestamp(?::BIGINT / 1000.0) \
             WHERE user_id = ? AND collection_id = ?"
        }
        _ => "UPDATE user_collections SET last_modified = ? WHERE userid = ? AND collection = ?",
    })
    .bind(ms)
    .bind(uid)
    .bind(cid)
    .execute(conn)
    .unwrap();
    assert_eq!(n, 1, "no user_collections row for ({uid}, {cid})");
}

/// Stamps `uid`'s collection `name` `ahead_ms` past the client clock (on the 10 ms grid);
/// returns the collection id and that timestamp.
fn stamp_collection_ahead(
    conn: &mut AnyConnection,
    uid: i64,
    name: &str,
    ahead_ms: i64,
) -> (i64, i64) {
    let cid = collection_id(conn, name);
    let ts = (now_ms() + ahead_ms) / 10 * 10;
    set_collection_ts(conn, uid, cid, ts);
    (cid, ts)
}

/// 400 or 404 with body 0 (where SPEC leaves the choice open), never a 500 or a success.
fn assert_rejected_path(r: &Resp, what: &str) {
    assert!(
        r.status == 400 || r.status == 404,
        "{what}: {} {}",
        r.status,
        r.body
    );
    assert_eq!(r.body, "0", "{what}: body");
}

/// A Hawk MAC computed independently of the server's code (SPEC 2.4).
#[allow(clippy::too_many_arguments)]
fn hawk_mac(
    key: &str,
    ts: u64,
    nonce: &str,
    method: &str,
    target: &str,
    host: &str,
    port: u16,
    hash: &str,
    ext: &str,
) -> String {
    let normalized = format!(
        "hawk.1.header\n{ts}\n{nonce}\n{method}\n{target}\n{host}\n{port}\n{hash}\n{ext}\n"
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(normalized.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The parts of a Hawk header; `header()` renders it, `sign()` fills the MAC.
#[derive(Clone)]
struct Hawk {
    id: String,
    key: String,
    ts: u64,
    nonce: String,
    method: String,
    target: String,
    host: String,
    port: u16,
    hash: Option<String>,
    ext: Option<String>,
    mac: String,
}

impl Hawk {
    fn new(user: &User<'_>, method: &str, path: &str) -> Hawk {
        let (host, port, target) = user.server.signing(path);
        let mut h = Hawk {
            id: user.id.clone(),
            key: user.key.clone(),
            ts: now_secs(),
            nonce: "bm9uY2UxMjM=".into(),
            method: method.into(),
            target,
            host,
            port,
            hash: None,
            ext: None,
            mac: String::new(),
        };
        h.sign();
        h
    }

    fn sign(&mut self) -> &mut Self {
        self.mac = hawk_mac(
            &self.key,
            self.ts,
            &self.nonce,
            &self.method,
            &self.target,
            &self.host,
            self.port,
            self.hash.as_deref().unwrap_or(""),
            self.ext.as_deref().unwrap_or(""),
        );
        self
    }

    fn header(&self) -> String {
        let mut h = format!(
            "Hawk id=\"{}\", ts=\"{}\", nonce=\"{}\", mac=\"{}\"",
            self.id, self.ts, self.nonce, self.mac
        );
        if let Some(hash) = &self.hash {
            h.push_str(&format!(", hash=\"{hash}\""));
        }
        if let Some(ext) = &self.ext {
            h.push_str(&format!(", ext=\"{ext}\""));
        }
        h
    }
}

/// A request to `path` with the given Authorization header (or none).
fn request_with_auth(
    server: &TestServer,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> reqwest::RequestBuilder {
    let rb = server
        .client
        .request(method, format!("{}{path}", server.base));
    match auth {
        Some(a) => rb.header("Authorization", a),
        None => rb,
    }
}

/// A tokenlib token for an arbitrary payload text, signed with `secret` (SPEC 2.2), and its
/// Hawk key (SPEC 2.3, with `salt`).
fn forge_token(payload: &str, secret: &str, salt: &str) -> (String, String) {
    let mut signing_key = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret.as_bytes())
        .expand(
            b"services.mozilla.com/tokenlib/v1/signing",
            &mut signing_key,
        )
        .unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&signing_key).unwrap();
    mac.update(payload.as_bytes());
    let mut bytes = payload.as_bytes().to_vec();
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    let id = URL_SAFE.encode(bytes);
    let key = Secrets::new(secret).derived_secret(&id, salt);
    (id, key)
}

fn token_payload(uid: u64, server: &TestServer) -> Value {
    json!({
        "uid": uid,
        "node": server.base,
        "expires": now_secs() + 3600,
        "salt": "a1b2c3",
        "fxa_uid": format!("{uid:032x}"),
        "fxa_kid": "0000000001234-qqo",
        "hashed_fxa_uid": "",
        "hashed_device_id": "",
        "tokenserver_origin": "rust",
    })
}

/// Sends a PUT of `{"payload": "forged"}` to `/1.5/{uid}/storage/col/forged` signed with a
/// forged token.
async fn put_with_token(server: &TestServer, uid: u64, id: &str, key: &str) -> Resp {
    let path = format!("/1.5/{uid}/storage/col/forged");
    let (host, port, target) = server.signing(&path);
    let mut h = Hawk {
        id: id.into(),
        key: key.into(),
        ts: now_secs(),
        nonce: "Zm9yZ2Vk".into(),
        method: "PUT".into(),
        target,
        host,
        port,
        hash: None,
        ext: None,
        mac: String::new(),
    };
    h.sign();
    send_rb(
        request_with_auth(server, Method::PUT, &path, Some(&h.header()))
            .header("Content-Type", "application/json")
            .body(r#"{"payload":"forged"}"#),
    )
    .await
}

// ---- SPEC 6 case 85: expired tokens ----

#[tokio::test]
async fn expired_token_is_refused_except_on_info_collections() {
    let server = TestServer::start().await;
    let fresh = server.user(20);
    let r = fresh.put("/storage/col/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let ts = r.last_modified();
    let expired = server.user_with(20, -60.0, MASTER_SECRET);
    let before = db_snapshot(&server);

    let r = expired
        .post("/storage/col", json!([{"id": "b", "payload": "B"}]))
        .await;
    assert_error(&r, 401, "0", "POST with an expired token");
    let r = expired.put("/storage/col/c", json!({"payload": "C"})).await;
    assert_error(&r, 401, "0", "PUT with an expired token");
    let r = expired.delete("/storage/col/a").await;
    assert_error(&r, 401, "0", "DELETE item with an expired token");
    let r = expired.delete("/storage").await;
    assert_error(&r, 401, "0", "DELETE storage with an expired token");
    for rest in [
        "/storage/col",
        "/storage/col/a",
        "/info/quota",
        "/info/collection_counts",
        "/info/collection_usage",
    ] {
        let r = expired.get(rest).await;
        assert_error(&r, 401, "0", &format!("GET {rest} with an expired token"));
    }
    assert_eq!(db_snapshot(&server), before);

    let r = expired.get("/info/collections").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(keys(&r.json()), set(["col"]));
    assert_eq!(json_ts(&r.json()["col"]), ts);
    assert_eq!(r.last_modified(), ts);
}

// ---- SPEC 6 case 86: the token's uid must be the path's ----

#[tokio::test]
async fn another_users_uid_in_the_path_is_400() {
    let server = TestServer::start().await;
    let owner = server.user(6);
    let r = owner
        .put("/storage/col/mine", json!({"payload": "mine"}))
        .await;
    assert_eq!(r.status, 200);
    let intruder = server.user(5);
    let before = db_snapshot(&server);
    let other = |rest: &str| format!("/1.5/6{rest}");
    for (method, rest) in [
        (Method::GET, "/info/collections"),
        (Method::GET, "/storage/col"),
        (Method::GET, "/storage/col/mine"),
        (Method::DELETE, "/storage/col/mine"),
        (Method::DELETE, "/storage/col"),
        (Method::DELETE, ""),
        (Method::DELETE, "/storage"),
    ] {
        let r = intruder
            .send(intruder.request_abs(method.clone(), &other(rest)))
            .await;
        assert_error(&r, 400, "0", &format!("{method} {rest}"));
    }
    let r = intruder
        .send(
            intruder
                .request_abs(Method::PUT, &other("/storage/col/mine"))
                .header("Content-Type", "application/json")
                .body(r#"{"payload":"stolen"}"#),
        )
        .await;
    assert_error(&r, 400, "0", "PUT into another user's storage");
    let r = intruder
        .send(
            intruder
                .request_abs(Method::POST, &other("/storage/col"))
                .header("Content-Type", "application/json")
                .body(r#"[{"id":"x","payload":"stolen"}]"#),
        )
        .await;
    assert_error(&r, 400, "0", "POST into another user's storage");
    assert_eq!(db_snapshot(&server), before);
    let r = owner.get("/storage/col/mine").await;
    assert_eq!(r.json()["payload"], "mine");
    assert_eq!(intruder.get("/info/collections").await.json(), json!({}));
}

// ---- SPEC 6 case 87: Hawk failures ----

#[tokio::test]
async fn independently_computed_hawk_headers_are_accepted() {
    let server = TestServer::start().await;
    let user = server.user(21);
    let path = user.path("/storage/col/x");
    let body = r#"{"payload":"signed"}"#;

    let h = Hawk::new(&user, "PUT", &path);
    let r = send_rb(
        request_with_auth(&server, Method::PUT, &path, Some(&h.header()))
            .header("Content-Type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(
        r.status, 200,
        "a header built per SPEC 2.4 was refused: {}",
        r.body
    );

    // With a correct payload hash and an ext value, both covered by the MAC.
    let mut h = Hawk::new(&user, "PUT", &path);
    let hashed = format!("hawk.1.payload\napplication/json\n{body}\n");
    h.hash = Some(STANDARD.encode(Sha256::digest(hashed.as_bytes())));
    h.ext = Some("some-ext".into());
    h.sign();
    let r = send_rb(
        request_with_auth(&server, Method::PUT, &path, Some(&h.header()))
            .header("Content-Type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(r.status, 200, "hash/ext: {}", r.body);

    // Client clocks may be off by up to 52 weeks.
    for skew in [-(51 * WEEK_SECS as i64), 51 * WEEK_SECS as i64] {
        let mut h = Hawk::new(&user, "GET", &path);
        h.ts = (now_secs() as i64 + skew) as u64;
        h.sign();
        let r = send_rb(request_with_auth(
            &server,
            Method::GET,
            &path,
            Some(&h.header()),
        ))
        .await;
        assert_eq!(r.status, 200, "skew {skew}s: {}", r.body);
        assert_eq!(r.json()["payload"], "signed");
    }
}

#[tokio::test]
async fn bad_hawk_headers_are_401() {
    let server = TestServer::start().await;
    let user = server.user(21);
    let path = user.path("/storage/col/x");
    let good = Hawk::new(&user, "PUT", &path);
    let attrs = good.header().trim_start_matches("Hawk ").to_owned();

    let mut cases: Vec<(String, Option<String>, String)> = Vec::new(); // (what, header, path sent)
    let mut add = |what: &str, header: Option<String>, sent: &str| {
        cases.push((what.into(), header, sent.into()))
    };
    add("no Authorization", None, &path);
    add("no Hawk prefix", Some(attrs.clone()), &path);
    add("lower-case prefix", Some(format!("hawk {attrs}")), &path);
    add("Bearer scheme", Some(format!("Bearer {}", user.id)), &path);
    add("garbage", Some("True".into()), &path);
    add("Hawk garbage", Some("Hawk garbage".into()), &path);
    add("empty Hawk", Some("Hawk ".into()), &path);
    add(
        "unknown attribute",
        Some(format!("{}, foo=\"bar\"", good.header())),
        &path,
    );
    add(
        "unquoted values",
        Some(format!(
            "Hawk id={}, ts={}, nonce=abc, mac={}",
            user.id, good.ts, good.mac
        )),
        &path,
    );
    add(
        "no id",
        Some(format!(
            "Hawk ts=\"{}\", nonce=\"{}\", mac=\"{}\"",
            good.ts, good.nonce, good.mac
        )),
        &path,
    );
    add(
        "no mac",
        Some(format!(
            "Hawk id=\"{}\", ts=\"{}\", nonce=\"{}\"",
            user.id, good.ts, good.nonce
        )),
        &path,
    );
    add(
        "no ts",
        Some(format!(
            "Hawk id=\"{}\", nonce=\"{}\", mac=\"{}\"",
            user.id, good.nonce, good.mac
        )),
        &path,
    );
    add(
        "ts not a number",
        Some(
            good.header()
                .replace(&format!("ts=\"{}\"", good.ts), "ts=\"soon\""),
        ),
        &path,
    );
    add(
        "mac not base64",
        Some(good.header().replace(&good.mac, "!!not-base64!!")),
        &path,
    );
    let mut wrong_mac = good.clone();
    wrong_mac.mac = hawk_mac(
        &user.key,
        good.ts,
        "other",
        "PUT",
        &path,
        "127.0.0.1",
        server.port,
        "",
        "",
    );
    add("wrong mac", Some(wrong_mac.header()), &path);
    let mut wrong_nonce = good.clone();
    wrong_nonce.nonce = "b3RoZXI=".into();
    add(
        "nonce changed after signing",
        Some(wrong_nonce.header()),
        &path,
    );
    let mut wrong_ts = good.clone();
    wrong_ts.ts += 1;
    add("ts changed after signing", Some(wrong_ts.header()), &path);
    let mut ext_added = good.clone();
    ext_added.ext = Some("sneaky".into());
    add("ext added after signing", Some(ext_added.header()), &path);
    let get_signed = Hawk::new(&user, "GET", &path);
    add("signed for GET", Some(get_signed.header()), &path);
    add(
        "extra query string",
        Some(good.header()),
        &format!("{path}?x=1"),
    );
    for (what, f) in [
        (
            "wrong host",
            Box::new(|h: &mut Hawk| h.host = "example.com".into()) as Box<dyn Fn(&mut Hawk)>,
        ),
        (
            "wrong port",
            Box::new(|h: &mut Hawk| h.port = h.port.wrapping_add(1)),
        ),
        (
            "other user's key",
            Box::new(|h: &mut Hawk| {
                h.key = Secrets::new(MASTER_SECRET).derived_secret("x", "abcdef")
            }),
        ),
        (
            "53 weeks in the past",
            Box::new(|h: &mut Hawk| h.ts -= 53 * WEEK_SECS),
        ),
        (
            "53 weeks in the future",
            Box::new(|h: &mut Hawk| h.ts += 53 * WEEK_SECS),
        ),
        (
            "path not the one sent",
            Box::new(|h: &mut Hawk| h.target = "/1.5/21/storage/col/y".into()),
        ),
    ] {
        let mut h = good.clone();
        f(&mut h);
        h.sign();
        add(what, Some(h.header()), &path);
    }
    let other_secret = server.user_with(21, 3600.0, "another-master-secret");
    let mut h = Hawk::new(&other_secret, "PUT", &path);
    h.sign();
    add("token from another master secret", Some(h.header()), &path);
    // A token whose signed bytes were changed (one payload character flipped).
    let mut tampered = good.clone();
    let mut bytes = URL_SAFE.decode(&user.id).unwrap();
    let i = bytes.iter().position(|&b| b == b':').unwrap() + 1; // inside the JSON
    bytes[i] ^= 0x01;
    tampered.id = URL_SAFE.encode(&bytes);
    tampered.sign();
    add("tampered token", Some(tampered.header()), &path);
    let mut truncated = good.clone();
    truncated.id = URL_SAFE.encode(&URL_SAFE.decode(&user.id).unwrap()[..20]);
    truncated.sign();
    add(
        "token shorter than a signature",
        Some(truncated.header()),
        &path,
    );
    let mut not_b64 = good.clone();
    not_b64.id = "***".into();
    not_b64.sign();
    add("token not base64", Some(not_b64.header()), &path);

    let before = db_snapshot(&server);
    for (what, header, sent) in &cases {
        let r = send_rb(
            request_with_auth(&server, Method::PUT, sent, header.as_deref())
                .header("Content-Type", "application/json")
                .body(r#"{"payload":"intruder"}"#),
        )
        .await;
        assert_error(&r, 401, "0", what);
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a refused request wrote something"
    );
    assert_eq!(user.get("/storage/col/x").await.status, 404);
    // The good header itself is fine.
    let r = send_rb(
        request_with_auth(&server, Method::PUT, &path, Some(&good.header()))
            .header("Content-Type", "application/json")
            .body(r#"{"payload":"owner"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn token_payload_rules() {
    let server = TestServer::start().await;
    let ok = token_payload(30, &server);
    let (id, key) = forge_token(&ok.to_string(), MASTER_SECRET, "a1b2c3");
    let r = put_with_token(&server, 30, &id, &key).await;
    assert_eq!(
        r.status, 200,
        "a token built per SPEC 2.2 was refused: {}",
        r.body
    );

    // Unknown fields are ignored; the optional ones may be missing.
    let mut extra = ok.clone();
    extra["something_new"] = json!({"nested": true});
    let minimal =
        json!({"uid": 30, "node": server.base, "expires": now_secs() + 3600, "salt": "a1b2c3"});
    for (what, payload) in [("unknown field", extra), ("only required fields", minimal)] {
        let (id, key) = forge_token(&payload.to_string(), MASTER_SECRET, "a1b2c3");
        let r = put_with_token(&server, 30, &id, &key).await;
        // Spanner keys users by fxa_uid/fxa_kid: without them a token names nobody there
        // (and must not share one empty key with every other such token).
        let expected = if spanner(&server) && what == "only required fields" {
            401
        } else {
            200
        };
        assert_eq!(r.status, expected, "{what}: {}", r.body);
    }

    let before = db_snapshot(&server);
    let mut bad: Vec<(&str, String)> = Vec::new();
    for field in ["uid", "node", "expires", "salt"] {
        let mut p = ok.clone();
        p.as_object_mut().unwrap().remove(field);
        bad.push((field, p.to_string()));
    }
    let mut p = ok.clone();
    p["uid"] = json!("30");
    bad.push(("uid as a string", p.to_string()));
    let mut p = ok.clone();
    p["uid"] = json!(-30);
    bad.push(("negative uid", p.to_string()));
    let mut p = ok.clone();
    p["expires"] = json!("tomorrow");
    bad.push(("expires as a string", p.to_string()));
    bad.push(("not JSON", "hello there, not json at all".into()));
    bad.push(("a JSON list", "[30]".into()));
    for (what, payload) in &bad {
        let (id, key) = forge_token(payload, MASTER_SECRET, "a1b2c3");
        let r = put_with_token(&server, 30, &id, &key).await;
        assert_error(&r, 401, "0", what);
    }
    // Canonical padding is required.
    let mut padded = ok.to_string();
    while (padded.len() + 32).is_multiple_of(3) {
        padded.push(' ');
    }
    let (id, _) = forge_token(&padded, MASTER_SECRET, "a1b2c3");
    assert!(id.ends_with('='));
    let unpadded = id.trim_end_matches('=').to_owned();
    let key = Secrets::new(MASTER_SECRET).derived_secret(&unpadded, "a1b2c3");
    let r = put_with_token(&server, 30, &unpadded, &key).await;
    assert_error(&r, 401, "0", "token without its padding");
    assert_eq!(db_snapshot(&server), before);
}

// ---- SPEC 6 case 88 and SPEC 2.4: what the MAC covers ----

#[tokio::test]
async fn the_raw_query_string_is_signed() {
    let server = TestServer::start().await;
    let user = server.user(22);
    let r = user.put("/storage/col/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let r = user.get("/storage/col?full=1&sort=newest").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["payload"], "A");

    let path = user.path("/storage/col");
    let h = Hawk::new(&user, "GET", &format!("{path}?full=1&sort=newest"));
    let r = send_rb(request_with_auth(
        &server,
        Method::GET,
        &format!("{path}?sort=newest&full=1"),
        Some(&h.header()),
    ))
    .await;
    assert_error(&r, 401, "0", "query reordered after signing");

    // A batch commit signed over the encoded query authenticates (then fails as unknown).
    let id = STANDARD.encode("1234");
    let encoded = format!("{path}?batch={}&commit=true", id.replace('=', "%3D"));
    assert!(encoded.contains("%3D"));
    let h = Hawk::new(&user, "POST", &encoded);
    let r = send_rb(
        request_with_auth(&server, Method::POST, &encoded, Some(&h.header()))
            .header("Content-Type", "application/json")
            .body("[]"),
    )
    .await;
    assert_error(&r, 400, "0", "unknown batch, past authentication");
    // Signed over the decoded form instead: the MAC no longer matches.
    let h = Hawk::new(&user, "POST", &format!("{path}?batch={id}&commit=true"));
    let r = send_rb(
        request_with_auth(&server, Method::POST, &encoded, Some(&h.header()))
            .header("Content-Type", "application/json")
            .body("[]"),
    )
    .await;
    assert_error(&r, 401, "0", "signed over the decoded query");

    // A real batch id round-trips percent-encoded through the signature.
    let r = user
        .post(
            "/storage/col?batch=true",
            json!([{"id": "b", "payload": "B"}]),
        )
        .await;
    assert_eq!(r.status, 202);
    let batch = r.json()["batch"].as_str().unwrap().to_owned();
    let q = percent_encoding::utf8_percent_encode(&batch, percent_encoding::NON_ALPHANUMERIC);
    let r = user
        .post(&format!("/storage/col?batch={q}&commit=true"), json!([]))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sorted_ids(&user.get("/storage/col").await.json()),
        strs(&["a", "b"])
    );
}

#[tokio::test]
async fn host_and_port_come_from_forwarding_headers() {
    let server = TestServer::start().await;
    let user = server.user(23);
    let path = user.path("/info/collections");
    let mut h = Hawk::new(&user, "GET", &path);
    h.host = "sync.example.com".into();
    h.port = 443;
    h.sign();
    let r = send_rb(
        request_with_auth(&server, Method::GET, &path, Some(&h.header()))
            .header("X-Forwarded-Host", "sync.example.com")
            .header("X-Forwarded-Proto", "https"),
    )
    .await;
    assert_eq!(r.status, 200, "X-Forwarded-Host/Proto: {}", r.body);
    let r = send_rb(
        request_with_auth(&server, Method::GET, &path, Some(&h.header()))
            .header("Forwarded", "host=sync.example.com;proto=https"),
    )
    .await;
    assert_eq!(r.status, 200, "Forwarded: {}", r.body);
    // Without the forwarding headers the same MAC is for another host.
    let r = send_rb(request_with_auth(
        &server,
        Method::GET,
        &path,
        Some(&h.header()),
    ))
    .await;
    assert_error(&r, 401, "0", "MAC for another host");
    // An explicit port in the forwarded host must parse.
    let mut h = Hawk::new(&user, "GET", &path);
    h.host = "sync.example.com".into();
    h.port = 8443;
    h.sign();
    let r = send_rb(
        request_with_auth(&server, Method::GET, &path, Some(&h.header()))
            .header("X-Forwarded-Host", "sync.example.com:8443"),
    )
    .await;
    assert_eq!(r.status, 200, "X-Forwarded-Host with port: {}", r.body);
    let r = send_rb(
        request_with_auth(&server, Method::GET, &path, Some(&h.header()))
            .header("X-Forwarded-Host", "sync.example.com:notaport"),
    )
    .await;
    assert_error(&r, 400, "0", "invalid port in the host");
}

#[tokio::test]
async fn large_uids_work() {
    let server = TestServer::start().await;
    let user = server.user(9_999_999_999);
    let r = user.put("/storage/col/a", json!({"payload": "big"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(user.get("/storage/col/a").await.json()["payload"], "big");
    // 11 digits is not a uid at all.
    let r = server
        .raw(Method::GET, "/1.5/12345678901/info/collections")
        .await;
    assert_error(&r, 404, "0", "11-digit uid");
}

// ---- SPEC 6 case 89: quota ----

#[tokio::test]
async fn quota_is_checked_before_each_write() {
    let server = TestServer::start_with(|s| {
        s.syncstorage.enable_quota = true;
        s.syncstorage.enforce_quota = true;
        s.syncstorage.limits.max_quota_limit = 5;
    })
    .await;
    let user = server.user(24);
    let big = "x".repeat(500);
    let r = user
        .put("/storage/col/first", json!({"payload": big}))
        .await;
    assert_eq!(r.status, 200, "the first write may overshoot: {}", r.body);
    let before = db_snapshot(&server);
    let r = user
        .put("/storage/col/second", json!({"payload": big}))
        .await;
    assert_error(&r, 403, "14", "PUT over quota");
    let r = user
        .post("/storage/other", json!([{"id": "third", "payload": "y"}]))
        .await;
    assert_error(&r, 403, "14", "POST over quota");
    let r = user
        .post(
            "/storage/other?batch=true",
            json!([{"id": "third", "payload": "y"}]),
        )
        .await;
    assert_error(&r, 403, "14", "batch over quota");
    assert_eq!(db_snapshot(&server), before);
    assert_eq!(user.get("/storage/col/second").await.status, 404);
    assert_eq!(
        user.get("/info/quota").await.json(),
        json!([500.0 / 1024.0, null])
    );
    // Deleting brings the user under the limit again.
    let r = user.delete("/storage/col/first").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = user
        .put("/storage/col/second", json!({"payload": "ok"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.raw(Method::GET, "/__heartbeat__").await;
    assert_eq!(r.json()["quota"], json!({"enabled": true, "size": 5}));
}

// ---- SPEC 6 case 90: write conflicts ----

#[tokio::test]
async fn immediate_writes_to_one_collection_get_increasing_timestamps() {
    let server = TestServer::start().await;
    let user = server.user(25);
    let mut last = 0;
    for i in 0..5 {
        let r = user
            .put(&format!("/storage/col/s{i}"), json!({"payload": "x"}))
            .await;
        assert_eq!(r.status, 200, "write {i}: {}", r.body);
        let t = r.last_modified();
        assert_eq!(json_ts(&r.json()), t);
        assert!(t > last, "write {i}: {t} is not after {last}");
        last = t;
    }
    let r = user
        .post("/storage/col", json!([{"id": "p", "payload": "x"}]))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.last_modified() > last);
    last = r.last_modified();
    let r = user.delete("/storage/col/s0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.last_modified() > last);

    // Concurrent writers: every one succeeds with its own timestamp.
    let paths: Vec<String> = (0..6).map(|i| format!("/storage/col/c{i}")).collect();
    let futures: Vec<_> = paths
        .iter()
        .map(|p| user.put(p, json!({"payload": "x"})))
        .collect();
    let results = futures::future::join_all(futures).await;
    let mut stamps: Vec<u64> = results
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.body);
            r.last_modified()
        })
        .collect();
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 6, "two concurrent writes shared a timestamp");
    let r = user.get("/info/collections").await;
    assert_eq!(json_ts(&r.json()["col"]), *stamps.last().unwrap());
    assert_eq!(
        user.get("/storage/col")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        11
    );
}

#[tokio::test]
async fn collection_stamped_in_the_future_is_a_503_conflict() {
    let server = TestServer::start().await;
    let user = server.user(26);
    let r = user.put("/storage/col/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let r = user.put("/storage/col2/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let mut conn = db(&server);
    let (cid, future) = stamp_collection_ahead(&mut conn, 26, "col", 3_600_000);
    let before = db_snapshot(&server);

    let attempts: Vec<(&str, Resp)> = vec![
        (
            "PUT",
            user.put("/storage/col/b", json!({"payload": "B"})).await,
        ),
        (
            "PUT existing",
            user.put("/storage/col/a", json!({"payload": "changed"}))
                .await,
        ),
        (
            "POST",
            user.post("/storage/col", json!([{"id": "c", "payload": "C"}]))
                .await,
        ),
        (
            "POST batch",
            user.post(
                "/storage/col?batch=true",
                json!([{"id": "c", "payload": "C"}]),
            )
            .await,
        ),
        ("DELETE item", user.delete("/storage/col/a").await),
        ("DELETE ids", user.delete("/storage/col?ids=a").await),
        ("DELETE collection", user.delete("/storage/col").await),
    ];
    for (what, r) in &attempts {
        assert_error(r, 503, "0", what);
        assert_eq!(r.header("Retry-After"), Some("10"), "{what}");
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a conflicting write changed something"
    );
    assert_eq!(stored_collection_ts(&mut conn, 26, cid), future);
    // Reads still work and report the stored timestamp; other collections are unaffected.
    let r = user.get("/storage/col/a").await;
    assert_eq!(r.json()["payload"], "A");
    let r = user.get("/storage/col").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.last_modified(), future as u64);
    // Timestamps are per user: the user's other collections cannot be written before that
    // time either (their T must pass the storage timestamp), other users are unaffected.
    let r = user.put("/storage/col2/b", json!({"payload": "B"})).await;
    assert_error(&r, 503, "0", "PUT to another collection");
    let other = server.user(126);
    let r = other.put("/storage/col/b", json!({"payload": "B"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn collection_a_few_ms_ahead_is_waited_out() {
    let server = TestServer::start().await;
    let user = server.user(27);
    let r = user.put("/storage/col/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let mut conn = db(&server);
    let (cid, ahead) = stamp_collection_ahead(&mut conn, 27, "col", 50);
    let r = user.put("/storage/col/b", json!({"payload": "B"})).await;
    assert_eq!(
        r.status, 200,
        "a collection 50 ms ahead must be waited out: {}",
        r.body
    );
    assert!(
        r.last_modified() > ahead as u64,
        "{} must be after {ahead}",
        r.last_modified()
    );
    assert_eq!(
        stored_collection_ts(&mut conn, 27, cid),
        r.last_modified() as i64
    );
}

// ---- SPEC 6 case 91: old iOS clients ----

#[tokio::test]
async fn old_ios_user_agents_get_503() {
    let server = TestServer::start().await;
    let user = server.user(28);
    let r = user.put("/storage/col/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let before = db_snapshot(&server);
    for ua in [
        OLD_IOS_UA,
        "Firefox-iOS-Sync/19.5b123 (iPad; iPhone OS 15.1) (Firefox)",
        "Firefox-iOS-Sync/1.0b1 (iPhone; iPhone OS 9.0) (x)",
    ] {
        let r = user
            .send(
                user.request(Method::PUT, "/storage/col/a")
                    .header("User-Agent", ua)
                    .header("Content-Type", "application/json")
                    .body(r#"{"payload":"from old iOS"}"#),
            )
            .await;
        assert_error_bare(&r, 503, "0", ua);
        assert!(
            r.header("Retry-After").is_none(),
            "{ua}: no Retry-After for a rejected client"
        );
        let r = user
            .send(
                user.request(Method::GET, "/info/collections")
                    .header("User-Agent", ua),
            )
            .await;
        assert_error_bare(&r, 503, "0", ua);
        let r = send_rb(
            server
                .client
                .get(format!("{}/nope", server.base))
                .header("User-Agent", ua),
        )
        .await;
        assert_error_bare(&r, 503, "0", &format!("{ua} on an unknown path"));
        let r = send_rb(
            server
                .client
                .get(format!("{}/1.5/28/storage/col", server.base))
                .header("User-Agent", ua),
        )
        .await;
        assert_error_bare(&r, 503, "0", &format!("{ua} without auth"));
    }
    assert_eq!(db_snapshot(&server), before);
    for ua in [
        "Firefox-iOS-Sync/23.0b17297 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
        "Firefox-iOS-Sync/0.0.1b1 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
        "Firefox-iOS-Sync/dev (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
        "Firefox-iOS-Sync/20.0b1 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
        "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    ] {
        let r = user
            .send(
                user.request(Method::GET, "/storage/col/a")
                    .header("User-Agent", ua),
            )
            .await;
        assert_eq!(r.status, 200, "{ua}: {}", r.body);
        assert_eq!(r.json()["payload"], "A");
    }
}

// ---- SPEC 6 case 92: CORS ----

#[tokio::test]
async fn cors_preflight_echoes_the_origin() {
    let server = TestServer::start().await;
    let before = db_snapshot(&server);
    let r = send_rb(
        server
            .client
            .request(
                Method::OPTIONS,
                format!("{}/1.5/29/storage/col/a", server.base),
            )
            .header("Origin", "https://app.example.com")
            .header("Access-Control-Request-Method", "PUT")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type,x-if-unmodified-since",
            ),
    )
    .await;
    assert!(
        r.status == 200 || r.status == 204,
        "preflight: {} {}",
        r.status,
        r.body
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let max_age: u64 = r
        .header("access-control-max-age")
        .expect("max-age")
        .parse()
        .unwrap();
    assert!(max_age > 0);
    let methods = r
        .header("access-control-allow-methods")
        .expect("allow-methods")
        .to_ascii_uppercase();
    assert!(methods.contains("PUT"), "{methods}");
    let headers = r
        .header("access-control-allow-headers")
        .expect("allow-headers")
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    assert_eq!(db_snapshot(&server), before);

    // Actual cross-origin requests carry the header too.
    let user = server.user(29);
    let r = user
        .send(
            user.request(Method::GET, "/info/collections")
                .header("Origin", "https://app.example.com"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

// ---- SPEC 6 case 93 and SPEC 1.1: unrouted methods and paths ----

#[tokio::test]
async fn unsupported_methods_are_405() {
    let server = TestServer::start().await;
    let user = server.user(31);
    let r = user.put("/storage/col/a", json!({"payload": "A"})).await;
    assert_eq!(r.status, 200);
    let before = db_snapshot(&server);
    for (method, rest) in [
        (Method::PATCH, "/storage/col"),
        (Method::PATCH, "/storage/col/a"),
        (Method::PUT, "/storage/col"),
        (Method::POST, "/storage/col/a"),
        (Method::GET, ""),
        (Method::GET, "/storage"),
        (Method::PUT, "/info/quota"),
        (Method::POST, "/info/collections"),
        (Method::DELETE, "/info/collections"),
        (Method::HEAD, "/storage/col"),
    ] {
        let r = user
            .send(
                user.request(method.clone(), rest)
                    .header("Content-Type", "application/json")
                    .body(r#"{"payload":"x"}"#),
            )
            .await;
        assert_eq!(r.status, 405, "{method} {rest}: {}", r.body);
        assert_eq!(r.body, "", "{method} {rest}");
        assert!(
            r.header("X-Weave-Timestamp").is_some(),
            "{method} {rest}: no X-Weave-Timestamp"
        );
    }
    // Unsigned too: routing comes before authentication.
    let r = server.raw(Method::PATCH, "/1.5/31/storage/col").await;
    assert_eq!(r.status, 405);
    assert_eq!(db_snapshot(&server), before);
    assert_eq!(user.get("/storage/col/a").await.json()["payload"], "A");
}

#[tokio::test]
async fn unknown_paths_are_404_with_json_zero() {
    let server = TestServer::start().await;
    let user = server.user(32);
    for path in [
        "/nope",
        "/1.5",
        "/1.5/",
        "/1.5/32/",
        "/1.5/32/info",
        "/1.5/32/info/collections/",
        "/1.5/32/info/nothing",
        "/1.5/abc/info/collections",
        "/1.5/-1/info/collections",
        "/1.5/12345678901/info/collections",
        "/1.1/32/info/collections",
        "/__nope__",
        "/__heartbeat__/x",
    ] {
        let r = server.raw(Method::GET, path).await;
        assert_error_bare(&r, 404, "0", path);
        let r = user.send(user.request_abs(Method::GET, path)).await;
        assert_error_bare(&r, 404, "0", &format!("{path} signed"));
        if !path.starts_with("/__") {
            assert!(
                r.header("X-Weave-Timestamp").is_some(),
                "{path}: no X-Weave-Timestamp"
            );
        }
    }
    let r = user.get("/nonexistent/url").await;
    assert_error(&r, 404, "0", "/1.5/32/nonexistent/url");
    let r = user.get("/storage/col/absent").await;
    assert_error(&r, 404, "0", "absent record");
    let r = user.delete("/storage/col/absent").await;
    assert_error(&r, 404, "0", "DELETE absent record");
}

// ---- SPEC 6 case 94 and SPEC 4.1: Dockerflow ----

#[tokio::test]
async fn lbheartbeat_reports_the_pool() {
    let server = TestServer::start().await;
    let user = server.user(33);
    assert_eq!(user.get("/info/collections").await.status, 200);
    let r = server.raw(Method::GET, "/__lbheartbeat__").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert!(body["active_connections"].is_u64(), "{body}");
    assert!(body["idle_connections"].is_u64(), "{body}");
    assert!(body.get("duration_ms").is_none(), "{body}");
    assert!(r.header("X-Weave-Timestamp").is_none());
}

#[tokio::test]
async fn lbheartbeat_fails_once_its_ttl_has_passed() {
    let server = TestServer::start_with(|s| s.syncstorage.lbheartbeat_ttl = Some(0)).await;
    let r = server.raw(Method::GET, "/__lbheartbeat__").await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json(), json!({}));
    // Only the load-balancer check fails; the server still serves.
    let r = server.raw(Method::GET, "/__heartbeat__").await;
    assert_eq!(r.status, 200);
    let user = server.user(34);
    assert_eq!(user.get("/info/collections").await.status, 200);
}

#[tokio::test]
async fn dockerflow_endpoints() {
    let server = TestServer::start().await;
    let r = server.raw(Method::GET, "/__heartbeat__").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], "Ok");
    assert_eq!(body["database"], "Ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        body["quota"],
        json!({"enabled": false, "size": 2_097_152_000u64})
    );
    assert!(r.header("X-Weave-Timestamp").is_none());

    let r = server.raw(Method::GET, "/__version__").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    for key in ["build", "commit", "source", "version"] {
        assert!(body[key].is_string(), "{key} missing from {body}");
    }
    assert!(r.header("X-Weave-Timestamp").is_none());

    let r = server.raw(Method::GET, "/__error__").await;
    assert_error_bare(&r, 500, "0", "/__error__");
    // The server survives it.
    assert_eq!(
        server.raw(Method::GET, "/__lbheartbeat__").await.status,
        200
    );

    let client = server
        .client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = send_rb(client.get(format!("{}/", server.base))).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let location = r.header("Location").expect("Location");
    assert!(location.starts_with("http"), "{location}");
}

// ---- bad input ----

/// A user with two stored records and an open batch, so that "nothing written" has something
/// to compare against.
async fn seeded(server: &TestServer, uid: u64) -> User<'_> {
    let user = server.user(uid);
    let r = user
        .post(
            "/storage/col",
            json!([{"id": "a", "payload": "A", "sortindex": 1}, {"id": "b", "payload": "B"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = user
        .post(
            "/storage/col?batch=true",
            json!([{"id": "s", "payload": "S"}]),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // The snapshot must see what it guards, or comparing it proves nothing.
    let snapshot = db_snapshot(server);
    for row in ["|a|1|A|", "|b|-|B|", &format!("|{uid}|s|-|S|-")] {
        assert!(
            snapshot.contains(row),
            "{row} not in the snapshot:\n{snapshot}"
        );
    }
    user
}

#[tokio::test]
async fn malformed_json_is_400_code_8() {
    let server = TestServer::start().await;
    let user = seeded(&server, 40).await;
    let before = db_snapshot(&server);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_obj = format!("{{\"payload\": {deep}}}");
    let put_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"payload": "x""#.to_vec()),
        ("empty", b"".to_vec()),
        ("whitespace", b"   ".to_vec()),
        ("not UTF-8", b"{\"payload\": \"\xff\xfe\"}".to_vec()),
        ("trailing garbage", br#"{"payload": "x"} {}"#.to_vec()),
        ("single quotes", b"{'payload': 'x'}".to_vec()),
        ("a list", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("a string", br#""notabso""#.to_vec()),
        ("a number", b"42".to_vec()),
        ("deep nesting", deep_obj.into_bytes()),
    ];
    for (what, body) in put_bodies {
        let r = put_raw(&user, "/storage/col/a", "application/json", body.clone()).await;
        assert_error(&r, 400, "8", &format!("PUT {what}"));
        let r = put_raw(&user, "/storage/col/new", "text/plain", body).await;
        assert_error(&r, 400, "8", &format!("PUT text/plain {what}"));
    }
    let r = put_raw(
        &user,
        "/storage/col/a",
        "application/newlines",
        r#"{"payload":"x"}"#,
    )
    .await;
    assert_error(&r, 400, "8", "PUT application/newlines");

    let post_bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "truncated",
            "application/json",
            br#"[{"id": "a", "payload": "x"}"#.to_vec(),
        ),
        ("empty", "application/json", b"".to_vec()),
        (
            "an object",
            "application/json",
            br#"{"id": "a", "payload": "x"}"#.to_vec(),
        ),
        ("a string", "application/json", br#""notalist""#.to_vec()),
        ("a number", "application/json", b"42".to_vec()),
        ("null", "application/json", b"null".to_vec()),
        (
            "a non-object item",
            "application/json",
            br#"[{"id":"01","payload":"GOOD"},"BAD"]"#.to_vec(),
        ),
        (
            "a list item",
            "application/json",
            br#"[{"id":"01","payload":"GOOD"},[]]"#.to_vec(),
        ),
        (
            "an item without id",
            "application/json",
            br#"[{"id":"01","payload":"GOOD"},{"payload":"x"}]"#.to_vec(),
        ),
        (
            "a numeric id",
            "application/json",
            br#"[{"id":5,"payload":"x"}]"#.to_vec(),
        ),
        (
            "a null id",
            "application/json",
            br#"[{"id":null,"payload":"x"}]"#.to_vec(),
        ),
        (
            "duplicate ids",
            "application/json",
            br#"[{"id":"d","payload":"1"},{"id":"d","payload":"2"}]"#.to_vec(),
        ),
        (
            "not UTF-8",
            "application/json",
            b"[{\"id\":\"a\",\"payload\":\"\xff\"}]".to_vec(),
        ),
        (
            "deep nesting",
            "application/json",
            deep.clone().into_bytes(),
        ),
        (
            "bad newline line",
            "application/newlines",
            b"{\"id\":\"n1\"}\n{\"id\":\n".to_vec(),
        ),
        (
            "blank newline line",
            "application/newlines",
            b"{\"id\":\"n1\"}\n\n{\"id\":\"n2\"}".to_vec(),
        ),
        (
            "newline list",
            "application/newlines",
            br#"[{"id":"n1"}]"#.to_vec(),
        ),
        (
            "newline non-object",
            "application/newlines",
            b"{\"id\":\"n1\"}\n\"x\"\n".to_vec(),
        ),
    ];
    for (what, ct, body) in post_bodies {
        let r = post_raw(&user, "/storage/col", ct, body.clone()).await;
        assert_error(&r, 400, "8", &format!("POST {what}"));
        let r = post_raw(&user, "/storage/col?batch=true", ct, body).await;
        assert_error(&r, 400, "8", &format!("POST batch {what}"));
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a malformed body wrote something"
    );
    assert_eq!(user.get("/storage/col/a").await.json()["payload"], "A");
}

#[tokio::test]
async fn wrongly_typed_fields() {
    let server = TestServer::start().await;
    let user = seeded(&server, 41).await;
    let before = db_snapshot(&server);
    let bad_fields = [
        json!({"payload": 42}),
        json!({"payload": {"3": "4"}}),
        json!({"payload": true}),
        json!({"payload": ["x"]}),
        json!({"sortindex": "12"}),
        json!({"sortindex": "xxx_meh"}),
        json!({"sortindex": 2.6}),
        json!({"sortindex": 1_000_000_000}),
        json!({"sortindex": -1_000_000_000}),
        json!({"sortindex": 1e300}),
        json!({"ttl": "eh?"}),
        json!({"ttl": "4.2"}),
        json!({"ttl": 4.2}),
        json!({"ttl": -1}),
        json!({"ttl": 1_000_000_000}),
        json!({"ttl": 18_446_744_073_709_551_615u64}),
        json!({"id": ["01", "02"], "payload": "x"}),
        json!({"id": "a\nb", "payload": "x"}),
        json!({"id": "", "payload": "x"}),
        json!({"id": "x".repeat(65), "payload": "x"}),
        json!({"foo": "bar"}),
        json!({"payload_size": 3, "payload": "abc"}),
    ];
    for fields in &bad_fields {
        let r = user.put("/storage/col/a", fields.clone()).await;
        assert_error(&r, 400, "8", &format!("PUT {fields}"));
        let r = user.put("/storage/col/fresh", fields.clone()).await;
        assert_error(&r, 400, "8", &format!("PUT new {fields}"));
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a rejected PUT wrote something"
    );

    // In a POST only the bad item fails.
    let mut items = vec![json!({"id": "good", "payload": "fine"})];
    let mut bad_ids = Vec::new();
    for (i, fields) in bad_fields.iter().enumerate() {
        if fields.get("id").is_some() {
            continue;
        }
        let mut item = fields.clone();
        item["id"] = json!(format!("bad{i:02}"));
        bad_ids.push(format!("bad{i:02}"));
        items.push(item);
    }
    for id in ["A\nB", "A\tB", ""] {
        items.push(json!({"id": id, "payload": "x"}));
        bad_ids.push(id.to_owned());
    }
    items.push(json!({"id": "X".repeat(65), "payload": "x"}));
    bad_ids.push("X".repeat(65));
    let r = user.post("/storage/col", Value::Array(items)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["success"], json!(["good"]));
    let mut failed: Vec<String> = body["failed"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    failed.sort();
    bad_ids.sort();
    assert_eq!(failed, bad_ids);
    assert_eq!(
        sorted_ids(&user.get("/storage/col").await.json()),
        strs(&["a", "b", "good"])
    );
    let a = user.get("/storage/col/a").await.json();
    assert_eq!(
        (a["payload"].as_str(), a["sortindex"].as_i64()),
        (Some("A"), Some(1))
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_code_17() {
    let server = TestServer::start_with(|s| {
        s.syncstorage.limits.max_request_bytes = 1024;
        s.syncstorage.limits.max_record_payload_bytes = 512;
        s.syncstorage.limits.collections.insert(
            "small".into(),
            CollectionLimits {
                max_request_bytes: Some(100),
                ..Default::default()
            },
        );
    })
    .await;
    let user = seeded(&server, 42).await;
    let before = db_snapshot(&server);
    let big = json!({"payload": "x".repeat(2000)});
    let r = user.put("/storage/col/a", big.clone()).await;
    assert_error(&r, 413, "17", "PUT over max_request_bytes");
    let r = user
        .post(
            "/storage/col",
            json!([{"id": "c", "payload": "x".repeat(2000)}]),
        )
        .await;
    assert_error(&r, 413, "17", "POST over max_request_bytes");
    let items: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("i{i}"), "payload": "0123456789"}))
        .collect();
    let r = user
        .post("/storage/col?batch=true", Value::Array(items))
        .await;
    assert_error(&r, 413, "17", "many small items over max_request_bytes");
    assert_eq!(
        db_snapshot(&server),
        before,
        "an oversized request wrote something"
    );
    // Exactly max_request_bytes is allowed, one byte more is not.
    for (len, status) in [(1024usize, 200), (1025, 413)] {
        let mut body = r#"{"payload":"edge"}"#.to_owned();
        body.push_str(&" ".repeat(len - body.len()));
        let r = put_raw(&user, "/storage/edge/e", "application/json", body).await;
        assert_eq!(r.status, status, "body of {len} bytes: {}", r.body);
    }
    assert_eq!(user.get("/storage/edge/e").await.json()["payload"], "edge");
    let before = db_snapshot(&server);
    // Per-collection override.
    let r = user
        .put("/storage/small/a", json!({"payload": "y".repeat(150)}))
        .await;
    assert_error(&r, 413, "17", "PUT over the collection's max_request_bytes");
    // Under the request limit but over the record limit: 400/8 for PUT, "retry bytes" in POST.
    let r = user
        .put("/storage/col/a", json!({"payload": "z".repeat(600)}))
        .await;
    assert_error(&r, 400, "8", "PUT payload over max_record_payload_bytes");
    assert_eq!(
        db_snapshot(&server),
        before,
        "an oversized request wrote something"
    );
    let r = user
        .post(
            "/storage/col",
            json!([{"id": "c", "payload": "z".repeat(600)}, {"id": "d", "payload": "ok"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["success"], json!(["d"]));
    assert_eq!(r.json()["failed"], json!({"c": "retry bytes"}));
    assert_eq!(user.get("/storage/col/c").await.status, 404);
    // The same sizes are fine elsewhere.
    let r = user
        .put("/storage/other/a", json!({"payload": "y".repeat(150)}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn bad_ids_in_the_path() {
    let server = TestServer::start().await;
    let user = seeded(&server, 43).await;
    let before = db_snapshot(&server);
    let long = format!("/storage/col/{}", "x".repeat(65));
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let r = send_raw(
            &user,
            method.clone(),
            &long,
            Some("application/json"),
            r#"{"payload":"x"}"#,
        )
        .await;
        assert_error(&r, 404, "0", &format!("{method} 65-char id"));
    }
    // Ids that only become invalid once percent-decoded.
    for raw in ["a%0Ab", "a%09b", "%00", "%FF", "%C3%A9", "%7F"] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let r = send_raw(
                &user,
                method.clone(),
                &format!("/storage/col/{raw}"),
                Some("application/json"),
                r#"{"payload":"x"}"#,
            )
            .await;
            assert_rejected_path(&r, &format!("{method} id {raw}"));
        }
    }
    assert_eq!(db_snapshot(&server), before, "a bad id wrote something");
    // Valid unusual ids round-trip.
    let x64 = "X".repeat(64);
    for (raw, id) in [
        (
            "%7B0b2d3c4e-aaaa-bbbb-cccc-1234567890ab%7D",
            "{0b2d3c4e-aaaa-bbbb-cccc-1234567890ab}",
        ),
        ("with%20space", "with space"),
        ("~!@$*()", "~!@$*()"),
        (x64.as_str(), x64.as_str()),
    ] {
        let r = user
            .put(&format!("/storage/col/{raw}"), json!({"payload": id}))
            .await;
        assert_eq!(r.status, 200, "{raw}: {}", r.body);
        let r = user.get(&format!("/storage/col/{raw}")).await;
        assert_eq!(r.status, 200, "{raw}");
        assert_eq!(r.json()["id"], id);
    }
}

#[tokio::test]
async fn bad_collection_names_are_404() {
    let server = TestServer::start().await;
    let user = seeded(&server, 44).await;
    let before = db_snapshot(&server);
    let long = "c".repeat(33);
    for coll in [
        long.as_str(),
        "bad!name",
        "with%20space",
        "%C3%A9t%C3%A9",
        "a+b",
        "a%2Fb",
        "a,b",
    ] {
        for (method, rest) in [
            (Method::GET, format!("/storage/{coll}")),
            (Method::POST, format!("/storage/{coll}")),
            (Method::DELETE, format!("/storage/{coll}")),
            (Method::GET, format!("/storage/{coll}/a")),
            (Method::PUT, format!("/storage/{coll}/a")),
            (Method::DELETE, format!("/storage/{coll}/a")),
        ] {
            let body = if method == Method::POST {
                r#"[{"id":"a","payload":"x"}]"#
            } else {
                r#"{"payload":"x"}"#
            };
            let r = send_raw(&user, method.clone(), &rest, Some("application/json"), body).await;
            assert_error(&r, 404, "0", &format!("{method} {rest}"));
        }
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a bad collection name wrote something"
    );
    let r = user
        .put(
            &format!("/storage/{}/a", "c".repeat(32)),
            json!({"payload": "x"}),
        )
        .await;
    assert_eq!(r.status, 200, "32 characters is allowed: {}", r.body);
}

#[tokio::test]
async fn bad_precondition_headers_are_400() {
    let server = TestServer::start().await;
    let user = seeded(&server, 45).await;
    let before = db_snapshot(&server);
    let garbage: Vec<&[u8]> = vec![
        b"abc",
        b"-3",
        b"",
        b"NaN",
        b"1.2.3",
        b"12abc",
        b"99999999999999999999999999",
        b"\xff\xfe",
    ];
    for name in ["X-If-Modified-Since", "X-If-Unmodified-Since"] {
        for value in &garbage {
            let what = format!("{name}: {:?}", String::from_utf8_lossy(value));
            let hv = reqwest::header::HeaderValue::from_bytes(value).unwrap();
            let attempts = [
                (Method::GET, "/storage/col", None, ""),
                (Method::GET, "/storage/col/a", None, ""),
                (Method::GET, "/info/collections", None, ""),
                (
                    Method::PUT,
                    "/storage/col/a",
                    Some("application/json"),
                    r#"{"payload":"changed"}"#,
                ),
                (
                    Method::POST,
                    "/storage/col",
                    Some("application/json"),
                    r#"[{"id":"c","payload":"C"}]"#,
                ),
                (Method::DELETE, "/storage/col/a", None, ""),
                (Method::DELETE, "/storage/col", None, ""),
                (Method::DELETE, "/storage", None, ""),
            ];
            for (method, rest, ct, body) in attempts {
                let mut rb = user
                    .request(method.clone(), rest)
                    .header(name, hv.clone())
                    .body(body);
                if let Some(ct) = ct {
                    rb = rb.header("Content-Type", ct);
                }
                let r = user.send(rb).await;
                assert_error(&r, 400, "0", &format!("{method} {rest} {what}"));
            }
        }
    }
    // Both at once.
    let r = user
        .send(
            user.request(Method::PUT, "/storage/col/a")
                .header("X-If-Modified-Since", "1")
                .header("X-If-Unmodified-Since", "99999999999")
                .header("Content-Type", "application/json")
                .body(r#"{"payload":"changed"}"#),
        )
        .await;
    assert_error(&r, 400, "0", "both precondition headers");
    let r = user
        .send(
            user.request(Method::GET, "/storage/col")
                .header("X-If-Modified-Since", "1")
                .header("X-If-Unmodified-Since", "1"),
        )
        .await;
    assert_error(&r, 400, "0", "both precondition headers on GET");
    assert_eq!(
        db_snapshot(&server),
        before,
        "a bad precondition wrote something"
    );
}

#[tokio::test]
async fn garbage_weave_size_headers() {
    let server = TestServer::start().await;
    let user = seeded(&server, 46).await;
    let before = db_snapshot(&server);
    let cases: Vec<(&str, &str, &str)> = vec![
        ("X-Weave-Records", "abc", "0"),
        ("X-Weave-Records", "-1", "0"),
        ("X-Weave-Records", "1.5", "0"),
        ("X-Weave-Records", "4294967296", "0"),
        ("X-Weave-Records", "", "0"),
        ("X-Weave-Records", "101", "17"),
        ("X-Weave-Bytes", "lots", "0"),
        ("X-Weave-Bytes", "2621441", "17"),
        ("X-Weave-Total-Records", "x", "0"),
        ("X-Weave-Total-Records", "10001", "17"),
        ("X-Weave-Total-Bytes", "1e9", "0"),
        ("X-Weave-Total-Bytes", "262144001", "17"),
    ];
    for (name, value, code) in cases {
        for rest in ["/storage/col", "/storage/col?batch=true"] {
            let r = user
                .send(
                    user.request(Method::POST, rest)
                        .header(name, value)
                        .header("Content-Type", "application/json")
                        .body(r#"[{"id":"c","payload":"C"}]"#),
                )
                .await;
            assert_error(&r, 400, code, &format!("{rest} {name}: {value:?}"));
        }
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a bad X-Weave-* header wrote something"
    );
    // At the limits they pass (Spanner advertises smaller batch totals).
    let (records, bytes) = if spanner(&server) {
        ("9984", "100000000")
    } else {
        ("10000", "262144000")
    };
    let r = user
        .send(
            user.request(Method::POST, "/storage/col")
                .header("X-Weave-Records", "100")
                .header("X-Weave-Bytes", "2621440")
                .header("X-Weave-Total-Records", records)
                .header("X-Weave-Total-Bytes", bytes)
                .header("Content-Type", "application/json")
                .body(r#"[{"id":"c","payload":"C"}]"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn bad_content_types_are_415() {
    let server = TestServer::start().await;
    let user = seeded(&server, 47).await;
    let before = db_snapshot(&server);
    for ct in [
        None,
        Some("application/octet-stream"),
        Some("application/javascript"),
        Some("garbage"),
        Some(""),
    ] {
        let r = send_raw(
            &user,
            Method::PUT,
            "/storage/col/a",
            ct,
            r#"{"payload":"changed"}"#,
        )
        .await;
        assert_error(&r, 415, "0", &format!("PUT Content-Type {ct:?}"));
        let r = send_raw(
            &user,
            Method::POST,
            "/storage/col",
            ct,
            r#"[{"id":"c","payload":"C"}]"#,
        )
        .await;
        assert_error(&r, 415, "0", &format!("POST Content-Type {ct:?}"));
    }
    assert_eq!(db_snapshot(&server), before);
    let r = put_raw(
        &user,
        "/storage/col/a",
        "application/json; charset=utf-8",
        r#"{"payload":"changed"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "parameters are allowed: {}", r.body);
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    let server = TestServer::start().await;
    let user = seeded(&server, 48).await;
    let before = db_snapshot(&server);
    let many: Vec<String> = (0..101).map(|i| format!("i{i}")).collect();
    let too_many = format!("ids={}", many.join(","));
    for query in [
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=99999999999",
        "newer=abc",
        "newer=-1",
        "older=x",
        "older=-5",
        "sort=random",
        "sort=NEWEST",
        "offset=garbage",
        "offset=-1",
        "ids=a%0Ab",
        too_many.as_str(),
    ] {
        let r = user.get(&format!("/storage/col?{query}")).await;
        assert_error(&r, 400, "0", &format!("GET ?{query}"));
    }
    for query in [too_many.as_str(), "ids=a%0Ab"] {
        let r = user.delete(&format!("/storage/col?{query}")).await;
        assert_error(&r, 400, "0", &format!("DELETE ?{query}"));
    }
    assert_eq!(
        db_snapshot(&server),
        before,
        "a bad query deleted something"
    );
    let r = user.get("/storage/col?blabla=1").await;
    assert_eq!(r.status, 200);
    let r = user
        .send(
            user.request(Method::GET, "/storage/col")
                .header("Accept", "x/yy"),
        )
        .await;
    assert_error(&r, 406, "0", "Accept: x/yy");
}

// SPEC 1.12 check order: body and Content-Type problems are reported before batch parameters
// and X-If-* syntax.
#[tokio::test]
async fn errors_come_in_the_protocol_check_order() {
    let server = TestServer::start().await;
    let user = server.user(31);
    let r = user
        .send(
            user.request(Method::POST, "/storage/col?commit=true")
                .header("Content-Type", "application/octet-stream")
                .body("[]"),
        )
        .await;
    assert_error(
        &r,
        415,
        "0",
        "bad Content-Type before a bad batch parameter",
    );
    let r = user
        .send(
            user.request(Method::POST, "/storage/col?commit=true")
                .header("Content-Type", "application/json")
                .body("{"),
        )
        .await;
    assert_error(&r, 400, "8", "bad body before a bad batch parameter");
    let r = user
        .send(
            user.request(Method::PUT, "/storage/col/a")
                .header("Content-Type", "application/octet-stream")
                .header("X-If-Unmodified-Since", "abc")
                .body("{}"),
        )
        .await;
    assert_error(
        &r,
        415,
        "0",
        "bad Content-Type before bad X-If-Unmodified-Since",
    );
    assert_eq!(user.get("/storage/col").await.json(), json!([]));
}

// Client values no engine can store get the protocol's answers, never a 500: a payload with
// U+0000, timestamps far beyond any real one.
#[tokio::test]
async fn values_engines_cannot_store_are_refused_cleanly() {
    let server = TestServer::start().await;
    let user = server.user(32);
    let r = user
        .put("/storage/col/a", json!({"payload": "a\u{0}b"}))
        .await;
    assert_error(&r, 400, "8", "PUT payload with U+0000");
    let r = user
        .post(
            "/storage/col",
            json!([{"id": "b", "payload": "x\u{0}"}, {"id": "c", "payload": "ok"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["success"], json!(["c"]));
    assert!(r.json()["failed"]["b"].is_string());
    for q in [
        "newer=10000000000000",
        "older=99999999999999.99",
        "sort=newest&offset=9223372036854775807:0",
    ] {
        let r = user.get(&format!("/storage/col?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
    }
    assert_eq!(
        user.get("/storage/col?newer=10000000000000").await.json(),
        json!([])
    );
}
