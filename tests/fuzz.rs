//! Property-based fuzzing of every parser a client reaches (issue 13): the Hawk Authorization
//! header, tokenlib tokens, BSO JSON and newline bodies, query strings and offsets, X-If-* and
//! X-Weave-* headers, X-KeyID / X-Client-State, Accept, and OAuth / webhook JWTs. Each target
//! feeds arbitrary input and near-valid input (valid shapes with hostile values) and checks
//! that the parser answers (never panics) with the protocol's error or a value that satisfies
//! its invariants.
//!
//! `SYNC_FUZZ_CASES` sets the cases per target (default 20,000, about 3 s for all, run by
//! `cargo test`); `make fuzz` runs 2,000,000 each (a few minutes).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{Value, json};
use syncserver::auth::hawk::{SignedRequest, verify};
use syncserver::auth::hawk_header::{self, MAX_TS};
use syncserver::auth::{Secrets, TokenPayload, new_salt};
use syncserver::protocol::headers::{WeaveSizeHeaders, negotiate_output};
use syncserver::protocol::limits::Limits;
use syncserver::protocol::post::{BodyFormat, parse_post_body, parse_put_body};
use syncserver::protocol::validate::valid_bso_id;
use syncserver::protocol::{BatchRequest, BsoQuery, Offset, Precondition, SyncTimestamp};
use syncserver::tokenserver::fxa_guard::{is_jwt_shaped, is_opaque_token_shaped};
use syncserver::tokenserver::keyid::{check_client_state_header, parse_key_id};
use syncserver::tokenserver::oauth::{Jwk, LocalOutcome, verify_locally, verify_security_event};

fn config() -> Config {
    let cases = std::env::var("SYNC_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20_000);
    Config {
        cases,
        // Failures are reported with their minimal input; nothing is written into the tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Text a hostile client might send: anything, or pieces of the grammar with odd values.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,80}",
        "[0-9]{0,30}",
        "-?[0-9]{0,25}(\\.[0-9]{0,5})?",
        Just("18446744073709551615".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just(String::new()),
    ]
}

fn hawk_header() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("id"),
        Just("ts"),
        Just("nonce"),
        Just("mac"),
        Just("hash"),
        Just("ext"),
        Just("app"),
        Just("dlg"),
        Just("bogus"),
    ];
    let attr = (name, hostile_text(), "[ ,\t]{0,3}").prop_map(|(n, v, sep)| {
        let v = v.replace('"', "");
        format!("{n}=\"{v}\"{sep}")
    });
    prop_oneof![
        prop::collection::vec(attr, 0..8).prop_map(|a| a.concat()),
        any::<String>(),
    ]
}

const REQ: SignedRequest<'static> = SignedRequest {
    method: "GET",
    target: "/1.5/7/storage/col",
    host: "localhost",
    port: 8000,
};

fn token(secrets: &Secrets) -> String {
    secrets.make_token(&TokenPayload {
        uid: 7,
        node: "http://localhost:8000".into(),
        expires: 4_000_000_000.0,
        salt: new_salt(),
        fxa_uid: "f".repeat(32),
        fxa_kid: "0000000001234-qqo".into(),
        hashed_fxa_uid: String::new(),
        hashed_device_id: String::new(),
        tokenserver_origin: None,
    })
}

/// Arbitrary JSON, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        hostile_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("payload".to_owned()),
                    Just("sortindex".to_owned()),
                    Just("ttl".to_owned()),
                    Just("modified".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn jwt_like() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        json_value(),
        Just(json!({"alg": "RS256", "typ": "at+jwt"})),
        Just(json!({"alg": "none", "typ": "at+jwt"})),
        Just(json!({"alg": "HS256", "typ": "at+jwt"})),
        Just(json!({"alg": "RS256", "typ": "secevent+jwt", "kid": "x"})),
    ];
    (header, json_value(), "[A-Za-z0-9_-]{0,350}").prop_map(|(h, c, sig)| {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        )
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn authorization_header(header in hawk_header()) {
        if let Ok(h) = hawk_header::parse(&header)
            && let Some(ts) = h.ts
        {
            let secs = ts.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            prop_assert!(secs <= MAX_TS);
        }
        let secrets = Secrets::new("master");
        let bare = format!("Hawk {header}");
        let e = verify(&secrets, Some(&bare), REQ, false).unwrap_err();
        prop_assert_eq!(e.status(), 401);
        // The same attributes around a real token id.
        let with_id = format!("Hawk id=\"{}\", {header}", token(&secrets));
        let verified = verify(&secrets, Some(&with_id), REQ, true);
        prop_assert!(verified.is_err());
    }

    #[test]
    fn tokenlib_tokens(text in hostile_text(), flip in 0usize..400, byte in any::<u8>()) {
        let secrets = Secrets::new("master");
        prop_assert!(secrets.parse_token(&text).is_err());
        // A real token with one byte changed is refused (or, if the change is a no-op, valid).
        let good = token(&secrets);
        let mut bytes = good.clone().into_bytes();
        let i = flip % bytes.len();
        bytes[i] = byte;
        if let Ok(mutated) = String::from_utf8(bytes)
            && mutated != good
        {
            prop_assert!(secrets.parse_token(&mutated).is_err());
        }
    }

    #[test]
    fn bso_bodies(values in prop::collection::vec(json_value(), 0..8), raw in any::<Vec<u8>>()) {
        let limits = Limits::default().for_collection("col");
        let array = Value::Array(values.clone()).to_string();
        let lines = values.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
        for (body, format) in [
            (array.as_bytes(), BodyFormat::Json),
            (lines.as_bytes(), BodyFormat::Newlines),
            (raw.as_slice(), BodyFormat::Json),
            (raw.as_slice(), BodyFormat::Newlines),
        ] {
            match parse_post_body(body, format, "col", &limits) {
                Ok(items) => {
                    let mut ids: Vec<&str> = items.valid.iter().map(|u| u.id.as_str()).collect();
                    prop_assert!(ids.iter().all(|id| valid_bso_id(id)));
                    prop_assert!(items.valid.len() <= limits.max_post_records as usize);
                    let n = ids.len();
                    ids.sort();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), n);
                }
                Err(e) => prop_assert_eq!(e.status(), 400),
            }
        }
        for v in values.iter().map(Value::to_string).chain([String::from_utf8_lossy(&raw).into_owned()]) {
            match parse_put_body(v.as_bytes(), BodyFormat::Json, "col", "id1", &limits) {
                Ok(u) => prop_assert_eq!(u.id, "id1"),
                Err(e) => prop_assert_eq!(e.status(), 400),
            }
        }
    }

    #[test]
    fn query_strings_and_offsets(
        pairs in prop::collection::vec(
            (prop_oneof![
                Just("newer"), Just("older"), Just("limit"), Just("offset"), Just("sort"),
                Just("ids"), Just("full"), Just("batch"), Just("commit"), Just("x%20y")
            ], hostile_text()),
            0..6
        ),
        raw in any::<String>(),
    ) {
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&");
        for q in [query.as_str(), raw.as_str()] {
            if let Err(e) = BsoQuery::parse(q) {
                prop_assert_eq!(e.status(), 400);
            }
            if let Err(e) = BatchRequest::parse(q) {
                prop_assert_eq!(e.status(), 400);
            }
        }
        for (_, v) in &pairs {
            if let Ok(offset) = Offset::parse(v) {
                prop_assert_eq!(Offset::parse(&offset.to_string()).unwrap(), offset);
            }
        }
    }

    #[test]
    fn precondition_and_size_headers(a in hostile_text(), b in hostile_text(), both in any::<bool>()) {
        let r = if both {
            Precondition::parse(Some(&a), Some(&b))
        } else {
            Precondition::parse(Some(&a), None)
        };
        if let Err(e) = r {
            prop_assert_eq!(e.status(), 400);
        }
        if let Ok(ts) = SyncTimestamp::parse(&a) {
            prop_assert_eq!(SyncTimestamp::parse(&ts.to_string()).unwrap(), ts);
        }
        let limits = Limits::default().for_collection("col");
        let headers = WeaveSizeHeaders {
            records: Some(&a),
            bytes: Some(&b),
            total_records: Some(&b),
            total_bytes: Some(&a),
        };
        if let Err(e) = headers.check(&limits) {
            prop_assert_eq!(e.status(), 400);
        }
        if let Err(e) = negotiate_output(Some(&a)) {
            prop_assert_eq!(e.status(), 406);
        }
    }

    #[test]
    fn key_id_and_client_state(key_id in hostile_text(), state in hostile_text(), dash in any::<bool>()) {
        let key_id = if dash { format!("{key_id}-{state}") } else { key_id };
        match parse_key_id(Some(&key_id)) {
            Ok(k) => {
                prop_assert!(k.client_state.len() <= 32);
                if let Err(e) = check_client_state_header(Some(&state), &k.client_state) {
                    prop_assert!(e.http_status == 400 || e.http_status == 401);
                }
            }
            Err(e) => prop_assert_eq!(e.http_status, 401),
        }
    }

    #[test]
    fn oauth_and_webhook_jwts(token in prop_oneof![jwt_like(), hostile_text()]) {
        let key = Jwk {
            kty: "RSA".into(),
            n: URL_SAFE_NO_PAD.encode([0xC5u8; 256]),
            e: "AQAB".into(),
            kid: None,
        };
        // Nothing here is signed by the key: never accepted.
        prop_assert!(!matches!(verify_locally(&token, std::slice::from_ref(&key)), LocalOutcome::Verified(_)));
        prop_assert!(!matches!(verify_locally(&token, &[]), LocalOutcome::Verified(_)));
        prop_assert!(verify_security_event(&token, &[key], "aud", "iss").is_err());
        prop_assert!(!(is_jwt_shaped(&token) && is_opaque_token_shaped(&token)));
    }
}
