//! Dockerflow endpoints (SPEC 4.1): no auth, no X-Weave-Timestamp.

use std::time::Instant;

use actix_web::web::Data;
use actix_web::{HttpResponse, http::StatusCode};
use serde_json::json;

use super::AppState;

pub async fn heartbeat(state: Data<AppState>) -> HttpResponse {
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "quota": {"enabled": state.quota_enabled, "size": state.limits.max_quota_limit},
    });
    let check = match &state.storage {
        Some(storage) => storage.check().await,
        None => Ok(()),
    };
    let status = match check {
        Ok(()) => {
            body["database"] = json!("Ok");
            body["status"] = json!("Ok");
            StatusCode::OK
        }
        Err(e) => {
            slog_scope::warn!("heartbeat: database check failed"; "error" => %e.message);
            // The reason is logged, not shown: this endpoint needs no authentication.
            body["database"] = json!("Unknown");
            body["status"] = json!("Err");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    if state.storage.is_none() {
        // Tokenserver-only: there is no storage database to report on.
        body.as_object_mut().map(|o| o.remove("database"));
    }
    let mut status = status;
    if let Some(ts) = &state.tokenserver {
        match ts.db.check().await {
            Ok(()) => body["tokenserver_database"] = json!("Ok"),
            Err(e) => {
                slog_scope::warn!("heartbeat: tokenserver database check failed"; "error" => %e.description);
                body["tokenserver_database"] = json!("Err");
                body["status"] = json!("Err");
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
    }
    HttpResponse::build(status).json(body)
}

/// 500 while the pool is exhausted (with how long it has been), or once the optional
/// lbheartbeat_ttl has passed, so the orchestrator recycles the instance.
pub async fn lbheartbeat(state: Data<AppState>) -> HttpResponse {
    if state.lb_deadline.is_some_and(|d| Instant::now() >= d) {
        return HttpResponse::InternalServerError().json(json!({}));
    }
    let Some(storage) = &state.storage else {
        // Tokenserver-only: no storage pool to watch.
        return HttpResponse::Ok().json(json!({}));
    };
    let pool = storage.pool_state();
    let mut body = json!({"active_connections": pool.active, "idle_connections": pool.idle});
    let mut exhausted_since = state
        .exhausted_since
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if pool.active >= pool.max_size && pool.idle == 0 {
        let since = *exhausted_since.get_or_insert_with(Instant::now);
        body["duration_ms"] = json!(since.elapsed().as_millis() as u64);
        return HttpResponse::InternalServerError().json(body);
    }
    *exhausted_since = None;
    HttpResponse::Ok().json(body)
}

pub async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "build": option_env!("SYNCSERVER_BUILD").unwrap_or("local"),
        "commit": option_env!("SYNCSERVER_COMMIT").unwrap_or("unknown"),
        "source": "https://github.com/syncserver/syncserver",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Deliberately fails, to check error reporting end to end.
pub async fn error() -> crate::error::ApiResult<HttpResponse> {
    Err(crate::error::ApiError::internal("__error__ test error"))
}

pub async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((
            "Location",
            "https://mozilla-services.readthedocs.io/en/latest/storage/apis-1.5.html",
        ))
        .finish()
}
