//! `X-If-Modified-Since` / `X-If-Unmodified-Since` (SPEC 1.7). Parsed before the database is
//! touched; evaluated by the backend inside the unit of work, against the locked resource.

use super::SyncTimestamp;
use crate::error::{ApiError, ApiResult, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    None,
    IfModifiedSince(SyncTimestamp),
    IfUnmodifiedSince(SyncTimestamp),
}

impl Precondition {
    pub fn parse(
        if_modified_since: Option<&str>,
        if_unmodified_since: Option<&str>,
    ) -> ApiResult<Self> {
        let parse = |name: &str, v: &str| {
            SyncTimestamp::parse(v)
                .map_err(|_| ApiError::bad_request(format!("invalid {name} header")))
        };
        match (if_modified_since, if_unmodified_since) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "X-If-Modified-Since and X-If-Unmodified-Since cannot both be given",
            )),
            (Some(v), None) => Ok(Precondition::IfModifiedSince(parse(
                "X-If-Modified-Since",
                v,
            )?)),
            (None, Some(v)) => Ok(Precondition::IfUnmodifiedSince(parse(
                "X-If-Unmodified-Since",
                v,
            )?)),
            (None, None) => Ok(Precondition::None),
        }
    }

    /// 304 when the resource is not newer than X-If-Modified-Since; 412 when it is newer than
    /// X-If-Unmodified-Since.
    pub fn check(&self, resource: SyncTimestamp) -> ApiResult<()> {
        match *self {
            Precondition::IfModifiedSince(ts) if resource <= ts => Err(ApiError::new(
                ErrorKind::NotModified(resource),
                "not modified",
            )),
            Precondition::IfUnmodifiedSince(ts) if resource > ts => Err(ApiError::new(
                ErrorKind::PreconditionFailed(resource),
                "modified since",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: u64) -> SyncTimestamp {
        SyncTimestamp::from_millis(ms)
    }

    #[test]
    fn parse_rules() {
        assert_eq!(Precondition::parse(None, None).unwrap(), Precondition::None);
        assert_eq!(
            Precondition::parse(Some("1.5"), None).unwrap(),
            Precondition::IfModifiedSince(ts(1500))
        );
        assert_eq!(
            Precondition::parse(None, Some("0")).unwrap(),
            Precondition::IfUnmodifiedSince(ts(0))
        );
        assert_eq!(
            Precondition::parse(Some("1"), Some("2"))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            Precondition::parse(Some("-3"), None).unwrap_err().status(),
            400
        );
        assert_eq!(
            Precondition::parse(None, Some("-3")).unwrap_err().status(),
            400
        );
        assert_eq!(
            Precondition::parse(None, Some("abc"))
                .unwrap_err()
                .weave_code(),
            Some(0)
        );
    }

    #[test]
    fn if_modified_since() {
        let p = Precondition::IfModifiedSince(ts(2000));
        assert_eq!(p.check(ts(2000)).unwrap_err().status(), 304);
        assert_eq!(
            p.check(ts(1990)).unwrap_err().last_modified(),
            Some(ts(1990))
        );
        assert!(p.check(ts(2010)).is_ok());
    }

    #[test]
    fn if_unmodified_since() {
        let p = Precondition::IfUnmodifiedSince(ts(2000));
        assert!(p.check(ts(2000)).is_ok());
        assert!(p.check(ts(0)).is_ok());
        let e = p.check(ts(2010)).unwrap_err();
        assert_eq!(e.status(), 412);
        assert_eq!(e.last_modified(), Some(ts(2010)));
        // Create-only: X-If-Unmodified-Since: 0 fails once the item exists.
        assert_eq!(
            Precondition::IfUnmodifiedSince(ts(0))
                .check(ts(10))
                .unwrap_err()
                .status(),
            412
        );
    }
}
