//! BSO input validation, output shape and the partial-update rules (SPEC 1.3, 1.10, 1.15).

use serde::Serialize;
use serde_json::{Map, Value};

use super::SyncTimestamp;
use super::validate::valid_bso_id;

pub const MAX_SORTINDEX: i64 = 999_999_999;
pub const MAX_TTL: u64 = 999_999_999;

/// One record as a client sent it: only the fields it supplied are `Some`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BsoUpdate {
    pub id: String,
    pub payload: Option<String>,
    pub sortindex: Option<i32>,
    pub ttl: Option<u32>,
}

impl BsoUpdate {
    pub fn payload_bytes(&self) -> usize {
        self.payload.as_ref().map_or(0, String::len)
    }

    /// Field-by-field merge for batch staging: a later non-null field wins.
    pub fn merged_with(&self, later: &BsoUpdate) -> BsoUpdate {
        BsoUpdate {
            id: self.id.clone(),
            payload: later.payload.clone().or_else(|| self.payload.clone()),
            sortindex: later.sortindex.or(self.sortindex),
            ttl: later.ttl.or(self.ttl),
        }
    }
}

/// A record as stored: timestamps and expiry in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBso {
    pub id: String,
    pub payload: String,
    pub sortindex: Option<i32>,
    pub modified: i64,
    pub expiry: i64,
}

/// The record clients read. Key order is the wire order: id, modified, payload, sortindex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bso {
    pub id: String,
    pub modified: SyncTimestamp,
    pub payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i32>,
}

impl From<StoredBso> for Bso {
    fn from(s: StoredBso) -> Self {
        Bso {
            id: s.id,
            modified: SyncTimestamp::from_i64(s.modified),
            payload: s.payload,
            sortindex: s.sortindex,
        }
    }
}

/// How a write stamps `modified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModifiedRule {
    /// PUT/POST: only when payload or sortindex was supplied.
    WhenContentChanges,
    /// Batch commit: every committed record gets T.
    Always,
}

/// Applies `update` at write time `t` to the existing row (expired rows included: they are
/// overwritten, and unsupplied fields are inherited, as upstream does).
pub fn apply_update(
    existing: Option<&StoredBso>,
    update: &BsoUpdate,
    t: SyncTimestamp,
    rule: ModifiedRule,
) -> StoredBso {
    let ttl = update.ttl.map(u64::from);
    match existing {
        None => StoredBso {
            id: update.id.clone(),
            payload: update.payload.clone().unwrap_or_default(),
            sortindex: update.sortindex,
            modified: t.as_i64(),
            expiry: t.expiry_after(ttl),
        },
        Some(old) => {
            let content_changed = update.payload.is_some() || update.sortindex.is_some();
            let modified = match rule {
                ModifiedRule::Always => t.as_i64(),
                ModifiedRule::WhenContentChanges if content_changed => t.as_i64(),
                ModifiedRule::WhenContentChanges => old.modified,
            };
            StoredBso {
                id: old.id.clone(),
                payload: update
                    .payload
                    .clone()
                    .unwrap_or_else(|| old.payload.clone()),
                sortindex: update.sortindex.or(old.sortindex),
                modified,
                expiry: if ttl.is_some() {
                    t.expiry_after(ttl)
                } else {
                    old.expiry
                },
            }
        }
    }
}

/// Validates the fields of one JSON object. `Err` is the per-item failure reason.
/// The id is checked only when present; callers decide whether it is required.
pub fn parse_fields(obj: &Map<String, Value>) -> Result<(Option<String>, BsoUpdate), String> {
    let mut update = BsoUpdate::default();
    let mut id = None;
    for (key, value) in obj {
        if value.is_null() {
            // null is the same as absent (SPEC 1.3).
            continue;
        }
        match key.as_str() {
            "id" => match value.as_str() {
                Some(s) if valid_bso_id(s) => id = Some(s.to_owned()),
                _ => return Err("invalid id".into()),
            },
            "payload" => match value.as_str() {
                // No engine's text column can hold U+0000 everywhere (PostgreSQL refuses it).
                Some(s) if s.contains('\0') => return Err("payload contains U+0000".into()),
                Some(s) => update.payload = Some(s.to_owned()),
                None => return Err("payload not a string".into()),
            },
            "sortindex" => match value.as_i64() {
                Some(n) if (-MAX_SORTINDEX..=MAX_SORTINDEX).contains(&n) => {
                    update.sortindex = Some(n as i32)
                }
                _ => return Err("invalid sortindex".into()),
            },
            "ttl" => match value.as_u64() {
                Some(n) if n <= MAX_TTL => update.ttl = Some(n as u32),
                _ => return Err("invalid ttl".into()),
            },
            // Accepted and ignored.
            "modified" | "collection" => {}
            other => return Err(format!("unknown field {other}")),
        }
    }
    if let Some(id) = &id {
        update.id = id.clone();
    }
    Ok((id, update))
}

/// Firefox once uploaded crypto/keys with an all-zero IV; such records must be refused
/// (SPEC 1.3, collection `crypto` only).
pub fn is_known_bad_payload(collection: &str, payload: Option<&str>) -> bool {
    static BAD_IV: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"IV":\s*"AAAAAAAAAAAAAAAAAAAAAA=="#).expect("valid regex")
    });
    collection == "crypto" && payload.is_some_and(|p| BAD_IV.is_match(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_all_fields() {
        let (id, u) = parse_fields(&obj(
            json!({"id": "a", "payload": "p", "sortindex": -42, "ttl": 10,
            "modified": 12, "collection": "meta"}),
        ))
        .unwrap();
        assert_eq!(id.as_deref(), Some("a"));
        assert_eq!(
            u,
            BsoUpdate {
                id: "a".into(),
                payload: Some("p".into()),
                sortindex: Some(-42),
                ttl: Some(10)
            }
        );
    }

    #[test]
    fn nulls_are_absent() {
        let (_, u) = parse_fields(&obj(
            json!({"id": "a", "payload": null, "ttl": null, "sortindex": null}),
        ))
        .unwrap();
        assert_eq!(
            u,
            BsoUpdate {
                id: "a".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_bad_fields() {
        for bad in [
            json!({"sortindex": "xxx_meh"}),
            json!({"sortindex": "2.6"}),
            json!({"sortindex": 2.6}),
            json!({"sortindex": "12"}),
            json!({"sortindex": 1_000_000_000}),
            json!({"sortindex": -1_000_000_000}),
            json!({"payload": 42}),
            json!({"payload": {"3": "4"}}),
            json!({"payload": "a\u{0}b"}),
            json!({"ttl": "eh?"}),
            json!({"ttl": "4.2"}),
            json!({"ttl": 4.2}),
            json!({"ttl": -1}),
            json!({"ttl": 1_000_000_000u64}),
            json!({"id": ["01", "02"]}),
            json!({"id": "A\nB"}),
            json!({"id": ""}),
            json!({"payload_size": 3}),
            json!({"invalid": "ya"}),
        ] {
            assert!(parse_fields(&obj(bad.clone())).is_err(), "{bad}");
        }
        assert_eq!(
            parse_fields(&obj(json!({"invalid": "ya"}))).unwrap_err(),
            "unknown field invalid"
        );
    }

    #[test]
    fn accepts_limits() {
        for ok in [
            json!({"ttl": 94_608_000}),
            json!({"ttl": 999_999_999}),
            json!({"ttl": 0}),
            json!({"sortindex": 999_999_999}),
            json!({"sortindex": -999_999_999}),
            json!({}),
        ] {
            assert!(parse_fields(&obj(ok.clone())).is_ok(), "{ok}");
        }
    }

    fn t(ms: u64) -> SyncTimestamp {
        SyncTimestamp::from_millis(ms)
    }

    fn upd(payload: Option<&str>, sortindex: Option<i32>, ttl: Option<u32>) -> BsoUpdate {
        BsoUpdate {
            id: "x".into(),
            payload: payload.map(Into::into),
            sortindex,
            ttl,
        }
    }

    #[test]
    fn new_record_defaults() {
        let s = apply_update(
            None,
            &upd(None, None, None),
            t(1000),
            ModifiedRule::WhenContentChanges,
        );
        assert_eq!(s.payload, "");
        assert_eq!(s.sortindex, None);
        assert_eq!(s.modified, 1000);
        assert_eq!(s.expiry, 1000 + 2_100_000_000_000);
    }

    #[test]
    fn ttl_only_update_keeps_modified_and_rebases_expiry() {
        let old = StoredBso {
            id: "x".into(),
            payload: "p".into(),
            sortindex: Some(3),
            modified: 500,
            expiry: 900,
        };
        let s = apply_update(
            Some(&old),
            &upd(None, None, Some(10)),
            t(1000),
            ModifiedRule::WhenContentChanges,
        );
        assert_eq!(
            (s.modified, s.expiry, s.payload.as_str(), s.sortindex),
            (500, 11_000, "p", Some(3))
        );
        // A batch commit stamps every record.
        let s = apply_update(
            Some(&old),
            &upd(None, None, Some(10)),
            t(1000),
            ModifiedRule::Always,
        );
        assert_eq!(s.modified, 1000);
    }

    #[test]
    fn partial_updates_keep_other_fields() {
        let old = StoredBso {
            id: "x".into(),
            payload: "p".into(),
            sortindex: Some(3),
            modified: 500,
            expiry: 9000,
        };
        let s = apply_update(
            Some(&old),
            &upd(None, Some(7), None),
            t(1000),
            ModifiedRule::WhenContentChanges,
        );
        assert_eq!(
            (s.payload.as_str(), s.sortindex, s.expiry, s.modified),
            ("p", Some(7), 9000, 1000)
        );
        let s = apply_update(
            Some(&old),
            &upd(Some("q"), None, None),
            t(1000),
            ModifiedRule::WhenContentChanges,
        );
        assert_eq!(
            (s.payload.as_str(), s.sortindex, s.expiry, s.modified),
            ("q", Some(3), 9000, 1000)
        );
    }

    #[test]
    fn staging_merge() {
        let a = upd(Some("a"), Some(1), None);
        let b = upd(None, Some(2), Some(5));
        assert_eq!(a.merged_with(&b), upd(Some("a"), Some(2), Some(5)));
    }

    #[test]
    fn output_key_order() {
        let b = Bso {
            id: "a".into(),
            modified: t(1_700_000_000_100),
            payload: "p".into(),
            sortindex: None,
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"id":"a","modified":1700000000.10,"payload":"p"}"#
        );
        let b = Bso {
            sortindex: Some(-1),
            ..b
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"id":"a","modified":1700000000.10,"payload":"p","sortindex":-1}"#
        );
    }

    #[test]
    fn crypto_guard() {
        let p = r#"{"IV": "AAAAAAAAAAAAAAAAAAAAAA==", "x": 1}"#;
        assert!(is_known_bad_payload("crypto", Some(p)));
        assert!(is_known_bad_payload(
            "crypto",
            Some(r#"{"IV":"AAAAAAAAAAAAAAAAAAAAAA=="}"#)
        ));
        assert!(!is_known_bad_payload("bookmarks", Some(p)));
        assert!(!is_known_bad_payload(
            "crypto",
            Some(r#"{"IV": "AAAAAAAAAAAAAAAAAAAAAB=="}"#)
        ));
        assert!(!is_known_bad_payload("crypto", None));
    }
}
