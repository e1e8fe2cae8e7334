//! Weave header names and the host/port a Hawk MAC covers.

use actix_web::HttpRequest;

use crate::error::{ApiError, ApiResult};

pub const X_LAST_MODIFIED: &str = "X-Last-Modified";
pub const X_WEAVE_TIMESTAMP: &str = "X-Weave-Timestamp";
pub const X_WEAVE_RECORDS: &str = "X-Weave-Records";
pub const X_WEAVE_NEXT_OFFSET: &str = "X-Weave-Next-Offset";
pub const X_WEAVE_BACKOFF: &str = "X-Weave-Backoff";

/// A header as text; non-UTF-8 values count as garbage the caller rejects.
pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// Host and port as upstream derives them: Forwarded / X-Forwarded-Host / Host, with the port
/// from the host text or the (forwarded) scheme's default. A bad port is a 400.
pub fn host_and_port(req: &HttpRequest) -> ApiResult<(String, u16)> {
    let info = req.connection_info();
    let host = info.host();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((addr, tail)) => (format!("[{addr}]"), tail.strip_prefix(':')),
            None => (host.to_owned(), None),
        }
    } else {
        match host.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (host.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| ApiError::bad_request("invalid port in Host"))?,
        None if info.scheme() == "https" => 443,
        None => 80,
    };
    Ok((name, port))
}

/// `public_url` as a Hawk MAC covers it: what Firefox signs when it calls the node it was
/// given, whatever a reverse proxy rewrote on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub host: String,
    pub port: u16,
    /// The path the server lives under (`/sync`), or empty.
    pub prefix: String,
}

impl PublicUrl {
    /// `http(s)://host[:port][/prefix]`; no query or fragment.
    pub fn parse(url: &str) -> Result<PublicUrl, String> {
        let bad = |why: &str| format!("public_url {url:?}: {why}");
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("not an http(s) URL"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("not an http(s) URL")),
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a query or fragment cannot be part of it"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host"));
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..]
                    .parse::<u16>()
                    .map_err(|_| bad("bad port"))?;
                (&authority[..i], port)
            }
            _ => (authority, default_port),
        };
        let prefix = path.trim_end_matches('/');
        if prefix.contains("//") || prefix.contains(['{', '}', '%']) {
            return Err(bad("the path must be plain segments, e.g. /sync"));
        }
        Ok(PublicUrl {
            host: host.to_ascii_lowercase(),
            port,
            prefix: prefix.to_owned(),
        })
    }

    /// The request target as the client signed it: under the prefix, whether or not the proxy
    /// kept it.
    pub fn signed_target(&self, target: &str) -> String {
        if self.prefix.is_empty() || under_prefix(target, &self.prefix) {
            target.to_owned()
        } else {
            format!("{}{target}", self.prefix)
        }
    }
}

/// Whether `path` is `prefix` or below it (segment-wise: `/syncx` is not under `/sync`).
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

/// `path` without `prefix`, when it is under it.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    if !prefix.is_empty() && under_prefix(path, prefix) {
        &path[prefix.len()..]
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls() {
        let p = PublicUrl::parse("https://Example.com/sync/").unwrap();
        assert_eq!(
            p,
            PublicUrl {
                host: "example.com".into(),
                port: 443,
                prefix: "/sync".into()
            }
        );
        assert_eq!(
            p.signed_target("/1.5/1/info/collections"),
            "/sync/1.5/1/info/collections"
        );
        assert_eq!(
            p.signed_target("/sync/1.5/1/x?full=1"),
            "/sync/1.5/1/x?full=1"
        );
        assert_eq!(p.signed_target("/syncx/1.5/1"), "/sync/syncx/1.5/1");
        let p = PublicUrl::parse("http://[::1]:8000").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.prefix.as_str()),
            ("[::1]", 8000, "")
        );
        assert_eq!(p.signed_target("/1.5/1"), "/1.5/1");
        assert_eq!(PublicUrl::parse("http://h").unwrap().port, 80);
        for bad in [
            "ftp://h",
            "https://",
            "https://h:x",
            "https://h/s?x=1",
            "h/sync",
            "https://h/a%20b",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(strip_prefix("/sync/1.0/sync/1.5", "/sync"), "/1.0/sync/1.5");
        assert_eq!(strip_prefix("/syncx", "/sync"), "/syncx");
        assert_eq!(strip_prefix("/sync", "/sync"), "");
        assert_eq!(strip_prefix("/a", ""), "/a");
    }
}
