//! CPU time and memory of the processes under test, read from /proc.
//!
//! A postgres backend that exits between two samples is not lost: the postmaster reaps it,
//! and its time moves into the postmaster's `cutime`/`cstime`, which a [`ProcSet`] adds in.

use std::fs;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading /proc/{pid}: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{0}/stat is not in the expected format")]
    Format(u32),
}

/// Clock ticks per second, for converting /proc's tick counts.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

struct Stat {
    ppid: u32,
    /// utime + stime
    own: u64,
    /// cutime + cstime: reaped children
    children: u64,
}

fn stat(pid: u32) -> Result<Stat, ProcError> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Read { pid, source })?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = text.rsplit_once(')').ok_or(ProcError::Format(pid))?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, ProcError> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or(ProcError::Format(pid))
    };
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Ok(Stat {
        ppid: num(1)? as u32,
        own: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

/// Nanoseconds on CPU of every thread of `pid`, from schedstat; `None` if unavailable.
/// Far finer than stat's 10 ms ticks, which a short trial would round to zero.
fn schedstat_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = t.ok()?.path().join("schedstat");
        let text = fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Seconds of CPU of one live process: schedstat when the kernel has it, ticks otherwise.
fn live_seconds(pid: u32, s: &Stat, tick: f64) -> f64 {
    schedstat_ns(pid).map_or(s.own as f64 / tick, |ns| ns as f64 / 1e9)
}

/// A process and, optionally, all its live and reaped children (postgres, pgbouncer forks).
#[derive(Debug, Clone, Copy)]
pub struct ProcSet {
    pub pid: u32,
    pub with_children: bool,
}

impl ProcSet {
    /// CPU seconds used so far by the set.
    pub fn cpu_seconds(&self) -> Result<f64, ProcError> {
        let tick = ticks_per_sec();
        let root = stat(self.pid)?;
        let mut secs = live_seconds(self.pid, &root, tick);
        if self.with_children {
            // Exited children only survive as the parent's cutime/cstime, in ticks.
            secs += root.children as f64 / tick;
            for pid in children_of(self.pid) {
                if let Ok(s) = stat(pid) {
                    secs += live_seconds(pid, &s, tick);
                }
            }
        }
        Ok(secs)
    }
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_ok_and(|s| s.ppid == parent))
        .collect()
}

/// Resets the kernel's peak-RSS mark so the next reading covers one workload only.
pub fn reset_peak_rss(pid: u32) {
    // Writing 5 to clear_refs resets VmHWM (Linux 4.0+); failure just means a lifetime peak.
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Peak resident set size in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> Result<u64, ProcError> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| ProcError::Read { pid, source })?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(ProcError::Format(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = ProcSet {
            pid: std::process::id(),
            with_children: true,
        };
        assert!(me.cpu_seconds().unwrap() >= 0.0);
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
    }
}
