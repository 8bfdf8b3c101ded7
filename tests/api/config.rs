//! The binary's configuration and what it says about its broker: the
//! variables listed by `run --help`, a typo named with a suggestion, an
//! empty key file, a broker too old, and an AMQP URL on a port that is not
//! AMQP.

use std::process::{Command, Stdio};
use std::time::Duration;

use identity_link_worker::config::VARIABLES;
use testkit::fake_amqp;
use testkit::process::{free_addr, signal, spawn_logged, wait_exit};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");

fn command(vars: &[(String, String)]) -> Command {
    testkit::process::command(BIN, vars)
}

/// A configuration that starts: no broker is ever reached at 127.0.0.1:1.
fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    with(
        vec![
            (
                "LINKER_MOS_ENDPOINT_URL".into(),
                "http://127.0.0.1:9/x".into(),
            ),
            ("LINKER_MOS_SECRET_KEY".into(), "k".into()),
            (
                "LINKER_AMQP_URL".into(),
                "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            ),
            ("LINKER_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ],
        pairs,
    )
}

#[test]
fn run_help_lists_every_variable_with_its_default() {
    let output = command(&[]).args(["run", "--help"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    for v in VARIABLES {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(v.name()))
            .unwrap_or_else(|| panic!("{} not in\n{stdout}", v.name()));
        assert!(line.contains(v.default()), "{}: {line}", v.name());
    }
}

#[test]
fn an_empty_key_file_is_an_error_naming_the_file_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "\n").unwrap();
    let vars = testkit::names::without(
        vars(&[("LINKER_MOS_SECRET_KEY_FILE", &path.to_string_lossy())]),
        "LINKER_MOS_SECRET_KEY",
    );
    let output = command(&vars).arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .trim()
            .starts_with("configuration error: LINKER_MOS_SECRET_KEY_FILE: is empty"),
        "{stderr}"
    );
}

/// Waits until `file` holds `text`; the file's content on failure.
async fn wait_log(file: &std::path::Path, text: &str) -> String {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            seen = std::fs::read_to_string(file).unwrap_or_default();
            if seen.contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "{text:?} not logged in 20 s:\n{seen}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_variable_is_warned_about_once_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let vars = vars(&[
        ("LINKER_MOS_ENDPIONT_URL", "http://typo/"),
        ("LINKER_LOG_FORMAT", "json"),
    ]);
    let mut child = spawn_logged(command(&vars).arg("run"), dir.path(), "typo");
    let logs = wait_log(
        &dir.path().join("typo.stderr.log"),
        "did you mean LINKER_MOS_ENDPOINT_URL?",
    )
    .await;
    signal(child.id(), "TERM");
    wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("LINKER_MOS_ENDPIONT_URL"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
}

/// The typo that causes the error is named with it: the worker, and
/// `check-config`, stop at the missing variable before any log is set up.
#[test]
fn a_missing_variable_names_the_typo_that_was_meant_for_it() {
    let vars = testkit::names::without(
        vars(&[("LINKER_MOS_ENDPIONT_URL", "http://typo/")]),
        "LINKER_MOS_ENDPOINT_URL",
    );
    for subcommand in ["run", "check-config"] {
        let output = command(&vars).arg(subcommand).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{subcommand}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{subcommand}: {stderr}");
        assert!(
            lines[0].starts_with("configuration error: LINKER_MOS_ENDPOINT_URL: is required"),
            "{subcommand}: {stderr}"
        );
        assert_eq!(
            lines[1],
            "  note: unknown variable LINKER_MOS_ENDPIONT_URL is ignored; did you mean LINKER_MOS_ENDPOINT_URL?",
            "{subcommand}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_older_than_the_minimum_stops_the_start_with_one_line() {
    let old = fake_amqp::old_rabbitmq("3.9.29").await;
    let vars = vars(&[("LINKER_AMQP_URL", &old.amqp_url())]);
    let mut child = command(&vars)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let line = stderr.trim();
    assert!(line.starts_with("cannot start: "), "{line}");
    let node = format!("the broker at {}", old.addr);
    for part in [
        node.as_str(),
        "RabbitMQ 3.9.29",
        "needs RabbitMQ 3.10.0 or later",
        "at-least-once dead-lettering",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_url_on_an_http_port_says_so_in_logs_and_readyz() {
    let http = fake_amqp::http().await;
    let ops = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let vars = vars(&[
        ("LINKER_AMQP_URL", &http.amqp_url()),
        ("LINKER_HTTP_ADDR", &ops.to_string()),
    ]);
    let mut child = spawn_logged(command(&vars).arg("run"), dir.path(), "http");
    let expected = format!("{} answered, but not as an AMQP broker", http.addr);
    let logs = wait_log(&dir.path().join("http.stderr.log"), &expected).await;
    assert!(logs.contains("HTTP/1.1 400 Bad Request"), "{logs}");
    let readyz = format!("http://{ops}/readyz");
    let mut detail = String::new();
    for _ in 0..200 {
        let body: serde_json::Value = match reqwest::get(&readyz).await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        detail = body["detail"].as_str().unwrap_or_default().to_owned();
        if detail.contains(&expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(detail.contains(&expected), "/readyz detail: {detail}");
    assert!(!detail.contains("guest:guest"), "{detail}");
    signal(child.id(), "TERM");
    wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
}

/// RabbitMQ's own management port, the likeliest wrong port: it accepts the
/// connection and says nothing to an AMQP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_url_on_the_management_port_names_it() {
    let management = testkit::broker::management_url();
    let node = management
        .split_once("://")
        .map_or(management.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let vars = vars(&[
        ("LINKER_AMQP_URL", &format!("amqp://guest:guest@{node}/%2f")),
        ("LINKER_HTTP_ADDR", &free_addr().to_string()),
    ]);
    let mut child = spawn_logged(command(&vars).arg("run"), dir.path(), "management");
    let logs = wait_log(
        &dir.path().join("management.stderr.log"),
        &format!("{node} answered, but not as an AMQP broker"),
    )
    .await;
    assert!(logs.contains("sent no AMQP greeting"), "{logs}");
    assert!(logs.contains("15672?"), "{logs}");
    signal(child.id(), "TERM");
    wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
}
