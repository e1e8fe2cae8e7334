//! Request bodies of PUT and POST (SPEC 1.3, 1.9): parsing, per-item validation, size limits.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::bso::{BsoUpdate, is_known_bad_payload, parse_fields};
use super::limits::EffectiveLimits;
use crate::error::{ApiError, ApiResult};

/// The body encodings a PUT/POST may use (Content-Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` or `text/plain`.
    Json,
    /// `application/newlines`: one JSON object per line.
    Newlines,
}

impl BodyFormat {
    /// `None` means 415. Parameters such as `; charset=utf-8` are allowed.
    pub fn from_content_type(content_type: Option<&str>) -> Option<Self> {
        let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/plain" => Some(BodyFormat::Json),
            "application/newlines" => Some(BodyFormat::Newlines),
            _ => None,
        }
    }
}

/// The outcome of validating a POST body: what will be written, and what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostItems {
    pub valid: Vec<BsoUpdate>,
    pub failed: BTreeMap<String, String>,
}

fn parse_values(body: &[u8], format: BodyFormat) -> ApiResult<Vec<Value>> {
    let invalid = |_| ApiError::invalid_bso("invalid JSON body");
    match format {
        BodyFormat::Json => match serde_json::from_slice::<Value>(body).map_err(invalid)? {
            Value::Array(items) => Ok(items),
            _ => Err(ApiError::invalid_bso("body is not a list")),
        },
        BodyFormat::Newlines => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::invalid_bso("body is not UTF-8"))?;
            // `lines` gives no line for "" and one empty (invalid) line for "\n".
            text.lines()
                .map(|line| serde_json::from_str(line).map_err(invalid))
                .collect()
        }
    }
}

/// Validates a POST body for `collection` (SPEC 1.9 steps 1-4).
pub fn parse_post_body(
    body: &[u8],
    format: BodyFormat,
    collection: &str,
    limits: &EffectiveLimits,
) -> ApiResult<PostItems> {
    let mut out = PostItems::default();
    let mut seen = HashSet::new();
    let mut running_bytes: u64 = 0;
    for value in parse_values(body, format)? {
        let Value::Object(obj) = value else {
            return Err(ApiError::invalid_bso("list item is not an object"));
        };
        let Some(id) = obj.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return Err(ApiError::invalid_bso("Input BSO has no ID"));
        };
        if !seen.insert(id.clone()) {
            return Err(ApiError::invalid_bso(format!("duplicate id {id}")));
        }
        let update = match parse_fields(&obj) {
            Ok((_, update)) => update,
            Err(reason) => {
                out.failed.insert(id, reason);
                continue;
            }
        };
        let bytes = update.payload_bytes() as u64;
        running_bytes += bytes;
        if bytes > u64::from(limits.max_record_payload_bytes)
            || (bytes > 0 && running_bytes > u64::from(limits.max_post_bytes))
        {
            out.failed.insert(id, "retry bytes".into());
            continue;
        }
        out.valid.push(update);
    }
    if out
        .valid
        .iter()
        .any(|u| is_known_bad_payload(collection, u.payload.as_deref()))
    {
        return Err(ApiError::invalid_bso("known-bad BSO payload"));
    }
    let max = limits.max_post_records as usize;
    if out.valid.len() > max {
        for extra in out.valid.split_off(max) {
            out.failed.insert(extra.id, "retry bso".into());
        }
    }
    Ok(out)
}

/// Validates a PUT body; `url_id` wins over any id in the body (which must still be valid).
pub fn parse_put_body(
    body: &[u8],
    format: BodyFormat,
    collection: &str,
    url_id: &str,
    limits: &EffectiveLimits,
) -> ApiResult<BsoUpdate> {
    if format == BodyFormat::Newlines {
        return Err(ApiError::invalid_bso("PUT takes one JSON object"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|_| ApiError::invalid_bso("invalid JSON body"))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid_bso("body is not an object"));
    };
    let (_, mut update) = parse_fields(&obj).map_err(ApiError::invalid_bso)?;
    update.id = url_id.to_owned();
    if update.payload_bytes() > limits.max_record_payload_bytes as usize {
        return Err(ApiError::invalid_bso("payload too large"));
    }
    if is_known_bad_payload(collection, update.payload.as_deref()) {
        return Err(ApiError::invalid_bso("known-bad BSO payload"));
    }
    Ok(update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::limits::Limits;
    use serde_json::json;

    fn limits() -> EffectiveLimits {
        Limits::default().for_collection("c")
    }

    fn post(v: Value) -> ApiResult<PostItems> {
        parse_post_body(v.to_string().as_bytes(), BodyFormat::Json, "c", &limits())
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json")),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("text/plain")),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("Application/Newlines")),
            Some(BodyFormat::Newlines)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/octet-stream")),
            None
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/javascript")),
            None
        );
        assert_eq!(BodyFormat::from_content_type(None), None);
    }

    #[test]
    fn whole_request_failures() {
        for bad in [
            json!("notalist"),
            json!(42),
            json!({}),
            json!([{"id": "01", "payload": "GOOD"}, "BAD"]),
            json!([{"payload": "x"}]),
            json!([{"id": 5}]),
            json!([{"id": null}]),
            json!([{"id": "a"}, {"id": "a"}]),
        ] {
            let e = post(bad.clone()).unwrap_err();
            assert_eq!((e.status(), e.weave_code()), (400, Some(8)), "{bad}");
        }
        let e = parse_post_body(b"[{", BodyFormat::Json, "c", &limits()).unwrap_err();
        assert_eq!(e.weave_code(), Some(8));
    }

    #[test]
    fn per_item_failures() {
        let r = post(json!([{"id": "01", "payload": "GOOD"}, {"id": "02", "invalid": "ya"},
            {"id": "A\nB"}, {"id": "A\tB"}, {"id": ""}, {"id": "X".repeat(65)}, {"id": "t", "ttl": -12}]))
        .unwrap();
        assert_eq!(
            r.valid.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["01"]
        );
        assert_eq!(r.failed.len(), 6);
        assert_eq!(r.failed["02"], "unknown field invalid");
    }

    #[test]
    fn newlines_bodies() {
        let nl = |b: &[u8]| parse_post_body(b, BodyFormat::Newlines, "c", &limits());
        assert_eq!(
            nl(b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n").unwrap().valid.len(),
            2
        );
        assert_eq!(
            nl(b"{\"id\":\"a\"}\n{\"id\":\"b\"}").unwrap().valid.len(),
            2
        );
        assert!(nl(b"").unwrap().valid.is_empty());
        for bad in [
            &b"\n"[..],
            b"{}",
            b"[]",
            b"{\"id\":\"a\"}\n\n{\"id\":\"b\"}",
        ] {
            assert_eq!(nl(bad).unwrap_err().weave_code(), Some(8), "{bad:?}");
        }
        // Empty JSON commit bodies: [] is fine, {} and "" are not.
        assert!(post(json!([])).unwrap().valid.is_empty());
        assert!(parse_post_body(b"", BodyFormat::Json, "c", &limits()).is_err());
    }

    #[test]
    fn running_byte_total() {
        let l = limits();
        let big = "x".repeat(l.max_post_bytes as usize - 3);
        let r = post(json!([{"id": "little", "payload": "abc"}, {"id": "big", "payload": big}]))
            .unwrap();
        assert!(r.failed.is_empty());
        let big = "x".repeat(l.max_post_bytes as usize - 2);
        let r = post(json!([{"id": "little", "payload": "abc"}, {"id": "big", "payload": big}]))
            .unwrap();
        assert_eq!(r.valid.len(), 1);
        assert_eq!(r.failed["big"], "retry bytes");
    }

    #[test]
    fn record_payload_limit() {
        let l = Limits {
            max_record_payload_bytes: 4,
            ..Default::default()
        }
        .for_collection("c");
        let r = parse_post_body(
            json!([{"id": "a", "payload": "12345"}, {"id": "b", "payload": "1234"}])
                .to_string()
                .as_bytes(),
            BodyFormat::Json,
            "c",
            &l,
        )
        .unwrap();
        assert_eq!(r.failed["a"], "retry bytes");
        assert_eq!(r.valid.len(), 1);
    }

    #[test]
    fn too_many_records_fail_from_the_end() {
        let items: Vec<Value> = (0..105)
            .map(|i| json!({"id": format!("{i:03}"), "payload": "x"}))
            .collect();
        let r = post(Value::Array(items)).unwrap();
        assert_eq!(r.valid.len(), 100);
        assert_eq!(r.failed.len(), 5);
        assert_eq!(r.failed["104"], "retry bso");
        assert!(r.failed.contains_key("100"));
    }

    #[test]
    fn crypto_guard_fails_request() {
        let bad = json!([{"id": "keys", "payload": "{\"IV\": \"AAAAAAAAAAAAAAAAAAAAAA==\"}"}])
            .to_string();
        let e = parse_post_body(bad.as_bytes(), BodyFormat::Json, "crypto", &limits()).unwrap_err();
        assert_eq!(e.weave_code(), Some(8));
        assert!(parse_post_body(bad.as_bytes(), BodyFormat::Json, "other", &limits()).is_ok());
    }

    #[test]
    fn put_bodies() {
        let l = limits();
        let put = |b: &str| parse_put_body(b.as_bytes(), BodyFormat::Json, "c", "url-id", &l);
        assert_eq!(
            put("{}").unwrap(),
            BsoUpdate {
                id: "url-id".into(),
                ..Default::default()
            }
        );
        assert_eq!(put(r#"{"id":"other","payload":"x"}"#).unwrap().id, "url-id");
        for bad in [
            r#""notabso""#,
            "42",
            r#"{"id":["01","02"],"payload":{"3":"4"}}"#,
            r#"{"ttl":-1}"#,
            r#"{"id":"a\nb"}"#,
            "{",
            r#"{"sortindex":"2"}"#,
            r#"{"foo":1}"#,
        ] {
            assert_eq!(put(bad).unwrap_err().weave_code(), Some(8), "{bad}");
        }
        assert!(put(r#"{"sortindex": -42, "collection": "c", "modified": 12}"#).is_ok());
        assert!(parse_put_body(b"{}", BodyFormat::Newlines, "c", "a", &l).is_err());
        let small = Limits {
            max_record_payload_bytes: 2,
            ..Default::default()
        };
        let e = parse_put_body(
            br#"{"payload":"abc"}"#,
            BodyFormat::Json,
            "c",
            "a",
            &small.for_collection("c"),
        );
        assert_eq!(e.unwrap_err().weave_code(), Some(8));
    }
}
