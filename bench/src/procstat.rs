//! Process and machine CPU and memory from /proc (Linux).

use std::collections::HashMap;
use std::fs;

use serde::Serialize;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds of `pid`, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime (fields 14 and 15) in ticks; the command name may hold spaces and ')'.
fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Resident set size of `pid` in bytes and its peak (VmRSS, VmHWM).
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// CPU seconds per pid of every process whose name is one of `names`.
pub fn cpu_by_name(names: &[String]) -> HashMap<u32, f64> {
    let mut out = HashMap::new();
    if names.is_empty() {
        return out;
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if comm(pid).is_some_and(|c| names.contains(&c))
            && let Some(s) = cpu_seconds(pid)
        {
            out.insert(pid, s);
        }
    }
    out
}

/// CPU seconds spent between two `cpu_by_name` snapshots (processes that appeared count from 0).
pub fn cpu_delta(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0))
        .filter(|d| *d > 0.0)
        .sum()
}

/// Whole-machine CPU time counters from /proc/stat: (busy, total) in ticks.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a run measured about the processes, over the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcFigures {
    /// Server CPU seconds (user + sys) during the measured window.
    pub server_cpu_s: Option<f64>,
    /// Server RSS before any traffic (when the bench started it), at the end of the window, and
    /// the highest sampled during it, in MB.
    pub server_rss_idle_mb: Option<f64>,
    pub server_rss_end_mb: Option<f64>,
    pub server_rss_max_mb: Option<f64>,
    /// Database server processes' CPU seconds (`--db-process`).
    pub db_cpu_s: Option<f64>,
    /// The benchmark's own CPU seconds.
    pub bench_cpu_s: Option<f64>,
    /// Busy fraction of the whole machine's CPU time, 0..1 (all cores).
    pub machine_busy: Option<f64>,
    pub machine_cores: usize,
    /// Growth of the database server's counters in the window (`ServerSpec::database_counters`).
    #[serde(skip)]
    pub db_counters: Vec<(String, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let s = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(s), Some(300));
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).unwrap().0 > 0);
        assert!(machine_ticks().unwrap().1 > 0);
    }
}
