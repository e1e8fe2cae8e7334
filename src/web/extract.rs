//! Per-request inputs, pulled from HTTP in the protocol's check order (SPEC 1.12): Hawk and
//! uid, path names, query, content negotiation, body size, body.

use actix_web::HttpRequest;
use actix_web::web::{Bytes, BytesMut, Payload};
use futures::StreamExt;

use super::AppState;
use super::headers::{header, host_and_port};
use crate::auth::hawk::{self, SignedRequest};
use crate::db::{CollectionRef, UserId};
use crate::error::{ApiError, ApiResult, ErrorKind};
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
    let signed = SignedRequest {
        method: req.method().as_str(),
        target,
        host: &host,
        port,
    };
    let token = hawk::verify(
        &state.secrets,
        header(req, "Authorization"),
        signed,
        allow_expired,
    )?;
    let path_uid: u64 = req
        .match_info()
        .get("uid")
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| ApiError::bad_request("invalid uid"))?;
    if path_uid != token.uid {
        return Err(ApiError::bad_request("uid does not match the token"));
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

/// Reads the body, refusing more than max_request_bytes (413, code 17) whether announced by
/// Content-Length or only discovered while streaming.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limits: &EffectiveLimits,
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
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
