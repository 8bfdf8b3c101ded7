//! `check-config`: parse, reach the broker, reach the endpoint without linking.

use std::process::ExitCode;
use std::sync::Arc;

use crate::broker::connection::connect_to;
use crate::broker::topology::Topology;
use crate::config::{Config, delay_label};
use crate::link::{LinkClient, Verdict};
use crate::ops::metrics::Metrics;
use crate::ops::telemetry;

pub async fn run(config: &Config) -> ExitCode {
    let topology = Topology::new(&config.broker, &config.retry.ladder);
    println!("configuration: ok");
    for url in &config.broker.amqp_urls {
        println!("  broker          {url}");
    }
    println!(
        "  topology        exchange {:?} keys {:?} -> queue {:?}; dead letters {:?}; retry queues {:?} ({})",
        topology.exchange,
        topology.routing_keys,
        topology.queue,
        topology.dead_letter,
        topology
            .retry_queues
            .iter()
            .map(|q| q.name.as_str())
            .collect::<Vec<_>>(),
        if config.broker.declare_topology {
            "declared at start"
        } else {
            "must exist"
        },
    );
    match config.broker.partitions {
        Some(p) => println!(
            "  partitions      {p} ({}.partition.0 .. {}.partition.{}), replica id {:?}",
            topology.queue,
            topology.queue,
            p.get() - 1,
            config.broker.replica_id
        ),
        None => println!("  partitions      none (direct mode: LINKER_PARTITIONS=0)"),
    }
    println!("  endpoint        {}", config.link.endpoint_url);
    println!(
        "  secret key      set ({} characters)",
        config.link.secret_key.expose().chars().count()
    );
    println!(
        "  retries         {} immediate, then delays {}",
        config.retry.immediate_retries,
        config
            .retry
            .ladder
            .delays()
            .iter()
            .map(|d| delay_label(*d))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "  prefetch/concurrency {}/{}",
        config.broker.prefetch, config.link.concurrency
    );
    println!("  operations HTTP {}", config.ops.http_addr);
    let mut ok = true;

    // Every listed node: a wrong URL in a cluster's list would otherwise
    // show only on the day the other nodes are down.
    let mut verified = false;
    for url in &config.broker.amqp_urls {
        match connect_to(url, &config.broker.tls, "identity-link-worker check-config").await {
            Ok(connection) => {
                println!("broker {}: reachable", url.node());
                if !verified {
                    verified = true;
                    match topology.missing(&connection).await {
                        Ok(missing) if missing.is_empty() => println!("topology: present"),
                        Ok(missing) => {
                            if config.broker.declare_topology {
                                println!(
                                    "topology: not all present yet (the worker declares it at start):"
                                );
                            } else {
                                println!("topology: MISSING (LINKER_DECLARE_TOPOLOGY=false):");
                                ok = false;
                            }
                            for object in &missing {
                                println!("  missing {object}");
                            }
                        }
                        Err(error) => {
                            println!("topology: CANNOT CHECK: {error}");
                            ok = false;
                        }
                    }
                }
                let _ = connection.close(200, "check-config done".into()).await;
            }
            Err(error) => {
                println!("broker {}: UNREACHABLE: {error}", url.node());
                ok = false;
            }
        }
    }

    // An empty body is answered 400 by the endpoint's workflow after the key
    // was accepted, so this proves reachability and the key without linking.
    match probe_endpoint(config).await {
        Ok(status) => {
            println!("endpoint: reachable, key accepted (answered {status} to an empty request)")
        }
        Err(problem) => {
            println!("endpoint: {problem}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn probe_endpoint(config: &Config) -> Result<String, String> {
    let metrics = Arc::new(Metrics::new(&config.broker.routing_keys));
    let client =
        LinkClient::new(&config.link, metrics).map_err(|e| format!("CANNOT BUILD CLIENT: {e}"))?;
    let error = match client.check_reachable().await {
        Ok(status) => return Ok(status.to_string()),
        Err(error) => error,
    };
    let status = error
        .status
        .map_or_else(|| "none".to_owned(), |s| s.to_string());
    Err(match error.verdict {
        Verdict::KeyRefused => format!("KEY REFUSED (HTTP {status})"),
        Verdict::RetryAfter(_) => format!("UNAVAILABLE: {}", error.message),
        Verdict::RateLimited(after) => format!(
            "RATE LIMITED (HTTP {status}, retry after {}): try again later",
            telemetry::duration(after)
        ),
        // Another 4xx to an empty request: not the Link Identities workflow.
        Verdict::Reject => format!("UNEXPECTED ANSWER: {}", error.message),
    })
}
