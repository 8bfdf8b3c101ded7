//! The broker: what only the fault suite does to it (`rabbitmqctl`), on top
//! of the shared connection and queue helpers.
//!
//! The suite cuts and restarts its broker, so its single-node scenarios run on
//! the private node of `scripts/rabbitmq-private` (from the variables its
//! `env` prints), never on the machine's broker on 5672, which may be the
//! user's. Without that node the suite fails; it never falls back.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lapin::Connection;
pub use testkit::broker::{PrivateNode, broker_at, depth};

/// The private node, read once.
pub fn private() -> &'static PrivateNode {
    static PRIVATE: OnceLock<PrivateNode> = OnceLock::new();
    PRIVATE.get_or_init(PrivateNode::from_env)
}

/// A connection to the private node.
pub async fn broker() -> Connection {
    broker_at(&private().amqp_url).await
}

/// rabbitmqctl on the private node (`-n` names it, so no other node is reached).
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let program = private().ctl();
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    ctl(&program, args).await
}

/// Runs `program` (a rabbitmqctl command line, e.g. the cluster script's
/// `ctl NODE`) with `args`; panics with its output if it fails.
pub async fn ctl(program: &[&str], args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(program[0])
            .args(&program[1..])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program:?} {args:?} timed out"))
    .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "{program:?} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(ready, unacked)` per queue, from `list_queues` of the rabbitmqctl
/// command line `program` (the machine's broker, or a cluster node).
pub async fn list_queues_via(program: &[&str]) -> HashMap<String, (u64, u64)> {
    let out = ctl(
        program,
        &[
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        ],
    )
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_owned(),
                (
                    r["messages_ready"].as_u64().unwrap_or(0),
                    r["messages_unacknowledged"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// Restarts the private node's application if a test stops it and then
/// fails: the node is always left running.
pub struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let ctl = private().ctl();
        for args in [
            &["-q", "start_app"][..],
            &["-q", "await_startup", "--timeout", "110"][..],
        ] {
            let _ = Command::new(&ctl[0])
                .args(&ctl[1..])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
