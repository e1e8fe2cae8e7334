//! Start-up: settings in, a running server out. Shared by `main` and the black-box tests.

use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};

use crate::auth::Secrets;
use crate::db::{self, StorageConfig};
use crate::settings::Settings;
use crate::web::{self, AppState, CorsSettings};

/// A started server and the address it listens on.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub server: Server,
}

impl Running {
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }
}

/// Opens the database (running migrations), binds `host:port` (port 0 picks one) and starts
/// serving. Errors are start-up failures with a message naming the setting.
pub fn start(mut settings: Settings) -> Result<Running, String> {
    if settings.syncstorage.database_url.is_none() {
        crate::settings::create_private_dir(&settings.data_dir)?;
    }
    settings.resolve_master_secret()?;
    if !settings.syncstorage.enabled {
        return Err(
            "syncstorage.enabled = false: this build serves storage only, so it must stay enabled"
                .into(),
        );
    }
    let storage_settings = &settings.syncstorage;
    let storage = db::open_storage(
        &settings.storage_url(),
        &storage_settings.pool(),
        StorageConfig {
            limits: storage_settings.limits.clone(),
            enable_quota: storage_settings.enable_quota,
            enforce_quota: storage_settings.enforce_quota,
        },
    )?;
    let listener = TcpListener::bind((settings.host.as_str(), settings.port)).map_err(|e| {
        format!(
            "host/port: cannot listen on {}:{}: {e}",
            settings.host, settings.port
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = AppState::new(
        storage,
        Secrets::new(&settings.master_secret),
        storage_settings.limits.clone(),
        storage_settings.enable_quota,
    )
    .with_lbheartbeat_ttl(
        storage_settings.lbheartbeat_ttl,
        storage_settings.lbheartbeat_ttl_jitter,
    );
    let cors = CorsSettings {
        allowed_origin: settings.cors_allowed_origin.clone(),
        max_age: settings.cors_max_age,
    };
    let server =
        web::serve(listener, state, cors, settings.actix_keep_alive).map_err(|e| e.to_string())?;
    Ok(Running { addr, server })
}
