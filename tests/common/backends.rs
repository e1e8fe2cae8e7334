//! Which database engine a test process runs against, scratch databases per server, and the
//! re-run of a whole test binary on each reachable engine.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Engines besides SQLite, with the env var that overrides their server URL.
pub const ENGINES: &[(&str, &str, &str)] = &[
    (
        "mysql",
        "SYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306",
    ),
    (
        "postgres",
        "SYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432",
    ),
    // The Cloud Spanner emulator's gRPC endpoint (its REST endpoint: SYNC_TEST_SPANNER_REST).
    (
        "spanner",
        "SYNC_TEST_SPANNER_EMULATOR",
        "spanner://127.0.0.1:9010",
    ),
];

/// The emulator's project and instance the Spanner scratch databases live in.
pub const SPANNER_INSTANCE: &str = "projects/test-project/instances/test-instance";

/// `host:port` of the Spanner emulator's gRPC endpoint.
pub fn spanner_emulator_host() -> String {
    server_url("spanner")
        .trim_start_matches("spanner://")
        .trim_end_matches('/')
        .to_owned()
}

fn spanner_rest() -> String {
    std::env::var("SYNC_TEST_SPANNER_REST").unwrap_or_else(|_| "http://127.0.0.1:9020".into())
}

/// Creates the emulator's test instance unless it exists (idempotent).
fn ensure_spanner_instance() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let (project, instance) = SPANNER_INSTANCE
            .trim_start_matches("projects/")
            .split_once("/instances/")
            .unwrap();
        let body = format!(
            r#"{{"instanceId":"{instance}","instance":{{"config":"emulator-config","displayName":"test","nodeCount":1}}}}"#
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let r = agent
            .post(&format!("{}/v1/projects/{project}/instances", spanner_rest()))
            .header("Content-Type", "application/json")
            .send(body)
            .expect("reach the Spanner emulator's REST endpoint");
        // 409: it exists already.
        assert!(
            r.status().is_success() || r.status().as_u16() == 409,
            "create the Spanner test instance: {}",
            r.status()
        );
    });
}

/// The engine this process tests: `SYNC_TEST_BACKEND`, SQLite when unset. An unknown name is
/// an error, never a silent run on SQLite.
pub fn current() -> Option<&'static str> {
    let name = std::env::var("SYNC_TEST_BACKEND")
        .ok()
        .filter(|n| !n.is_empty())?;
    let engine = ENGINES.iter().map(|(n, _, _)| *n).find(|n| *n == name);
    assert!(
        engine.is_some(),
        "SYNC_TEST_BACKEND={name}: not one of {ENGINES:?}"
    );
    engine
}

fn server_url(engine: &str) -> String {
    let (_, var, default) = ENGINES
        .iter()
        .find(|(n, _, _)| *n == engine)
        .expect("known engine");
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn reachable(url: &str) -> bool {
    let authority = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// A database created for one test server and dropped with it.
pub struct ScratchDatabase {
    pub url: String,
    server: String,
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `sql` (one or more statements) on the server or database at `url`.
pub fn admin_exec(url: &str, sql: &str) {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
    let (url, sql) = (url.to_owned(), sql.to_owned());
    // The blocking wrapper needs a thread without a runtime.
    std::thread::spawn(move || {
        let result = if url.starts_with("postgres") {
            <AsyncConnectionWrapper<AsyncPgConnection> as Connection>::establish(&url)
                .map(|mut c| c.batch_execute(&sql))
        } else {
            <AsyncConnectionWrapper<AsyncMysqlConnection> as Connection>::establish(&url)
                .map(|mut c| c.batch_execute(&sql))
        };
        result
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
    .join()
    .unwrap();
}

impl ScratchDatabase {
    /// A fresh database on the current engine; `None` on SQLite (the server makes its file).
    pub fn create() -> Option<ScratchDatabase> {
        let engine = current()?;
        let server = server_url(engine);
        let name = format!(
            "sync_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        if engine == "spanner" {
            // The server creates the database (its migrations); dropped over REST.
            ensure_spanner_instance();
            return Some(ScratchDatabase {
                url: format!("spanner://{SPANNER_INSTANCE}/databases/{name}"),
                server,
                name,
            });
        }
        // One statement each: PostgreSQL will not create a database inside a transaction.
        admin_exec(&server, &format!("DROP DATABASE IF EXISTS {name}"));
        admin_exec(&server, &format!("CREATE DATABASE {name}"));
        Some(ScratchDatabase {
            url: format!("{}/{name}", server.trim_end_matches('/')),
            server,
            name,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if self.url.starts_with("spanner://") {
            let url = format!(
                "{}/v1/{SPANNER_INSTANCE}/databases/{}",
                spanner_rest(),
                self.name
            );
            let _ = ureq::delete(&url).call();
            return;
        }
        // The server under test may still hold pooled connections.
        let force = if self.server.starts_with("postgres") {
            " WITH (FORCE)"
        } else {
            ""
        };
        admin_exec(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {}{force}", self.name),
        );
    }
}

/// Runs this whole test binary again against `engine` (skipping the matrix tests), or says
/// plainly that it cannot. A no-op inside such a re-run.
pub fn run_suite_on(engine: &str) {
    if current().is_some() {
        return;
    }
    let url = server_url(engine);
    let required = std::env::var("SYNC_TEST_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .any(|e| e.trim() == engine);
    if !reachable(&url) {
        assert!(
            !required,
            "{engine} is required (SYNC_TEST_REQUIRE_BACKENDS) but not reachable at {url}"
        );
        // Written past the test harness's output capture on purpose: a skip must be seen.
        let exe = std::env::current_exe().unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "\nNOTE: {engine} is not reachable at {url}: the {} suite did NOT run on {engine}.",
            exe.file_name().unwrap_or_default().to_string_lossy()
        );
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.env("SYNC_TEST_BACKEND", engine);
    for (other, _, _) in ENGINES {
        cmd.args(["--skip", &format!("on_{other}")]);
    }
    let out = cmd.output().expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the suite failed on {engine}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("test result"))
        .unwrap_or("");
    let _ = writeln!(std::io::stderr(), "\n{engine}: {summary}");
}

/// One `on_<engine>` test per engine, for a test binary to run its suite everywhere.
#[macro_export]
macro_rules! backend_matrix {
    () => {
        #[test]
        fn on_mysql() {
            common::backends::run_suite_on("mysql");
        }

        #[test]
        fn on_postgres() {
            common::backends::run_suite_on("postgres");
        }

        #[test]
        fn on_spanner() {
            common::backends::run_suite_on("spanner");
        }
    };
}
