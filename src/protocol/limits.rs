//! Server limits reported by info/configuration and enforced on writes (SPEC 1.11).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::valid_collection_name;

pub const DEFAULT_MAX_POST_BYTES: u32 = 2_621_440;
pub const DEFAULT_MAX_POST_RECORDS: u32 = 100;
pub const DEFAULT_MAX_RECORD_PAYLOAD_BYTES: u32 = 2_621_440;
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = DEFAULT_MAX_POST_BYTES + 4096;
pub const DEFAULT_MAX_TOTAL_BYTES: u32 = 262_144_000;
pub const DEFAULT_MAX_TOTAL_RECORDS: u32 = 10_000;
pub const DEFAULT_MAX_QUOTA_LIMIT: u32 = 2_097_152_000;

/// Most ids a GET or DELETE may name in `ids=`.
pub const MAX_IDS_PER_REQUEST: usize = 100;

/// Serialized field order is the wire order of info/configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_post_bytes: u32,
    pub max_post_records: u32,
    pub max_record_payload_bytes: u32,
    pub max_request_bytes: u32,
    pub max_total_bytes: u32,
    pub max_total_records: u32,
    pub max_quota_limit: u32,
    /// Per-collection overrides; given as a JSON string in settings.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "collections_from_json"
    )]
    pub collections: BTreeMap<String, CollectionLimits>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_record_payload_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_post_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u32>,
}

/// The limits that apply to one collection after overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub max_post_bytes: u32,
    pub max_post_records: u32,
    pub max_record_payload_bytes: u32,
    pub max_request_bytes: u32,
    pub max_total_bytes: u32,
    pub max_total_records: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_post_bytes: DEFAULT_MAX_POST_BYTES,
            max_post_records: DEFAULT_MAX_POST_RECORDS,
            max_record_payload_bytes: DEFAULT_MAX_RECORD_PAYLOAD_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_total_records: DEFAULT_MAX_TOTAL_RECORDS,
            max_quota_limit: DEFAULT_MAX_QUOTA_LIMIT,
            collections: BTreeMap::new(),
        }
    }
}

fn collections_from_json<'de, D>(d: D) -> Result<BTreeMap<String, CollectionLimits>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Json(String),
        Map(BTreeMap<String, CollectionLimits>),
    }
    match Raw::deserialize(d)? {
        Raw::Json(s) if s.trim().is_empty() => Ok(BTreeMap::new()),
        Raw::Json(s) => serde_json::from_str(&s).map_err(serde::de::Error::custom),
        Raw::Map(m) => Ok(m),
    }
}

impl Limits {
    /// Checks what start-up must refuse; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("max_post_bytes", self.max_post_bytes),
            ("max_post_records", self.max_post_records),
            ("max_record_payload_bytes", self.max_record_payload_bytes),
            ("max_request_bytes", self.max_request_bytes),
            ("max_total_bytes", self.max_total_bytes),
            ("max_total_records", self.max_total_records),
            ("max_quota_limit", self.max_quota_limit),
        ];
        for (name, value) in named {
            if value == 0 {
                return Err(format!("syncstorage.limits.{name} must be greater than 0"));
            }
        }
        for (name, c) in &self.collections {
            if !valid_collection_name(name) {
                return Err(format!(
                    "syncstorage.limits.collections: invalid collection name {name:?}"
                ));
            }
            for v in [
                c.max_record_payload_bytes,
                c.max_post_bytes,
                c.max_request_bytes,
            ]
            .into_iter()
            .flatten()
            {
                if v == 0 {
                    return Err(format!(
                        "syncstorage.limits.collections.{name}: limits must be greater than 0"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn for_collection(&self, collection: &str) -> EffectiveLimits {
        let o = self
            .collections
            .get(collection)
            .cloned()
            .unwrap_or_default();
        EffectiveLimits {
            max_post_bytes: o.max_post_bytes.unwrap_or(self.max_post_bytes),
            max_post_records: self.max_post_records,
            max_record_payload_bytes: o
                .max_record_payload_bytes
                .unwrap_or(self.max_record_payload_bytes),
            max_request_bytes: o.max_request_bytes.unwrap_or(self.max_request_bytes),
            max_total_bytes: self.max_total_bytes,
            max_total_records: self.max_total_records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_configuration_body() {
        assert_eq!(
            serde_json::to_string(&Limits::default()).unwrap(),
            "{\"max_post_bytes\":2621440,\"max_post_records\":100,\"max_record_payload_bytes\":2621440,\
             \"max_request_bytes\":2625536,\"max_total_bytes\":262144000,\"max_total_records\":10000,\
             \"max_quota_limit\":2097152000}"
        );
    }

    #[test]
    fn per_collection_overrides() {
        let mut l = Limits::default();
        l.collections.insert(
            "history".into(),
            CollectionLimits {
                max_post_bytes: Some(10),
                ..Default::default()
            },
        );
        assert_eq!(l.for_collection("history").max_post_bytes, 10);
        assert_eq!(
            l.for_collection("history").max_request_bytes,
            DEFAULT_MAX_REQUEST_BYTES
        );
        assert_eq!(
            l.for_collection("tabs").max_post_bytes,
            DEFAULT_MAX_POST_BYTES
        );
        let body = serde_json::to_value(&l).unwrap();
        assert_eq!(
            body["collections"],
            serde_json::json!({"history": {"max_post_bytes": 10}})
        );
    }

    #[test]
    fn collections_parse_from_json_string() {
        let l: Limits = serde_json::from_value(
            serde_json::json!({"collections": "{\"tabs\": {\"max_request_bytes\": 5}}"}),
        )
        .unwrap();
        assert_eq!(l.for_collection("tabs").max_request_bytes, 5);
    }

    #[test]
    fn validation_names_setting() {
        let l = Limits {
            max_post_records: 0,
            ..Default::default()
        };
        assert!(l.validate().unwrap_err().contains("max_post_records"));
        let mut l = Limits::default();
        l.collections
            .insert("bad name!".into(), CollectionLimits::default());
        assert!(l.validate().is_err());
        let mut l = Limits::default();
        l.collections.insert(
            "ok".into(),
            CollectionLimits {
                max_post_bytes: Some(0),
                ..Default::default()
            },
        );
        assert!(l.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }
}
