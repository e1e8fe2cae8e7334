//! The tokenserver's HTTP side (SPEC 3.1-3.3, 3.9): headers in the upstream check order, the
//! token response with its headers, and tokenserver-style error bodies.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::{Data, Path, Query};
use actix_web::{HttpRequest, HttpResponse};

use super::AppState;
use crate::tokenserver::issuer::TokenRequest;
use crate::tokenserver::keyid::{check_client_state_header, parse_key_id};
use crate::tokenserver::{TokenserverError, TsResult};

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

fn error_response(e: &TokenserverError) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(e.http_status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    super::refused(HttpResponse::build(status).json(e.body()), e.reason)
}

/// `Authorization: Bearer <token>`: the scheme case-insensitively, the token after one space.
fn bearer_token(req: &HttpRequest) -> TsResult<&str> {
    let value = req
        .headers()
        .get("Authorization")
        .ok_or_else(TokenserverError::unauthorized)?
        .to_str()
        .map_err(|_| TokenserverError::unauthorized())?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(TokenserverError::unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenserverError::unsupported());
    }
    Ok(token.trim())
}

fn tokenserver(state: &AppState) -> TsResult<&crate::tokenserver::Tokenserver> {
    state
        .tokenserver
        .as_deref()
        .ok_or_else(|| TokenserverError::internal_error(404))
}

/// `GET /1.0/{application}/{version}` (and the other `TOKEN_ROUTES`).
pub async fn get_token(
    req: HttpRequest,
    path: Path<(String, String)>,
    state: Data<AppState>,
) -> HttpResponse {
    match token(&req, &path, &state).await {
        // X-Timestamp is added to every tokenserver response by the middleware.
        Ok(body) => HttpResponse::Ok()
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .json(body),
        Err(e) => error_response(&e),
    }
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn token(
    req: &HttpRequest,
    path: &(String, String),
    state: &AppState,
) -> TsResult<crate::tokenserver::issuer::TokenResponse> {
    let ts = tokenserver(state)?;
    let bearer = bearer_token(req)?;
    let started = std::time::Instant::now();
    let identity = ts.verifier.verify(bearer).await?;
    let verification = started.elapsed();
    let key_id = parse_key_id(header(req, "X-KeyID"))?;
    check_client_state_header(header(req, "X-Client-State"), &key_id.client_state)?;
    let (application, version) = path;
    if application != "sync" {
        return Err(TokenserverError::unsupported_application());
    }
    if version != "1.5" {
        return Err(TokenserverError::unsupported_version(version));
    }
    let query = Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|_| TokenserverError::bad_query_string())?;
    let duration = query.get("duration").and_then(|d| d.parse::<u64>().ok());
    let response = ts
        .issue(TokenRequest {
            identity,
            key_id,
            duration,
        })
        .await?;
    crate::metrics::token_issued(response.outcome, verification, started.elapsed());
    Ok(response)
}

/// `POST /1.0/webhooks/fxa/events` (only routed when `fxa_webhook_enabled`).
pub async fn fxa_webhook(req: HttpRequest, state: Data<AppState>) -> HttpResponse {
    let result = async {
        let ts = tokenserver(&state)?;
        let bearer = bearer_token(&req).map_err(|_| {
            TokenserverError::invalid_credentials().because("webhook: no bearer token")
        })?;
        ts.handle_security_event(bearer).await
    }
    .await;
    match result {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => error_response(&e),
    }
}
