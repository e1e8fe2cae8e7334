//! A real nginx (Debian's package) in front of a test server: it terminates TLS with a
//! self-signed certificate made here by `openssl`, and serves the server under `/sync`.
//!
//! `proxy_matrix!()` gives a suite two more tests, which re-run the suite's binary with
//! `SYNC_TEST_VIA`: `under_a_path` (`prefix`: `public_url` has the path `/sync` and every
//! request goes to the server directly under it) and `through_nginx` (`nginx`: every
//! `TestServer` gets `public_url = https://localhost:<port>/sync` and an nginx in front, and
//! every request of the suite goes through it), configured as the README says
//! (`Config::Documented`). `Config::Minimal` strips the path and forwards no headers, so the
//! server can only verify Hawk as Firefox signed it for `public_url`; it also re-encodes the
//! path, so it is tested with plain ids only (tests/self_hosting.rs).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Set in a `through_nginx` re-run.
pub const VIA: &str = "SYNC_TEST_VIA";
/// Where the server lives behind the proxy.
pub const PREFIX: &str = "/sync";

pub fn via_nginx() -> bool {
    std::env::var(VIA).as_deref() == Ok("nginx")
}

pub fn via_prefix() -> bool {
    std::env::var(VIA).as_deref() == Ok("prefix")
}

/// The nginx binary, if installed.
pub fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made once per process.
pub struct SelfSigned {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: Vec<u8>,
}

pub fn certificate() -> &'static SelfSigned {
    static CERT: OnceLock<SelfSigned> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // A server certificate, not a CA: TLS clients refuse a CA as the end entity.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read(&cert).unwrap();
        SelfSigned {
            _dir: dir,
            cert,
            key,
            pem,
        }
    })
}

/// An HTTP client that trusts the self-signed certificate (and only it).
pub fn https_client() -> reqwest::Client {
    https_client_builder().build().unwrap()
}

pub fn https_client_builder() -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(&certificate().pem).unwrap();
    reqwest::Client::builder().add_root_certificate(root)
}

/// A port nobody listens on now, chosen below the kernel's ephemeral range: a port the kernel
/// handed out for `127.0.0.1:0` is free again once dropped, so a test server binding port 0
/// (every `TestServer`) could be given it before the proxy binds it, and the proxy's clients
/// would then talk TLS to a plain-HTTP server.
pub fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    loop {
        let port = rand::thread_rng().gen_range(low..ephemeral_low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// Strips `/sync`, passes no Host or X-Forwarded-* headers.
    Minimal,
    /// The README's: keeps `/sync`, passes Host (with its port) and X-Forwarded-Proto.
    Documented,
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx on 127.0.0.1:`port` (TLS), proxying `PREFIX` to 127.0.0.1:`upstream`.
    pub fn start(port: u16, upstream: u16, config: Config) -> Nginx {
        let bin = nginx_bin().expect("nginx is not installed");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let cert = certificate();
        let location = match config {
            Config::Minimal => format!(
                "location {PREFIX}/ {{ proxy_pass http://127.0.0.1:{upstream}/; \
                 proxy_http_version 1.1; proxy_buffering off; proxy_request_buffering off; }}"
            ),
            Config::Documented => format!(
                "location {PREFIX}/ {{ proxy_pass http://127.0.0.1:{upstream}; \
                 proxy_set_header Host $http_host; \
                 proxy_set_header X-Forwarded-Proto $scheme; \
                 proxy_http_version 1.1; proxy_buffering off; proxy_request_buffering off; }}"
            ),
        };
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               client_max_body_size 0;\n\
               server {{\n\
                 listen 127.0.0.1:{port} ssl;\n\
                 server_name localhost;\n\
                 ssl_certificate {}; ssl_certificate_key {};\n\
                 {location}\n\
               }}\n\
             }}\n",
            cert.cert.display(),
            cert.key.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::File::create(&conf_path)
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        // nginx writes its pid file only after it has bound its listeners: a port that
        // answers before that belongs to some other process.
        let pid_file = nginx.dir.path().join("nginx.pid");
        while !pid_file.exists() || TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Caddy binary, if installed.
pub fn caddy_bin() -> Option<PathBuf> {
    ["/usr/bin/caddy", "/usr/local/bin/caddy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The README's Caddyfile block, as documented.
pub fn documented_caddyfile() -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```caddyfile\n")
        .expect("a caddyfile block in the README")
        + 13;
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

/// A real Caddy (Debian's package) on 127.0.0.1:`port` with the README's configuration, its
/// host and upstream replaced, and the self-signed certificate instead of one from an ACME CA.
pub struct Caddy {
    child: Child,
    dir: tempfile::TempDir,
}

impl Caddy {
    pub fn start(port: u16, upstream: u16) -> Caddy {
        let bin = caddy_bin().expect("caddy is not installed");
        let dir = tempfile::tempdir().unwrap();
        let cert = certificate();
        let site = documented_caddyfile()
            .replace(
                "sync.example.com {",
                &format!(
                    "https://localhost:{port} {{\n    tls {} {}",
                    cert.cert.display(),
                    cert.key.display()
                ),
            )
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{upstream}"));
        let conf = format!(
            "{{\n    admin off\n    auto_https disable_redirects\n    storage file_system {}\n}}\n{site}",
            dir.path().join("data").display()
        );
        let conf_path = dir.path().join("Caddyfile");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new(bin)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start caddy");
        let mut caddy = Caddy { child, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = caddy.child.try_wait() {
                panic!("caddy exited ({status}): {}", caddy.log());
            }
            assert!(
                Instant::now() < deadline,
                "caddy did not listen: {}",
                caddy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        caddy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `under_a_path` and `through_nginx` tests: re-runs this suite's binary with
/// `SYNC_TEST_VIA=via` (above), or says plainly that it cannot. `SYNC_TEST_REQUIRE_BACKENDS`
/// containing `nginx` (CI) makes a missing nginx a failure.
/// `not_here`: tests that do not apply there (nginx answers some hostile requests itself);
/// they are filtered out of the re-run, and named.
pub fn run_suite_via(via: &str, not_here: &[&str]) {
    if std::env::var(VIA).is_ok() || super::backends::current().is_some() {
        return;
    }
    let required = std::env::var("SYNC_TEST_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .any(|e| e.trim() == "nginx");
    let exe = std::env::current_exe().expect("test binary path");
    let suite = exe
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if via == "nginx" && nginx_bin().is_none() {
        assert!(
            !required,
            "nginx is required (SYNC_TEST_REQUIRE_BACKENDS) but not installed"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\nNOTE: nginx is not installed: the {suite} suite did NOT run through a proxy."
        );
        return;
    }
    let mut cmd = Command::new(&exe);
    cmd.env(VIA, via)
        .args([
            "--exact",
            "--skip",
            "through_nginx",
            "--skip",
            "under_a_path",
        ])
        .args([
            "--skip",
            "on_mysql",
            "--skip",
            "on_postgres",
            "--skip",
            "on_spanner",
        ]);
    for test in not_here {
        cmd.args(["--skip", test]);
    }
    let summary = super::backends::rerun(cmd, &format!("via {via}"));
    let note = if not_here.is_empty() {
        String::new()
    } else {
        format!("\n  not via {via} (filtered): {}", not_here.join(", "))
    };
    let _ = writeln!(std::io::stderr(), "\nvia {via}: {summary}{note}");
}

/// The tests of a suite that must also pass under a path and behind a TLS proxy.
#[macro_export]
macro_rules! proxy_matrix {
    () => {
        $crate::proxy_matrix!(not_through_nginx: []);
    };
    (not_through_nginx: [$($test:literal),*]) => {
        #[test]
        fn under_a_path() {
            common::proxy::run_suite_via("prefix", &[]);
        }

        #[test]
        fn through_nginx() {
            common::proxy::run_suite_via("nginx", &[$($test),*]);
        }
    };
}
