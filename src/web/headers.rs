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
