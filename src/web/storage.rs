//! Storage API handlers: extract and validate, one database unit of work, respond.

use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut, Data, Payload};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::extract::{
    authenticate, body_format, bso_id, collection_name, collection_ref, precondition,
    read_signed_body,
};
use super::headers::{X_LAST_MODIFIED, X_WEAVE_NEXT_OFFSET, X_WEAVE_RECORDS, header};
use crate::db::listing::Listing;
use crate::db::{BsoRef, DeleteBsos, GetBsos, InfoBody, InfoKind, PostBsos, PutBso};
use crate::error::ApiResult;
use crate::protocol::headers::{OutputFormat, WeaveSizeHeaders, negotiate_output};
use crate::protocol::post::{parse_post_body, parse_put_body};
use crate::protocol::query::parse_ids;
use crate::protocol::{BatchRequest, BsoQuery, SyncTimestamp};

/// Response bodies with timestamps are typed: a `serde_json::Value` would turn the two-decimal
/// raw number into a float and print `1700000000.1`.
#[derive(Serialize)]
struct PostBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    modified: Option<SyncTimestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<&'a str>,
    success: &'a [String],
    failed: &'a std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ModifiedBody {
    modified: SyncTimestamp,
}

fn json_response(
    status: StatusCode,
    last_modified: SyncTimestamp,
    body: &impl Serialize,
) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((X_LAST_MODIFIED, last_modified.to_string()))
        .content_type("application/json")
        .body(serde_json::to_string(body).unwrap_or_else(|_| "null".into()))
}

fn ok(last_modified: SyncTimestamp, body: &impl Serialize) -> HttpResponse {
    json_response(StatusCode::OK, last_modified, body)
}

fn with_records(mut resp: HttpResponse, records: usize) -> HttpResponse {
    resp.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-weave-records"),
        records.into(),
    );
    resp
}

async fn info(req: HttpRequest, state: Data<AppState>, kind: InfoKind) -> ApiResult<HttpResponse> {
    // info/collections accepts expired tokens (SPEC 2.5).
    let user = authenticate(&req, &state, kind == InfoKind::Collections)?;
    let info = state
        .storage()?
        .info(&user, kind, precondition(&req)?)
        .await?;
    let ts = info.storage_ts;
    Ok(match info.body {
        InfoBody::Timestamps(m) => with_records(ok(ts, &m), m.len()),
        InfoBody::Counts(m) => with_records(ok(ts, &m), m.len()),
        InfoBody::Usage(m) => with_records(ok(ts, &m), m.len()),
        InfoBody::Quota(used) => ok(ts, &json!([used, null])),
    })
}

pub async fn info_collections(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    info(req, state, InfoKind::Collections).await
}
pub async fn info_collection_counts(
    req: HttpRequest,
    state: Data<AppState>,
) -> ApiResult<HttpResponse> {
    info(req, state, InfoKind::Counts).await
}
pub async fn info_collection_usage(
    req: HttpRequest,
    state: Data<AppState>,
) -> ApiResult<HttpResponse> {
    info(req, state, InfoKind::Usage).await
}
pub async fn info_quota(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    info(req, state, InfoKind::Quota).await
}

/// Unauthenticated, no database (SPEC 1.5).
pub async fn info_configuration(state: Data<AppState>) -> HttpResponse {
    ok(SyncTimestamp::ZERO, &state.limits)
}

pub async fn delete_storage(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    let user = authenticate(&req, &state, false)?;
    let before = state
        .storage()?
        .delete_storage(&user, precondition(&req)?)
        .await?;
    Ok(ok(before, &serde_json::Value::Null))
}

pub async fn get_collection(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    let user = authenticate(&req, &state, false)?;
    let collection = collection_name(&req)?;
    let query = BsoQuery::parse(req.query_string())?;
    let format = negotiate_output(header(&req, "Accept"))?;
    let target = collection_ref(&req, user, collection)?;
    let query_full = query.full;
    let listing = state
        .storage()?
        .stream_bsos(GetBsos { target, query })
        .await?;
    let head = &listing.head;
    let mut builder = HttpResponse::Ok();
    builder.insert_header((X_LAST_MODIFIED, head.collection_ts.to_string()));
    builder.insert_header((X_WEAVE_RECORDS, head.items.len()));
    if let Some(next) = head.next_offset {
        builder.insert_header((X_WEAVE_NEXT_OFFSET, next.to_string()));
    }
    builder.content_type(match format {
        OutputFormat::Json => "application/json",
        OutputFormat::Newlines => "application/newlines",
    });
    let framing = Framing::new(format);
    Ok(match listing.records {
        // The head is the whole answer: full records or ids, as asked.
        None => {
            let values: Vec<String> = head
                .items
                .iter()
                .map(|b| {
                    if query_full {
                        serde_json::to_string(b)
                    } else {
                        serde_json::to_string(&b.id)
                    }
                })
                .collect::<Result<_, _>>()
                .map_err(|e| crate::error::ApiError::internal(e.to_string()))?;
            builder.body(framing.whole(&values))
        }
        // Full records: sent chunk by chunk as the database reads them. Up to
        // `BUFFERED_BODY` is gathered first, so that most listings still go out whole, with a
        // Content-Length (and an error while reading is still an error response).
        Some(mut records) => {
            let mut framing = framing;
            let mut body = BytesMut::from(framing.open());
            while body.len() < BUFFERED_BODY {
                match records.recv().await {
                    Some(message) => body.extend_from_slice(&encode(&mut framing, message?)?),
                    None => {
                        body.extend_from_slice(framing.close().as_bytes());
                        return Ok(builder.body(body.freeze()));
                    }
                }
            }
            let close = framing.close();
            let received = futures::stream::unfold(records, |mut rx| async move {
                rx.recv().await.map(|message| (message, rx))
            });
            let rest = received.map(move |message| encode(&mut framing, message?));
            let edge = |bytes: Bytes| {
                futures::stream::once(async move { Ok::<Bytes, crate::error::ApiError>(bytes) })
            };
            builder.streaming(
                edge(body.freeze())
                    .chain(rest)
                    .chain(edge(Bytes::from_static(close.as_bytes()))),
            )
        }
    })
}

/// The most of a full listing gathered before its response starts; a bigger one is streamed.
const BUFFERED_BODY: usize = 1 << 20;

/// One message of a listing as body bytes.
fn encode(framing: &mut Framing, message: Listing) -> ApiResult<Bytes> {
    let items = match message {
        Listing::Records(items) => items,
        Listing::Head { .. } => Vec::new(),
    };
    let values: Vec<String> = items
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()
        .map_err(|e| crate::error::ApiError::internal(e.to_string()))?;
    Ok(framing.chunk(&values))
}

/// How a listing's values are joined: a JSON array, or one value per line.
#[derive(Debug, Clone, Copy)]
struct Framing {
    format: OutputFormat,
    started: bool,
}

impl Framing {
    fn new(format: OutputFormat) -> Self {
        Framing {
            format,
            started: false,
        }
    }

    fn open(&self) -> &'static str {
        match self.format {
            OutputFormat::Json => "[",
            OutputFormat::Newlines => "",
        }
    }

    fn close(&self) -> &'static str {
        match self.format {
            OutputFormat::Json => "]",
            OutputFormat::Newlines => "",
        }
    }

    /// A whole body at once.
    fn whole(mut self, values: &[String]) -> String {
        let middle = self.chunk(values);
        format!(
            "{}{}{}",
            self.open(),
            String::from_utf8_lossy(&middle),
            self.close()
        )
    }

    /// The next values, with the separators a JSON array needs.
    fn chunk(&mut self, values: &[String]) -> Bytes {
        let mut out = String::new();
        for v in values {
            match self.format {
                OutputFormat::Json => {
                    if self.started {
                        out.push(',');
                    }
                    out.push_str(v);
                }
                // serde_json escapes newlines inside strings, so each value is one line.
                OutputFormat::Newlines => {
                    out.push_str(v);
                    out.push('\n');
                }
            }
            self.started = true;
        }
        Bytes::from(out)
    }
}

pub async fn post_collection(
    req: HttpRequest,
    state: Data<AppState>,
    payload: Payload,
) -> ApiResult<HttpResponse> {
    let user = authenticate(&req, &state, false)?;
    let collection = collection_name(&req)?;
    let format = body_format(&req)?;
    let limits = state.limits.for_collection(&collection);
    let body = read_signed_body(&req, &state, payload, &limits).await?;
    let items = parse_post_body(&body, format, &collection, &limits)?;
    WeaveSizeHeaders {
        records: header(&req, "X-Weave-Records"),
        bytes: header(&req, "X-Weave-Bytes"),
        total_records: header(&req, "X-Weave-Total-Records"),
        total_bytes: header(&req, "X-Weave-Total-Bytes"),
    }
    .check(&limits)?;
    // SPEC 1.12 order: body, then X-Weave-* headers, then batch parameters, then X-If-*.
    let batch = BatchRequest::parse(req.query_string())?;
    let step = match &batch {
        BatchRequest::None => "none",
        BatchRequest::Start => "start",
        BatchRequest::Append(_) => "append",
        BatchRequest::Commit(_) => "commit",
    };
    let target = collection_ref(&req, user, collection)?;
    let result = state
        .storage()?
        .post_bsos(PostBsos {
            target,
            items,
            batch,
        })
        .await?;
    crate::metrics::records_written(step, result.success.len(), result.failed.len());
    Ok(match result.batch {
        Some(batch) => json_response(
            StatusCode::ACCEPTED,
            result.last_modified,
            &PostBody {
                modified: None,
                batch: Some(&batch),
                success: &result.success,
                failed: &result.failed,
            },
        ),
        None => ok(
            result.last_modified,
            &PostBody {
                modified: Some(result.last_modified),
                batch: None,
                success: &result.success,
                failed: &result.failed,
            },
        ),
    })
}

pub async fn delete_collection(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    let user = authenticate(&req, &state, false)?;
    let collection = collection_name(&req)?;
    let ids = crate::protocol::query::parse_pairs(req.query_string())
        .into_iter()
        .rev()
        .find(|(k, _)| k == "ids")
        .map(|(_, v)| parse_ids(&v))
        .transpose()?;
    let target = collection_ref(&req, user, collection)?;
    Ok(match ids {
        Some(ids) => {
            let t = state
                .storage()?
                .delete_bsos(DeleteBsos { target, ids })
                .await?;
            ok(t, &t)
        }
        None => {
            let deleted = state.storage()?.delete_collection(target).await?;
            // X-Last-Modified is the pre-delete timestamp; the write's own T is the body.
            let mut resp = ok(deleted.previous_ts, &deleted.storage_ts);
            resp.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-weave-timestamp"),
                deleted
                    .storage_ts
                    .to_string()
                    .parse()
                    .expect("timestamp is a valid header"),
            );
            resp
        }
    })
}

fn bso_ref(req: &HttpRequest, state: &AppState) -> ApiResult<BsoRef> {
    let user = authenticate(req, state, false)?;
    let collection = collection_name(req)?;
    let id = bso_id(req)?;
    Ok(BsoRef {
        user,
        collection,
        id,
        precondition: precondition(req)?,
    })
}

pub async fn get_bso(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    let target = bso_ref(&req, &state)?;
    let bso = state.storage()?.get_bso(target).await?;
    Ok(ok(bso.modified, &bso))
}

pub async fn put_bso(
    req: HttpRequest,
    state: Data<AppState>,
    payload: Payload,
) -> ApiResult<HttpResponse> {
    let user = authenticate(&req, &state, false)?;
    let collection = collection_name(&req)?;
    let id = bso_id(&req)?;
    let format = body_format(&req)?;
    let limits = state.limits.for_collection(&collection);
    let body = read_signed_body(&req, &state, payload, &limits).await?;
    let bso = parse_put_body(&body, format, &collection, &id, &limits)?;
    // X-If-* syntax is checked after the body (SPEC 1.12).
    let target = collection_ref(&req, user, collection)?;
    let t = state.storage()?.put_bso(PutBso { target, bso }).await?;
    crate::metrics::records_written("none", 1, 0);
    Ok(ok(t, &t))
}

pub async fn delete_bso(req: HttpRequest, state: Data<AppState>) -> ApiResult<HttpResponse> {
    let target = bso_ref(&req, &state)?;
    let t = state.storage()?.delete_bso(target).await?;
    Ok(ok(t, &ModifiedBody { modified: t }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `serde_json::Value` body would print `1700000000.1`; the typed bodies keep `.10`.
    #[test]
    fn bodies_keep_two_decimals() {
        let t = SyncTimestamp::from_millis(1_700_000_000_100);
        let failed = std::collections::BTreeMap::new();
        let body = PostBody {
            modified: Some(t),
            batch: None,
            success: &[],
            failed: &failed,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"modified":1700000000.10,"success":[],"failed":{}}"#
        );
        assert_eq!(
            serde_json::to_string(&ModifiedBody { modified: t }).unwrap(),
            r#"{"modified":1700000000.10}"#
        );
    }
}
