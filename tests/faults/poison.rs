//! Scenario 6: a message that "crashes" the worker every time it is held
//! (SIGKILL while its link call is in flight) is redelivered until the work
//! queue's `x-delivery-limit`, then the broker dead-letters it (at-least-once)
//! and it never comes back on its own. `dlq stats` shows it, `dlq replay`
//! brings it back once the cause is gone.

use std::time::{Duration, Instant};

use identity_link_worker::broker::{dlq, headers};
use mos_sim::Faults;

use crate::harness::*;

const LIMIT: u32 = 3;

fn cli(scenario: &Scenario, label: &str, args: &[&str]) -> String {
    let output = command(&scenario.vars).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Kept with the worker logs, so the secret scan covers the CLI too.
    std::fs::write(scenario.logs.file(&format!("{label}.out.log")), &stdout).unwrap();
    std::fs::write(scenario.logs.file(&format!("{label}.err.log")), &stderr).unwrap();
    assert!(output.status.success(), "{args:?}: {stdout}{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_poison_message_is_dead_lettered_at_the_delivery_limit() {
    let limit = LIMIT.to_string();
    let scenario = Scenario::new(
        "s06-poison",
        // The link call hangs: the worker holds the message when killed.
        testkit::sim::latency(600_000),
        &[
            ("LINKER_DELIVERY_LIMIT", limit.as_str()),
            ("LINKER_HTTP_TIMEOUT", "10m"),
        ],
    )
    .await;
    let poison = Event::pair(
        "user.signed_up",
        &format!("a.{}.poison", scenario.tag),
        &format!("u.{}.poison", scenario.tag),
    );
    let mut producer = Producer::new(&scenario);
    producer.send(std::slice::from_ref(&poison)).await;

    let connection = broker().await;
    let mut deliveries = 0;
    let mut round = 0;
    let dead_lettered_after = loop {
        round += 1;
        assert!(
            round <= 2 * LIMIT as usize + 4,
            "the message loops: {deliveries} deliveries"
        );
        let before = scenario.sim.stats().requests;
        let mut worker = scenario.spawn_worker(&format!("crashing-{round}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let held = loop {
            if scenario.sim.stats().requests > before {
                break true;
            }
            if depth(&connection, &scenario.topology.dead_letter).await == 1 {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "neither delivered nor dead-lettered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !held {
            // Dead-lettered: this worker gets nothing, however long it waits.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(
                scenario.sim.stats().requests,
                before,
                "no delivery after the dead-lettering"
            );
            worker.kill();
            break deliveries;
        }
        deliveries += 1;
        worker.kill();
    };
    note(&format!(
        "{dead_lettered_after} deliveries, each ended by SIGKILL, then the broker dead-lettered it (x-delivery-limit {LIMIT})"
    ));
    assert!(
        dead_lettered_after as u32 >= LIMIT && dead_lettered_after as u32 <= LIMIT + 1,
        "dead-lettered after {dead_lettered_after} deliveries"
    );

    // What the operator sees: `dlq stats` and the headers.
    let stats = cli(&scenario, "dlq-stats", &["dlq", "stats"]);
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["delivery_limit", "1"]),
        "dlq stats: {stats}"
    );
    let views = dlq::list(&connection, &scenario.topology, 10)
        .await
        .unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].reason, "delivery_limit");
    assert_eq!(
        views[0].body.as_bytes(),
        poison.body.as_slice(),
        "body kept"
    );
    // Looked at and put back.
    let letter = testkit::broker::peek(&connection, &scenario.topology.dead_letter, 1)
        .await
        .pop()
        .expect("the dead letter");
    assert_eq!(
        headers::x_death_reason(&letter.properties).as_deref(),
        Some("delivery_limit"),
        "the broker's own x-death reason"
    );
    // The broker dead-lettered it from the visitor's partition queue, where
    // the routing step had put it; the routing step's headers keep the event's
    // original route, and that is where a replay sends it.
    let (from_exchange, from_queue) =
        headers::x_death_route(&letter.properties).expect("x-death names the queue");
    assert!(
        from_exchange.is_empty() && scenario.topology.partitions.contains(&from_queue),
        "dead-lettered from a partition queue, not {from_exchange:?}/{from_queue:?}"
    );
    assert_eq!(
        headers::original_route(&letter.properties, "", ""),
        (scenario.exchange().to_owned(), "user.signed_up".to_owned()),
        "the original route is kept"
    );

    // The cause is fixed; the worker runs normally and new events flow.
    scenario.sim.set_faults(Faults::default());
    let mut worker = scenario.spawn_worker("healthy");
    worker.wait_ready(Duration::from_secs(30)).await;
    let others: Vec<Event> = (0..20)
        .map(|i| {
            Event::pair(
                "user.logged_in",
                &format!("a.{}.{i}", scenario.tag),
                &format!("u.{}.{i}", scenario.tag),
            )
        })
        .collect();
    producer.send(&others).await;
    producer.close().await;
    wait_drained(&scenario, &others, Duration::from_secs(30)).await;
    assert_eq!(
        scenario.sim.stats().links,
        20,
        "the poison stayed in the DLQ"
    );

    // Replay: back to its original exchange and routing key, then linked.
    let replayed_at = Instant::now();
    let replay = cli(&scenario, "dlq-replay", &["dlq", "replay"]);
    assert!(replay.starts_with("replayed 1 message"), "{replay}");
    let mut all = others.clone();
    all.push(poison.clone());
    let done = wait_drained(&scenario, &all, Duration::from_secs(30)).await;
    let (status, _) = worker.stop(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    assert_queues_empty(&scenario).await;
    let dead_now = dead_letters(&scenario).await;
    assert!(
        dead_now.is_empty(),
        "DLQ empty after the replay: {dead_now:?}"
    );
    let _ = connection.close(200, "done".into()).await;

    let mut t = tally(&all, &scenario.sim, &dead_now);
    t.dead_lettered = 1; // before the replay
    let scan = scenario.assert_no_secret_in_output();
    Summary {
        scenario: "6 poison loop",
        load: "1 poison event (link call hangs), then 20 normal events".to_owned(),
        faults: format!(
            "SIGKILL while held x {dead_lettered_after}; x-delivery-limit {LIMIT}"
        ),
        tally: &t,
        recovery: format!(
            "dead-lettered (delivery_limit) after {dead_lettered_after} deliveries; replayed and linked in {}",
            secs(done.duration_since(replayed_at))
        ),
    }
    .print();
    note(&scan.describe());
    assert_eq!(t.lost, 0);
    assert_eq!(t.duplicates, 0);
    assert_eq!(t.unexpected_links, 0);
    // Runs show 0.04 s.
    assert_within(
        "the replayed poison event linking",
        done.duration_since(replayed_at),
        Duration::from_secs(10),
    );
    scenario.cleanup().await;
}
