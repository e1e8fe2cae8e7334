//! The `bench` command; see bench/README.md.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = bench::Opts::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = bench::run(&opts) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("bench: interrupted: stopping the servers it started, dropping scratch databases");
                bench::server::cleanup_all().await;
                Err("interrupted".to_owned())
            }
        }
    });
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", bench::report::markdown(&report));
    if let Some(path) = &opts.json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|b| std::fs::write(path, b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.verification_errors > 0 {
        eprintln!(
            "bench: FAILED: {} verification errors: the server lost or corrupted acknowledged data",
            report.verification_errors
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
