//! The topology the worker declares equals `deploy/rabbitmq/definitions.json`
//! (for brokers managed with LINKER_DECLARE_TOPOLOGY=false), read back from the
//! broker through the management API; and with declaration off the worker
//! only checks.

use std::collections::BTreeSet;

use serde_json::Value;
use testkit::worker::{InProcess, Private};

use crate::helpers::*;

async fn get(path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/api{path}", testkit::broker::management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the RabbitMQ management API is required (scripts/ensure-rabbitmq enables it): {e}"
            )
        });
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// (kind, name, type/durable, arguments) with our names mapped to the file's.
fn normalise(value: &Value, rename: &dyn Fn(&str) -> String) -> String {
    let mut arguments = value["arguments"].as_object().cloned().unwrap_or_default();
    for (_, v) in arguments.iter_mut() {
        if let Some(s) = v.as_str() {
            *v = Value::String(rename(s));
        }
    }
    serde_json::json!({
        "name": rename(value["name"].as_str().unwrap_or_default()),
        // Exchanges only: for queues the type is the x-queue-type argument.
        "type": if value.get("arguments").is_some() && value.get("internal").is_some() {
            value["type"].clone()
        } else {
            Value::Null
        },
        "durable": value["durable"],
        "auto_delete": value["auto_delete"],
        "arguments": arguments,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_topology_equals_deploy_definitions() {
    // Default ladder and delivery limit, like the definitions file.
    let app =
        TestApp::spawn_with(sim_config(), &[("LINKER_RETRY_DELAYS", "10s,1m,5m,15m,1h")]).await;
    let queue = app.private.queue().to_owned();
    let exchange = app.exchange().to_owned();
    let to_file = |name: &str| -> String {
        if name == exchange {
            "auth.events".to_owned()
        } else if let Some(rest) = name.strip_prefix(queue.as_str()) {
            format!("identity-linker{rest}")
        } else {
            name.to_owned()
        }
    };
    let same = |name: &str| name.to_owned();

    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/rabbitmq/definitions.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let from_file = |kind: &str| -> BTreeSet<String> {
        file[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| normalise(v, &same))
            .collect()
    };

    let ours = |v: &&Value| {
        let name = v["name"].as_str().unwrap_or_default();
        name == exchange || name == queue || name.starts_with(&format!("{queue}."))
    };
    let declared = |path: &'static str| async move {
        get(path)
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(ours)
            .map(|v| normalise(v, &to_file))
            .collect::<BTreeSet<String>>()
    };
    let declared_queues = declared("/queues/%2f").await;
    let declared_exchanges = declared("/exchanges/%2f").await;
    assert_eq!(declared_queues, from_file("queues"), "queues differ");
    // The management API adds `internal`; compare the fields both have.
    assert_eq!(
        declared_exchanges,
        from_file("exchanges"),
        "exchanges differ"
    );

    let binding = |v: &Value, rename: &dyn Fn(&str) -> String| {
        format!(
            "{} -> {} [{}]",
            rename(v["source"].as_str().unwrap_or_default()),
            rename(v["destination"].as_str().unwrap_or_default()),
            v["routing_key"].as_str().unwrap_or_default()
        )
    };
    let declared_bindings: BTreeSet<String> = get("/bindings/%2f")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            let source = v["source"].as_str().unwrap_or_default();
            source == exchange || source == format!("{queue}.dead")
        })
        .map(|v| binding(v, &to_file))
        .collect();
    let file_bindings: BTreeSet<String> = file["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| binding(v, &same))
        .collect();
    assert_eq!(declared_bindings, file_bindings, "bindings differ");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_declaration_off_a_missing_topology_keeps_the_worker_unready() {
    let sim = start_sim(sim_config()).await;
    let vars = with(base_vars(&sim), &[("LINKER_DECLARE_TOPOLOGY", "false")]);
    let private = Private::from_vars(vars);
    let mut worker = InProcess::start(&private).await;
    let ops = worker.ops;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let ready = reqwest::get(format!("http://{ops}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    // Nothing was created on the broker.
    let queues = get("/queues/%2f").await;
    assert!(
        !queues
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == private.queue())
    );

    // Once an operator declares it, the worker gets ready by itself.
    let connection = broker().await;
    private.declare(&connection).await.unwrap();
    wait_for("readiness", std::time::Duration::from_secs(30), || async {
        reqwest::get(format!("http://{ops}/readyz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    worker.stop().await;
    private.delete(&connection).await.unwrap();
}
