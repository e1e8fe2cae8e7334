//! Pure rules over request header values: the X-Weave-* size headers, Accept negotiation for
//! collection GETs, and the old-iOS User-Agent rejection (SPEC 1.7, 1.7.1, 1.13.3).

use std::sync::LazyLock;

use regex::Regex;

use super::limits::EffectiveLimits;
use crate::error::{ApiError, ApiResult, ErrorKind};

/// The four X-Weave-* limit headers of a POST, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeaveSizeHeaders<'a> {
    pub records: Option<&'a str>,
    pub bytes: Option<&'a str>,
    pub total_records: Option<&'a str>,
    pub total_bytes: Option<&'a str>,
}

impl WeaveSizeHeaders<'_> {
    /// Not a u32 → 400/0; over the limit → 400/17.
    pub fn check(&self, limits: &EffectiveLimits) -> ApiResult<()> {
        let checks = [
            ("X-Weave-Records", self.records, limits.max_post_records),
            ("X-Weave-Bytes", self.bytes, limits.max_post_bytes),
            (
                "X-Weave-Total-Records",
                self.total_records,
                limits.max_total_records,
            ),
            (
                "X-Weave-Total-Bytes",
                self.total_bytes,
                limits.max_total_bytes,
            ),
        ];
        for (name, value, limit) in checks {
            let Some(value) = value else { continue };
            let n: u32 = value
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid {name} header")))?;
            if n > limit {
                return Err(ApiError::new(
                    ErrorKind::SizeLimit,
                    format!("{name} over the limit"),
                ));
            }
        }
        Ok(())
    }
}

/// Output formats of a collection GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Newlines,
}

/// Upstream's algorithm: highest q first; `*/*` or a missing/empty/unparseable header means
/// JSON; `text/plain` is recognised but has no renderer (406).
pub fn negotiate_output(accept: Option<&str>) -> ApiResult<OutputFormat> {
    let not_acceptable =
        || ApiError::new(ErrorKind::NotAcceptable, "Accept header not satisfiable");
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(OutputFormat::Json);
    };
    let mut entries = Vec::new();
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() || !media.contains('/') {
            return Ok(OutputFormat::Json);
        }
        let mut q = 1.0f32;
        for param in pieces {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                match v.trim().parse::<f32>() {
                    Ok(v) if (0.0..=1.0).contains(&v) => q = v,
                    _ => return Ok(OutputFormat::Json),
                }
            }
        }
        entries.push((media, q));
    }
    entries.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    for (media, _) in entries {
        match media.as_str() {
            "*/*" | "application/json" => return Ok(OutputFormat::Json),
            "application/newlines" => return Ok(OutputFormat::Newlines),
            "text/plain" => return Err(not_acceptable()),
            _ => {}
        }
    }
    Err(not_acceptable())
}

/// Firefox for iOS before 20 crashes on some responses; such clients get a 503 up front.
pub fn is_rejected_user_agent(user_agent: &str) -> bool {
    static OLD_IOS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"^Firefox-iOS-Sync/(?P<major>[0-9]+)\.[.0-9]+b[0-9]+ \(.+; iPhone OS .+\) \(.+\)",
        )
        .expect("valid regex")
    });
    OLD_IOS
        .captures(user_agent)
        .and_then(|c| c["major"].parse::<u32>().ok())
        .is_some_and(|major| (1..20).contains(&major))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::limits::Limits;

    #[test]
    fn weave_headers() {
        let l = Limits::default().for_collection("c");
        let ok = WeaveSizeHeaders {
            records: Some("100"),
            total_bytes: Some("262144000"),
            ..Default::default()
        };
        assert!(ok.check(&l).is_ok());
        let over = WeaveSizeHeaders {
            total_bytes: Some("262144001"),
            ..Default::default()
        };
        let e = over.check(&l).unwrap_err();
        assert_eq!((e.status(), e.weave_code()), (400, Some(17)));
        let over = WeaveSizeHeaders {
            records: Some("101"),
            ..Default::default()
        };
        assert_eq!(over.check(&l).unwrap_err().weave_code(), Some(17));
        let over = WeaveSizeHeaders {
            bytes: Some("2621441"),
            ..Default::default()
        };
        assert_eq!(over.check(&l).unwrap_err().weave_code(), Some(17));
        let over = WeaveSizeHeaders {
            total_records: Some("10001"),
            ..Default::default()
        };
        assert_eq!(over.check(&l).unwrap_err().weave_code(), Some(17));
        for garbage in ["abc", "-1", "4294967296"] {
            let bad = WeaveSizeHeaders {
                bytes: Some(garbage),
                ..Default::default()
            };
            assert_eq!(
                bad.check(&l).unwrap_err().weave_code(),
                Some(0),
                "{garbage}"
            );
        }
    }

    #[test]
    fn accept() {
        use OutputFormat::*;
        assert_eq!(negotiate_output(None).unwrap(), Json);
        assert_eq!(negotiate_output(Some("")).unwrap(), Json);
        assert_eq!(negotiate_output(Some("application/json")).unwrap(), Json);
        assert_eq!(
            negotiate_output(Some("application/newlines")).unwrap(),
            Newlines
        );
        assert_eq!(negotiate_output(Some("*/*;q=0.2,foo/bar")).unwrap(), Json);
        assert_eq!(
            negotiate_output(Some("application/newlines;q=0.5, application/json")).unwrap(),
            Json
        );
        for bad in [
            "x/yy",
            "application/json;q=0.9,text/plain",
            "text/plain",
            "application/*",
        ] {
            assert_eq!(
                negotiate_output(Some(bad)).unwrap_err().status(),
                406,
                "{bad}"
            );
        }
    }

    #[test]
    fn user_agents() {
        assert!(is_rejected_user_agent(
            "Firefox-iOS-Sync/18.0b1 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))"
        ));
        for ok in [
            "Firefox-iOS-Sync/23.0b17297 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
            "Firefox-iOS-Sync/0.0.1b1 (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
            "Firefox-iOS-Sync/dev (iPhone; iPhone OS 13.2.2) (Fennec (synctesting))",
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        ] {
            assert!(!is_rejected_user_agent(ok), "{ok}");
        }
    }
}
