//! Start-up: settings in, a running server out. Shared by `main` and the black-box tests.

use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Secrets;
use crate::db::{self, StorageConfig};
use crate::settings::Settings;
use crate::tokenserver::Tokenserver;
use crate::web::{self, AppState, CorsSettings};

/// A started server and the address it listens on.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub server: Server,
    /// Where Prometheus scrapes (`metrics.prometheus_listen`), when on.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// What an operator needs to know, for the start-up block: (what, value) pairs.
    pub summary: Vec<(&'static str, String)>,
}

impl Running {
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }
}

/// Opens the database (running migrations), binds `host:port` (port 0 picks one) and starts
/// serving. Errors are start-up failures with a message naming the setting.
pub async fn start(mut settings: Settings) -> Result<Running, String> {
    if !settings.upstream_only.is_empty() {
        slog_scope::warn!(
            "settings only syncstorage-rs reads have no effect here";
            "settings" => settings.upstream_only.join(", ")
        );
    }
    settings.prepare_sqlite_dirs()?;
    let secret_source = settings.resolve_master_secret()?;
    settings.clamp_limits_to_backend();
    if !settings.syncstorage.enabled && !settings.tokenserver.enabled {
        return Err(
            "syncstorage.enabled and tokenserver.enabled are both false: nothing to serve".into(),
        );
    }
    let storage_settings = &settings.syncstorage;
    // syncstorage.enabled = false: a tokenserver-only process (its nodes serve storage).
    let storage = if storage_settings.enabled {
        Some(
            db::open_storage(
                &settings.storage_url(),
                &storage_settings.pool(),
                storage_settings.spanner_emulator_host.as_deref(),
                StorageConfig {
                    limits: storage_settings.limits.clone(),
                    enable_quota: storage_settings.enable_quota,
                    enforce_quota: storage_settings.enforce_quota,
                },
            )
            .await?,
        )
    } else {
        None
    };
    let listener = TcpListener::bind((settings.host.as_str(), settings.port)).map_err(|e| {
        format!(
            "host/port: cannot listen on {}:{}: {e}",
            settings.host, settings.port
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if settings.public_url.is_none() && addr.ip().is_unspecified() {
        slog_scope::warn!(
            "listening on every interface without public_url: Firefox is told this server is \
             at the node below, which other machines cannot reach; set public_url";
            "node" => public_url(&settings, addr)
        );
    }
    let tokenserver = if settings.tokenserver.enabled {
        Some(Arc::new(open_tokenserver(&settings, addr).await?))
    } else {
        None
    };
    let metrics_addr = start_metrics(&settings, addr, &storage, &tokenserver)?;
    let summary = summary(&settings, addr, metrics_addr, secret_source);
    let state = AppState::new(
        storage,
        Secrets::new(&settings.master_secret),
        storage_settings.limits.clone(),
        storage_settings.enable_quota,
    )
    .with_lbheartbeat_ttl(
        storage_settings.lbheartbeat_ttl,
        storage_settings.lbheartbeat_ttl_jitter,
    )
    .with_tokenserver(tokenserver, settings.tokenserver.fxa_webhook_enabled)
    .with_hawk_policy(settings.hawk.policy())
    .with_public_url(
        settings
            .public_url
            .as_deref()
            .map(web::headers::PublicUrl::parse)
            .transpose()?,
    )
    .with_body_pace(web::extract::BodyPace {
        idle: Duration::from_secs(settings.http.body_idle_timeout.into()),
        min_rate: settings.http.body_min_rate,
    });
    let cors = CorsSettings {
        allowed_origin: settings.cors_allowed_origin.clone(),
        max_age: settings.cors_max_age,
    };
    let header_timeout = Duration::from_secs(settings.http.header_timeout.into());
    let server = web::serve(
        listener,
        state,
        cors,
        settings.actix_keep_alive,
        header_timeout,
    )
    .map_err(|e| e.to_string())?;
    Ok(Running {
        addr,
        server,
        metrics_addr,
        summary,
    })
}

/// The start-up block: what runs, on what, and what to tell Firefox.
fn summary(
    settings: &Settings,
    addr: std::net::SocketAddr,
    metrics_addr: Option<std::net::SocketAddr>,
    secret_source: String,
) -> Vec<(&'static str, String)> {
    use crate::secret::redact_url;
    let data_dir = std::path::absolute(&settings.data_dir).unwrap_or(settings.data_dir.clone());
    let public = public_url(settings, addr);
    let mut lines = vec![("version", env!("CARGO_PKG_VERSION").to_owned())];
    if settings.syncstorage.enabled {
        let url = settings.storage_url();
        lines.push(("storage backend", engine_name(&url).to_owned()));
        lines.push(("storage database", redact_url(&url)));
    } else {
        lines.push(("storage", "off (tokenserver only)".to_owned()));
    }
    if settings.tokenserver.enabled {
        lines.push((
            "tokenserver database",
            redact_url(&settings.tokenserver_url()),
        ));
    }
    lines.push(("data directory", data_dir.display().to_string()));
    lines.push(("master secret", secret_source));
    lines.push(("listening on", format!("http://{addr}")));
    lines.push(("public URL", public.clone()));
    if settings.tokenserver.enabled {
        lines.push((
            "identity.sync.tokenserver.uri",
            format!("{public}/1.0/sync/1.5"),
        ));
    }
    lines.push((
        "prometheus",
        metrics_addr.map_or("off".to_owned(), |a| format!("http://{a}/metrics")),
    ));
    lines.push((
        "statsd",
        settings.statsd_host.as_ref().map_or("off".to_owned(), |h| {
            format!("{h}:{}", settings.statsd_port)
        }),
    ));
    lines
}

/// StatsD and the Prometheus listener, as the settings ask; returns where Prometheus scrapes.
fn start_metrics(
    settings: &Settings,
    public: std::net::SocketAddr,
    storage: &Option<db::SharedStorage>,
    tokenserver: &Option<Arc<Tokenserver>>,
) -> Result<Option<std::net::SocketAddr>, String> {
    if let Some(host) = &settings.statsd_host {
        crate::metrics::start_statsd(&crate::metrics::StatsdTarget {
            host: host.clone(),
            port: settings.statsd_port,
            storage_label: settings.syncstorage.statsd_label.clone(),
            tokenserver_label: settings.tokenserver.statsd_label.clone(),
            hostname: settings
                .include_hostname_tag
                .then(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())),
        })?;
        crate::metrics::statsd_pool_gauges(storage.clone());
    }
    let Some(listen) = &settings.metrics.prometheus_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen.as_str())
        .map_err(|e| format!("metrics.prometheus_listen: cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if addr.port() == public.port() {
        return Err(format!(
            "metrics.prometheus_listen: {listen} is the public port; metrics need a port of \
             their own"
        ));
    }
    let handle = crate::metrics::start_prometheus()?;
    let storage = storage.clone();
    let tokenserver_db = tokenserver.as_ref().map(|t| t.db.clone());
    let render = move || {
        if let Some(storage) = &storage {
            crate::metrics::pool_gauges("storage", storage.pool_state());
        }
        if let Some(db) = &tokenserver_db {
            crate::metrics::pool_gauges("tokenserver", db.pool_state());
        }
        handle.render()
    };
    let server = actix_web::HttpServer::new(move || {
        let render = render.clone();
        actix_web::App::new().route(
            "/metrics",
            actix_web::web::get().to(move || {
                let body = render();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .map_err(|e| format!("metrics.prometheus_listen: {e}"))?
    .run();
    actix_web::rt::spawn(server);
    Ok(Some(addr))
}

/// The URL Firefox reaches this server at: `public_url`, else the listen address (a wildcard
/// address is shown as `localhost`; set `public_url` for other machines).
pub fn public_url(settings: &Settings, addr: std::net::SocketAddr) -> String {
    if let Some(url) = &settings.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

/// The engine name reported as `node_type` when none is configured.
fn engine_name(url: &str) -> &'static str {
    if db::mysql::is_mysql_url(url) {
        "mysql"
    } else if db::postgres::is_postgres_url(url) {
        "postgres"
    } else if url.starts_with("spanner://") {
        "spanner"
    } else {
        "sqlite"
    }
}

/// The tokenserver with its database; its node is `init_node_url` or this server itself.
async fn open_tokenserver(
    settings: &Settings,
    addr: std::net::SocketAddr,
) -> Result<Tokenserver, String> {
    let ts = &settings.tokenserver;
    let url = settings.tokenserver_url();
    let db = crate::tokenserver::db::open_tokenserver_db(&url, &ts.pool())?;
    let node = public_url(settings, addr);
    let node_type = ts
        .node_type
        .clone()
        .unwrap_or_else(|| engine_name(&settings.storage_url()).to_owned());
    let tokenserver = Tokenserver::open(
        db,
        ts.clone(),
        Secrets::new(&settings.master_secret),
        &node,
        node_type,
    )
    .await?;
    slog_scope::info!("tokenserver enabled"; "public_url" => &node);
    Ok(tokenserver)
}
