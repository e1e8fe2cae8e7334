//! Query strings: collection GET/DELETE parameters, pagination tokens and batch parameters
//! (SPEC 1.6, 1.10). Values are percent-decoded the way form data is (`+` is a space).

use super::SyncTimestamp;
use super::limits::MAX_IDS_PER_REQUEST;
use super::validate::valid_bso_id;
use crate::error::{ApiError, ApiResult};

/// Decoded `name=value` pairs in order.
pub fn parse_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// modified descending, id descending; also the default.
    #[default]
    Newest,
    /// modified ascending, id ascending.
    Oldest,
    /// sortindex descending, id descending.
    Index,
}

/// Where the next page starts: skip `skip` rows of the query, bounded by `modified` when
/// `bound` is set (`B:N` tokens for timestamp sorts, bare `N` for `sort=index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offset {
    pub bound: Option<i64>,
    pub skip: u64,
}

impl Offset {
    pub fn parse(text: &str) -> ApiResult<Self> {
        let bad = || ApiError::bad_request("invalid offset");
        match text.split_once(':') {
            Some((b, n)) => Ok(Offset {
                bound: Some(b.parse::<u64>().map_err(|_| bad())?.min(i64::MAX as u64) as i64),
                skip: n.parse().map_err(|_| bad())?,
            }),
            None => Ok(Offset {
                bound: None,
                skip: text.parse().map_err(|_| bad())?,
            }),
        }
    }

    /// The token for the page after one that returned `page` (the `modified` values of the
    /// returned rows, in order), which started at `self`.
    pub fn next(&self, sort: Sort, page: &[i64]) -> Offset {
        if sort == Sort::Index {
            return Offset {
                bound: None,
                skip: self.skip + page.len() as u64,
            };
        }
        let Some(&last) = page.last() else {
            return *self;
        };
        let tail = page.iter().rev().take_while(|&&m| m == last).count() as u64;
        // A page made entirely of one timestamp continues the previous run.
        let carried = if tail == page.len() as u64 && self.bound == Some(last) {
            self.skip
        } else {
            0
        };
        Offset {
            bound: Some(last),
            skip: carried + tail,
        }
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.bound {
            Some(b) => write!(f, "{b}:{}", self.skip),
            None => write!(f, "{}", self.skip),
        }
    }
}

/// Filters of a collection GET (and the `ids` of a DELETE).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BsoQuery {
    pub ids: Vec<String>,
    pub newer: Option<SyncTimestamp>,
    pub older: Option<SyncTimestamp>,
    pub full: bool,
    pub limit: Option<u32>,
    pub offset: Offset,
    pub sort: Sort,
}

/// `ids=a,b,c`: items trimmed, empty ones dropped, at most 100, each a valid id.
pub fn parse_ids(value: &str) -> ApiResult<Vec<String>> {
    let ids: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.len() > MAX_IDS_PER_REQUEST {
        return Err(ApiError::bad_request("too many ids"));
    }
    if let Some(bad) = ids.iter().find(|id| !valid_bso_id(id)) {
        return Err(ApiError::bad_request(format!("invalid id {bad:?}")));
    }
    Ok(ids)
}

impl BsoQuery {
    pub fn parse(query: &str) -> ApiResult<Self> {
        let pairs = parse_pairs(query);
        let ts = |name: &str| -> ApiResult<Option<SyncTimestamp>> {
            get(&pairs, name)
                .map(|v| {
                    SyncTimestamp::parse(v)
                        .map_err(|_| ApiError::bad_request(format!("invalid {name}")))
                })
                .transpose()
        };
        let sort = match get(&pairs, "sort") {
            None => Sort::Newest,
            Some("newest") => Sort::Newest,
            Some("oldest") => Sort::Oldest,
            Some("index") => Sort::Index,
            Some(_) => return Err(ApiError::bad_request("invalid sort")),
        };
        let q = BsoQuery {
            ids: get(&pairs, "ids")
                .map(parse_ids)
                .transpose()?
                .unwrap_or_default(),
            newer: ts("newer")?,
            older: ts("older")?,
            full: get(&pairs, "full").is_some(),
            limit: get(&pairs, "limit")
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| ApiError::bad_request("invalid limit"))
                })
                .transpose()?,
            offset: get(&pairs, "offset")
                .map(Offset::parse)
                .transpose()?
                .unwrap_or_default(),
            sort,
        };
        if sort != Sort::Index {
            if let Some(bound) = q.offset.bound {
                if q.newer.is_some_and(|n| bound < n.as_i64()) {
                    return Err(ApiError::bad_request("offset bound below newer"));
                }
                if q.older.is_some_and(|o| bound > o.as_i64()) {
                    return Err(ApiError::bad_request("offset bound above older"));
                }
            }
        } else if q.offset.bound.is_some() {
            // A timestamp bound means nothing for an index sort: resume by position.
            return Ok(BsoQuery {
                offset: Offset {
                    bound: None,
                    ..q.offset
                },
                ..q
            });
        }
        Ok(q)
    }
}

/// What a POST asks of the batch machinery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchRequest {
    /// A plain POST (also `?batch=true&commit=true`).
    None,
    /// `?batch=true`: open a batch.
    Start,
    /// `?batch=ID`: stage more records.
    Append(String),
    /// `?batch=ID&commit=true`.
    Commit(String),
}

impl BatchRequest {
    pub fn parse(query: &str) -> ApiResult<Self> {
        let pairs = parse_pairs(query);
        let commit = match get(&pairs, "commit") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(_) => return Err(ApiError::bad_request("commit must be true")),
        };
        match get(&pairs, "batch") {
            None if commit => Err(ApiError::bad_request("commit without batch")),
            None => Ok(BatchRequest::None),
            Some(v) if v.is_empty() || v.eq_ignore_ascii_case("true") => Ok(if commit {
                BatchRequest::None
            } else {
                BatchRequest::Start
            }),
            Some(id) if commit => Ok(BatchRequest::Commit(id.to_owned())),
            Some(id) => Ok(BatchRequest::Append(id.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_decode() {
        assert_eq!(
            parse_pairs("ids=test-0%2Ctest-1&full&a=b+c"),
            vec![
                ("ids".into(), "test-0,test-1".into()),
                ("full".into(), "".into()),
                ("a".into(), "b c".into())
            ]
        );
    }

    #[test]
    fn defaults() {
        let q = BsoQuery::parse("").unwrap();
        assert_eq!(q, BsoQuery::default());
        assert!(BsoQuery::parse("blabla=1").is_ok());
    }

    #[test]
    fn full_is_presence() {
        for s in ["full", "full=", "full=0", "full=1"] {
            assert!(BsoQuery::parse(s).unwrap().full, "{s}");
        }
    }

    #[test]
    fn ids() {
        assert_eq!(BsoQuery::parse("ids=1,").unwrap().ids, vec!["1"]);
        assert_eq!(
            BsoQuery::parse("ids=%201%20,2").unwrap().ids,
            vec!["1", "2"]
        );
        let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(
            BsoQuery::parse(&format!("ids={}", hundred.join(",")))
                .unwrap()
                .ids
                .len(),
            100
        );
        let e = BsoQuery::parse(&format!("ids={},x", hundred.join(","))).unwrap_err();
        assert_eq!((e.status(), e.weave_code()), (400, Some(0)));
        assert!(BsoQuery::parse("ids=a%0Ab").is_err());
    }

    #[test]
    fn bad_values() {
        for bad in [
            "newer=abc",
            "older=x",
            "limit=x",
            "limit=-1",
            "limit=1.5",
            "sort=NEWEST",
            "sort=foo",
            "offset=x",
            "offset=1:x",
            "newer=-1",
        ] {
            assert_eq!(BsoQuery::parse(bad).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn parse_values() {
        let q = BsoQuery::parse("newer=1.5&older=3&limit=2&sort=oldest&offset=10").unwrap();
        assert_eq!(q.newer, Some(SyncTimestamp::from_millis(1500)));
        assert_eq!(q.older, Some(SyncTimestamp::from_millis(3000)));
        assert_eq!(q.limit, Some(2));
        assert_eq!(q.sort, Sort::Oldest);
        assert_eq!(
            q.offset,
            Offset {
                bound: None,
                skip: 10
            }
        );
    }

    #[test]
    fn bounded_offset_against_filters() {
        assert!(BsoQuery::parse("sort=newest&newer=2.22&offset=1111:1").is_err());
        assert!(BsoQuery::parse("sort=newest&older=2.22&offset=5858:1").is_err());
        assert!(BsoQuery::parse("sort=newest&newer=2.22&offset=2230:1").is_ok());
        assert!(BsoQuery::parse("sort=newest&older=2.22&offset=2210:1").is_ok());
        assert!(BsoQuery::parse("sort=index&newer=2.22&offset=1111:1").is_ok());
    }

    #[test]
    fn offset_tokens() {
        assert_eq!(Offset::parse("12").unwrap().to_string(), "12");
        assert_eq!(Offset::parse("1234:2").unwrap().to_string(), "1234:2");
        let start = Offset::default();
        assert_eq!(
            start.next(Sort::Index, &[5, 4]),
            Offset {
                bound: None,
                skip: 2
            }
        );
        assert_eq!(
            start.next(Sort::Newest, &[30, 20, 20]),
            Offset {
                bound: Some(20),
                skip: 2
            }
        );
        // A page entirely at the bound carries the previous skip.
        let prev = Offset {
            bound: Some(20),
            skip: 2,
        };
        assert_eq!(
            prev.next(Sort::Newest, &[20, 20]),
            Offset {
                bound: Some(20),
                skip: 4
            }
        );
        assert_eq!(
            prev.next(Sort::Newest, &[20, 10]),
            Offset {
                bound: Some(10),
                skip: 1
            }
        );
        assert_eq!(
            prev.next(Sort::Oldest, &[20, 30]),
            Offset {
                bound: Some(30),
                skip: 1
            }
        );
    }

    #[test]
    fn batch_params() {
        assert_eq!(BatchRequest::parse("").unwrap(), BatchRequest::None);
        for s in ["batch=true", "batch=TRUE", "batch", "batch="] {
            assert_eq!(BatchRequest::parse(s).unwrap(), BatchRequest::Start, "{s}");
        }
        assert_eq!(
            BatchRequest::parse("batch=true&commit=true").unwrap(),
            BatchRequest::None
        );
        assert_eq!(
            BatchRequest::parse("batch=abc").unwrap(),
            BatchRequest::Append("abc".into())
        );
        assert_eq!(
            BatchRequest::parse("batch=MTIz%3D&commit=True").unwrap(),
            BatchRequest::Commit("MTIz=".into())
        );
        assert_eq!(
            BatchRequest::parse("commit=true").unwrap_err().status(),
            400
        );
        assert_eq!(
            BatchRequest::parse("batch=abc&commit=yes")
                .unwrap_err()
                .status(),
            400
        );
    }
}
