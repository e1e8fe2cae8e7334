//! One settings tree: built-in defaults < TOML file (`--config`) < `SYNC_*` environment, with
//! nested keys joined by `__` (SPEC 4.4). Names follow upstream so existing configs work.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::db::sql::PoolSettings;
use crate::protocol::Limits;
use crate::secret::{DbUrl, Secret};
use crate::tokenserver::settings::TokenserverSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// Generated and kept in `<data_dir>/master_secret` when empty.
    pub master_secret: Secret,
    pub environment: String,
    pub human_logs: bool,
    pub actix_keep_alive: Option<u32>,
    pub cors_allowed_origin: Option<String>,
    pub cors_max_age: Option<usize>,
    /// Where the zero-config defaults keep their files (database, generated secret).
    pub data_dir: PathBuf,
    /// The URL Firefox reaches this server at; the tokenserver's own node. Defaults to the
    /// listen address.
    pub public_url: Option<String>,
    pub syncstorage: StorageSettings,
    pub tokenserver: TokenserverSettings,
    pub http: HttpSettings,
    pub hawk: HawkSettings,
    /// StatsD's host (upstream's name); unset, nothing is sent (upstream defaults to
    /// `localhost`).
    pub statsd_host: Option<String>,
    pub statsd_port: u16,
    /// The StatsD pool gauges carry a `hostname` tag.
    pub include_hostname_tag: bool,
    /// `[metrics]`: the Prometheus listener.
    pub metrics: crate::metrics::MetricsSettings,
    /// Settings given that only syncstorage-rs uses (`UPSTREAM_ONLY`), for one warning.
    #[serde(skip)]
    pub upstream_only: Vec<String>,
}

/// Settings syncstorage-rs accepts that have no effect here: an upstream configuration still
/// starts, and start-up names the ones that are set.
const UPSTREAM_ONLY: &[&str] = &[
    "worker_max_blocking_threads",
    "cors_allowed_methods",
    "cors_allowed_headers",
    "syncstorage.database_pool_sweeper_task_interval",
    "syncstorage.database_spanner_route_to_leader",
    "syncstorage.glean_enabled",
    "syncstorage.gcs_payload_bucket",
    "syncstorage.gcs_payload_offload_collections",
    "syncstorage.gcs_payload_max_concurrency",
    "syncstorage.gcs_endpoint",
];

/// The names a table of the settings tree accepts (`None`: not a table of ours).
fn known_keys(table: &str) -> Option<&'static [&'static str]> {
    use serde_aux::serde_introspection::serde_introspect;
    Some(match table {
        "" => serde_introspect::<Settings>(),
        "syncstorage" => serde_introspect::<StorageSettings>(),
        "syncstorage.limits" => serde_introspect::<Limits>(),
        "tokenserver" => serde_introspect::<TokenserverSettings>(),
        "http" => serde_introspect::<HttpSettings>(),
        "hawk" => serde_introspect::<HawkSettings>(),
        "metrics" => serde_introspect::<crate::metrics::MetricsSettings>(),
        _ => return None,
    })
}

/// Refuses settings nobody reads (a misspelled name would otherwise leave its default in place
/// silently), naming each, where it came from and the closest known name; returns those that
/// only syncstorage-rs reads.
fn check_unknown_keys(
    unknown: Vec<String>,
    env: &std::collections::HashMap<String, String>,
) -> Result<Vec<String>, String> {
    let mut upstream = Vec::new();
    let mut errors = Vec::new();
    for key in unknown {
        if UPSTREAM_ONLY.contains(&key.as_str()) {
            upstream.push(key);
            continue;
        }
        // A JWK carries members we do not read (alg, use, fxa-createdAt...).
        if key.starts_with("tokenserver.fxa_oauth_primary_jwk.")
            || key.starts_with("tokenserver.fxa_oauth_secondary_jwk.")
        {
            continue;
        }
        let (table, name) = key.rsplit_once('.').unwrap_or(("", &key));
        let var = format!("{ENV_PREFIX}_{}", key.replace('.', "__").to_uppercase());
        let from = if env.contains_key(&var) {
            var
        } else {
            "the config file".to_owned()
        };
        let upstream_here = UPSTREAM_ONLY.iter().filter_map(|k| {
            let (t, n) = k.rsplit_once('.').unwrap_or(("", k));
            (t == table).then_some(n)
        });
        let closest = known_keys(table)
            .unwrap_or_default()
            .iter()
            .copied()
            .chain(upstream_here)
            .map(|known| (strsim::levenshtein(name, known), known))
            .min()
            .filter(|(distance, known)| *distance <= (known.len() / 3).max(2));
        let hint = match closest {
            Some((_, known)) if table.is_empty() => format!("; did you mean `{known}`?"),
            Some((_, known)) => format!("; did you mean `{table}.{known}`?"),
            None => String::new(),
        };
        errors.push(format!("unknown setting `{key}` (from {from}){hint}"));
    }
    if errors.is_empty() {
        upstream.sort();
        Ok(upstream)
    } else {
        Err(errors.join("\n"))
    }
}

/// How strictly storage requests' Hawk headers are checked (`[hawk]`, `SYNC_HAWK__*`). The
/// defaults are upstream's, which every Firefox works with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HawkSettings {
    /// Seconds a request's `ts` may differ from the server's clock.
    pub max_skew_seconds: u64,
    /// Recent (token, ts, nonce) triples remembered to refuse replays; 0 = off.
    pub nonce_cache_size: usize,
    /// Writes must sign their body (`hash`); Firefox does not, so off by default.
    pub verify_payload_hash: bool,
}

impl Default for HawkSettings {
    fn default() -> Self {
        HawkSettings {
            max_skew_seconds: crate::auth::hawk::MAX_SKEW.as_secs(),
            nonce_cache_size: 0,
            verify_payload_hash: false,
        }
    }
}

impl HawkSettings {
    pub fn policy(&self) -> crate::auth::hawk::HawkPolicy {
        crate::auth::hawk::HawkPolicy {
            max_skew: std::time::Duration::from_secs(self.max_skew_seconds),
            nonces: (self.nonce_cache_size > 0)
                .then(|| crate::auth::nonces::NonceCache::new(self.nonce_cache_size)),
            verify_payload_hash: self.verify_payload_hash,
        }
    }
}

/// How long a client may take: a slow or stalled client is cut off instead of holding a
/// connection, a worker and its partial body forever (`[http]`, `SYNC_HTTP__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Seconds to send the request line and headers.
    pub header_timeout: u32,
    /// Seconds a request body may go without sending anything (408).
    pub body_idle_timeout: u32,
    /// Bytes per second a body must average once its first `body_idle_timeout` seconds are up
    /// (408 when it falls behind), so a trickle cannot hold a connection either.
    pub body_min_rate: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        // A 2.5 MB upload at 4 KiB/s (a very bad mobile link) takes ~10 minutes and passes.
        HttpSettings {
            header_timeout: 10,
            body_idle_timeout: 15,
            body_min_rate: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    pub enabled: bool,
    /// Defaults to `sqlite:<data_dir>/syncserver.db`.
    pub database_url: Option<DbUrl>,
    pub database_pool_max_size: u32,
    pub database_pool_connection_timeout: u32,
    pub database_pool_connection_lifespan: Option<u32>,
    pub database_pool_connection_max_idle: Option<u32>,
    /// Seconds a storage request may spend on the database before 503 + X-Weave-Backoff.
    pub database_request_timeout: u32,
    /// Run the embedded migrations at start-up.
    pub run_migrations: bool,
    pub enable_quota: bool,
    pub enforce_quota: bool,
    pub lbheartbeat_ttl: Option<u32>,
    pub lbheartbeat_ttl_jitter: u32,
    /// `host:port` of a Cloud Spanner emulator (else SPANNER_EMULATOR_HOST, else Google Cloud).
    pub spanner_emulator_host: Option<String>,
    /// The prefix of the storage API's StatsD metrics.
    pub statsd_label: String,
    pub limits: Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "127.0.0.1".into(),
            port: 8000,
            master_secret: Secret::default(),
            environment: "dev".into(),
            human_logs: false,
            actix_keep_alive: None,
            cors_allowed_origin: Some("*".into()),
            cors_max_age: Some(1_728_000),
            data_dir: PathBuf::from("data"),
            public_url: None,
            syncstorage: StorageSettings::default(),
            tokenserver: TokenserverSettings::default(),
            http: HttpSettings::default(),
            hawk: HawkSettings::default(),
            statsd_host: None,
            statsd_port: 8125,
            include_hostname_tag: false,
            metrics: crate::metrics::MetricsSettings::default(),
            upstream_only: Vec::new(),
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        let pool = PoolSettings::default();
        StorageSettings {
            enabled: true,
            database_url: None,
            database_pool_max_size: pool.max_size,
            database_pool_connection_timeout: pool.connection_timeout_secs,
            database_pool_connection_lifespan: None,
            database_pool_connection_max_idle: None,
            database_request_timeout: pool.request_timeout_secs,
            run_migrations: true,
            enable_quota: false,
            enforce_quota: false,
            lbheartbeat_ttl: None,
            lbheartbeat_ttl_jitter: 25,
            spanner_emulator_host: None,
            statsd_label: "syncstorage".into(),
            limits: Limits::default(),
        }
    }
}

impl StorageSettings {
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_size: self.database_pool_max_size,
            connection_timeout_secs: self.database_pool_connection_timeout,
            connection_lifespan_secs: self.database_pool_connection_lifespan,
            connection_max_idle_secs: self.database_pool_connection_max_idle,
            run_migrations: self.run_migrations,
            request_timeout_secs: self.database_request_timeout,
        }
    }
}

const ENV_PREFIX: &str = "SYNC";

impl Settings {
    /// Reads defaults, the optional TOML file and the process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Settings, String> {
        Self::load_from(config_file, std::env::vars())
    }

    /// Like `load`, with the environment given explicitly (tests).
    pub fn load_from(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, String> {
        let mut builder = config::Config::builder();
        if let Some(path) = config_file {
            if !path.exists() {
                return Err(format!("--config: file {} does not exist", path.display()));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SYNC_"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.clone())),
        );
        let raw = builder
            .build()
            .map_err(|e| format!("invalid settings: {e}"))?;
        let mut unknown = Vec::new();
        let mut settings: Settings =
            serde_ignored::deserialize(raw, |path| unknown.push(path.to_string()))
                .map_err(|e| format!("invalid setting: {e}"))?;
        settings.upstream_only = check_unknown_keys(unknown, &env)?;
        settings.syncstorage.limits.validate()?;
        if settings.syncstorage.database_pool_max_size == 0 {
            return Err("syncstorage.database_pool_max_size must be greater than 0".into());
        }
        if settings.syncstorage.enforce_quota && !settings.syncstorage.enable_quota {
            return Err("syncstorage.enforce_quota needs syncstorage.enable_quota = true".into());
        }
        if settings.host.trim().is_empty() {
            return Err("host must not be empty".into());
        }
        if settings
            .syncstorage
            .database_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            settings.syncstorage.database_url = None;
        }
        settings.tokenserver.validate()?;
        if settings.hawk.max_skew_seconds == 0 {
            return Err("hawk.max_skew_seconds must be greater than 0".into());
        }
        let http = &settings.http;
        if http.header_timeout == 0 || http.body_idle_timeout == 0 || http.body_min_rate == 0 {
            return Err(
                "http.header_timeout, http.body_idle_timeout and http.body_min_rate must be greater than 0"
                    .into(),
            );
        }

        settings.public_url = settings
            .public_url
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty());
        if let Some(url) = &settings.public_url {
            crate::web::headers::PublicUrl::parse(url)?;
        }
        Ok(settings)
    }

    /// The storage database URL, defaulting to a SQLite file in the data directory.
    pub fn storage_url(&self) -> String {
        self.syncstorage
            .database_url
            .as_deref()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("syncserver.db").display()))
    }

    /// Limits the storage backend can honour: on Spanner one batch must commit in one
    /// transaction (SPEC 5.3), so max_total_records/bytes are clamped to its mutation budget.
    pub fn clamp_limits_to_backend(&mut self) {
        if crate::db::spanner::is_spanner_url(&self.storage_url()) {
            let limits = &mut self.syncstorage.limits;
            limits.max_total_records = limits
                .max_total_records
                .min(crate::db::spanner::MAX_TOTAL_RECORDS);
            limits.max_total_bytes = limits
                .max_total_bytes
                .min(crate::db::spanner::MAX_TOTAL_BYTES);
        }
    }

    /// Makes the directories of the SQLite files: only the data directory and those under it;
    /// elsewhere a missing directory is an error naming the setting (a mistyped path must not
    /// quietly become a new, empty database).
    pub fn prepare_sqlite_dirs(&self) -> Result<(), String> {
        let urls = [
            ("syncstorage.database_url", self.storage_url()),
            ("tokenserver.database_url", self.tokenserver_url()),
        ];
        for (setting, url) in urls {
            let Some(target) = crate::db::sqlite::SqliteTarget::from_url(&url) else {
                continue;
            };
            let Some(dir) = target.path.parent().filter(|d| !d.as_os_str().is_empty()) else {
                continue;
            };
            if dir.is_dir() {
                continue;
            }
            if !dir.starts_with(&self.data_dir) {
                return Err(format!(
                    "{setting}: directory {} does not exist (create it first; only directories under data_dir {} are created)",
                    dir.display(),
                    self.data_dir.display()
                ));
            }
            create_private_dir(&self.data_dir)?;
            fs::create_dir_all(dir)
                .map_err(|e| format!("{setting}: cannot create {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// The tokenserver database URL: by default the storage database when that is a server
    /// database, else a SQLite file of its own beside the storage file.
    pub fn tokenserver_url(&self) -> String {
        if let Some(url) = &self.tokenserver.database_url {
            return url.to_string();
        }
        let storage = self.storage_url();
        if storage.starts_with("mysql://") || storage.starts_with("postgres") {
            storage
        } else {
            format!("sqlite:{}", self.data_dir.join("tokenserver.db").display())
        }
    }

    /// The configured master secret, or the one kept in `<data_dir>/master_secret`: whether
    /// there is one (none is an error only when the file exists but is empty).
    pub fn load_master_secret(&mut self) -> Result<bool, String> {
        if !self.master_secret.is_empty() {
            return Ok(true);
        }
        let path = self.data_dir.join("master_secret");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(false);
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Err(format!("master_secret: {} is empty", path.display()));
        }
        self.master_secret = secret.into();
        Ok(true)
    }

    /// The configured master secret, or the one kept in `<data_dir>/master_secret`, generated
    /// (mode 0600) on first start so restarts keep issued tokens valid. Says which, for the
    /// start-up summary.
    pub fn resolve_master_secret(&mut self) -> Result<String, String> {
        let path = self.data_dir.join("master_secret");
        let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let configured = !self.master_secret.is_empty();
        if self.load_master_secret()? {
            return Ok(if configured {
                "from the settings (master_secret)".to_owned()
            } else {
                format!("loaded from {}", shown.display())
            });
        }
        create_private_dir(&self.data_dir)?;
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let secret = hex::encode(bytes);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .map_err(|e| format!("master_secret: cannot create {}: {e}", path.display()))?;
        file.write_all(secret.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| format!("master_secret: cannot write {}: {e}", path.display()))?;
        self.master_secret = secret.into();
        Ok(format!("generated in {}", shown.display()))
    }
}

/// Creates the data directory readable by its owner only (it holds the secret and the data).
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("data_dir: cannot create {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 8000));
        assert!(s.storage_url().starts_with("sqlite:data"));
        assert_eq!(s.syncstorage.limits, Limits::default());
        assert!(!s.human_logs);
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        fs::write(&file, "port = 9000\nhuman_logs = true\n[syncstorage]\ndatabase_url = \"sqlite:x.db\"\n[syncstorage.limits]\nmax_post_records = 5\nmax_total_records = 7\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("SYNC_PORT", "9100"),
                ("SYNC_MASTER_SECRET", "1234"),
                ("SYNC_SYNCSTORAGE__LIMITS__MAX_TOTAL_RECORDS", "9"),
                (
                    "SYNC_SYNCSTORAGE__LIMITS__COLLECTIONS",
                    "{\"tabs\": {\"max_post_bytes\": 3}}",
                ),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.port, 9100);
        assert!(s.human_logs);
        assert_eq!(s.master_secret, "1234");
        assert_eq!(s.storage_url(), "sqlite:x.db");
        assert_eq!(s.syncstorage.limits.max_post_records, 5);
        assert_eq!(s.syncstorage.limits.max_total_records, 9);
        assert_eq!(
            s.syncstorage.limits.for_collection("tabs").max_post_bytes,
            3
        );
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let e = Settings::load_from(None, env(&[("SYNC_PORT", "notaport")])).unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = Settings::load_from(
            None,
            env(&[("SYNC_SYNCSTORAGE__LIMITS__MAX_POST_RECORDS", "0")]),
        )
        .unwrap_err();
        assert!(e.contains("max_post_records"), "{e}");
        let e = Settings::load_from(None, env(&[("SYNC_SYNCSTORAGE__ENFORCE_QUOTA", "true")]))
            .unwrap_err();
        assert!(e.contains("enable_quota"), "{e}");
        let e = Settings::load_from(Some(Path::new("/nonexistent.toml")), env(&[])).unwrap_err();
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn misspelled_settings_stop_start_up_with_the_closest_name() {
        let e = Settings::load_from(
            None,
            env(&[("SYNC_SYNCSTORAGE__DATABSE_URL", "mysql://root@h/x")]),
        )
        .unwrap_err();
        assert!(e.contains("SYNC_SYNCSTORAGE__DATABSE_URL"), "{e}");
        assert!(e.contains("`syncstorage.database_url`"), "{e}");
        let e = Settings::load_from(None, env(&[("SYNC_MASTER_SECRETS", "x")])).unwrap_err();
        assert!(e.contains("did you mean `master_secret`"), "{e}");
        // A double underscore after the prefix is no setting either.
        let e = Settings::load_from(None, env(&[("SYNC__PORT", "1")])).unwrap_err();
        assert!(e.contains("SYNC__PORT"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        fs::write(
            &file,
            "[syncstorage]\ndatabse_url = \"sqlite:x.db\"\n[tokenserver]\nenabeld = true\n",
        )
        .unwrap();
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            e.contains("`syncstorage.databse_url` (from the config file)"),
            "{e}"
        );
        assert!(e.contains("did you mean `syncstorage.database_url`"), "{e}");
        assert!(e.contains("did you mean `tokenserver.enabled`"), "{e}");
        // Nothing close: no guess.
        let e = Settings::load_from(None, env(&[("SYNC_HTTP__ZZZZZZZZZZ", "1")])).unwrap_err();
        assert!(
            e.contains("`http.zzzzzzzzzz`") && !e.contains("did you mean"),
            "{e}"
        );
    }

    #[test]
    fn upstream_settings_are_accepted_and_named() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SYNC_WORKER_MAX_BLOCKING_THREADS", "512"),
                ("SYNC_SYNCSTORAGE__GLEAN_ENABLED", "false"),
                // A JWK as FxA publishes it, members we do not read included.
                ("SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK__KTY", "RSA"),
                ("SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK__N", "abc"),
                ("SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK__E", "AQAB"),
                ("SYNC_TOKENSERVER__FXA_OAUTH_PRIMARY_JWK__ALG", "RS256"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.upstream_only,
            vec![
                "syncstorage.glean_enabled".to_owned(),
                "worker_max_blocking_threads".to_owned()
            ]
        );
        assert!(s.tokenserver.fxa_oauth_primary_jwk.is_some());

        // The whole JWK in one variable, as JSON.
        let s = Settings::load_from(
            None,
            env(&[(
                "SYNC_TOKENSERVER__FXA_OAUTH_SECONDARY_JWK",
                r#"{"kty":"RSA","alg":"RS256","kid":"k1","use":"sig","n":"abc","e":"AQAB"}"#,
            )]),
        )
        .unwrap();
        let jwk = s.tokenserver.fxa_oauth_secondary_jwk.unwrap();
        assert_eq!((jwk.n.as_str(), jwk.kid.as_deref()), ("abc", Some("k1")));
        let e = Settings::load_from(
            None,
            env(&[("SYNC_TOKENSERVER__FXA_OAUTH_SECONDARY_JWK", "{not json")]),
        )
        .unwrap_err();
        assert!(e.contains("JWK"), "{e}");
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.example.toml");
        let s = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(s.syncstorage.limits, Limits::default());
        assert!(s.human_logs);
    }

    #[test]
    fn debug_output_has_no_secret_and_no_password() {
        let mut s = Settings {
            master_secret: "hunter2-master".into(),
            ..Default::default()
        };
        s.syncstorage.database_url = Some("mysql://sync:pw-storage@db/sync".into());
        s.tokenserver.database_url = Some("postgres://ts:pw-token@db/ts".into());
        s.tokenserver.fxa_metrics_hash_secret = "hunter2-hash".into();
        let text = format!("{s:?}");
        for secret in ["hunter2", "pw-storage", "pw-token"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("mysql://sync:****@db/sync"), "{text}");
    }

    #[test]
    fn master_secret_is_generated_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings {
            data_dir: dir.path().join("d"),
            ..Settings::default()
        };
        let how = s.resolve_master_secret().unwrap();
        assert!(how.starts_with("generated in /"), "{how}");
        assert_eq!(s.master_secret.len(), 64);
        let path = dir.path().join("d/master_secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let mut again = Settings {
            data_dir: dir.path().join("d"),
            ..Settings::default()
        };
        let how = again.resolve_master_secret().unwrap();
        assert!(how.starts_with("loaded from /"), "{how}");
        assert_eq!(again.master_secret, s.master_secret);
    }
}
