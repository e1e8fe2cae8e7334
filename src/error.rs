//! The one error type that reaches clients: an HTTP status, a Weave error number and whether
//! the failure is worth reporting to Sentry. Only this file maps causes to status codes; web/
//! turns an `ApiError` into a response.

use std::fmt;

use crate::db::fault::DbFault;
use crate::protocol::SyncTimestamp;

/// Weave error numbers (SPEC 1.12).
pub mod weave {
    pub const UNKNOWN: u32 = 0;
    pub const INVALID_BSO: u32 = 8;
    pub const OVER_QUOTA: u32 = 14;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 17;
}

/// Seconds a client is told to wait after a conflict or an unavailable database.
pub const RETRY_AFTER_SECONDS: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400, code 0: bad query parameters, headers, batch ids, uid mismatch.
    BadRequest,
    /// 400, code 8: a body that is not valid BSO input.
    InvalidBso,
    /// 400, code 17: an `X-Weave-*` limit header over its limit.
    SizeLimit,
    /// 413, code 17: Content-Length over max_request_bytes.
    PayloadTooLarge,
    /// 408, code 0: a request body that stalled or came too slowly; the connection is closed.
    RequestTimeout,
    /// 401, code 0: a Hawk or token failure, and which.
    Unauthorized(AuthFailure),
    /// 400, code 0: the path's uid is not the token's.
    UidMismatch,
    /// 403, code 14.
    OverQuota,
    /// 404, code 0.
    NotFound,
    /// 406, code 0.
    NotAcceptable,
    /// 415, code 0.
    UnsupportedMediaType,
    /// 304 with the resource timestamp.
    NotModified(SyncTimestamp),
    /// 412 with the resource timestamp.
    PreconditionFailed(SyncTimestamp),
    /// 503 + Retry-After: a write the storage rules cannot take now (the user's timestamp is
    /// ahead of the clock, no free batch id); the client retries soon.
    Conflict,
    /// A database failure, by kind (`db::fault`): conflicts and busy locks are 503 +
    /// Retry-After; an unreachable, saturated or silent database is 503 + Retry-After +
    /// X-Weave-Backoff (clients back off); integrity and other failures are 500s, reported.
    Database(DbFault),
    /// 503 without Retry-After (rejected client).
    ServiceUnavailable,
    /// 500, code 0.
    Internal,
}

/// Why a storage request's credentials were refused; each has the short code that its log
/// line and the refusal counter carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No Authorization header.
    MissingHeader,
    /// Not a Hawk header we can read (scheme, attributes, no id).
    BadHeader,
    /// The MAC does not match the request (wrong key, method, path, host or port).
    BadMac,
    /// The MAC matches neither the request as it arrived nor `public_url`, and the request
    /// arrived for another host or port: usually a proxy that rewrites Host or the scheme.
    BadMacNotPublicUrl,
    /// The header's `ts` is outside the allowed clock skew.
    TsSkew,
    /// A (token, ts, nonce) seen before, with `hawk.nonce_cache_size` on.
    Replay,
    /// The body does not match the signed payload hash (`hawk.verify_payload_hash`).
    PayloadHash,
    /// The token id does not decode.
    TokenMalformed,
    /// The token was not signed with our secret.
    TokenBadSignature,
    /// The token's lifetime is over.
    TokenExpired,
    /// A Spanner user needs the token's FxA identity, which it lacks.
    TokenNoFxaUid,
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::MissingHeader => "hawk: missing header",
            AuthFailure::BadHeader => "hawk: bad header",
            AuthFailure::BadMac => "hawk: bad mac",
            AuthFailure::BadMacNotPublicUrl => "hawk: bad mac, request not for public_url",
            AuthFailure::TsSkew => "hawk: ts skew",
            AuthFailure::Replay => "hawk: replay",
            AuthFailure::PayloadHash => "hawk: bad payload hash",
            AuthFailure::TokenMalformed => "token: malformed",
            AuthFailure::TokenBadSignature => "token: bad signature",
            AuthFailure::TokenExpired => "token: expired",
            AuthFailure::TokenNoFxaUid => "token: no fxa uid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn invalid_bso(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidBso, message)
    }
    pub fn unauthorized(why: AuthFailure) -> Self {
        Self::new(ErrorKind::Unauthorized(why), why.code())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::BadRequest
            | ErrorKind::UidMismatch
            | ErrorKind::InvalidBso
            | ErrorKind::SizeLimit => 400,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Unauthorized(_) => 401,
            ErrorKind::OverQuota => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::NotAcceptable => 406,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::NotModified(_) => 304,
            ErrorKind::PreconditionFailed(_) => 412,
            ErrorKind::Conflict | ErrorKind::ServiceUnavailable => 503,
            ErrorKind::Database(DbFault::Integrity | DbFault::Other) => 500,
            ErrorKind::Database(_) => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The body: a bare Weave number, or nothing for 304/412.
    pub fn weave_code(&self) -> Option<u32> {
        match self.kind {
            ErrorKind::NotModified(_) | ErrorKind::PreconditionFailed(_) => None,
            ErrorKind::InvalidBso => Some(weave::INVALID_BSO),
            ErrorKind::SizeLimit | ErrorKind::PayloadTooLarge => Some(weave::SIZE_LIMIT_EXCEEDED),
            ErrorKind::OverQuota => Some(weave::OVER_QUOTA),
            _ => Some(weave::UNKNOWN),
        }
    }

    pub fn retry_after(&self) -> Option<u32> {
        (matches!(self.kind, ErrorKind::Conflict) || self.status() == 503 && self.is_database())
            .then_some(RETRY_AFTER_SECONDS)
    }

    /// X-Weave-Backoff: clients honour it by pausing their syncs, which sheds load from a
    /// database that is down or overloaded.
    pub fn backoff(&self) -> Option<u32> {
        matches!(
            self.kind,
            ErrorKind::Database(DbFault::Unavailable | DbFault::PoolTimeout | DbFault::Deadline)
        )
        .then_some(RETRY_AFTER_SECONDS)
    }

    fn is_database(&self) -> bool {
        matches!(self.kind, ErrorKind::Database(_))
    }

    /// The resource timestamp a 304/412 carries in X-Last-Modified.
    pub fn last_modified(&self) -> Option<SyncTimestamp> {
        match self.kind {
            ErrorKind::NotModified(ts) | ErrorKind::PreconditionFailed(ts) => Some(ts),
            _ => None,
        }
    }

    /// The short code of why this request was refused, for its log line and the refusal
    /// counter: a fixed set (never client input), so it is safe to log and to use as a label.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest => "bad request",
            ErrorKind::UidMismatch => "uid mismatch",
            ErrorKind::InvalidBso => "invalid bso",
            ErrorKind::SizeLimit => "size limit",
            ErrorKind::PayloadTooLarge => "request too large",
            ErrorKind::RequestTimeout => "slow body",
            ErrorKind::Unauthorized(why) => why.code(),
            ErrorKind::OverQuota => "quota",
            ErrorKind::NotFound => "not found",
            ErrorKind::NotAcceptable => "not acceptable",
            ErrorKind::UnsupportedMediaType => "content type",
            ErrorKind::NotModified(_) => "not modified",
            ErrorKind::PreconditionFailed(_) => "precondition failed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Database(fault) => fault.code(),
            ErrorKind::ServiceUnavailable => "rejected client",
            ErrorKind::Internal => "internal",
        }
    }

    /// Only server faults go to Sentry; client errors and conflicts are expected traffic.
    pub fn is_reportable(&self) -> bool {
        self.status() == 500
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status())
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal the database can cause has its own reason code (the log line's `reason`).
    #[test]
    fn database_refusals_say_which() {
        let reasons: Vec<(u16, &str)> = [
            DbFault::Conflict,
            DbFault::Busy,
            DbFault::Unavailable,
            DbFault::PoolTimeout,
            DbFault::Deadline,
            DbFault::Integrity,
            DbFault::Other,
        ]
        .into_iter()
        .map(|f| {
            let e = f.error("driver text");
            (e.status(), e.reason())
        })
        .collect();
        assert_eq!(
            reasons,
            [
                (503, "db: conflict"),
                (503, "db: busy"),
                (503, "db: unavailable"),
                (503, "db: pool timeout"),
                (503, "db: deadline"),
                (500, "db: integrity"),
                (500, "db: error"),
            ]
        );
        assert_eq!(ApiError::new(ErrorKind::Conflict, "").reason(), "conflict");
        assert_eq!(ApiError::new(ErrorKind::OverQuota, "").reason(), "quota");
        let mismatch = ApiError::new(ErrorKind::UidMismatch, "");
        assert_eq!(
            (mismatch.status(), mismatch.reason()),
            (400, "uid mismatch")
        );
    }

    #[test]
    fn status_and_codes() {
        assert_eq!(ApiError::invalid_bso("x").status(), 400);
        assert_eq!(ApiError::invalid_bso("x").weave_code(), Some(8));
        assert_eq!(
            ApiError::new(ErrorKind::PayloadTooLarge, "").weave_code(),
            Some(17)
        );
        assert_eq!(ApiError::new(ErrorKind::OverQuota, "").status(), 403);
        assert_eq!(
            ApiError::new(ErrorKind::OverQuota, "").weave_code(),
            Some(14)
        );
        assert_eq!(
            ApiError::new(ErrorKind::Conflict, "").retry_after(),
            Some(10)
        );
        assert_eq!(
            ApiError::new(ErrorKind::ServiceUnavailable, "").retry_after(),
            None
        );
        for fault in [
            DbFault::Unavailable,
            DbFault::PoolTimeout,
            DbFault::Deadline,
        ] {
            let down = fault.error("");
            assert_eq!(
                (down.status(), down.retry_after(), down.backoff()),
                (503, Some(10), Some(10))
            );
            assert!(!down.is_reportable());
        }
        for fault in [DbFault::Conflict, DbFault::Busy] {
            let busy = fault.error("");
            assert_eq!(
                (busy.status(), busy.retry_after(), busy.backoff()),
                (503, Some(10), None)
            );
            assert!(!busy.is_reportable());
        }
        for fault in [DbFault::Integrity, DbFault::Other] {
            let bug = fault.error("");
            assert_eq!((bug.status(), bug.retry_after()), (500, None));
            assert!(bug.is_reportable());
        }
        assert_eq!(ApiError::new(ErrorKind::Conflict, "").backoff(), None);
        let ts = SyncTimestamp::from_millis(5000);
        assert_eq!(
            ApiError::new(ErrorKind::PreconditionFailed(ts), "").weave_code(),
            None
        );
        assert_eq!(
            ApiError::new(ErrorKind::NotModified(ts), "").last_modified(),
            Some(ts)
        );
        assert!(ApiError::internal("boom").is_reportable());
        assert!(!ApiError::bad_request("x").is_reportable());
    }
}
