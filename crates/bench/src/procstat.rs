//! CPU time and resident memory of processes, read from `/proc` (Linux only): `utime + stime`
//! from `/proc/PID/stat`, `VmRSS` from `/proc/PID/status`, machine-wide busy time from
//! `/proc/stat`. Process trees (Postgres forks a backend per connection) are summed.

use crate::{BenchError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Clock ticks per second of the `/proc` interface (`USER_HZ`). The kernel fixes it at 100 for
/// user space on every mainstream architecture, whatever its internal `HZ`.
pub const USER_HZ: f64 = 100.0;

/// Fields of `/proc/PID/stat` after the command name.
struct Stat {
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime (children that exited and were waited for).
    children: u64,
}

fn read_stat(pid: u32) -> Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| BenchError::Invalid(format!("unreadable /proc/{pid}/stat")))
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: num(1)? as u32,
        own: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

/// CPU ticks (utime + stime, all threads) of one process.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    Ok(read_stat(pid)?.own)
}

/// CPU ticks of a process and all its descendants (plus children already reaped).
pub fn tree_cpu_ticks(root: u32) -> Result<u64> {
    tree_cpu_ticks_matching(root, None)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// CPU ticks of the descendants of `root` whose command line contains `filter` (Postgres
/// names each backend after its database), or of the whole tree when `filter` is `None`.
pub fn tree_cpu_ticks_matching(root: u32, filter: Option<&str>) -> Result<u64> {
    let root_stat = read_stat(root)?;
    let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(s) = read_stat(pid) {
            children.entry(s.ppid).or_default().push((pid, s.own));
        }
    }
    let mut total = match filter {
        None => root_stat.own + root_stat.children,
        Some(_) => 0,
    };
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for &(kid, ticks) in kids {
                if filter.is_none_or(|f| cmdline(kid).contains(f)) {
                    total += ticks;
                }
                stack.push(kid);
            }
        }
    }
    Ok(total)
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Invalid(format!("no VmRSS in /proc/{pid}/status")))
}

/// Busy ticks of the whole machine (all CPUs; everything but idle and iowait).
pub fn machine_busy_ticks() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| BenchError::Invalid("no cpu line in /proc/stat".into()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok(total.saturating_sub(idle))
}

/// A process to watch: a gateway node, or a helper (Redis, Postgres) summed over its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    /// A label (`node0`, `redis`, `postgres`, …).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Sum the whole process tree.
    pub tree: bool,
    /// With `tree`: only descendants whose command line contains this.
    pub filter: Option<String>,
}

impl Watched {
    /// Parse `name=pid` (or a bare pid, named `pid<N>`); with `tree`, `name=pid@text` sums
    /// only the descendants whose command line contains `text`.
    pub fn parse(s: &str, tree: bool) -> Result<Watched> {
        let (s, filter) = match s.split_once('@') {
            Some((s, f)) if tree && !f.is_empty() => (s, Some(f.to_owned())),
            _ => (s, None),
        };
        let (name, pid) = match s.split_once('=') {
            Some((n, p)) => (n.to_owned(), p),
            None => (format!("pid{s}"), s),
        };
        let pid = pid
            .trim()
            .parse()
            .map_err(|_| BenchError::Invalid(format!("not a pid: {s}")))?;
        Ok(Watched {
            name,
            pid,
            tree,
            filter,
        })
    }

    /// Current CPU ticks.
    pub fn ticks(&self) -> Result<u64> {
        if self.tree {
            tree_cpu_ticks_matching(self.pid, self.filter.as_deref())
        } else {
            cpu_ticks(self.pid)
        }
    }
}

/// A snapshot of CPU ticks of every watched process, this process and the machine.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    procs: Vec<Option<u64>>,
    own: u64,
    machine: u64,
}

/// Take a snapshot (unreadable processes are recorded as missing, not fatal).
pub fn snapshot(watched: &[Watched]) -> CpuSnapshot {
    CpuSnapshot {
        procs: watched.iter().map(|w| w.ticks().ok()).collect(),
        own: cpu_ticks(std::process::id()).unwrap_or(0),
        machine: machine_busy_ticks().unwrap_or(0),
    }
}

/// CPU and memory of one watched process over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Its label.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// CPU seconds used in the window.
    pub cpu_s: f64,
    /// Resident memory at the end, KiB.
    pub rss_kib: u64,
}

/// CPU used between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuWindow {
    /// Per watched process.
    pub processes: Vec<ProcessUsage>,
    /// The load tester itself.
    pub bench_cpu_s: f64,
    /// The whole machine (all processes, all CPUs).
    pub machine_cpu_s: f64,
}

impl CpuWindow {
    /// The CPU between `a` and `b` (RSS read now).
    pub fn between(watched: &[Watched], a: &CpuSnapshot, b: &CpuSnapshot) -> Self {
        let secs = |x: u64, y: u64| crate::stats::round(y.saturating_sub(x) as f64 / USER_HZ, 2);
        let processes = watched
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let before = a.procs.get(i).copied().flatten();
                let after = b.procs.get(i).copied().flatten();
                ProcessUsage {
                    name: w.name.clone(),
                    pid: w.pid,
                    cpu_s: match (before, after) {
                        (Some(x), Some(y)) => secs(x, y),
                        _ => 0.0,
                    },
                    rss_kib: rss_kib(w.pid).unwrap_or(0),
                }
            })
            .collect();
        Self {
            processes,
            bench_cpu_s: secs(a.own, b.own),
            machine_cpu_s: secs(a.machine, b.machine),
        }
    }

    /// CPU seconds of the processes whose names start with `prefix`.
    pub fn cpu_of(&self, prefix: &str) -> f64 {
        self.processes
            .iter()
            .filter(|p| p.name.starts_with(prefix))
            .map(|p| p.cpu_s)
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 3 4 20 0 8 0 \
                    100 1000 200 18446744073709551615";
        let s = parse_stat(line).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!(s.ppid, 1);
        assert_eq!(s.own, 325);
        assert_eq!(s.children, 7);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap_or(0) > 0);
        assert!(cpu_ticks(me).is_ok());
        assert!(tree_cpu_ticks(me).is_ok());
        assert!(machine_busy_ticks().unwrap_or(0) > 0);
        let w = Watched::parse("node0=42", false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((w.name.as_str(), w.pid), ("node0", 42));
        assert!(Watched::parse("x=abc", false).is_err());
        let f = Watched::parse("postgres=7@confab_bench_1", true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.filter.as_deref(), Some("confab_bench_1"));
        assert_eq!(f.pid, 7);
        // This test process is no descendant of itself: a filter matching nothing sums 0.
        let none = tree_cpu_ticks_matching(std::process::id(), Some("no such command"));
        assert_eq!(none.unwrap_or(1), 0);
    }
}
