//! Child processes (worker, mos-sim, bare consumer) and what /proc says about
//! them: CPU time, peak and current resident memory, machine-wide CPU.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Clock ticks per second for /proc/<pid>/stat (sysconf(_SC_CLK_TCK)).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds (children not included).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Peak resident set size (VmHWM), MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    testkit::process::vm_hwm_kib(pid).map(|k| k as f64 / 1024.0)
}

/// Current resident set size (VmRSS), MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    testkit::process::status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0)
}

/// Busy and total CPU seconds of the whole machine (all cores), from /proc/stat.
pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    ((total - idle) / clock_ticks(), total / clock_ticks())
}

/// Pids of the RabbitMQ server (Erlang VM), to attribute broker CPU.
pub fn broker_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .collect()
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child we started; stopped with SIGTERM (then SIGKILL) by its pid only.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
        stdout_piped: bool,
    ) -> Result<Proc, String> {
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut command = Command::new(program);
        command.args(args);
        // The worker reads LINKER_*; make sure nothing from the caller leaks in.
        for (key, _) in std::env::vars() {
            if key.starts_with("LINKER_") || key.starts_with("MOS_SIM_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.stdin(Stdio::null());
        command.stderr(Stdio::from(
            log_file
                .try_clone()
                .map_err(|e| format!("cannot reuse the log file: {e}"))?,
        ));
        if stdout_piped {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(Stdio::from(log_file));
        }
        command.kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id().ok_or("child exited at once")?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
        })
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code.
    pub async fn stop(mut self, grace: Duration) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        testkit::process::send_signal(self.pid, "TERM");
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                eprintln!(
                    "bench: {} (pid {}) did not stop within {grace:?}; killing it",
                    self.name, self.pid
                );
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// Waits up to `grace` for the child to exit on its own, then stops it.
    pub async fn finish(mut self, grace: Duration) -> Option<i32> {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => self.stop(Duration::from_secs(5)).await,
        }
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
