//! Hawk request verification for storage requests (SPEC 2.4-2.6): our own bounded header
//! parser (`hawk_header`), the `hawk` crate for the MAC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hawk::{DigestAlgorithm, Key, RequestBuilder};

use super::tokenlib::TokenError;
use super::tokenlib::{Secrets, TokenPayload};
use crate::error::{ApiError, ApiResult, AuthFailure};

/// Client clocks are unreliable; upstream tolerates 52 weeks of skew.
pub const MAX_SKEW: Duration = Duration::from_secs(52 * 7 * 24 * 60 * 60);

/// How strict verification is (`[hawk]` settings). The default is upstream's: 52 weeks of
/// skew, no nonce memory, payload hashes not checked (Firefox does not send them).
pub struct HawkPolicy {
    pub max_skew: Duration,
    /// Refuses replayed (id, ts, nonce) triples among the most recent requests.
    pub nonces: Option<super::nonces::NonceCache>,
    /// Writes must carry a `hash` attribute that matches their body.
    pub verify_payload_hash: bool,
}

impl Default for HawkPolicy {
    fn default() -> Self {
        HawkPolicy {
            max_skew: MAX_SKEW,
            nonces: None,
            verify_payload_hash: false,
        }
    }
}

/// A verified request: the token's payload, and the payload hash the client signed (if any),
/// to be checked against the body once it is read.
#[derive(Debug, Clone)]
pub struct Verified {
    pub token: TokenPayload,
    pub payload_hash: Option<Vec<u8>>,
}

/// Whether `body` (sent with `content_type`) is what the client's signed `hash` covers.
pub fn payload_hash_matches(claimed: Option<&[u8]>, content_type: &str, body: &[u8]) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Ok(actual) = hawk::PayloadHasher::hash(mime.as_bytes(), DigestAlgorithm::Sha256, body)
    else {
        return false;
    };
    claimed.is_some_and(|c| c == actual.as_slice())
}

/// What the MAC covers, as the request arrived.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Raw path plus `?query` when present, not decoded.
    pub target: &'a str,
    pub host: &'a str,
    pub port: u16,
}

/// Whether the header's `ts` is outside the allowed skew: told apart from a bad MAC only for
/// the log (the `hawk` crate answers both with `false`).
fn outside_skew(ts: Option<SystemTime>, max_skew: Duration) -> bool {
    let Some(ts) = ts else { return true };
    let now = SystemTime::now();
    let skew = now
        .duration_since(ts)
        .or_else(|_| ts.duration_since(now))
        .unwrap_or_default();
    skew > max_skew
}

/// Verifies the Authorization header under upstream's policy and returns the token payload.
/// Expiry is enforced unless `allow_expired` (info/collections, SPEC 2.5).
pub fn verify(
    secrets: &Secrets,
    authorization: Option<&str>,
    request: SignedRequest<'_>,
    allow_expired: bool,
) -> ApiResult<TokenPayload> {
    verify_with(
        secrets,
        authorization,
        request,
        allow_expired,
        &HawkPolicy::default(),
    )
    .map(|v| v.token)
}

/// `verify` under `policy`: its skew window, nonce memory and hash requirement.
pub fn verify_with(
    secrets: &Secrets,
    authorization: Option<&str>,
    request: SignedRequest<'_>,
    allow_expired: bool,
    policy: &HawkPolicy,
) -> ApiResult<Verified> {
    let authorization =
        authorization.ok_or_else(|| ApiError::unauthorized(AuthFailure::MissingHeader))?;
    let attrs = authorization
        .strip_prefix("Hawk ")
        .ok_or_else(|| ApiError::unauthorized(AuthFailure::BadHeader))?;
    let header = super::hawk_header::parse(attrs)
        .map_err(|_| ApiError::unauthorized(AuthFailure::BadHeader))?;
    let id = header
        .id
        .as_deref()
        .ok_or_else(|| ApiError::unauthorized(AuthFailure::BadHeader))?;
    let payload = secrets.parse_token(id).map_err(|e| {
        ApiError::unauthorized(match e {
            TokenError::Signature => AuthFailure::TokenBadSignature,
            TokenError::Decode | TokenError::TooShort | TokenError::Json => {
                AuthFailure::TokenMalformed
            }
        })
    })?;
    let key_text = secrets.derived_secret(id, &payload.salt);
    // The HMAC key is the ASCII of the derived secret string, not its decoded bytes.
    let key = Key::new(key_text.as_bytes(), DigestAlgorithm::Sha256)
        .map_err(|_| ApiError::internal("hawk key"))?;
    let hawk_request =
        RequestBuilder::new(request.method, request.host, request.port, request.target).request();
    if !hawk_request.validate_header(&header, &key, policy.max_skew) {
        return Err(ApiError::unauthorized(
            if outside_skew(header.ts, policy.max_skew) {
                AuthFailure::TsSkew
            } else {
                AuthFailure::BadMac
            },
        ));
    }
    if let Some(nonces) = &policy.nonces {
        // The MAC is valid, so only real clients' requests take room in the cache.
        let ts = header
            .ts
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        if !nonces.first_use(id, ts, header.nonce.as_deref().unwrap_or("")) {
            return Err(ApiError::unauthorized(AuthFailure::Replay));
        }
    }
    if !allow_expired {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        if payload.expires.round() <= now {
            return Err(ApiError::unauthorized(AuthFailure::TokenExpired));
        }
    }
    Ok(Verified {
        token: payload,
        payload_hash: header.hash.clone(),
    })
}

/// Builds an Authorization header value; used by `syncserver token` users' tooling and tests.
pub fn sign(id: &str, key: &str, request: SignedRequest<'_>) -> String {
    let credentials = hawk::Credentials {
        id: id.to_owned(),
        key: Key::new(key.as_bytes(), DigestAlgorithm::Sha256).expect("valid key"),
    };
    let header = RequestBuilder::new(request.method, request.host, request.port, request.target)
        .request()
        .make_header(&credentials)
        .expect("hawk header");
    format!("Hawk {header}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokenlib::new_salt;

    fn token(secrets: &Secrets, expires_in: f64) -> (String, String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let payload = TokenPayload {
            uid: 7,
            node: "http://localhost".into(),
            expires: now + expires_in,
            salt: new_salt(),
            fxa_uid: String::new(),
            fxa_kid: String::new(),
            hashed_fxa_uid: String::new(),
            hashed_device_id: String::new(),
            tokenserver_origin: None,
        };
        let id = secrets.make_token(&payload);
        let key = secrets.derived_secret(&id, &payload.salt);
        (id, key)
    }

    const REQ: SignedRequest<'static> = SignedRequest {
        method: "GET",
        target: "/1.5/7/storage/col?full=1",
        host: "localhost",
        port: 8000,
    };

    #[test]
    fn valid_request() {
        let s = Secrets::new("master");
        let (id, key) = token(&s, 300.0);
        let h = sign(&id, &key, REQ);
        assert_eq!(verify(&s, Some(&h), REQ, false).unwrap().uid, 7);
        let batch = SignedRequest {
            method: "POST",
            target: "/1.5/7/storage/col?batch=MTIz&commit=true",
            ..REQ
        };
        let h = sign(&id, &key, batch);
        assert!(verify(&s, Some(&h), batch, false).is_ok());
    }

    #[test]
    fn rejections() {
        let s = Secrets::new("master");
        let (id, key) = token(&s, 300.0);
        let h = sign(&id, &key, REQ);
        let rejected = |auth: Option<&str>, req: SignedRequest<'_>, secrets: &Secrets| {
            let e = verify(secrets, auth, req, false).unwrap_err();
            assert_eq!((e.status(), e.weave_code()), (401, Some(0)));
        };
        rejected(None, REQ, &s);
        rejected(Some(h.trim_start_matches("Hawk ")), REQ, &s);
        rejected(Some("True"), REQ, &s);
        rejected(Some("Hawk garbage"), REQ, &s);
        // Beyond SystemTime's range: the hawk crate's own parser panics on this.
        let huge = h.replacen("ts=\"", "ts=\"18446744073709551615", 1);
        rejected(Some(&huge), REQ, &s);
        rejected(Some(&h), REQ, &Secrets::new("other"));
        rejected(
            Some(&h),
            SignedRequest {
                method: "PUT",
                ..REQ
            },
            &s,
        );
        rejected(
            Some(&h),
            SignedRequest {
                target: "/1.5/7/storage/col?full=1&x=1",
                ..REQ
            },
            &s,
        );
        rejected(
            Some(&h),
            SignedRequest {
                host: "example.com",
                ..REQ
            },
            &s,
        );
        rejected(Some(&h), SignedRequest { port: 8001, ..REQ }, &s);
        rejected(Some(&h.replacen("mac=\"", "mac=\"A", 1)), REQ, &s);
        rejected(Some(&h.replacen("nonce=\"", "nonce=\"x", 1)), REQ, &s);
        let ts = h.split("ts=\"").nth(1).unwrap().split('"').next().unwrap();
        let later = (ts.parse::<u64>().unwrap() + 1).to_string();
        rejected(Some(&h.replacen(ts, &later, 1)), REQ, &s);
        // A token whose signature was tampered with.
        let mut bad_id = id.clone().into_bytes();
        bad_id[5] = if bad_id[5] == b'A' { b'B' } else { b'A' };
        let bad_id = String::from_utf8(bad_id).unwrap();
        rejected(Some(&sign(&bad_id, &key, REQ)), REQ, &s);
    }

    #[test]
    fn expiry() {
        let s = Secrets::new("master");
        let (id, key) = token(&s, -60.0);
        let h = sign(&id, &key, REQ);
        assert_eq!(verify(&s, Some(&h), REQ, false).unwrap_err().status(), 401);
        assert!(verify(&s, Some(&h), REQ, true).is_ok());
    }
}
