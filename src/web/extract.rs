//! Per-request inputs, pulled from HTTP in the protocol's check order (SPEC 1.12): Hawk and
//! uid, path names, query, content negotiation, body size, body.

use std::time::{Duration, Instant};

use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{HttpMessage, HttpRequest};
use futures::StreamExt;

use super::AppState;
use super::headers::{header, host_and_port};
use crate::auth::hawk::{self, SignedRequest};
use crate::db::{CollectionRef, UserId};
use crate::error::{ApiError, ApiResult, AuthFailure, ErrorKind};
use crate::protocol::Precondition;
use crate::protocol::limits::EffectiveLimits;
use crate::protocol::post::BodyFormat;
use crate::protocol::validate::{valid_bso_id, valid_collection_name};

/// Verifies Hawk and binds the token to the `{uid}` of the path.
pub fn authenticate(req: &HttpRequest, state: &AppState, allow_expired: bool) -> ApiResult<UserId> {
    let (host, port) = host_and_port(req)?;
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    let verify = |host: &str, port: u16, target: &str| {
        let signed = SignedRequest {
            method: req.method().as_str(),
            target,
            host,
            port,
        };
        hawk::verify_with(
            &state.secrets,
            header(req, "Authorization"),
            signed,
            allow_expired,
            &state.hawk,
        )
    };
    let bad_mac = |e: &ApiError| e.kind == ErrorKind::Unauthorized(AuthFailure::BadMac);
    // The request as it arrived (Host, or Forwarded / X-Forwarded-* from a proxy), else as
    // Firefox signed it for the node it was given: `public_url`, under its path.
    let verified = match (verify(&host, port, target), &state.public) {
        (Err(e), Some(public)) if bad_mac(&e) => {
            verify(&public.host, public.port, &public.signed_target(target)).map_err(|e| {
                let elsewhere = !host.eq_ignore_ascii_case(&public.host) || port != public.port;
                if bad_mac(&e) && elsewhere {
                    ApiError::unauthorized(AuthFailure::BadMacNotPublicUrl)
                } else {
                    e
                }
            })
        }
        (result, _) => result,
    };
    let hawk::Verified {
        token,
        payload_hash,
    } = verified?;
    if state.hawk.verify_payload_hash {
        // Checked against the body once it is read (`read_signed_body`).
        req.extensions_mut().insert(SignedPayloadHash(payload_hash));
    }
    let path_uid: u64 = req
        .match_info()
        .get("uid")
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| ApiError::bad_request("invalid uid"))?;
    if path_uid != token.uid {
        return Err(ApiError::new(
            ErrorKind::UidMismatch,
            "uid does not match the token",
        ));
    }
    Ok(UserId {
        legacy_id: token.uid,
        fxa_uid: token.fxa_uid,
        fxa_kid: token.fxa_kid,
    })
}

/// `{collection}` from the path (the router already matched its pattern).
pub fn collection_name(req: &HttpRequest) -> ApiResult<String> {
    let name = req.match_info().get("collection").unwrap_or_default();
    if valid_collection_name(name) {
        Ok(name.to_owned())
    } else {
        Err(ApiError::new(
            ErrorKind::NotFound,
            "invalid collection name",
        ))
    }
}

/// `{item}` from the path, percent-decoded.
pub fn bso_id(req: &HttpRequest) -> ApiResult<String> {
    let raw = req.match_info().get("item").unwrap_or_default();
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    if valid_bso_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::new(ErrorKind::NotFound, "invalid id"))
    }
}

pub fn precondition(req: &HttpRequest) -> ApiResult<Precondition> {
    Precondition::parse(
        header(req, "X-If-Modified-Since"),
        header(req, "X-If-Unmodified-Since"),
    )
}

pub fn collection_ref(
    req: &HttpRequest,
    user: UserId,
    collection: String,
) -> ApiResult<CollectionRef> {
    Ok(CollectionRef {
        user,
        collection,
        precondition: precondition(req)?,
    })
}

/// 415 unless the Content-Type is one a PUT/POST may use.
pub fn body_format(req: &HttpRequest) -> ApiResult<BodyFormat> {
    BodyFormat::from_content_type(header(req, "Content-Type"))
        .ok_or_else(|| ApiError::new(ErrorKind::UnsupportedMediaType, "unsupported Content-Type"))
}

/// The `hash` attribute of a request's Hawk header, kept for the body check.
struct SignedPayloadHash(Option<Vec<u8>>);

/// `read_body`, then, when `hawk.verify_payload_hash` is on, the body checked against the
/// payload hash the client signed (401 when absent or different).
pub async fn read_signed_body(
    req: &HttpRequest,
    state: &AppState,
    payload: Payload,
    limits: &EffectiveLimits,
) -> ApiResult<Bytes> {
    let body = read_body(req, payload, limits, state.body_pace).await?;
    if state.hawk.verify_payload_hash {
        let extensions = req.extensions();
        let claimed = extensions
            .get::<SignedPayloadHash>()
            .and_then(|h| h.0.as_deref());
        let content_type = header(req, "Content-Type").unwrap_or("");
        if !hawk::payload_hash_matches(claimed, content_type, &body) {
            return Err(ApiError::unauthorized(AuthFailure::PayloadHash));
        }
    }
    Ok(body)
}

/// How fast a request body must arrive (`[http]` settings): no pause longer than `idle`, and,
/// after the first `idle`, at least `min_rate` bytes per second on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    pub idle: Duration,
    pub min_rate: u32,
}

impl BodyPace {
    /// The latest moment the next bytes may arrive, for a body that started at `start`, last
    /// made progress at `last` and has sent `received` bytes so far.
    pub fn next_deadline(&self, start: Instant, last: Instant, received: usize) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / f64::from(self.min_rate.max(1)));
        (last + self.idle).min(start + self.idle + earned)
    }
}

/// Reads the body, refusing more than max_request_bytes (413, code 17) whether announced by
/// Content-Length or only discovered while streaming, and a body slower than `pace` (408, and
/// the connection is closed: its partial body is dropped at once).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limits: &EffectiveLimits,
    pace: BodyPace,
) -> ApiResult<Bytes> {
    let max = limits.max_request_bytes as usize;
    let too_large = || ApiError::new(ErrorKind::PayloadTooLarge, "request body too large");
    if let Some(len) = header(req, "Content-Length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_request("invalid Content-Length"))?;
        if len > max {
            return Err(too_large());
        }
    }
    let mut body = BytesMut::new();
    let start = Instant::now();
    let mut last = start;
    loop {
        let deadline = pace.next_deadline(start, last, body.len());
        let next = tokio::time::timeout_at(deadline.into(), payload.next())
            .await
            .map_err(|_| ApiError::new(ErrorKind::RequestTimeout, "request body too slow"))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
        last = Instant::now();
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_pace() {
        let pace = BodyPace {
            idle: Duration::from_secs(10),
            min_rate: 1000,
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Nothing yet: the idle window.
        assert_eq!(pace.next_deadline(t0, t0, 0), t0 + s(10));
        // Fast so far: only the idle rule binds.
        assert_eq!(pace.next_deadline(t0, t0 + s(2), 50_000), t0 + s(12));
        // A trickle (a byte now and then) falls behind the rate after the first window.
        assert_eq!(
            pace.next_deadline(t0, t0 + s(9), 5),
            t0 + s(10) + Duration::from_millis(5)
        );
        assert_eq!(pace.next_deadline(t0, t0 + s(30), 20_000), t0 + s(30));
    }
}
