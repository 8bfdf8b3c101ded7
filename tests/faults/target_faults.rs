//! Scenarios 4 and 5: the target is down for 60 s (503, then dropped
//! connections), and the key is refused for 60 s (401). The circuit must open,
//! nothing may reach the dead-letter queue or burn its retry ladder, and
//! everything links once the target is back.

use std::time::{Duration, Instant};

use mos_sim::{Faults, RateFault};
use testkit::scrape::Scrape;

use crate::harness::*;

/// As the issue says. `FAULTS_OUTAGE_SECS` shortens it for local iterations.
fn outage() -> Duration {
    let secs = std::env::var("FAULTS_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

const TOTAL: usize = 3_000;
const PROBE: Duration = Duration::from_secs(2);

/// A short ladder on purpose: 1 s + 2 s. Were messages cycled through it
/// during a 60 s outage, they would be dead-lettered `retries_exhausted`.
const OVERRIDES: &[(&str, &str)] = &[
    ("LINKER_RETRY_DELAYS", "1s,2s"),
    ("LINKER_CIRCUIT_PROBE_INTERVAL", "2s"),
    ("LINKER_CIRCUIT_FAILURE_THRESHOLD", "20"),
];

/// Liveness bounds after the fault ends (runs show 0.1 to 0.8 s for each;
/// the probe interval is 2 s).
const READY_AGAIN_WITHIN: Duration = Duration::from_secs(10);
const DRAINED_WITHIN: Duration = Duration::from_secs(30);

struct Observed {
    /// When the sampled `identity_linker_circuit_open` first read 1 after
    /// the fault began.
    opened: Instant,
    readiness_reason: String,
    /// Link calls that reached the target while the circuit was open.
    calls_while_open: u64,
    dead_during: u32,
}

/// Publishes TOTAL events at ~200/s, starts `fault` after 3 s, keeps it for
/// `outage()`, then ends it with `heal`; checks the circuit meanwhile.
async fn run_outage(
    scenario: &Scenario,
    events: &[Event],
    fault: impl Fn(&Scenario),
    heal: impl Fn(&Scenario),
    midway: impl Fn(&Scenario),
) -> (Observed, Instant, ReadyRecorder, CircuitRecorder, Worker) {
    let ready = ReadyRecorder::start(scenario.ops);
    let circuit = CircuitRecorder::start(scenario.ops);
    let worker = scenario.spawn_worker("worker");
    worker.wait_ready(Duration::from_secs(30)).await;
    let mut producer = Producer::new(scenario);
    let all = events.to_vec();
    let producing = tokio::spawn(async move {
        producer
            .send_paced(&all, 20, Duration::from_millis(100))
            .await;
        producer.close().await;
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let began = Instant::now();
    fault(scenario);
    // Seen by the sampler, which keeps watching until the end.
    wait_for("the circuit to open", Duration::from_secs(20), || async {
        circuit.opened_at_or_after(began).is_some()
    })
    .await;
    let opened = circuit
        .opened_at_or_after(began)
        .expect("the circuit opened");
    let readiness_reason = match scrape_ready(&worker).await {
        (503, reason) => reason,
        (status, reason) => panic!("readyz answered {status} {reason} with the circuit open"),
    };
    // Calls already sleeping in backoff may still go out once; after that only probes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls_at = scenario.sim.stats().requests;
    let counted_from = Instant::now();
    let half = began + outage() / 2;
    tokio::time::sleep_until(half.into()).await;
    midway(scenario);
    tokio::time::sleep_until((began + outage()).into()).await;
    let calls_while_open = scenario.sim.stats().requests - calls_at;
    let counted_for = counted_from.elapsed();
    let connection = broker().await;
    let dead_during = depth(&connection, &scenario.topology.dead_letter).await;
    let _ = connection.close(200, "ok".into()).await;
    // Every sample since it opened, not one scrape at the end.
    assert_eq!(
        circuit.closed_after(opened),
        None,
        "the circuit stayed open through the outage: {}",
        circuit.timeline(began)
    );
    note(&format!(
        "{} link calls in the last {} of the outage (probe every {}): probes only",
        calls_while_open,
        secs(counted_for),
        secs(PROBE)
    ));
    // At most one probe per interval (+1 for the edges).
    let max_probes = counted_for.as_secs_f64() / PROBE.as_secs_f64() + 2.0;
    assert!(
        calls_while_open as f64 <= max_probes,
        "{calls_while_open} calls in {counted_for:?} while open"
    );
    heal(scenario);
    let healed = Instant::now();
    producing.await.unwrap();
    (
        Observed {
            opened,
            readiness_reason,
            calls_while_open,
            dead_during,
        },
        healed,
        ready,
        circuit,
        worker,
    )
}

async fn scrape_ready(worker: &Worker) -> (u16, String) {
    let response = http_client()
        .get(format!("http://{}/readyz", worker.ops))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

/// What happened after the fault ended.
struct Recovery {
    ready_again: Duration,
    drained: Duration,
    /// How long the sampled gauge read 1.
    open_for: Duration,
}

async fn finish(
    scenario: &Scenario,
    events: &[Event],
    observed: &Observed,
    healed: Instant,
    ready: &ReadyRecorder,
    circuit: &CircuitRecorder,
    mut worker: Worker,
) -> (End, Recovery, Scrape) {
    wait_for(
        "readiness after recovery",
        Duration::from_secs(30),
        || async { ready.ready_at_or_after(healed).is_some() },
    )
    .await;
    let ready_again = ready
        .ready_at_or_after(healed)
        .unwrap()
        .duration_since(healed);
    // The gauge must come back to 0 too, not only readiness.
    wait_for(
        "the circuit gauge to read 0 again",
        Duration::from_secs(30),
        || async { circuit.closed_after(observed.opened).is_some() },
    )
    .await;
    let closed = circuit.closed_after(observed.opened).unwrap();
    let mut end = drain_and_tally(scenario, events, &mut worker, Duration::from_secs(120)).await;
    let drained = end.drained.duration_since(healed);
    let metrics = end.metrics.take().expect("metrics");
    assert!(
        closed >= healed,
        "the circuit closed before the fault ended"
    );
    assert_eq!(
        circuit.opens(),
        1,
        "the circuit opened once, for the outage: {}",
        circuit.timeline(observed.opened)
    );
    assert_within(
        "readiness after the fault ended",
        ready_again,
        READY_AGAIN_WITHIN,
    );
    assert_within(
        "the circuit closing after the fault ended",
        closed.duration_since(healed),
        READY_AGAIN_WITHIN,
    );
    assert_within(
        "draining the backlog after the fault ended",
        drained,
        DRAINED_WITHIN,
    );
    let recovery = Recovery {
        ready_again,
        drained,
        open_for: closed.duration_since(observed.opened),
    };
    (end, recovery, metrics)
}

/// A scenario with a 10 ms target and the short ladder of [`OVERRIDES`].
async fn scenario(name: &'static str) -> Scenario {
    Scenario::new(name, testkit::sim::latency(10), OVERRIDES).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_target_outage_opens_the_circuit_and_dead_letters_nothing() {
    let scenario = scenario("s04-target-outage").await;
    let events = mixed_load(&scenario.tag, TOTAL);
    let (observed, healed, ready, circuit, worker) = run_outage(
        &scenario,
        &events,
        |s| {
            s.sim.set_faults(Faults {
                rate: Some(RateFault {
                    status: 503,
                    probability: 1.0,
                }),
                ..Faults::default()
            })
        },
        |s| {
            s.sim.set_faults(Faults {
                latency_ms: 10,
                ..Faults::default()
            })
        },
        // Second half: the target drops every connection without answering.
        |s| {
            s.sim.set_faults(Faults {
                drop_rate: 1.0,
                ..Faults::default()
            })
        },
    )
    .await;
    let (End { tally: t, scan, .. }, recovery, metrics) = finish(
        &scenario, &events, &observed, healed, &ready, &circuit, worker,
    )
    .await;
    Summary {
        scenario: "4 target outage",
        load: format!(
            "{TOTAL} events at ~200/s ({} to skip), ladder 1s,2s, probe every 2 s",
            t.skipped
        ),
        faults: format!(
            "mos-sim 503 for {} s, then drops connections for {} s",
            outage().as_secs() / 2,
            outage().as_secs() - outage().as_secs() / 2
        ),
        tally: &t,
        recovery: format!(
            "target back to ready {}, backlog drained {}",
            secs(recovery.ready_again),
            secs(recovery.drained)
        ),
    }
    .print();
    note(&format!(
        "circuit open for {} (readyz {}), {} calls while open, DLQ during outage {}, delayed retries {} (before the circuit opened), immediate+delayed retries spent on the outage {}; {}",
        secs(recovery.open_for),
        observed.readiness_reason,
        observed.calls_while_open,
        observed.dead_during,
        metrics.outcome("retried"),
        metrics
            .text
            .lines()
            .filter(|l| l.starts_with("identity_linker_retries_total"))
            .collect::<Vec<_>>()
            .join(" "),
        scan.describe()
    ));
    assert_eq!(observed.readiness_reason, "circuit_open_target_unavailable");
    assert_eq!(
        observed.dead_during, 0,
        "nothing dead-lettered during the outage"
    );
    t.assert_clean();
    scenario.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_key_revoked_pauses_without_dead_lettering_and_resumes() {
    let scenario = scenario("s05-key-revoked").await;
    let events = mixed_load(&scenario.tag, TOTAL);
    let revoked = format!("revoked-{}", random_hex(8));
    let (observed, healed, ready, circuit, worker) = run_outage(
        &scenario,
        &events,
        |s| s.sim.set_key(&revoked),
        |s| s.sim.set_key(&s.key),
        |_| {},
    )
    .await;
    let refused = scenario.sim.stats().status(401);
    let (End { tally: t, scan, .. }, recovery, metrics) = finish(
        &scenario, &events, &observed, healed, &ready, &circuit, worker,
    )
    .await;
    Summary {
        scenario: "5 key revoked",
        load: format!(
            "{TOTAL} events at ~200/s ({} to skip), probe every 2 s",
            t.skipped
        ),
        faults: format!("mos-sim refuses the key (401) for {} s", outage().as_secs()),
        tally: &t,
        recovery: format!(
            "key back to ready {}, backlog drained {}",
            secs(recovery.ready_again),
            secs(recovery.drained)
        ),
    }
    .print();
    note(&format!(
        "circuit open for {} (readyz {}), {refused} answers 401 in all, {} calls while open, delayed retries {}; {}",
        secs(recovery.open_for),
        observed.readiness_reason,
        observed.calls_while_open,
        metrics.outcome("retried"),
        scan.describe()
    ));
    assert_eq!(observed.readiness_reason, "circuit_open_key_refused");
    assert_eq!(observed.dead_during, 0);
    assert_eq!(
        metrics.outcome("retried"),
        0,
        "a refused key burns no retry step"
    );
    t.assert_clean();
    scenario.cleanup().await;
}
