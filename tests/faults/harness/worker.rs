//! The worker as a child process, and its `/metrics`.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use testkit::process::{signal, spawn_logged};
use testkit::scrape::Scrape;

use super::{LogDir, wait_for};

pub const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");

/// The worker binary with only `vars` in its environment.
pub fn command(vars: &[(String, String)]) -> Command {
    testkit::process::command(BIN, vars)
}

pub struct Worker {
    child: Child,
    pub pid: u32,
    pub ops: SocketAddr,
    pub label: String,
    exited: Option<ExitStatus>,
}

impl Worker {
    /// `worker run`, output to `{label}.stdout.log` / `{label}.stderr.log`.
    pub fn spawn(vars: &[(String, String)], logs: &LogDir, label: &str, ops: SocketAddr) -> Self {
        let child = spawn_logged(command(vars).arg("run"), &logs.path, label);
        Self {
            pid: child.id(),
            child,
            ops,
            label: label.to_owned(),
            exited: None,
        }
    }

    /// SIGKILL: no cleanup, no acks, no channel close.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    pub fn sigterm(&self) {
        signal(self.pid, "TERM");
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let what = format!("worker {}", self.label);
        let status = testkit::process::wait_exit(&mut self.child, limit, &what).await;
        self.exited = Some(status);
        status
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub async fn stop(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let asked = Instant::now();
        self.sigterm();
        let status = self.wait_exit(limit).await;
        (status, asked.elapsed())
    }

    /// Peak resident set size (VmHWM), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        testkit::process::vm_hwm_kib(self.pid)
            .expect("VmHWM in /proc/<pid>/status of a running worker")
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let client = http_client();
        let url = format!("http://{}/readyz", self.ops);
        wait_for(
            &format!("worker {} to be ready", self.label),
            limit,
            || {
                let client = client.clone();
                let url = url.clone();
                async move {
                    matches!(client.get(&url).send().await, Ok(r) if r.status().as_u16() == 200)
                }
            },
        )
        .await;
    }

    pub async fn metrics(&self) -> Option<Scrape> {
        scrape(self.ops).await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Short timeouts: a worker that does not answer counts as not answering.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap()
}

/// The worker's `/metrics` at `ops`, or `None` if it does not answer.
pub async fn scrape(ops: SocketAddr) -> Option<Scrape> {
    testkit::scrape::fetch(&http_client(), &format!("http://{ops}/metrics"))
        .await
        .ok()
}
