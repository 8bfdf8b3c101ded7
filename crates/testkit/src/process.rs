//! Child processes: the worker binary with exactly the variables a test
//! gives it, output to files, signals, and what `/proc` says about them.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `program` with a clean environment: only `PATH` and `vars`, so nothing
/// from the caller's environment (a developer's `LINKER_*`) leaks in.
pub fn command(program: impl AsRef<std::ffi::OsStr>, vars: &[(String, String)]) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command.stdin(Stdio::null());
    command
}

/// Spawns `command` with its output in `{label}.stdout.log` and
/// `{label}.stderr.log` under `dir`. Files, never pipes: trace output is
/// large and a full pipe would block the child.
pub fn spawn_logged(command: &mut Command, dir: &Path, label: &str) -> Child {
    let out = File::create(dir.join(format!("{label}.stdout.log"))).expect("create the stdout log");
    let err = File::create(dir.join(format!("{label}.stderr.log"))).expect("create the stderr log");
    command
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {label}: {e}"))
}

/// A free loopback address (bound and released; the child binds it next).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// `kill -{name} {pid}`: true if the signal was sent.
pub fn send_signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// [`send_signal`]; a signal that cannot be sent fails the test.
pub fn signal(pid: u32, name: &str) {
    assert!(send_signal(pid, name), "kill -{name} {pid}");
}

/// Waits for `child` to exit; panics naming `what` after `limit`.
pub async fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`), in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size (VmHWM) of a running process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_peak_memory_is_known() {
        assert!(vm_hwm_kib(std::process::id()).is_some_and(|k| k > 0));
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn the_environment_is_only_what_is_given() {
        let output = command("env", &[("LINKER_X".into(), "1".into())])
            .output()
            .expect("run env");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        assert_eq!(names, ["LINKER_X", "PATH"]);
    }
}
