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

/// Env var naming the database a re-run's tests may share (`ScratchDatabase::shared`).
pub const SHARED_DB: &str = "SYNC_TEST_SHARED_DB";

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
        let name = format!(
            "sync_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Some(Self::create_named(engine, name))
    }

    /// The database a re-run on `engine` may share between its tests (`SHARED_DB`): not
    /// created here; dropping the handle drops it if a test created it.
    fn shared_handle(engine: &str, name: String) -> ScratchDatabase {
        let server = server_url(engine);
        let url = if engine == "spanner" {
            format!("spanner://{SPANNER_INSTANCE}/databases/{name}")
        } else {
            format!("{}/{name}", server.trim_end_matches('/'))
        };
        ScratchDatabase { url, server, name }
    }

    /// A fresh database named `name` on `engine` (a server engine).
    pub fn create_named(engine: &str, name: String) -> ScratchDatabase {
        let server = server_url(engine);
        if engine == "spanner" {
            // The server creates the database (its migrations); dropped over REST.
            ensure_spanner_instance();
            return ScratchDatabase {
                url: format!("spanner://{SPANNER_INSTANCE}/databases/{name}"),
                server,
                name,
            };
        }
        // One statement each: PostgreSQL will not create a database inside a transaction.
        admin_exec(&server, &format!("DROP DATABASE IF EXISTS {name}"));
        admin_exec(&server, &format!("CREATE DATABASE {name}"));
        ScratchDatabase {
            url: format!("{}/{name}", server.trim_end_matches('/')),
            server,
            name,
        }
    }

    /// The database this re-run's tests may share (named by the parent process, which drops
    /// it afterwards), created on first use; `None` on SQLite or outside a matrix re-run.
    /// Tests sharing it must keep to users of their own.
    pub fn shared() -> Option<&'static ScratchDatabase> {
        static SHARED: std::sync::OnceLock<Option<ScratchDatabase>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                let engine = current()?;
                let name = std::env::var(SHARED_DB).ok().filter(|n| !n.is_empty())?;
                Some(Self::create_named(engine, name))
            })
            .as_ref()
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

// ---- Tests that do not apply to every engine ----
//
// A test that is not meant for every engine says so in its name, with one of the `TAGS` below,
// either as the module it sits in (`mod mysql_layout_only { ... }`, which keeps the function's
// own name) or as a `_<tag>` suffix. It must never `return` early on the other engines: that
// would count as passed. Instead:
// * the re-run on an engine (`run_suite_on`) passes `--skip` for every test whose tags exclude
//   that engine, so libtest counts it as "filtered out" there;
// * the base run (plain `cargo test`, SQLite) cannot be given arguments, so a test whose tags
//   exclude SQLite also carries `#[ignore = "not on SQLite: ..."]` (libtest counts it as
//   "ignored"); the re-runs on the engines it applies to run it with `--include-ignored`.
//   Tests ignored for any other reason (`#[ignore = "bug: ..."]`) stay out of every run.
// * `engine_tags_match_ignores` (added by `backend_matrix!`) fails when a test excluded from
//   SQLite is not ignored, or a "not on SQLite" ignore has no tag saying where it does run.
// A whole binary that does not apply to an engine uses `backend_matrix!(not_spanner: "why")`:
// its `on_spanner` test is then ignored, with the reason.

/// Engine tags and the engines each one lets a test run on. No tag is a substring of another.
pub const TAGS: &[(&str, &[&str])] = &[
    ("sqlite_only", &["sqlite"]),
    ("mysql_only", &["mysql"]),
    ("postgres_only", &["postgres"]),
    ("pooled_engines_only", &["mysql", "postgres"]),
    ("mysql_layout_only", &["sqlite", "mysql"]),
    ("uuid_batches_only", &["postgres", "spanner"]),
    ("server_engines_only", &["mysql", "postgres", "spanner"]),
    ("not_spanner", &["sqlite", "mysql", "postgres"]),
];

/// The reason every ignore for "does not apply to SQLite" starts with.
pub const NOT_ON_SQLITE: &str = "not on SQLite";

/// The engine this process tests, SQLite included.
pub fn engine() -> &'static str {
    current().unwrap_or("sqlite")
}

/// Whether the test named `test` (its full libtest path) applies to `engine`: every tag in its
/// name must allow the engine.
pub fn runs_on(test: &str, engine: &str) -> bool {
    TAGS.iter()
        .filter(|(tag, _)| test.contains(tag))
        .all(|(_, engines)| engines.contains(&engine))
}

/// The names of this binary's tests (`--list`), all or only the ignored ones.
fn list_tests(ignored: bool) -> Vec<String> {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(["--list", "--format", "terse"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let out = cmd.output().expect("list the tests");
    assert!(out.status.success(), "--list failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

/// The ignored tests with their reasons: asking libtest to run exactly these (without
/// `--include-ignored`) runs nothing and prints `test NAME ... ignored, REASON` for each.
fn ignore_reasons() -> Vec<(String, String)> {
    let ignored = list_tests(true);
    if ignored.is_empty() {
        // No filter at all would run every test.
        return vec![];
    }
    let out = Command::new(std::env::current_exe().expect("test binary path"))
        .arg("--exact")
        .args(&ignored)
        .env_remove("SYNC_TEST_BACKEND")
        .output()
        .expect("read the ignore reasons");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ignored
        .into_iter()
        .map(|name| {
            let prefix = format!("test {name} ... ignored");
            let reason = stdout
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("{name} is listed as ignored but was not reported"));
            let reason = reason.strip_prefix(", ").unwrap_or("").to_owned();
            (name, reason)
        })
        .collect()
}

/// The guard behind the naming convention (see above).
pub fn check_engine_tags() {
    let reasons = ignore_reasons();
    let reason = |name: &str| reasons.iter().find(|(n, _)| n == name).map(|(_, r)| r);
    for test in list_tests(false) {
        let tagged_away = !runs_on(&test, "sqlite");
        match reason(&test) {
            None if tagged_away => panic!(
                "{test} does not apply to SQLite (its tag) but is not #[ignore = \"{NOT_ON_SQLITE}: ...\"]: \
                 the base run would count it as passed"
            ),
            Some(r) if r.starts_with(NOT_ON_SQLITE) && !tagged_away => panic!(
                "{test} is ignored as {r:?} but no tag in its name says which engines it runs on \
                 (tests/common/backends.rs TAGS)"
            ),
            _ => {}
        }
    }
    for (i, (a, _)) in TAGS.iter().enumerate() {
        for (b, _) in &TAGS[i + 1..] {
            assert!(!a.contains(b) && !b.contains(a), "tags {a} and {b} overlap");
        }
    }
}

/// Whether a test may use `engine` besides the one under test (a copy to another engine):
/// true when reachable; a required engine that is not fails the test; otherwise a NOTE says
/// what did not run.
pub fn other_engine_available(engine: &str, what: &str) -> bool {
    if engine == "sqlite" {
        return true;
    }
    let url = server_url(engine);
    if reachable(&url) {
        return true;
    }
    let required = std::env::var("SYNC_TEST_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .any(|e| e.trim() == engine);
    assert!(
        !required,
        "{engine} is required (SYNC_TEST_REQUIRE_BACKENDS) but not reachable at {url}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\nNOTE: {engine} is not reachable at {url}: {what} did NOT run."
    );
    false
}

/// Runs this whole test binary again against `engine` (skipping the matrix tests and the tests
/// whose tags exclude the engine, running the "not on SQLite" ones that apply to it), or says
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
    let reasons = ignore_reasons();
    let mut skip: Vec<String> = ENGINES.iter().map(|(e, _, _)| format!("on_{e}")).collect();
    let mut not_here = Vec::new();
    for test in list_tests(false) {
        if !runs_on(&test, engine) {
            not_here.push(test.clone());
            skip.push(test);
        }
    }
    // Ignored tests other than "not on SQLite" ones stay out (as filtered).
    let mut still_ignored = 0;
    for (test, reason) in &reasons {
        if !reason.starts_with(NOT_ON_SQLITE) && !skip.contains(test) {
            still_ignored += 1;
            skip.push(test.clone());
        }
    }
    // Dropped (if the suite created it) once the re-run is over, whatever its outcome.
    let shared = ScratchDatabase::shared_handle(
        engine,
        format!("sync_shared_{}_{engine}", std::process::id()),
    );
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.env("SYNC_TEST_BACKEND", engine);
    cmd.env(SHARED_DB, &shared.name);
    cmd.args(["--include-ignored", "--exact"]);
    for test in &skip {
        cmd.args(["--skip", test]);
    }
    let summary = rerun(cmd, &format!("on {engine}"));
    drop(shared);
    let mut note = String::new();
    if !not_here.is_empty() {
        note += &format!("\n  not for {engine} (filtered): {}", not_here.join(", "));
    }
    if still_ignored > 0 {
        note += &format!("\n  ignored (filtered): {still_ignored}");
    }
    let _ = writeln!(std::io::stderr(), "\n{engine}: {summary}{note}");
}

/// Runs this test binary again as `cmd` says; fails with its output unless it passed, else
/// returns its `test result` line.
pub fn rerun(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the suite failed {what}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("test result"))
        .unwrap_or("")
        .to_owned()
}

/// One `on_<engine>` test per engine, for a test binary to run its suite everywhere, and the
/// guard of the engine tags. `backend_matrix!(not_spanner: "why")`: the binary does not apply
/// to Spanner; its `on_spanner` is ignored with that reason.
#[macro_export]
macro_rules! backend_matrix {
    () => {
        $crate::backend_matrix!(@engine on_spanner "spanner");
        $crate::backend_matrix!(@common);
    };
    (not_spanner: $why:literal) => {
        #[test]
        #[ignore = $why]
        fn on_spanner() {
            common::backends::run_suite_on("spanner");
        }
        $crate::backend_matrix!(@common);
    };
    (@engine $name:ident $engine:literal) => {
        #[test]
        fn $name() {
            common::backends::run_suite_on($engine);
        }
    };
    (@common) => {
        $crate::backend_matrix!(@engine on_mysql "mysql");
        $crate::backend_matrix!(@engine on_postgres "postgres");

        #[test]
        fn engine_tags_match_ignores() {
            common::backends::check_engine_tags();
        }
    };
}
