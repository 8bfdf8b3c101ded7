//! Prometheus metrics (docs/interface.md, "Metrics"). Label values come from small fixed
//! sets only; the hot path uses pre-resolved handles, not label lookups.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::telemetry;
use crate::domain::{DeadLetterReason, OutcomeLabel, SkipReason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    event_type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// A broker node as `host:port`, from `LINKER_AMQP_URL` (a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Event types outside the configured routing keys are counted as `other`,
/// so a misbehaving producer cannot blow up the label set.
pub const OTHER_EVENT_TYPE: &str = "other";

pub struct Metrics {
    registry: Registry,
    event_types: Vec<String>,
    /// `[event_type index][outcome index]`, the last row is `other`.
    messages: Vec<[Counter; OutcomeLabel::ALL.len()]>,
    dead_lettered: Family<ReasonLabels, Counter>,
    skipped: Family<ReasonLabels, Counter>,
    pub retries_immediate: Counter,
    pub retries_delayed: Counter,
    api_requests: Family<StatusLabels, Counter>,
    /// `api_requests{status="200"}`, resolved at the first 200 (the hot path:
    /// no label formatting or family lookup per call).
    api_ok: std::sync::OnceLock<Counter>,
    pub api_request_duration: Histogram,
    pub message_duration: Histogram,
    pub event_age: Histogram,
    pub linked_cache_hits: Counter,
    pub handed_back: Counter,
    pub routed: Counter,
    pub partitions_active: Gauge,
    pub in_flight: Gauge,
    pub broker_connected: Gauge,
    /// 1 for the node the session is on, 0 for the other listed nodes.
    broker_node: Family<NodeLabels, Gauge>,
    /// The listed nodes' gauges of `broker_node`.
    broker_nodes: std::sync::Mutex<Vec<(String, Gauge)>>,
    pub broker_reconnects: Counter,
    broker_connect_failures: Family<NodeLabels, Counter>,
    pub circuit_open: Gauge,
    /// Re-reads of `LINKER_MOS_SECRET_KEY_FILE` (`link::key`).
    secret_key_reloads: Family<ResultLabels, Counter>,
    /// The adaptive limit on link calls in flight (`link::flow`).
    pub concurrency_limit: Gauge,
    /// 429s (and 503s with `Retry-After`) that paused the process.
    pub rate_limited: Counter,
    pub rate_limit_paused_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Mirrors [`telemetry::dropped_lines`] at each scrape.
    log_lines_dropped: Counter,
}

/// A counter family by reason, every reason exported from the start (at 0),
/// so rates and alerts need no `absent()`.
fn reason_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    reasons: impl IntoIterator<Item = &'static str>,
) -> Family<ReasonLabels, Counter> {
    let family = Family::<ReasonLabels, Counter>::default();
    registry.register(name, help, family.clone());
    for reason in reasons {
        let _ = family.get_or_create(&ReasonLabels { reason });
    }
    family
}

impl Metrics {
    pub fn new(routing_keys: &[String]) -> Self {
        let mut registry = Registry::default();
        let messages_family = Family::<MessageLabels, Counter>::default();
        registry.register(
            "identity_linker_messages",
            "Messages handled, by event type and outcome",
            messages_family.clone(),
        );
        let mut event_types: Vec<String> = routing_keys.to_vec();
        event_types.push(OTHER_EVENT_TYPE.to_owned());
        let messages = event_types
            .iter()
            .map(|event_type| {
                OutcomeLabel::ALL.map(|outcome| {
                    messages_family.get_or_create_owned(&MessageLabels {
                        event_type: event_type.clone(),
                        outcome: outcome.as_str(),
                    })
                })
            })
            .collect();

        let dead_lettered = reason_family(
            &mut registry,
            "identity_linker_dead_lettered",
            "Messages dead-lettered, by reason",
            DeadLetterReason::ALL.map(DeadLetterReason::as_str),
        );
        let skipped = reason_family(
            &mut registry,
            "identity_linker_skipped",
            "Messages acked without a link call, by reason",
            SkipReason::ALL.map(SkipReason::as_str),
        );
        let retries = Family::<KindLabels, Counter>::default();
        registry.register(
            "identity_linker_retries",
            "Retries, immediate (in process) or delayed (through a retry queue)",
            retries.clone(),
        );
        let retries_immediate = retries.get_or_create_owned(&KindLabels { kind: "immediate" });
        let retries_delayed = retries.get_or_create_owned(&KindLabels { kind: "delayed" });

        let api_requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "identity_linker_api_requests",
            "Link calls, by HTTP status or `error` when no response came",
            api_requests.clone(),
        );
        let api_request_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "identity_linker_api_request_duration_seconds",
            "Duration of link calls",
            api_request_duration.clone(),
        );
        let message_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "identity_linker_message_duration_seconds",
            "Time from delivery to ack",
            message_duration.clone(),
        );
        let event_age = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registry.register(
            "identity_linker_event_age_seconds",
            "Ack time minus the event's own time (occurredAt/occurred_at/timestamp)",
            event_age.clone(),
        );
        let linked_cache_hits = Counter::default();
        registry.register(
            "identity_linker_linked_cache_hits",
            "Events answered from the linked-pairs cache, with no call",
            linked_cache_hits.clone(),
        );
        let handed_back = Counter::default();
        registry.register(
            "identity_linker_handed_back",
            "Messages put back on the work queue untouched while the circuit was open",
            handed_back.clone(),
        );
        let routed = Counter::default();
        registry.register(
            "identity_linker_routed",
            "Events the routing step published to their visitor's partition queue",
            routed.clone(),
        );
        let partitions_active = Gauge::default();
        registry.register(
            "identity_linker_partitions_active",
            "Partitions that delivered to this replica in the last minute",
            partitions_active.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "identity_linker_in_flight",
            "Messages being handled",
            in_flight.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "identity_linker_broker_connected",
            "1 while connected to the broker",
            broker_connected.clone(),
        );
        let broker_node = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "identity_linker_broker_node",
            "1 for the broker node (host:port) this replica is connected to, 0 for the other listed nodes",
            broker_node.clone(),
        );
        let broker_reconnects = Counter::default();
        registry.register(
            "identity_linker_broker_reconnects",
            "Broker sessions opened after the first (after a lost session or a failed attempt)",
            broker_reconnects.clone(),
        );
        let broker_connect_failures = Family::<NodeLabels, Counter>::default();
        registry.register(
            "identity_linker_broker_connect_failures",
            "Attempts to open a broker session that failed, by node",
            broker_connect_failures.clone(),
        );
        let circuit_open = Gauge::default();
        registry.register(
            "identity_linker_circuit_open",
            "1 while the circuit is open (key refused or target down)",
            circuit_open.clone(),
        );
        let secret_key_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "identity_linker_secret_key_reloads",
            "Re-reads of LINKER_MOS_SECRET_KEY_FILE (on a refused key, before each probe), by result",
            secret_key_reloads.clone(),
        );
        for result in ["changed", "unchanged", "failed"] {
            let _ = secret_key_reloads.get_or_create(&ResultLabels { result });
        }
        let concurrency_limit = Gauge::default();
        registry.register(
            "identity_linker_concurrency_limit",
            "Link calls allowed in flight now: the adaptive limit, at most LINKER_CONCURRENCY",
            concurrency_limit.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "identity_linker_rate_limited",
            "Answers that asked the process to slow down (429, or 503 with Retry-After)",
            rate_limited.clone(),
        );
        let rate_limit_paused_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "identity_linker_rate_limit_paused_seconds",
            "Time new link calls were paused by rate limits",
            rate_limit_paused_seconds.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "identity_linker_log_lines_dropped",
            "Log lines dropped because the log output did not keep up (a stalled reader)",
            log_lines_dropped.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "identity_linker_build_info",
            "Build information",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        Self {
            registry,
            event_types,
            messages,
            dead_lettered,
            skipped,
            retries_immediate,
            retries_delayed,
            api_requests,
            api_ok: std::sync::OnceLock::new(),
            api_request_duration,
            message_duration,
            event_age,
            linked_cache_hits,
            handed_back,
            routed,
            partitions_active,
            in_flight,
            broker_connected,
            broker_node,
            broker_nodes: std::sync::Mutex::default(),
            broker_reconnects,
            broker_connect_failures,
            circuit_open,
            secret_key_reloads,
            concurrency_limit,
            rate_limited,
            rate_limit_paused_seconds,
            log_lines_dropped,
        }
    }

    /// Exports every listed broker node at 0, so a dashboard shows them all.
    pub fn list_broker_nodes<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        let mut listed = self.broker_nodes.lock().unwrap_or_else(|p| p.into_inner());
        for node in nodes {
            let labels = NodeLabels {
                node: node.to_owned(),
            };
            listed.push((
                node.to_owned(),
                self.broker_node.get_or_create_owned(&labels),
            ));
            let _ = self.broker_connect_failures.get_or_create(&labels);
        }
    }

    /// The session is on `node` now (`Some`), or on none.
    pub fn set_broker_node(&self, node: Option<&str>) {
        let listed = self.broker_nodes.lock().unwrap_or_else(|p| p.into_inner());
        for (name, gauge) in listed.iter() {
            gauge.set(i64::from(Some(name.as_str()) == node));
        }
    }

    pub fn count_key_reload(&self, result: &'static str) {
        self.secret_key_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn count_connect_failure(&self, node: &str) {
        self.broker_connect_failures
            .get_or_create(&NodeLabels {
                node: node.to_owned(),
            })
            .inc();
    }

    /// The label value for an event type: the routing key if configured, else `other`.
    pub fn event_type_label<'a>(&'a self, routing_key: &str) -> &'a str {
        self.event_types
            .iter()
            .find(|t| t.as_str() == routing_key)
            .map_or(OTHER_EVENT_TYPE, String::as_str)
    }

    pub fn count_message(&self, routing_key: &str, outcome: OutcomeLabel) {
        let row = self
            .event_types
            .iter()
            .position(|t| t == routing_key)
            .unwrap_or(self.event_types.len() - 1);
        self.messages[row][outcome.index()].inc();
    }

    pub fn count_dead_letter(&self, reason: DeadLetterReason) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn count_skip(&self, reason: SkipReason) {
        self.skipped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// `status` is the HTTP status, or `None` when no response came.
    pub fn count_api_request(&self, status: Option<u16>, elapsed: Duration) {
        if status == Some(200) {
            self.api_ok
                .get_or_init(|| {
                    self.api_requests.get_or_create_owned(&StatusLabels {
                        status: "200".to_owned(),
                    })
                })
                .inc();
            self.api_request_duration.observe(elapsed.as_secs_f64());
            return;
        }
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.api_requests
            .get_or_create(&StatusLabels { status })
            .inc();
        self.api_request_duration.observe(elapsed.as_secs_f64());
    }

    /// Messages settled with this outcome, over all event types.
    pub fn outcome_total(&self, outcome: OutcomeLabel) -> u64 {
        self.messages
            .iter()
            .map(|row| row[outcome.index()].get())
            .sum()
    }

    /// Settled messages by outcome label, over all event types (demo, tests).
    pub fn outcome_totals(&self) -> Vec<(&'static str, u64)> {
        OutcomeLabel::ALL
            .into_iter()
            .map(|outcome| (outcome.as_str(), self.outcome_total(outcome)))
            .collect()
    }

    pub fn settled_total(&self) -> u64 {
        OutcomeLabel::ALL
            .into_iter()
            .map(|outcome| self.outcome_total(outcome))
            .sum()
    }

    pub fn skip_totals(&self) -> Vec<(&'static str, u64)> {
        SkipReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.skipped
                        .get_or_create(&ReasonLabels { reason: r.as_str() })
                        .get(),
                )
            })
            .collect()
    }

    pub fn dead_letter_totals(&self) -> Vec<(&'static str, u64)> {
        DeadLetterReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.dead_lettered
                        .get_or_create(&ReasonLabels { reason: r.as_str() })
                        .get(),
                )
            })
            .collect()
    }

    /// Prometheus text exposition (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        // The writer counts its drops itself; `fetch_max` keeps the counter
        // monotonic however many scrapes run at once.
        self.log_lines_dropped
            .inner()
            .fetch_max(telemetry::dropped_lines(), Ordering::Relaxed);
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_name_is_exported() {
        let metrics = Metrics::new(&["user.signed_up".into(), "user.logged_in".into()]);
        metrics.list_broker_nodes(["rabbit-0:5672", "rabbit-1:5672"]);
        metrics.set_broker_node(Some("rabbit-1:5672"));
        metrics.count_message("user.logged_in", OutcomeLabel::Linked);
        metrics.count_api_request(Some(200), Duration::from_millis(3));
        let text = metrics.encode();
        for name in [
            "identity_linker_messages_total",
            "identity_linker_dead_lettered_total",
            "identity_linker_skipped_total",
            "identity_linker_retries_total",
            "identity_linker_api_requests_total",
            "identity_linker_api_request_duration_seconds_bucket",
            "identity_linker_message_duration_seconds_bucket",
            "identity_linker_event_age_seconds_bucket",
            "identity_linker_linked_cache_hits_total",
            "identity_linker_in_flight",
            "identity_linker_broker_connected",
            "identity_linker_broker_node",
            "identity_linker_broker_reconnects_total",
            "identity_linker_broker_connect_failures_total",
            "identity_linker_circuit_open",
            "identity_linker_secret_key_reloads_total",
            "identity_linker_concurrency_limit",
            "identity_linker_rate_limited_total",
            "identity_linker_rate_limit_paused_seconds_total",
            "identity_linker_build_info",
            "identity_linker_log_lines_dropped_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(
            r#"identity_linker_messages_total{event_type="user.logged_in",outcome="linked"} 1"#
        ));
        assert!(text.contains(r#"identity_linker_broker_node{node="rabbit-0:5672"} 0"#));
        assert!(text.contains(r#"identity_linker_broker_node{node="rabbit-1:5672"} 1"#));
    }

    #[test]
    fn unknown_event_types_are_other() {
        let metrics = Metrics::new(&["user.logged_in".into()]);
        metrics.count_message("something.else", OutcomeLabel::Skipped);
        assert!(
            metrics
                .encode()
                .contains(r#"event_type="other",outcome="skipped"} 1"#)
        );
    }
}
