//! The binary itself: configuration errors, check-config, SIGTERM under
//! load, and the secret never reaching any output.

use std::process::{Command, Stdio};
use std::time::Duration;

use mos_sim::{Faults, SimConfig};
use testkit::process::{signal, spawn_logged, wait_exit};
use testkit::worker::Private;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");

/// The worker binary with only `vars` in its environment.
fn command(vars: &[(String, String)]) -> Command {
    testkit::process::command(BIN, vars)
}

/// Overrides of the good variables (an empty value removes one), the
/// variable the error line names, and a piece of its problem text.
type Case = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

#[test]
fn each_configuration_error_exits_2_naming_the_variable() {
    let good = [
        ("LINKER_MOS_ENDPOINT_URL", "http://127.0.0.1:9/x"),
        ("LINKER_MOS_SECRET_KEY", "k"),
    ];
    let cases: &[Case] = &[
        (
            &[("LINKER_MOS_ENDPOINT_URL", "")],
            "LINKER_MOS_ENDPOINT_URL",
            "",
        ),
        (
            &[("LINKER_MOS_SECRET_KEY", "")],
            "LINKER_MOS_SECRET_KEY",
            "is required",
        ),
        // Only the file is set, so it is read: missing, then a directory
        // (unreadable as a file even by root, unlike a mode-000 file).
        (
            &[
                ("LINKER_MOS_SECRET_KEY", ""),
                ("LINKER_MOS_SECRET_KEY_FILE", "/nonexistent/key"),
            ],
            "LINKER_MOS_SECRET_KEY_FILE",
            "cannot read /nonexistent/key",
        ),
        (
            &[
                ("LINKER_MOS_SECRET_KEY", ""),
                ("LINKER_MOS_SECRET_KEY_FILE", "/"),
            ],
            "LINKER_MOS_SECRET_KEY_FILE",
            "cannot read /",
        ),
        // Both set is a rule of its own, checked before any file is read.
        (
            &[("LINKER_MOS_SECRET_KEY_FILE", "/nonexistent/key")],
            "LINKER_MOS_SECRET_KEY",
            "not both",
        ),
        (&[("LINKER_PREFETCH", "many")], "LINKER_PREFETCH", ""),
        (&[("LINKER_CONCURRENCY", "0")], "LINKER_CONCURRENCY", ""),
        (
            &[("LINKER_RETRY_DELAYS", "10s,later")],
            "LINKER_RETRY_DELAYS",
            "",
        ),
        (&[("LINKER_HTTP_TIMEOUT", "0s")], "LINKER_HTTP_TIMEOUT", ""),
        (&[("LINKER_AMQP_URL", "redis://x")], "LINKER_AMQP_URL", ""),
        (&[("LINKER_LOG_FORMAT", "yaml")], "LINKER_LOG_FORMAT", ""),
        (
            &[("LINKER_ANONYMOUS_ID_POINTERS", "anonymousId")],
            "LINKER_ANONYMOUS_ID_POINTERS",
            "",
        ),
        (
            &[("LINKER_HTTP_ADDR", "not-an-address")],
            "LINKER_HTTP_ADDR",
            "",
        ),
        (
            &[("LINKER_DECLARE_TOPOLOGY", "perhaps")],
            "LINKER_DECLARE_TOPOLOGY",
            "",
        ),
    ];
    for (overrides, variable, problem) in cases {
        let mut vars: Vec<(String, String)> = good
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        for (k, v) in *overrides {
            vars.retain(|(name, _)| name != k);
            if !v.is_empty() {
                vars.push(((*k).into(), (*v).into()));
            }
        }
        let output = command(&vars).arg("run").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{overrides:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        // The variable is the line's subject, not a word somewhere in it
        // ("not both" mentions both names).
        let (named, text) = stderr
            .trim()
            .strip_prefix("configuration error: ")
            .and_then(|rest| rest.split_once(": "))
            .unwrap_or_else(|| {
                panic!("{overrides:?}: not `configuration error: VAR: ...`: {stderr}")
            });
        assert_eq!(named, *variable, "{overrides:?}: {stderr}");
        assert!(
            text.contains(problem),
            "{overrides:?} should say {problem:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reaches_the_broker_and_endpoint_without_linking() {
    let sim = start_sim(sim_config()).await;
    let vars = base_vars(&sim);
    let output = command(&vars).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let node = identity_link_worker::config::AmqpUrl::new(testkit::broker::amqp_url()).node();
    assert!(
        stdout.contains(&format!("broker {node}: reachable")),
        "{stdout}"
    );
    assert!(stdout.contains("key accepted"), "{stdout}");
    assert_eq!(sim.stats().creates, 0, "check-config creates no link");
    assert!(!stdout.contains(KEY));

    // Every listed node is checked: one that does not answer fails the check.
    let list = format!(
        "{},amqp://guest:guest@127.0.0.1:1/%2f",
        testkit::broker::amqp_url()
    );
    let output = command(&with(vars.clone(), &[("LINKER_AMQP_URL", &list)]))
        .arg("check-config")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{listed}");
    assert!(
        listed.contains(&format!("broker {node}: reachable")),
        "{listed}"
    );
    assert!(
        listed.contains("broker 127.0.0.1:1: UNREACHABLE"),
        "{listed}"
    );

    sim.set_key("rotated");
    let output = command(&vars).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("KEY REFUSED"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_exits_0_and_loses_nothing() {
    let sim = start_sim(SimConfig {
        faults: Faults {
            latency_ms: 50,
            ..Faults::default()
        },
        ..sim_config()
    })
    .await;
    let vars = with(
        base_vars(&sim),
        &[
            ("LINKER_CONCURRENCY", "16"),
            ("LINKER_SHUTDOWN_GRACE", "10s"),
        ],
    );
    let private = Private::from_vars(vars.clone());
    let connection = broker().await;
    let total = 400;
    queue_before_start(&connection, &private, pair_bodies("term", total as usize)).await;
    let mut child = command(&vars)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the worker to be busy", Duration::from_secs(20), || async {
        sim.stats().creates >= 50
    })
    .await;
    signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    assert_eq!(status.code(), Some(0), "graceful exit");
    let linked_by_first = sim.stats().links;
    assert!(
        linked_by_first < total,
        "stopped mid-load ({linked_by_first})"
    );
    // Whatever the first worker did not finish is back in a queue (the work
    // queue or its partition), ready.
    let left = testkit::broker::backlog(&connection, private.event_queues()).await;
    assert!(
        left >= total - linked_by_first,
        "left {left}, linked {linked_by_first}"
    );

    // A second worker finishes the rest: every event linked exactly once.
    let app = TestApp::start(sim, private).await;
    wait_for("all events to link", Duration::from_secs(60), || async {
        app.sim.stats().links >= total
    })
    .await;
    wait_for("the queues to drain", Duration::from_secs(10), || async {
        testkit::broker::backlog(&app.connection, app.private.event_queues()).await == 0
    })
    .await;
    assert_eq!(app.sim.stats().links, total);
    assert_eq!(app.sim.stats().duplicates, 0);
    assert_eq!(app.depth(&app.topology.dead_letter).await, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_appears_in_output_even_at_trace() {
    let sim = start_sim(sim_config()).await;
    let vars = with(
        base_vars(&sim),
        &[
            ("RUST_LOG", "trace"),
            ("LINKER_LOG_FORMAT", "json"),
            ("LINKER_CIRCUIT_PROBE_INTERVAL", "200ms"),
        ],
    );
    let private = Private::from_vars(vars.clone());
    // Trace output is large: to files, so a full pipe never blocks the worker.
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_logged(command(&vars).arg("run"), dir.path(), "worker");
    let connection = broker().await;
    wait_for("the topology", Duration::from_secs(20), || async {
        private.topology.verify(&connection).await.is_ok()
    })
    .await;
    let publisher = testkit::broker::publisher(&connection).await;
    let publish = |i: usize| {
        let body = serde_json::json!({"anonymousId": format!("a-secret-{i}"), "userId": format!("u-secret-{i}")});
        let publisher = publisher.clone();
        let exchange = private.exchange().to_owned();
        async move {
            publisher
                .publish(
                    &exchange,
                    "user.logged_in",
                    body.to_string().as_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .unwrap()
        }
    };
    for i in 0..3 {
        publish(i).await;
    }
    wait_for("three links", Duration::from_secs(20), || async {
        sim.stats().links == 3
    })
    .await;
    // A refused key (errors, probes) and a transient failure, then recovery.
    sim.set_key("rotated-key");
    publish(3).await;
    wait_for("probes", Duration::from_secs(20), || async {
        sim.stats().status(401) >= 3
    })
    .await;
    sim.set_key(KEY);
    sim.set_faults(Faults {
        statuses: vec![503],
        ..Faults::default()
    });
    publish(4).await;
    wait_for("five links", Duration::from_secs(20), || async {
        sim.stats().links == 5
    })
    .await;
    signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20), "the worker").await;
    assert_eq!(status.code(), Some(0));
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&read("worker.stdout.log")),
        String::from_utf8_lossy(&read("worker.stderr.log"))
    );
    assert!(
        all.len() > 10_000,
        "trace output was produced ({} bytes)",
        all.len()
    );
    assert!(!all.contains(KEY), "the secret key leaked into the output");
    // Identifiers are hashed by default.
    assert!(
        !all.contains("u-secret-1"),
        "a plain identifier reached the logs"
    );
    private.delete(&connection).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_dlq_commands_work_end_to_end() {
    let app = TestApp::spawn().await;
    let vars: Vec<(String, String)> = vec![
        ("LINKER_AMQP_URL".into(), amqp_url()),
        ("LINKER_QUEUE".into(), app.private.queue().to_owned()),
        ("LINKER_EXCHANGE".into(), app.exchange().to_owned()),
    ];
    let output = command(&vars)
        .args([
            "publish",
            "--event",
            "user.signed_up",
            "--anonymous",
            "a-cli",
            "--user",
            "u-cli",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.publish("user.logged_in", b"<xml/>").await;
    app.wait_settled(2).await;
    assert!(
        app.sim
            .links()
            .iter()
            .any(|l| l.anonymous_identifier == "a-cli" && l.user_identifier == "u-cli")
    );

    let stats = command(&vars).args(["dlq", "stats"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&stats.stdout);
    assert_eq!(stats.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("1 message(s)"), "{stdout}");
    assert!(stdout.contains("malformed"), "{stdout}");

    let list = command(&vars)
        .args(["dlq", "list", "--limit", "5"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&list.stdout);
    let view: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(view["reason"], "malformed");
    assert_eq!(view["body"], "<xml/>");
    assert_eq!(view["original_routing_key"], "user.logged_in");

    let replay = command(&vars)
        .args(["dlq", "replay", "--reason", "malformed"])
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&replay.stdout).contains("replayed 1"));
    // It is still malformed, so it comes back to the dead-letter queue: nothing lost.
    app.wait_settled(3).await;
    assert_eq!(app.outcome("dead_lettered"), 2);
    app.finish().await;
}
