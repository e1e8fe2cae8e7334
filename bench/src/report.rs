//! The markdown tables (stdout) and the JSON result file.

use std::fmt::Write;

use serde::Serialize;

use crate::run::RunResult;
use crate::workload::Workload;

/// Everything a JSON result file holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: Vec<String>,
    pub started_at_unix: u64,
    pub machine_cores: usize,
    pub runs: Vec<RunResult>,
    pub comparisons: Vec<Comparison>,
    /// Verification errors over all runs: non-zero means a server lost or corrupted data.
    pub verification_errors: u64,
}

/// A and B on one workload: mean req/s over the rounds and the ratio B/A.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub workload: Workload,
    pub a: String,
    pub b: String,
    pub a_req_per_s: Vec<f64>,
    pub b_req_per_s: Vec<f64>,
    pub a_p99_ms: Vec<f64>,
    pub b_p99_ms: Vec<f64>,
    pub ratio: f64,
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn errors_text(errors: &std::collections::BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{v} x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "A path" in a comparison, else the server's path or URL.
fn who(r: &RunResult) -> String {
    if r.label.is_empty() {
        r.server.clone()
    } else {
        format!("{} {}", r.label, r.server)
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn comparisons(runs: &[RunResult], a: &str, b: &str) -> Vec<Comparison> {
    let mut out = Vec::new();
    for w in Workload::ALL {
        let of = |label: &str| -> Vec<&RunResult> {
            runs.iter()
                .filter(|r| r.workload == w && r.label == label)
                .collect()
        };
        let (ra, rb) = (of(a), of(b));
        if ra.is_empty() || rb.is_empty() {
            continue;
        }
        let mean = |v: &[&RunResult]| v.iter().map(|r| r.req_per_s).sum::<f64>() / v.len() as f64;
        let ma = mean(&ra);
        out.push(Comparison {
            workload: w,
            a: ra[0].server.clone(),
            b: rb[0].server.clone(),
            a_req_per_s: ra.iter().map(|r| r.req_per_s).collect(),
            b_req_per_s: rb.iter().map(|r| r.req_per_s).collect(),
            a_p99_ms: ra.iter().map(|r| r.total.p99_ms).collect(),
            b_p99_ms: rb.iter().map(|r| r.total.p99_ms).collect(),
            ratio: if ma > 0.0 { mean(&rb) / ma } else { 0.0 },
        });
    }
    out
}

/// The markdown for stdout: a summary table, the A/B table when there is one, then each run's
/// request types.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Benchmark\n");
    let _ = writeln!(s, "`{}`\n", report.command.join(" "));
    if let Some(r) = report.runs.first() {
        let _ = writeln!(
            s,
            "{} users, {} closed-loop clients, {:.0} s warm-up, {:.0} s measured; {} cores on this machine. \
             req/s counts successful requests in the measured window.\n",
            r.users, r.clients, r.warmup_s, r.duration_s, report.machine_cores
        );
    }
    let _ = writeln!(
        s,
        "| server | backend | workload | round | req/s | p50 ms | p90 ms | p99 ms | errors | verification errors | server CPU s (cores) | server RSS MB (idle / max) | db CPU s | machine busy |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &report.runs {
        let p = &r.process;
        let cores = p.server_cpu_s.map(|c| c / r.duration_s);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} ({}) | {} / {} | {} | {} |",
            who(r),
            r.backend.map_or("-", |b| b.name()),
            r.workload.name(),
            r.round,
            thousands(r.req_per_s),
            r.total.p50_ms,
            r.total.p90_ms,
            r.total.p99_ms,
            errors_text(&r.total.errors),
            r.verification.errors,
            opt(p.server_cpu_s, 1),
            opt(cores, 2),
            opt(p.server_rss_idle_mb, 0),
            opt(p.server_rss_max_mb, 0),
            opt(p.db_cpu_s, 1),
            p.machine_busy
                .map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
        );
    }
    let mut settings_seen = Vec::new();
    for r in &report.runs {
        if !r.database_settings.is_empty() && !settings_seen.contains(&&r.database_settings) {
            settings_seen.push(&r.database_settings);
            let list = r
                .database_settings
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "\nDatabase ({}): {list}.",
                r.backend.map_or("-", |b| b.name())
            );
        }
    }
    if !report.comparisons.is_empty() {
        let c0 = &report.comparisons[0];
        let _ = writeln!(
            s,
            "\n### A/B, interleaved (A = `{}`, B = `{}`)\n",
            c0.a, c0.b
        );
        let _ = writeln!(s, "| req/s (p99 ms) | A | B | B/A |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        for c in &report.comparisons {
            let runs = |r: &[f64], p: &[f64]| {
                r.iter()
                    .zip(p)
                    .map(|(r, p)| format!("{} ({:.0})", thousands(*r), p))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}x |",
                c.workload.name(),
                runs(&c.a_req_per_s, &c.a_p99_ms),
                runs(&c.b_req_per_s, &c.b_p99_ms),
                c.ratio
            );
        }
    }
    for r in &report.runs {
        let _ = writeln!(
            s,
            "\n### {} · {} · {} · round {}\n",
            r.workload.name(),
            who(r),
            r.backend.map_or("external", |b| b.name()),
            r.round
        );
        let _ = writeln!(
            s,
            "| request | ok | req/s | p50 ms | p90 ms | p99 ms | max ms | errors |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (name, t) in r
            .by_type
            .iter()
            .chain(std::iter::once((&"all".to_string(), &r.total)))
        {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                name,
                thousands(t.ok as f64),
                thousands(t.req_per_s),
                t.p50_ms,
                t.p90_ms,
                t.p99_ms,
                t.max_ms,
                errors_text(&t.errors)
            );
        }
        let v = &r.verification;
        let _ = writeln!(
            s,
            "\nVerification: {} checks of {} records read back{}: {} errors{}.",
            thousands(v.checks as f64),
            thousands(v.records_checked as f64),
            if r.final_check {
                " (final check included)"
            } else {
                ""
            },
            v.errors,
            if v.by_kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors_text(&v.by_kind))
            }
        );
        for e in &v.examples {
            let _ = writeln!(s, "- {e}");
        }
        let p = &r.process;
        let _ = writeln!(
            s,
            "Outside the window: {} errors; writes with unknown outcome: {}; records refused in `failed`: {}. \
             CPU s in the window: server {} ({} requests per server CPU second), database {}, bench {}; \
             server RSS MB: idle {}, end {}, max {}.",
            errors_text(&r.errors_outside_window),
            r.uncertain_writes,
            r.failed_records,
            opt(p.server_cpu_s, 1),
            opt(r.req_per_server_cpu_s, 0),
            opt(p.db_cpu_s, 1),
            opt(p.bench_cpu_s, 1),
            opt(p.server_rss_idle_mb, 1),
            opt(p.server_rss_end_mb, 1),
            opt(p.server_rss_max_mb, 1),
        );
        if !r.database_per_request.is_empty() {
            let list = r
                .database_per_request
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "Database counters per successful request in the window: {list}."
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.0), "0");
    }
}
