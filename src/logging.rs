//! slog set-up: MozLog JSON lines by default, human-readable with `human_logs = true`.
//! The `log` crate (used by dependencies) is routed into the same logger.

use slog::{Drain, Logger, o};

pub struct LogGuard {
    _scope: slog_scope::GlobalLoggerGuard,
}

fn level_from_env() -> slog::Level {
    match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => slog::Level::Error,
        "warn" => slog::Level::Warning,
        "debug" => slog::Level::Debug,
        "trace" => slog::Level::Trace,
        _ => slog::Level::Info,
    }
}

/// Installs the global logger; keep the guard alive for the process's lifetime.
pub fn init(human: bool) -> LogGuard {
    let level = level_from_env();
    let logger = if human {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        let drain = slog_async::Async::new(drain)
            .build()
            .filter_level(level)
            .fuse();
        Logger::root(drain, o!())
    } else {
        let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let drain = slog_mozlog_json::MozLogJson::new(std::io::stdout())
            .logger_name(format!("syncserver-{}", env!("CARGO_PKG_VERSION")))
            .msg_type("syncserver:log".to_owned())
            .hostname(hostname)
            .build()
            .fuse();
        let drain = slog_async::Async::new(drain)
            .build()
            .filter_level(level)
            .fuse();
        Logger::root(drain, o!())
    };
    let scope = slog_scope::set_global_logger(logger);
    let _ = slog_stdlog::init_with_level(log::Level::Warn);
    LogGuard { _scope: scope }
}

/// Starts Sentry when SENTRY_DSN is set; the guard flushes events on drop.
pub fn init_sentry(environment: &str) -> Option<sentry::ClientInitGuard> {
    let dsn = std::env::var("SENTRY_DSN").ok().filter(|d| !d.is_empty())?;
    let mut options = sentry::ClientOptions::default();
    options.release = sentry::release_name!();
    options.environment = Some(environment.to_owned().into());
    options.send_default_pii = false;
    let guard = sentry::init((dsn, options));
    slog_scope::info!("sentry enabled");
    Some(guard)
}
