//! HTTP: routes, middleware, handlers. The only module that knows HTTP and Weave headers.

mod error;
pub mod extract;
pub mod headers;
mod ops;
mod storage;
mod tokenserver;

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{App, HttpResponse, HttpServer, middleware::from_fn, web};
use futures::FutureExt;

use crate::auth::Secrets;
use crate::db::SharedStorage;
use crate::error::{ApiError, ErrorKind};
use crate::protocol::headers::is_rejected_user_agent;
use crate::protocol::validate::{COLLECTION_ROUTE_PATTERN, UID_ROUTE_PATTERN};
use crate::protocol::{Limits, SyncTimestamp};
use crate::tokenserver::Tokenserver;
use headers::{X_LAST_MODIFIED, X_WEAVE_TIMESTAMP};
use tokenserver::unix_seconds;

/// What every handler shares.
pub struct AppState {
    /// `None` in a tokenserver-only process (`syncstorage.enabled = false`).
    pub storage: Option<SharedStorage>,
    pub secrets: Secrets,
    pub limits: Limits,
    pub quota_enabled: bool,
    /// When `__lbheartbeat__` starts failing on purpose (lbheartbeat_ttl).
    pub lb_deadline: Option<Instant>,
    exhausted_since: Mutex<Option<Instant>>,
    /// `/1.0/...`; `None` when `tokenserver.enabled` is false.
    pub tokenserver: Option<Arc<Tokenserver>>,
    /// Whether `/1.0/webhooks/fxa/events` is routed.
    pub fxa_webhook: bool,
    /// How fast request bodies must arrive.
    pub body_pace: extract::BodyPace,
    /// How strictly Hawk is verified.
    pub hawk: Arc<crate::auth::hawk::HawkPolicy>,
    /// `public_url` as Hawk covers it; its path prefix is where every route is served too.
    pub public: Option<headers::PublicUrl>,
}

impl AppState {
    pub fn new(
        storage: Option<SharedStorage>,
        secrets: Secrets,
        limits: Limits,
        quota_enabled: bool,
    ) -> Self {
        AppState {
            storage,
            secrets,
            limits,
            quota_enabled,
            lb_deadline: None,
            exhausted_since: Mutex::new(None),
            tokenserver: None,
            fxa_webhook: false,
            body_pace: extract::BodyPace {
                idle: Duration::from_secs(15),
                min_rate: 4096,
            },
            hawk: Arc::default(),
            public: None,
        }
    }

    /// `public_url`: requests are verified against it too, and served under its path.
    pub fn with_public_url(mut self, public: Option<headers::PublicUrl>) -> Self {
        self.public = public;
        self
    }

    /// The path prefix of `public_url` (`/sync`), or empty.
    pub fn prefix(&self) -> &str {
        self.public.as_ref().map_or("", |p| p.prefix.as_str())
    }

    /// The storage backend; storage routes exist only when there is one.
    pub fn storage(&self) -> Result<&SharedStorage, ApiError> {
        self.storage
            .as_ref()
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, "storage is disabled"))
    }

    pub fn with_tokenserver(
        mut self,
        tokenserver: Option<Arc<Tokenserver>>,
        webhook: bool,
    ) -> Self {
        self.fxa_webhook = webhook && tokenserver.is_some();
        self.tokenserver = tokenserver;
        self
    }

    /// The `[hawk]` policy.
    pub fn with_hawk_policy(mut self, policy: crate::auth::hawk::HawkPolicy) -> Self {
        self.hawk = Arc::new(policy);
        self
    }

    /// The `[http]` body pace.
    pub fn with_body_pace(mut self, pace: extract::BodyPace) -> Self {
        self.body_pace = pace;
        self
    }

    /// `ttl` seconds plus up to `jitter_percent` % more, so a fleet does not recycle at once.
    pub fn with_lbheartbeat_ttl(mut self, ttl: Option<u32>, jitter_percent: u32) -> Self {
        self.lb_deadline = ttl.map(|ttl| {
            let jitter = rand::random::<f64>() * f64::from(jitter_percent) / 100.0;
            Instant::now() + Duration::from_secs_f64(f64::from(ttl) * (1.0 + jitter))
        });
        self
    }
}

/// CORS options (SPEC 1.13.2).
#[derive(Debug, Clone)]
pub struct CorsSettings {
    pub allowed_origin: Option<String>,
    pub max_age: Option<usize>,
}

fn cors(settings: &CorsSettings) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["DELETE", "GET", "POST", "PUT"])
        .allowed_headers([
            "Authorization",
            "Content-Type",
            "User-Agent",
            "X-Last-Modified",
            "X-Weave-Timestamp",
            "X-Weave-Next-Offset",
            "X-Weave-Records",
            "X-Weave-Bytes",
            "X-Weave-Total-Records",
            "X-Weave-Total-Bytes",
            "X-Verify-Code",
            "TEST_IDLES",
            "X-If-Modified-Since",
            "X-If-Unmodified-Since",
        ])
        .expose_headers([
            "X-Last-Modified",
            "X-Weave-Timestamp",
            "X-Weave-Next-Offset",
            "X-Weave-Records",
            "Retry-After",
        ])
        .max_age(settings.max_age);
    cors = match settings.allowed_origin.as_deref() {
        None | Some("*") => cors.allow_any_origin(),
        Some(origin) => cors.allowed_origin(origin),
    };
    cors
}

/// The longest header value or path written to a log line: real User-Agents are ~150
/// characters, and a client must not be able to fill the log.
pub const MAX_LOGGED_AGENT: usize = 256;

/// The longest query parameter value logged (timestamps, batch ids, offsets are far shorter).
const MAX_LOGGED_PARAM: usize = 64;

/// `text` cut to `max` characters.
fn truncated(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn log_agent(ua: &str) -> &str {
    truncated(ua, MAX_LOGGED_AGENT)
}

/// The query parameters that explain a sync, for the request line: `batch`, `commit`,
/// `newer`, `older`, `limit`, `offset`, `full`, `sort` as sent (each value cut short), and
/// the number of `ids`.
fn logged_query(query: &str) -> String {
    const EXPLAINING: [&str; 8] = [
        "batch", "commit", "newer", "older", "limit", "offset", "full", "sort",
    ];
    let mut out = String::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let shown = if key == "ids" {
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            let n = decoded.split(',').filter(|i| !i.trim().is_empty()).count();
            format!("ids={n}")
        } else if EXPLAINING.contains(&key) {
            if value.is_empty() {
                key.to_owned()
            } else {
                format!("{key}={}", truncated(value, MAX_LOGGED_PARAM))
            }
        } else {
            continue;
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&shown);
    }
    out
}

/// Why a request was refused (a short fixed code), left on the response by whoever refused
/// it, for the request's log line and the refusal counter.
#[derive(Debug, Clone, Copy)]
pub struct Refusal(pub &'static str);

/// A response with its refusal reason attached (every refusal goes through here).
fn refused(mut response: HttpResponse<BoxBody>, reason: &'static str) -> HttpResponse<BoxBody> {
    response.extensions_mut().insert(Refusal(reason));
    response
}

/// Upstream's name for what a request did (its StatsD `request.*` counters), from the
/// resource it was routed to.
fn route_label(resource: Option<&str>, method: &Method, query: &str) -> &'static str {
    let has = |key: &str| query.split('&').any(|p| p.split('=').next() == Some(key));
    match (resource.unwrap_or(""), method.as_str()) {
        ("info_collections", _) => "get_collections",
        ("info_collection_counts", _) => "get_collection_counts",
        ("info_collection_usage", _) => "get_collection_usage",
        ("info_quota", _) => "get_quota",
        ("info_configuration", _) => "get_configuration",
        ("storage", _) => "delete_all",
        ("collection", "GET") => "get_collection",
        ("collection", "POST") if has("batch") => "post_collection_batch",
        ("collection", "POST") => "post_collection",
        ("collection", "DELETE") if has("ids") => "delete_bsos",
        ("collection", _) => "delete_collection",
        ("bso", "GET") => "get_bso",
        ("bso", "PUT") => "put_bso",
        ("bso", _) => "delete_bso",
        ("token", _) => "token",
        ("webhook", _) => "webhook",
        ("heartbeat", _) => "heartbeat",
        ("lbheartbeat", _) => "lbheartbeat",
        ("version", _) => "version",
        ("error", _) => "error",
        ("root", _) => "root",
        _ => "unmatched",
    }
}

fn is_dockerflow(path: &str) -> bool {
    path.starts_with("/__")
}

/// Where the tokenserver answers: upstream's `/1.0/...` and the old Python syncserver's
/// `/token/1.0/...`, still in many self-hosting guides and Android settings.
pub const TOKEN_ROUTES: [&str; 4] = [
    "/1.0/{application}/{version}",
    "/1.0/{application}/{version}/",
    "/token/1.0/{application}/{version}",
    "/token/1.0/{application}/{version}/",
];

/// Tokenserver paths get X-Timestamp (seconds) and tokenserver-style bodies, not the storage
/// API's X-Weave-Timestamp and bare error numbers.
fn is_tokenserver_path(path: &str) -> bool {
    path.starts_with("/1.0/") || path.starts_with("/token/")
}

/// Rejects crashing old iOS clients first, stamps X-Weave-Timestamp, gives unrouted paths the
/// storage 404 body, and logs one line per request.
async fn weave_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let query = req.query_string().to_owned();
    let ua = req
        .headers()
        .get("User-Agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let res = if is_rejected_user_agent(&ua) {
        let resp = HttpResponse::ServiceUnavailable()
            .content_type("application/json")
            .body("0");
        req.into_response(refused(resp, "rejected client"))
    } else {
        weave_response(req, next, &method, &path).await?
    };
    let refusal = res.response().extensions().get::<Refusal>().map(|r| r.0);
    let route = route_label(res.request().match_name(), &method, &query);
    crate::metrics::request(&crate::metrics::Request {
        route,
        status: res.status().as_u16(),
        elapsed: started.elapsed(),
        reason: refusal,
        collection: res.request().match_info().get("collection"),
    });
    let (status, duration_ms) = (res.status().as_u16(), started.elapsed().as_millis() as u64);
    let (path, agent, query) = (
        truncated(&path, MAX_LOGGED_AGENT),
        log_agent(&ua),
        logged_query(&query),
    );
    match refusal {
        Some(reason) => slog_scope::info!("request";
            "method" => %method, "path" => path, "query" => query, "status" => status,
            "duration_ms" => duration_ms, "agent" => agent, "reason" => reason),
        None => slog_scope::info!("request";
            "method" => %method, "path" => path, "query" => query, "status" => status,
            "duration_ms" => duration_ms, "agent" => agent),
    }
    Ok(res)
}

/// The response to a request whose client is not rejected: the handler's, with the storage
/// API's 404 and 405 bodies and timestamp headers.
async fn weave_response(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    method: &Method,
    path: &str,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request_ts = SyncTimestamp::now();
    let prefix = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.prefix().to_owned())
        .unwrap_or_default();
    let local_path = headers::strip_prefix(path, &prefix);
    // A panic anywhere below is a 500 (reported to Sentry by its panic hook), never a dropped
    // connection.
    let mut res = match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(res) => res?.map_into_boxed_body(),
        Err(_) => {
            slog_scope::error!("request handler panicked"; "method" => %method, "path" => %path);
            // The request went down with the handler (the router needs it unshared, so no
            // clone can be kept): the response carries a stand-in with the same method and path.
            let stand_in = actix_web::test::TestRequest::default()
                .method(method.clone())
                .uri(path)
                .to_http_request();
            ServiceResponse::new(
                stand_in,
                ApiError::internal("handler panicked").error_response_boxed(),
            )
        }
    };
    let status = res.status();
    let tokenserver_path = is_tokenserver_path(local_path);
    if status == StatusCode::NOT_FOUND
        && !tokenserver_path
        && res.headers().get(CONTENT_TYPE).is_none()
    {
        let (req, _) = res.into_parts();
        res = ServiceResponse::new(
            req,
            ApiError::new(ErrorKind::NotFound, "not found").error_response_boxed(),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let (req, _) = res.into_parts();
        let resp = HttpResponse::MethodNotAllowed().finish();
        res = ServiceResponse::new(req, refused(resp, "method not allowed"));
    }
    if tokenserver_path {
        // Every tokenserver response, errors included, says what time the server has, so a
        // client with a wrong clock can correct its assertions (SPEC 3).
        if let Ok(v) = HeaderValue::from_str(&unix_seconds().to_string()) {
            res.headers_mut()
                .insert(HeaderName::from_static("x-timestamp"), v);
        }
    } else if !is_dockerflow(local_path) && method != Method::OPTIONS {
        // A write's handler may already have set its T (when X-Last-Modified is not T).
        let header_ts = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| SyncTimestamp::parse(v).ok())
                .unwrap_or_default()
        };
        let value = request_ts
            .max(header_ts(X_LAST_MODIFIED))
            .max(header_ts(X_WEAVE_TIMESTAMP))
            .to_string();
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut()
                .insert(HeaderName::from_static("x-weave-timestamp"), v);
        }
    }
    Ok(res)
}

trait BoxedErrorResponse {
    fn error_response_boxed(&self) -> HttpResponse<BoxBody>;
}

impl BoxedErrorResponse for ApiError {
    fn error_response_boxed(&self) -> HttpResponse<BoxBody> {
        actix_web::ResponseError::error_response(self)
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorKind::NotFound, "not found"))
}

/// The storage routes under `/1.5/{uid}` (SPEC 1.1).
fn storage_routes(cfg: &mut web::ServiceConfig) {
    let uid = format!("/1.5/{{uid:{UID_ROUTE_PATTERN}}}");
    let coll = format!("{uid}/storage/{{collection:{COLLECTION_ROUTE_PATTERN}}}");
    // Resource names are what `route_label` reports.
    let info =
        |name: &str| web::resource(format!("{uid}/info/{name}")).name(&format!("info_{name}"));
    cfg.service(info("collections").route(web::get().to(storage::info_collections)))
        .service(info("collection_counts").route(web::get().to(storage::info_collection_counts)))
        .service(info("collection_usage").route(web::get().to(storage::info_collection_usage)))
        .service(info("quota").route(web::get().to(storage::info_quota)))
        .service(info("configuration").route(web::get().to(storage::info_configuration)))
        .service(
            web::resource([uid.clone(), format!("{uid}/storage")])
                .name("storage")
                .route(web::delete().to(storage::delete_storage)),
        )
        .service(
            web::resource(coll.clone())
                .name("collection")
                .route(web::get().to(storage::get_collection))
                .route(web::post().to(storage::post_collection))
                .route(web::delete().to(storage::delete_collection)),
        )
        .service(
            web::resource(format!("{coll}/{{item:[ -~]{{1,192}}}}"))
                .name("bso")
                .route(web::get().to(storage::get_bso))
                .route(web::put().to(storage::put_bso))
                .route(web::delete().to(storage::delete_bso)),
        );
}

/// Which routes a server has.
#[derive(Debug, Clone, Copy)]
struct Routes {
    tokenserver: bool,
    storage: bool,
    webhook: bool,
}

/// Every route: Dockerflow, the tokenserver and its webhook, the storage API.
fn routes(cfg: &mut web::ServiceConfig, on: Routes) {
    if on.webhook {
        cfg.service(
            web::resource("/1.0/webhooks/fxa/events")
                .name("webhook")
                .route(web::post().to(tokenserver::fxa_webhook)),
        );
    }
    if on.tokenserver {
        cfg.service(
            web::resource(TOKEN_ROUTES)
                .name("token")
                .route(web::get().to(tokenserver::get_token)),
        );
    }
    let named = |path: &str, name: &str| web::resource(path).name(name);
    cfg.service(named("/", "root").route(web::get().to(ops::root)))
        .service(named("/__heartbeat__", "heartbeat").route(web::get().to(ops::heartbeat)))
        .service(named("/__lbheartbeat__", "lbheartbeat").route(web::get().to(ops::lbheartbeat)))
        .service(named("/__version__", "version").route(web::get().to(ops::version)))
        .service(named("/__error__", "error").route(web::get().to(ops::error)));
    if on.storage {
        storage_routes(cfg);
    }
}

/// Binds and starts the HTTP server; the caller awaits the returned `Server`.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    cors_settings: CorsSettings,
    keep_alive: Option<u32>,
    header_timeout: Duration,
) -> std::io::Result<Server> {
    let on = Routes {
        tokenserver: state.tokenserver.is_some(),
        storage: state.storage.is_some(),
        webhook: state.fxa_webhook,
    };
    let prefix = state.prefix().to_owned();
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(state.clone())
            .wrap(cors(&cors_settings))
            .wrap(from_fn(weave_middleware));
        // Under public_url's path, and at the root too, for a proxy that strips the path.
        if !prefix.is_empty() {
            app = app.service(web::scope(&prefix).configure(|cfg| routes(cfg, on)));
        }
        app.configure(|cfg| routes(cfg, on))
            .default_service(web::to(not_found))
    });
    // A client that does not finish its headers in time is answered 408 and closed.
    server = server
        .client_request_timeout(header_timeout)
        .client_disconnect_timeout(Duration::from_secs(5));
    if let Some(secs) = keep_alive {
        server = server.keep_alive(Duration::from_secs(secs.into()));
    }
    Ok(server.listen(listener)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn panics() -> HttpResponse {
        panic!("a handler bug");
    }

    #[actix_web::test]
    async fn a_panicking_handler_is_a_500_not_a_dropped_connection() {
        let app = actix_web::test::init_service(
            App::new()
                .wrap(from_fn(weave_middleware))
                .route("/1.5/1/info/collections", web::get().to(panics)),
        )
        .await;
        let req = actix_web::test::TestRequest::get()
            .uri("/1.5/1/info/collections")
            .to_request();
        let res = actix_web::test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get("X-Weave-Timestamp").is_some());
        // And the worker still serves.
        let req = actix_web::test::TestRequest::get()
            .uri("/nowhere")
            .to_request();
        let res = actix_web::test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn logged_agents_are_bounded() {
        assert_eq!(log_agent("Firefox/140.0"), "Firefox/140.0");
        let long = "é".repeat(60_000);
        assert_eq!(log_agent(&long).chars().count(), MAX_LOGGED_AGENT);
    }
}
