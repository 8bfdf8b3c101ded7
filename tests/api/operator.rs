//! The operator's first day (issue 13): what the binaries tell whoever runs
//! them, checked on the real binaries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use identity_link_worker::broker::{dlq, headers};
use lapin::BasicProperties;
use lapin::types::ShortString;
use testkit::process::{free_port, signal, spawn_logged, wait_exit};
use testkit::worker::Private;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");

/// The worker binary with only `vars` in its environment.
fn worker(vars: &[(String, String)]) -> Command {
    testkit::process::command(BIN, vars)
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The mos-sim binary, built once per test run: it is another package's
/// binary, which cargo builds for that package's tests only.
fn mos_sim_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // <target>/<profile>/identity-link-worker
            let profile_dir = Path::new(BIN).parent().expect("the binary's directory");
            let target_dir = profile_dir.parent().expect("the target directory");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build
                .args([
                    "build", "--locked", "--quiet", "-p", "mos-sim", "--bin", "mos-sim",
                ])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build -p mos-sim");
            assert!(status.success(), "cargo build -p mos-sim: {status}");
            profile_dir.join("mos-sim")
        })
        .clone()
}

fn mos_sim(vars: &[(String, String)]) -> Command {
    testkit::process::command(mos_sim_bin(), vars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mos_sim_start_up_line_gives_the_whole_endpoint_url() {
    let mut child = mos_sim(&[])
        .args(["--addr", "127.0.0.1:0", "--key", KEY])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mos-sim");
    let stdout = child.stdout.take().expect("mos-sim's stdout");
    let (sender, first_line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = first_line.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("mos-sim printed its start-up line");
    let url = line
        .split("LINKER_MOS_ENDPOINT_URL=")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no LINKER_MOS_ENDPOINT_URL= in {line:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(url.ends_with(mos_sim::ENDPOINT_PATH), "{line}");
    assert_eq!(line.trim().lines().count(), 1, "one line: {line}");

    // Its --help says the same, for the default address, before anything runs.
    let help = mos_sim(&[]).arg("--help").output().expect("mos-sim --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let default = format!(
        "LINKER_MOS_ENDPOINT_URL=http://127.0.0.1:8080{}",
        mos_sim::ENDPOINT_PATH
    );
    assert!(help.contains(&default), "{default} not in --help:\n{help}");
    assert!(help.contains("--key-file"), "{help}");
}

#[test]
fn mos_sim_without_a_key_names_both_ways_to_give_one() {
    let output = mos_sim(&[]).output().expect("run mos-sim");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--key <KEY>"), "{stderr}");
    assert!(stderr.contains("--key-file <KEY_FILE>"), "{stderr}");
    // Both at once is refused as well.
    let output = mos_sim(&[])
        .args(["--key", "k", "--key-file", "/nonexistent"])
        .output()
        .expect("run mos-sim");
    assert_eq!(output.status.code(), Some(2));
}

/// A private topology, declared, with `dead` dead letters of `reason` in its
/// dead-letter queue (as the worker records them: reason, original route);
/// the variables the `dlq` commands need.
async fn dead_letters(
    connection: &lapin::Connection,
    batches: &[(&str, usize)],
) -> (Private, Vec<(String, String)>, Vec<String>) {
    let private = Private::from_vars(testkit::names::private_vars(
        "op",
        &amqp_url(),
        "http://127.0.0.1:9/unused",
        KEY,
    ));
    private.declare(connection).await.expect("declare");
    let publisher = testkit::broker::publisher(connection).await;
    let mut ids = Vec::new();
    for (reason, count) in batches {
        for _ in 0..*count {
            let id = format!("dead-{}", uuid::Uuid::new_v4());
            let props = headers::with_headers(
                &BasicProperties::default().with_message_id(ShortString::from(id.clone())),
                &[
                    (headers::REASON, headers::text(reason)),
                    (
                        headers::ORIGINAL_EXCHANGE,
                        headers::text(private.exchange()),
                    ),
                    (
                        headers::ORIGINAL_ROUTING_KEY,
                        headers::text("user.logged_in"),
                    ),
                ],
                &[],
            );
            publisher
                .publish(&private.topology.dead_letter, "", b"{}", props)
                .await
                .expect("dead letter published");
            ids.push(id);
        }
    }
    let vars = vars(&[
        ("LINKER_AMQP_URL", &amqp_url()),
        ("LINKER_QUEUE", private.queue()),
        ("LINKER_EXCHANGE", private.exchange()),
    ]);
    (private, vars, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_dry_run_lists_what_would_move_and_moves_nothing() {
    let connection = broker().await;
    let (private, vars, ids) = dead_letters(&connection, &[("rejected", 3)]).await;
    let output = worker(&vars)
        .args(["dlq", "replay", "--dry-run"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("would replay 3 message(s)"), "{stdout}");
    for id in &ids {
        let line = format!("reason rejected routing key user.logged_in message id {id}");
        assert!(stdout.contains(&line), "{line} not in:\n{stdout}");
    }
    assert_eq!(depth(&connection, &private.topology.dead_letter).await, 3);
    assert_eq!(
        depth(&connection, private.queue()).await,
        0,
        "nothing moved"
    );
    private.delete(&connection).await.unwrap();
}

#[test]
fn dlq_replay_refuses_an_unknown_reason_listing_the_valid_ones() {
    // Refused before any broker is reached: this one does not answer.
    let vars = vars(&[("LINKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")]);
    let output = worker(&vars)
        .args(["dlq", "replay", "--reason", "retries_exausted"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("retries_exausted"), "{stderr}");
    for reason in dlq::reasons() {
        assert!(stderr.contains(reason), "{reason} not listed:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_left_is_the_queue_depth_not_what_was_scanned() {
    let connection = broker().await;
    let (private, vars, _) = dead_letters(&connection, &[("rejected", 3), ("malformed", 2)]).await;
    // --limit 2 looks at two messages only; three more stay behind it.
    let output = worker(&vars)
        .args(["dlq", "replay", "--limit", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "replayed 2 message(s); 3 left in {}",
            private.topology.dead_letter
        )),
        "{stdout}"
    );
    assert_eq!(depth(&connection, &private.topology.dead_letter).await, 3);
    assert_eq!(depth(&connection, private.queue()).await, 2, "two moved");

    // By reason: the whole queue is looked at, all of it counted.
    let output = worker(&vars)
        .args(["dlq", "replay", "--reason", "malformed", "--limit", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("replayed 1 message(s); 2 left"), "{stdout}");
    assert_eq!(depth(&connection, &private.topology.dead_letter).await, 2);
    private.delete(&connection).await.unwrap();
}

/// A worker whose broker never answers (nothing listens on port 1): it
/// serves /healthz and logs its reconnect attempts.
fn unreachable_broker_worker(http_addr: &str) -> Vec<(String, String)> {
    vars(&[
        ("LINKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("LINKER_MOS_ENDPOINT_URL", "http://127.0.0.1:9/x"),
        ("LINKER_MOS_SECRET_KEY", "k"),
        ("LINKER_HTTP_ADDR", http_addr),
    ])
}

#[test]
fn an_invalid_rust_log_is_refused_at_start() {
    let vars = with(
        unreachable_broker_worker("127.0.0.1:0"),
        &[("RUST_LOG", "info,lapin=loud")],
    );
    for command in [&["run"][..], &["dlq", "stats"], &["check-config"]] {
        let output = worker(&vars).args(command).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("configuration error: RUST_LOG: invalid filter"),
            "{command:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_or_file_carry_no_colour_codes() {
    let vars = unreachable_broker_worker("127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_logged(worker(&vars).arg("run"), dir.path(), "worker");
    let log = dir.path().join("worker.stderr.log");
    wait_for("a reconnect log line", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("broker session failed"))
    })
    .await;
    signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    assert_eq!(status.code(), Some(0));
    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!bytes.contains(&0x1b), "ESC in the logs:\n{text}");
}

/// `url` with its user's password replaced (user `guest` if it names none).
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("an AMQP URL");
    let (user, host) = match rest.split_once('@') {
        Some((credentials, host)) => (credentials.split(':').next().unwrap_or("guest"), host),
        None => ("guest", rest),
    };
    format!("{scheme}://{user}:{password}@{host}")
}

/// A refused login (wrong password) is one line of the worker's per attempt,
/// redacted; lapin's own lines, which repeated it raw, are off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_one_line_per_attempt_without_lapins_own() {
    let password = "not-the-password-of-guest";
    let url = with_password(&amqp_url(), password);
    let vars = with(
        unreachable_broker_worker("127.0.0.1:0"),
        &[("LINKER_AMQP_URL", url.as_str())],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_logged(worker(&vars).arg("run"), dir.path(), "worker");
    let log = dir.path().join("worker.stderr.log");
    wait_for("two refused attempts", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|text| text.matches("ACCESS_REFUSED").count() >= 2)
    })
    .await;
    signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ACCESS_REFUSED"))
        .collect();
    assert!(
        refused.iter().all(|l| l.contains("broker session failed")),
        "only the worker's own line names the refusal:\n{text}"
    );
    assert!(!text.contains(" lapin::"), "lapin's own lines:\n{text}");
    assert!(
        !text.contains(password),
        "the password in the logs:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_lists_each_missing_object() {
    let sim = start_sim(sim_config()).await;
    let vars = with(base_vars(&sim), &[("LINKER_DECLARE_TOPOLOGY", "false")]);
    let private = Private::from_vars(vars.clone());
    let missing_lines = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("missing "))
            .map(str::to_owned)
            .collect()
    };

    // Nothing declared: every exchange, queue and binding, one line each.
    let output = worker(&vars).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let everything: Vec<String> = private
        .topology
        .objects()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(missing_lines(&stdout), everything, "{stdout}");
    assert!(
        everything.contains(&format!("queue {}.retry.200ms", private.queue())),
        "{everything:?}"
    );

    // All there but one retry queue: that one alone.
    let connection = broker().await;
    private.declare(&connection).await.unwrap();
    let retry = private.topology.retry_queues[0].name.clone();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(retry.as_str().into(), Default::default())
        .await
        .unwrap();
    let output = worker(&vars).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(
        missing_lines(&stdout),
        [format!("queue {retry}")],
        "{stdout}"
    );

    // Declared again: present, and the check passes.
    private.declare(&connection).await.unwrap();
    let output = worker(&vars).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("topology: present"), "{stdout}");
    private.delete(&connection).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_linker_http_addr() {
    // A wildcard bind, as in the image: the probe goes to loopback.
    let port = free_port();
    let addr = format!("0.0.0.0:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_logged(
        worker(&unreachable_broker_worker(&addr)).arg("run"),
        dir.path(),
        "worker",
    );
    let probe = |http_addr: &str| {
        worker(&vars(&[("LINKER_HTTP_ADDR", http_addr)]))
            .arg("healthcheck")
            .output()
            .unwrap()
    };
    wait_for("the worker's /healthz", Duration::from_secs(20), || async {
        probe(&addr).status.code() == Some(0)
    })
    .await;
    // Another port is another worker: nothing answers there.
    let other = format!("127.0.0.1:{}", free_port());
    let output = probe(&other);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("http://{other}/healthz")),
        "{stderr}"
    );
    signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    assert_eq!(status.code(), Some(0));
}

#[test]
fn demo_without_a_broker_names_the_url_it_tried() {
    let vars = vars(&[("LINKER_AMQP_URL", "amqp://demo:s3cret-pw@127.0.0.1:1/%2f")]);
    let output = worker(&vars).arg("demo").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("amqp://demo:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}
