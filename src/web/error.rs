//! How an `ApiError` goes on the wire: status, bare Weave number body, X-Last-Modified on
//! 304/412, Retry-After on conflicts. Server faults are logged and sent to Sentry.

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};

use super::headers::X_LAST_MODIFIED;
use crate::error::{ApiError, ErrorKind};

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if self.is_reportable() {
            slog_scope::error!("request failed"; "error" => %self.message);
            sentry::capture_message(&self.message, sentry::Level::Error);
        } else {
            slog_scope::debug!("request refused"; "status" => self.status(), "reason" => %self.message);
        }
        let mut builder = HttpResponse::build(self.status_code());
        if let Some(ts) = self.last_modified() {
            builder.insert_header((X_LAST_MODIFIED, ts.to_string()));
        }
        if self.kind == ErrorKind::RequestTimeout {
            // The rest of the body may still be on its way: do not read it, close.
            builder.force_close();
        }
        if let Some(secs) = self.backoff() {
            builder.insert_header((super::headers::X_WEAVE_BACKOFF, HeaderValue::from(secs)));
        }
        if let Some(secs) = self.retry_after() {
            builder.insert_header((RETRY_AFTER, HeaderValue::from(secs)));
        }
        let response = match self.weave_code() {
            Some(code) => builder
                .insert_header((CONTENT_TYPE, "application/json"))
                .body(code.to_string()),
            None => builder.finish(),
        };
        super::refused(response, self.reason())
    }
}
