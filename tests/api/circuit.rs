//! Contract section 5: the circuit breaker.

use std::time::Duration;

use mos_sim::{Faults, SimConfig};

use crate::helpers::*;

/// After the circuit reopened: the `n` events published are all linked
/// once, none dead-lettered, the worker ready, nothing left in its queues.
async fn resumes_and_links_all(mut app: TestApp, n: u64) {
    app.wait_settled(n).await;
    assert_eq!(app.outcome("linked") + app.outcome("already_linked"), n);
    assert_eq!(app.sim.stats().links, n);
    assert_eq!(app.outcome("dead_lettered"), 0);
    assert_eq!(app.worker.circuit_open(), 0);
    app.wait_ready().await;
    app.stop_worker().await;
    assert_eq!(
        app.depth(&app.topology.dead_letter).await,
        0,
        "0 dead letters"
    );
    assert_eq!(
        app.depth(&app.topology.queue).await,
        0,
        "nothing left behind"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_the_worker_and_it_resumes_by_itself() {
    let sim = SimConfig {
        secret_key: "a-different-key".into(),
        ..SimConfig::default()
    };
    let app = TestApp::spawn_with(sim, &[("LINKER_CIRCUIT_PROBE_INTERVAL", "300ms")]).await;
    app.publish_pairs("user.logged_in", "key", 5).await;
    app.wait_circuit_open(Duration::from_secs(10)).await;
    let (status, body) = app.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "circuit_open_key_refused");
    // Probes keep failing for a while; nothing may be dead-lettered or retried.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(app.sim.stats().status(401) >= 2, "probes were made");
    assert_eq!(app.depth(&app.topology.dead_letter).await, 0);
    assert_eq!(app.worker.retries_delayed(), 0);
    assert_eq!(app.outcome("dead_lettered"), 0);

    app.sim.set_key(KEY);
    resumes_and_links_all(app, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_transient_failures_in_a_row_open_the_circuit() {
    let mut app = TestApp::spawn_with(
        faulty(always(503)),
        &[
            ("LINKER_CIRCUIT_FAILURE_THRESHOLD", "20"),
            ("LINKER_IMMEDIATE_RETRIES", "3"),
            ("LINKER_RETRY_DELAYS", "1s,2s,3s"),
            ("LINKER_CIRCUIT_PROBE_INTERVAL", "300ms"),
        ],
    )
    .await;
    app.publish_pairs("user.logged_in", "out", 10).await;
    app.wait_circuit_open(Duration::from_secs(15)).await;
    let (status, body) = app.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "circuit_open_target_unavailable");
    assert!(app.requests() >= 20);
    // Calls already sleeping in backoff may still go out once; then only
    // probes reach the target (about one per 300 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let calls_when_open = app.requests();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls_during = app.requests() - calls_when_open;
    assert!(calls_during <= 5, "{calls_during} calls in 1 s while open");
    assert_eq!(app.depth(&app.topology.dead_letter).await, 0);

    app.sim.set_faults(Faults::default());
    wait_for("all ten to link", Duration::from_secs(20), || async {
        app.sim.stats().links == 10
    })
    .await;
    wait_for(
        "every message to settle",
        Duration::from_secs(20),
        || async { app.outcome("linked") + app.outcome("already_linked") == 10 },
    )
    .await;
    app.stop_worker().await;
    assert_eq!(
        app.depth(&app.topology.dead_letter).await,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(app.depth(&app.topology.queue).await, 0);
    assert_eq!(app.sim.stats().duplicates, 0);
    app.finish().await;
}

/// A mounted secret as Kubernetes writes it: `key` -> `..data/key`, and
/// `..data` a symlink to a timestamped directory, swapped by a rename.
struct MountedSecret {
    dir: tempfile::TempDir,
    version: u32,
}

impl MountedSecret {
    fn new(key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut secret = Self { dir, version: 0 };
        secret.write(key);
        std::os::unix::fs::symlink("..data/key", secret.path()).unwrap();
        secret
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("key")
    }

    /// A new timestamped directory, then `..data` renamed over to point at it.
    fn write(&mut self, key: &str) {
        self.version += 1;
        let name = format!("..2026_{}", self.version);
        let version_dir = self.dir.path().join(&name);
        std::fs::create_dir(&version_dir).unwrap();
        std::fs::write(version_dir.join("key"), format!("{key}\n")).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

/// The worker's variables with the key read from `secret`'s file only.
fn key_file_vars(sim: &mos_sim::MosSim, secret: &MountedSecret) -> testkit::names::Vars {
    let path = secret.path();
    let file = path.to_str().expect("a temporary path is UTF-8");
    testkit::names::without(
        with(base_vars(sim), &[("LINKER_MOS_SECRET_KEY_FILE", file)]),
        "LINKER_MOS_SECRET_KEY",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_in_its_file_is_picked_up_without_a_restart() {
    let mut secret = MountedSecret::new("the-old-key");
    let sim = start_sim(sim_config()).await;
    let vars = key_file_vars(&sim, &secret);
    let private = testkit::worker::Private::from_vars(vars);
    let app = TestApp::start(sim, private).await;
    app.publish_pairs("user.logged_in", "rotate", 5).await;
    app.wait_circuit_open(Duration::from_secs(10)).await;
    let (_, body) = app.readyz().await;
    assert_eq!(body["reason"], "circuit_open_key_refused");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.depth(&app.topology.dead_letter).await, 0);
    assert_eq!(app.outcome("dead_lettered"), 0);
    assert_eq!(reloads(&app.metrics_text().await, "changed"), 0);
    assert!(
        reloads(&app.metrics_text().await, "unchanged") >= 1,
        "probes re-read the file"
    );

    secret.write(KEY);
    app.wait_settled(5).await;
    assert!(reloads(&app.metrics_text().await, "changed") >= 1);
    resumes_and_links_all(app, 5).await;
}

/// The call goes out with the old key; the file is rotated while it waits;
/// the endpoint refuses the old key, then accepts the check made with the
/// new one. That refusal was the old key's, not this request's: the event is
/// linked with the new key, not dead-lettered `rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_with_the_key_rotated_meanwhile_is_tried_again() {
    let mut secret = MountedSecret::new("the-old-key");
    let sim = start_sim(SimConfig {
        faults: Faults {
            latency_ms: 1500,
            ..Faults::default()
        },
        ..sim_config()
    })
    .await;
    let vars = key_file_vars(&sim, &secret);
    let mut app = TestApp::start(sim, testkit::worker::Private::from_vars(vars)).await;
    app.publish_pairs("user.logged_in", "midway", 1).await;
    wait_for("the call to go out", Duration::from_secs(10), || async {
        app.sim.stats().requests >= 1
    })
    .await;
    secret.write(KEY);
    app.wait_settled(1).await;
    assert_eq!(
        app.sim.stats().status(401),
        1,
        "the old key was refused once"
    );
    assert_eq!(app.outcome("dead_lettered"), 0);
    assert_eq!(app.outcome("linked"), 1);
    assert_eq!(app.sim.stats().links, 1);
    assert_eq!(app.worker.circuit_open(), 0);
    assert_eq!(reloads(&app.metrics_text().await, "changed"), 1);
    app.stop_worker().await;
    assert_eq!(app.depth(&app.topology.dead_letter).await, 0);
    app.finish().await;
}

fn reloads(metrics: &str, result: &str) -> u64 {
    let prefix = format!("identity_linker_secret_key_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}
