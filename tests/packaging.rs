//! The packaging files, checked by the tools that read them: every compose file by
//! `docker-compose config` (Debian's docker-compose; no Docker daemon is needed, none runs
//! here) and the systemd unit by `systemd-analyze verify`, pointed at the built binary. Where a
//! tool is missing the test says so on stderr; `SYNC_TEST_REQUIRE_BACKENDS` containing
//! `packaging` (CI) makes that a failure.

use std::path::Path;
use std::process::Command;

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required = std::env::var("SYNC_TEST_REQUIRE_BACKENDS")
            .unwrap_or_default()
            .split(',')
            .any(|e| e.trim() == "packaging");
        assert!(!required, "{name} is required but not installed");
        eprintln!("NOTE: {name} is not installed: its packaging check did NOT run");
    }
    found
}

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn compose_files_are_valid_and_publish_on_loopback_only() {
    if !tool("docker-compose") {
        return;
    }
    for file in [
        "docker-compose.yml",
        "docker-compose.mysql.yml",
        "docker-compose.postgres.yml",
    ] {
        let out = Command::new("docker-compose")
            .current_dir(ROOT)
            .args(["-f", file, "config"])
            .env("DB_PASSWORD", "pw")
            .output()
            .unwrap();
        let config = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every published port is bound to 127.0.0.1, and the tokenserver is the built-in one.
        assert!(
            config.contains("host_ip: 127.0.0.1") || config.contains("127.0.0.1:8000:8000"),
            "{file}: {config}"
        );
        assert!(!config.contains("0.0.0.0:8000"), "{file}: {config}");
        assert!(config.contains("SYNC_PUBLIC_URL"), "{file}: {config}");
        assert!(!config.contains("change-me"), "{file}: {config}");
        if file != "docker-compose.yml" {
            // No database password without the operator choosing one.
            let out = Command::new("docker-compose")
                .current_dir(ROOT)
                .args(["-f", file, "config"])
                .env_remove("DB_PASSWORD")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{file} runs with no DB_PASSWORD");
        }
    }
}

#[test]
fn the_image_runs_as_a_user_with_a_healthcheck_and_keeps_secrets_out_of_its_context() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("\"healthcheck\""));
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    for kept_out in ["target/", "data/", "**/master_secret"] {
        assert!(ignore.lines().any(|l| l.trim() == kept_out), "{kept_out}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    if !tool("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(Path::new(ROOT).join("contrib/systemd/syncserver.service"))
        .unwrap();
    for hardening in [
        "DynamicUser=yes",
        "StateDirectory=syncserver",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // Verified as installed, with the binary where the unit expects it.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace(
        "/usr/local/bin/syncserver",
        env!("CARGO_BIN_EXE_syncserver"),
    );
    let path = dir.path().join("syncserver.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("syncserver.service:"),
        "{text}"
    );
}
