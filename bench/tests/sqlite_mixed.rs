//! The bench binary against the real server binary on SQLite: a short `mixed` run must make
//! requests and find every acknowledged write when it reads back.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The server binary: `BENCH_SERVER_BIN` when set, else the workspace's
/// `<target>/<profile>/syncserver`. `cargo test` at the workspace root has just built that one
/// (the root package's own integration tests need it); when it is missing (`cargo test -p
/// bench` on a fresh target dir) it is built here. A nested build is not run when the binary
/// exists: `cargo build` and `cargo test` unify dependency features differently, so it would
/// rebuild the server library each time.
fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BENCH_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let bin = profile_dir.join(format!("syncserver{}", std::env::consts::EXE_SUFFIX));
    if bin.exists() {
        return bin;
    }
    let target_dir = profile_dir.parent().expect("a target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile dir name");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "--quiet", "--bin", "syncserver"]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo build for the server");
    assert!(status.success(), "cargo build --bin syncserver failed");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

#[test]
fn short_mixed_run_on_sqlite_verifies_every_read() {
    let server = server_bin();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--server-bin"])
        .arg(&server)
        .args([
            "--backend",
            "sqlite",
            "--workload",
            "mixed",
            "--users",
            "20",
            "--clients",
            "4",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON result file")).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["workload"], "mixed");
    assert_eq!(run["backend"], "sqlite");
    let ok = run["total"]["ok"].as_u64().unwrap();
    assert!(ok > 0, "no successful request in the measured window");
    assert_eq!(report["verification_errors"], 0, "{stdout}");
    assert_eq!(run["verification"]["errors"], 0);
    // Reads were checked, the final full read-back included.
    assert!(run["verification"]["checks"].as_u64().unwrap() > 0);
    assert!(run["verification"]["records_checked"].as_u64().unwrap() > 0);
    assert!(
        run["by_type"]["POST records"]["ok"].as_u64().unwrap_or(0) > 0
            || run["by_type"]["POST batch commit"]["ok"]
                .as_u64()
                .unwrap_or(0)
                > 0
    );
    // The server's pid was known: its CPU and memory were measured.
    assert!(run["process"]["server_cpu_s"].as_f64().is_some());
    assert!(run["process"]["server_rss_max_mb"].as_f64().unwrap() > 0.0);
    // The markdown table for the README.
    assert!(
        stdout.contains("| server | backend | workload |"),
        "{stdout}"
    );
    assert!(stdout.contains("| GET info/collections |"), "{stdout}");
}

/// With a request timeout shorter than many writes take, writes end with an unknown outcome
/// (the server may commit them after the client gave up, even after later acknowledged writes):
/// the bench must re-read and adopt them once settled instead of reporting lost data, and the
/// final check (with a long timeout) must pass.
#[test]
fn writes_with_unknown_outcome_are_not_reported_as_lost() {
    let server = server_bin();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--server-bin"])
        .arg(&server)
        .args([
            "--workload",
            "mixed",
            "--users",
            "10",
            "--clients",
            "4",
            "--warmup",
            "0",
            "--duration",
            "2",
            "--timeout",
            "0.02",
            "--settle",
            "1",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["verification_errors"], 0, "{stdout}");
    assert!(
        report["runs"][0]["verification"]["checks"]
            .as_u64()
            .unwrap()
            > 0
    );
}
