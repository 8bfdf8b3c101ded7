//! `demo`: the whole pipeline on the local broker, with an in-process
//! mos-sim, a private topology, and a mix of events; prints what happened.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::broker::connection::{connect, open_confirm_channel};
use crate::broker::dlq;
use crate::broker::publisher::Publisher;
use crate::cli::publish::{event_body, event_properties};
use crate::config::{Config, DEFAULT_AMQP_URL};
use crate::ops::telemetry;
use mos_sim::{Faults, MosSim, SimConfig};

const DEMO_KEY: &str = "demo-secret-key";

struct Sample {
    routing_key: &'static str,
    body: Vec<u8>,
    message_id: String,
}

fn samples(users: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut push = |routing_key: &'static str, body: Vec<u8>| {
        let message_id = uuid::Uuid::new_v4().to_string();
        out.push(Sample {
            routing_key,
            body,
            message_id,
        });
    };
    for i in 0..users {
        let (anonymous, user) = (format!("anon-{i}"), format!("user-{i}"));
        // A sign-up brings both events within milliseconds, with the same pair.
        push(
            "user.signed_up",
            event_body(&format!("su-{i}"), &anonymous, &user),
        );
        push(
            "user.logged_in",
            event_body(&format!("li-{i}"), &anonymous, &user),
        );
    }
    // One user logging in again and again.
    for n in 0..10 {
        push(
            "user.logged_in",
            event_body(&format!("again-{n}"), "anon-0", "user-0"),
        );
    }
    // What buggy producers send.
    push(
        "user.logged_in",
        event_body("junk-1", "undefined", "user-x"),
    );
    push("user.logged_in", event_body("junk-2", "null", "user-y"));
    push("user.logged_in", event_body("same", "user-z", "user-z"));
    push(
        "user.logged_in",
        br#"{"eventId":"no-anon","userId":"user-w"}"#.to_vec(),
    );
    push(
        "user.logged_in",
        br#"{"eventId":"no-user","anonymousId":"anon-w"}"#.to_vec(),
    );
    push(
        "user.logged_in",
        br#"{"eventId":"bad-type","anonymousId":"a","userId":true}"#.to_vec(),
    );
    push("user.logged_in", b"this is not json".to_vec());
    push(
        "user.signed_up",
        br#"{"data":{"anonymousId":"anon-nested","user_id":"user-nested"}}"#.to_vec(),
    );
    push(
        "user.signed_up",
        br#"{"anonymous_id":"anon-int","user":{"id":4242}}"#.to_vec(),
    );
    out
}

pub async fn run(users: usize) -> ExitCode {
    match demo(users).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(users: usize) -> Result<(), String> {
    // Quiet by default: the table below is the demo's output. RUST_LOG=info shows the worker's logs.
    let _logs = telemetry::init_with_default(
        crate::config::LogFormat::Text,
        crate::config::IdentifierLogging::Hashed,
        "error,lapin=off",
    )
    .map_err(|e| format!("configuration error: {e}"))?;
    let sim = MosSim::start(
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        SimConfig {
            secret_key: DEMO_KEY.to_owned(),
            // Two transient failures up front, to show in-process retries.
            faults: Faults {
                statuses: vec![503, 429],
                retry_after_secs: 1,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start mos-sim: {e}"))?;
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let amqp_url = std::env::var("LINKER_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
    let config = Config::from_vars([
        ("LINKER_AMQP_URL".to_owned(), amqp_url),
        ("LINKER_QUEUE".to_owned(), format!("demo-{suffix}")),
        (
            "LINKER_EXCHANGE".to_owned(),
            format!("demo-{suffix}.auth.events"),
        ),
        ("LINKER_MOS_ENDPOINT_URL".to_owned(), sim.endpoint_url()),
        ("LINKER_MOS_SECRET_KEY".to_owned(), DEMO_KEY.to_owned()),
        ("LINKER_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("LINKER_RETRY_DELAYS".to_owned(), "1s,2s".to_owned()),
    ])
    .map_err(|e| format!("demo configuration: {e}"))?;

    println!("identity-link-worker demo");
    println!("  broker   {}", config.broker.amqp_urls[0]);
    println!(
        "  queue    {} (private to this run, deleted at the end)",
        config.broker.queue
    );
    println!(
        "  mos-sim  {} (in process; check-then-create pause 5 ms)",
        sim.base_url()
    );

    // First, so a missing broker is named at once (the error names the
    // URL, password redacted), not after the worker's readiness wait.
    let connection = connect(&config.broker, "identity-link-worker demo")
        .await
        .map_err(|e| {
            format!("{e}; the demo needs RabbitMQ there (LINKER_AMQP_URL sets another)")
        })?;
    let app = Application::build(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let metrics = app.metrics();
    let topology = app.topology().clone();
    let ops = app.ops_addr();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(app.run_until_stopped(stop.clone()));
    wait_ready(ops, &config).await?;

    let publisher = Publisher::new(
        open_confirm_channel(&connection)
            .await
            .map_err(|e| e.to_string())?,
    );
    let samples = samples(users);
    let started = Instant::now();
    for sample in &samples {
        publisher
            .publish(
                &config.broker.exchange,
                sample.routing_key,
                &sample.body,
                event_properties(&sample.message_id),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    println!(
        "\npublished {} events (confirmed); waiting for the worker to settle them…",
        samples.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.settled_total() < samples.len() as u64 {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} events settled within 60 s",
                metrics.settled_total(),
                samples.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();

    println!("\n{:<40} {:>6}", "outcome", "count");
    println!("{}", "-".repeat(47));
    for (outcome, count) in metrics.outcome_totals() {
        println!("{outcome:<40} {count:>6}");
    }
    for (reason, count) in metrics.skip_totals() {
        if count > 0 {
            println!("  skipped: {reason:<29} {count:>6}");
        }
    }
    for (reason, count) in metrics.dead_letter_totals() {
        if count > 0 {
            println!("  dead-lettered: {reason:<23} {count:>6}");
        }
    }
    let stats = sim.stats();
    println!("{}", "-".repeat(47));
    println!("{:<40} {:>6}", "events settled", metrics.settled_total());
    println!(
        "{:<40} {:>6}",
        "linked-cache hits (no call)",
        metrics.linked_cache_hits.get()
    );
    println!(
        "{:<40} {:>6}",
        "in-process retries",
        metrics.retries_immediate.get()
    );
    println!("{:<40} {:>6}", "mos-sim requests", stats.requests);
    println!("{:<40} {:>6}", "mos-sim links created", stats.creates);
    println!("{:<40} {:>6}", "mos-sim duplicate links", stats.duplicates);
    println!("settled in {}", telemetry::duration(elapsed));

    let views = dlq::list(&connection, &topology, 50)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "\ndead-letter queue {} ({} messages):",
        topology.dead_letter,
        views.len()
    );
    for view in &views {
        println!(
            "  {:<24} {}  ←  {}",
            view.reason,
            view.error.as_deref().unwrap_or(""),
            headers_free(&view.body)
        );
    }

    stop.cancel();
    let _ = worker.await;
    if let Ok(channel) = connection.create_channel().await {
        let _ = topology.delete(&channel).await;
    }
    let _ = connection.close(200, "demo done".into()).await;
    sim.shutdown().await;
    println!(
        "\nnext: `bash scripts/test` runs the whole test suite (about 35 minutes; README \"Test\"): \
         on this broker only tests that leave it alone, each with its own names; the tests that \
         cut or restart a broker use private nodes it starts and removes."
    );
    Ok(())
}

fn headers_free(body: &str) -> String {
    let one_line: String = body.chars().filter(|c| !c.is_control()).collect();
    crate::broker::headers::truncate(&one_line, 80).to_owned()
}

async fn wait_ready(ops: std::net::SocketAddr, config: &Config) -> Result<(), String> {
    let url = format!("http://{ops}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = reqwest::get(&url).await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the worker did not become ready within 20 s (is RabbitMQ running at {}?)",
                config.broker.amqp_urls[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
