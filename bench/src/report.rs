//! Medians and spread per scenario, the targets of issue 3, the table and the JSON.

use serde::Serialize;

use crate::scenario::{Kind, RunResult, Scenario};
use crate::stats::{Spread, spread};

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub kind: Kind,
    pub events: usize,
    /// Worker processes per run.
    pub replicas: usize,
    /// mos-sim's added latency, ms.
    pub latency_ms: u64,
    pub runs_ok: usize,
    pub failures: Vec<String>,
    pub msg_per_s: Option<Spread>,
    /// Median msg/s over the bare consumer's median (and the per-round ratios' range).
    pub ratio_to_bare: Option<Spread>,
    /// Latency scenario: concurrency / latency; replicas: replicas x concurrency / latency.
    pub bound_msg_per_s: Option<f64>,
    /// Replicas: median msg/s over the 1-replica scenario's median.
    pub ratio_to_one_replica: Option<f64>,
    /// Replicas: msg/s while every replica was busy (until the first ran out).
    pub all_busy_msg_per_s: Option<Spread>,
    /// Replicas: partitions each replica wins by rendezvous hashing, in start order.
    pub partition_split: Vec<usize>,
    /// Latency scenario: median over min(bound, instant median).
    pub ratio_to_reference: Option<f64>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub mean_ms: Option<Spread>,
    pub api_call_mean_ms: Option<Spread>,
    pub exact_p50_ms: Option<Spread>,
    pub exact_p99_ms: Option<Spread>,
    pub peak_rss_mib: Option<Spread>,
    pub cpu_s_per_1k: Option<Spread>,
    pub calls_per_event: Option<Spread>,
    pub sim_cpu_s_per_1k: Option<Spread>,
    pub broker_cpu_s_per_1k: Option<Spread>,
    pub machine_busy_cores: Option<Spread>,
    pub other_busy_cores: Option<Spread>,
    /// Rate-limit and capacity scenarios (issue 12).
    pub flow: Option<FlowSummary>,
    /// Run with `--before-bin` (an earlier build), for comparison only.
    pub before: bool,
    pub runs: Vec<RunResult>,
}

/// What the rate-limit and capacity scenarios report.
#[derive(Debug, Clone, Serialize)]
pub struct FlowSummary {
    /// mos-sim --rate-limit and its default burst.
    pub rate_limit: Option<f64>,
    pub burst: Option<u32>,
    /// mos-sim --capacity; LINKER_CONCURRENCY if not the default.
    pub capacity: Option<u32>,
    pub concurrency: Option<usize>,
    /// The limit's own bound on the drain: (events - burst) / rate, s.
    pub drain_bound_secs: Option<f64>,
    pub drain_secs: Option<Spread>,
    /// Per run: drain time / bound.
    pub drain_ratio: Option<Spread>,
    /// mos-sim rate_limited / requests.
    pub rate_limited_share: Option<Spread>,
    /// Worker metrics (whole run).
    pub worker_rate_limited: Option<Spread>,
    pub paused_secs: Option<Spread>,
    pub retries_immediate: Option<Spread>,
    pub retries_delayed: Option<Spread>,
    pub dead_lettered: Option<Spread>,
    pub concurrency_limit_min: Option<Spread>,
    pub concurrency_limit_end: Option<Spread>,
    /// mos-sim stats.
    pub sim_requests: Option<Spread>,
    pub sim_max_in_flight_seen: Option<Spread>,
    pub sim_overloaded: Option<Spread>,
    /// Capacity scenarios: capacity / latency, msg/s, and throughput over it.
    pub capacity_msg_per_s: Option<f64>,
    pub ratio_to_capacity: Option<Spread>,
}

fn flow_summary(s: &Scenario, runs: &[RunResult]) -> Option<FlowSummary> {
    if !s.kind.is_flow() {
        return None;
    }
    let burst = s.rate_limit_burst();
    let drain_bound_secs = s
        .rate_limit
        .map(|rate| (s.events as f64 - f64::from(burst.unwrap_or(0))) / rate)
        .filter(|b| *b > 0.0);
    let flow =
        |f: &dyn Fn(&crate::scenario::FlowResult) -> f64| of(runs, |r| r.flow.as_ref().map(f));
    let sim = |f: &dyn Fn(&mos_sim::SimStats) -> f64| of(runs, |r| r.sim.as_ref().map(f));
    let capacity_msg_per_s = s
        .capacity
        .filter(|_| s.latency_ms > 0)
        .map(|c| f64::from(c) / (s.latency_ms as f64 / 1000.0));
    Some(FlowSummary {
        rate_limit: s.rate_limit,
        burst,
        capacity: s.capacity,
        concurrency: s.concurrency,
        drain_bound_secs,
        drain_secs: flow(&|f| f.drain_secs),
        drain_ratio: drain_bound_secs.and_then(|b| flow(&|f| f.drain_secs / b)),
        rate_limited_share: sim(&|x| x.rate_limited as f64 / x.requests.max(1) as f64),
        worker_rate_limited: flow(&|f| f.rate_limited as f64),
        paused_secs: flow(&|f| f.paused_secs),
        retries_immediate: flow(&|f| f.retries_immediate as f64),
        retries_delayed: flow(&|f| f.retries_delayed as f64),
        dead_lettered: flow(&|f| f.dead_lettered as f64),
        concurrency_limit_min: of(runs, |r| {
            r.flow.as_ref().and_then(|f| f.concurrency_limit_min)
        }),
        concurrency_limit_end: of(runs, |r| {
            r.flow.as_ref().and_then(|f| f.concurrency_limit_end)
        }),
        sim_requests: sim(&|x| x.requests as f64),
        sim_max_in_flight_seen: sim(&|x| x.max_in_flight_seen as f64),
        sim_overloaded: sim(&|x| x.overloaded as f64),
        capacity_msg_per_s,
        ratio_to_capacity: capacity_msg_per_s.and_then(|c| of(runs, |r| Some(r.msg_per_s / c))),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub wanted: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn of(runs: &[RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<Spread> {
    let values: Vec<f64> = runs.iter().filter_map(f).collect();
    spread(&values)
}

pub fn summarise(
    scenarios: &[Scenario],
    results: &[(usize, Result<RunResult, String>)],
    concurrency: usize,
) -> Vec<Summary> {
    let mut out: Vec<Summary> = scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let runs: Vec<RunResult> = results
                .iter()
                .filter(|(idx, _)| *idx == i)
                .filter_map(|(_, r)| r.as_ref().ok().cloned())
                .collect();
            let failures: Vec<String> = results
                .iter()
                .filter(|(idx, _)| *idx == i)
                .filter_map(|(_, r)| r.as_ref().err().cloned())
                .collect();
            let per_1k = |x: f64, r: &RunResult| x / (r.window_messages.max(1) as f64 / 1000.0);
            Summary {
                name: s.name.clone(),
                kind: s.kind,
                events: s.events,
                replicas: s.replicas,
                latency_ms: s.latency_ms,
                runs_ok: runs.len(),
                failures,
                msg_per_s: of(&runs, |r| Some(r.msg_per_s)),
                ratio_to_bare: None,
                bound_msg_per_s: (matches!(s.kind, Kind::Latency | Kind::Replicas)
                    && s.latency_ms > 0)
                    .then(|| {
                        (s.replicas.max(1) * concurrency) as f64 / (s.latency_ms as f64 / 1000.0)
                    }),
                ratio_to_one_replica: None,
                all_busy_msg_per_s: of(&runs, |r| r.all_busy_msg_per_s),
                partition_split: runs
                    .first()
                    .map(|r| r.replicas.iter().map(|x| x.partitions_expected).collect())
                    .unwrap_or_default(),
                ratio_to_reference: None,
                p50_ms: of(&runs, |r| Some(r.p50_ms)),
                p99_ms: of(&runs, |r| Some(r.p99_ms)),
                mean_ms: of(&runs, |r| r.mean_ms),
                api_call_mean_ms: of(&runs, |r| r.api_call_mean_ms),
                exact_p50_ms: of(&runs, |r| r.exact_p50_ms),
                exact_p99_ms: of(&runs, |r| r.exact_p99_ms),
                peak_rss_mib: of(&runs, |r| Some(r.peak_rss_mib)),
                cpu_s_per_1k: of(&runs, |r| Some(r.cpu_s_per_1k)),
                calls_per_event: of(&runs, |r| (!s.kind.is_bare()).then_some(r.calls_per_event)),
                sim_cpu_s_per_1k: of(&runs, |r| {
                    (!s.kind.is_bare()).then(|| per_1k(r.sim_cpu_secs, r))
                }),
                broker_cpu_s_per_1k: of(&runs, |r| Some(per_1k(r.broker_cpu_secs, r))),
                machine_busy_cores: of(&runs, |r| Some(r.machine_busy_cores)),
                other_busy_cores: of(&runs, |r| Some(r.other_busy_cores)),
                flow: flow_summary(s, &runs),
                before: s.worker_bin.is_some(),
                runs,
            }
        })
        .collect();
    let bare = out
        .iter()
        .find(|s| s.kind == Kind::Bare)
        .map(|s| (s.msg_per_s, s.runs.clone()));
    let instant = out
        .iter()
        .find(|s| s.kind == Kind::Instant && !s.before)
        .and_then(|s| s.msg_per_s);
    let one_replica = out
        .iter()
        .find(|s| s.kind == Kind::Replicas && s.replicas == 1)
        .and_then(|s| s.msg_per_s);
    for summary in &mut out {
        if summary.kind == Kind::Replicas {
            // Another broker and a slow endpoint: compared with one replica, not bare.
            summary.ratio_to_one_replica = summary
                .msg_per_s
                .zip(one_replica)
                .map(|(r, one)| r.median / one.median);
            continue;
        }
        if summary.kind == Kind::Bare {
            continue;
        }
        if let (Some((Some(bare_rate), bare_runs)), Some(rate)) = (&bare, summary.msg_per_s) {
            // Per round: run i of this scenario against run i of bare.
            let ratios: Vec<f64> = summary
                .runs
                .iter()
                .filter_map(|r| {
                    bare_runs
                        .iter()
                        .find(|b| b.run == r.run)
                        .map(|b| r.msg_per_s / b.msg_per_s)
                })
                .collect();
            let range = spread(&ratios);
            summary.ratio_to_bare = Some(Spread {
                median: rate.median / bare_rate.median,
                min: range.map_or(f64::NAN, |r| r.min),
                max: range.map_or(f64::NAN, |r| r.max),
            });
        }
        if let (Some(bound), Some(rate)) = (summary.bound_msg_per_s, summary.msg_per_s) {
            let reference = instant.map_or(bound, |i| bound.min(i.median));
            summary.ratio_to_reference = Some(rate.median / reference);
        }
    }
    out
}

pub fn targets(summaries: &[Summary]) -> Vec<Target> {
    let find = |k: Kind| summaries.iter().find(|s| s.kind == k && !s.before);
    let mut out = Vec::new();
    for kind in [Kind::Instant, Kind::Latency] {
        let before = summaries.iter().find(|s| s.kind == kind && s.before);
        if let (Some(now), Some(before)) = (find(kind), before) {
            let ratio = now
                .msg_per_s
                .zip(before.msg_per_s)
                .map(|(n, b)| n.median / b.median);
            out.push(Target {
                name: format!("{}: throughput now / before (--before-bin)", now.name),
                wanted: ">= 0.95 (run-to-run noise)".into(),
                measured: ratio.map_or("n/a".into(), |r| format!("{r:.2}")),
                met: ratio.map(|r| r >= 0.95),
            });
            let (n, b) = (
                now.p99_ms.map(|p| p.median),
                before.p99_ms.map(|p| p.median),
            );
            out.push(Target {
                name: format!("{}: p99 delivery-to-ack now vs before", now.name),
                wanted: "reported".into(),
                measured: match (n, b) {
                    (Some(n), Some(b)) => format!("{n:.1} vs {b:.1} ms"),
                    _ => "n/a".into(),
                },
                met: None,
            });
        }
    }
    if let Some(s) = find(Kind::Instant) {
        let ratio = s.ratio_to_bare.map(|r| r.median);
        out.push(Target {
            name: "instant target: worker throughput / bare".into(),
            wanted: ">= 70 %".into(),
            measured: ratio.map_or("n/a".into(), |r| format!("{:.0} %", r * 100.0)),
            met: ratio.map(|r| r >= 0.70),
        });
        let rss = s.peak_rss_mib.map(|r| r.median);
        out.push(Target {
            name: format!("worker peak RSS, {} messages", s.events),
            wanted: "<= 40 MiB".into(),
            measured: rss.map_or("n/a".into(), |r| format!("{r:.1} MiB")),
            met: rss.map(|r| r <= 40.0),
        });
    }
    if let (Some(partitioned), Some(direct)) = (find(Kind::Instant), find(Kind::Direct)) {
        // The routing step's cost: the default (partitioned) against direct mode, same run.
        let ratio = partitioned
            .msg_per_s
            .zip(direct.msg_per_s)
            .map(|(p, d)| p.median / d.median);
        out.push(Target {
            name: "routing step: partitioned (default) / direct throughput, instant target".into(),
            wanted: "reported".into(),
            measured: ratio.map_or("n/a".into(), |r| format!("{:.0} %", r * 100.0)),
            met: None,
        });
    }
    let one = summaries
        .iter()
        .find(|s| s.kind == Kind::Replicas && s.replicas == 1);
    for many in summaries
        .iter()
        .filter(|s| s.kind == Kind::Replicas && s.replicas > 1)
    {
        // Latency-bound: N replicas keep N x concurrency calls in flight.
        let wanted = 0.9 * many.replicas as f64;
        let what = format!(
            "{} vs 1 replica, {} ms endpoint, RabbitMQ 4.0",
            many.replicas, many.latency_ms
        );
        let ratio = many.ratio_to_one_replica;
        out.push(Target {
            name: format!("{what}: msg/s ratio"),
            wanted: format!(">= {wanted:.1}x"),
            measured: ratio.map_or("n/a".into(), |r| format!("{r:.2}x")),
            met: ratio.map(|r| r >= wanted - 1e-9),
        });
        let busy = many
            .all_busy_msg_per_s
            .zip(one.and_then(|o| o.all_busy_msg_per_s))
            .map(|(m, o)| m.median / o.median);
        out.push(Target {
            name: format!("{what}: msg/s ratio while every replica is busy"),
            wanted: "reported".into(),
            measured: busy.map_or("n/a".into(), |r| format!("{r:.2}x")),
            met: None,
        });
        let split = &many.partition_split;
        let most = split.iter().copied().max().unwrap_or(0);
        let total: usize = split.iter().sum();
        out.push(Target {
            name: format!(
                "{what}: ceiling of a full drain from the partition split (partitions / most on one replica)"
            ),
            wanted: "reported".into(),
            measured: if most == 0 {
                "n/a".into()
            } else {
                format!(
                    "{:.2}x (split {})",
                    total as f64 / most as f64,
                    split
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join("/")
                )
            },
            met: None,
        });
    }
    if let Some(s) = find(Kind::Latency) {
        let ratio = s.ratio_to_reference;
        out.push(Target {
            name: "20 ms target: throughput / min(concurrency bound, instant)".into(),
            wanted: ">= 90 %".into(),
            measured: ratio.map_or("n/a".into(), |r| format!("{:.0} %", r * 100.0)),
            met: ratio.map(|r| r >= 0.90),
        });
    }
    for s in summaries.iter().filter(|s| s.kind == Kind::RateLimit) {
        let Some(f) = &s.flow else { continue };
        let what = format!("rate limit {} per s", f.rate_limit.unwrap_or(0.0));
        let failed = if s.failures.is_empty() {
            String::new()
        } else {
            format!(
                " ({} of {} runs failed)",
                s.failures.len(),
                s.failures.len() + s.runs_ok
            )
        };
        let ratio = f.drain_ratio.map(|r| r.median);
        out.push(Target {
            name: format!("{what}: drain time / limit's bound ((events - burst) / rate)"),
            wanted: "<= 1.1".into(),
            measured: match (ratio, f.drain_secs, f.drain_bound_secs) {
                (Some(r), Some(d), Some(b)) => {
                    format!("{r:.2} ({:.1} s / {b:.1} s){failed}", d.median)
                }
                _ => format!("n/a{failed}"),
            },
            met: ratio.map(|r| r <= 1.1 + 1e-9 && s.failures.is_empty()),
        });
        let share = f.rate_limited_share.map(|r| r.median);
        out.push(Target {
            name: format!("{what}: calls answered 429 (mos-sim rate_limited / requests)"),
            wanted: "<= 2 %".into(),
            measured: share.map_or(format!("n/a{failed}"), |r| {
                format!("{:.2} %{failed}", r * 100.0)
            }),
            met: share.map(|r| r <= 0.02 + 1e-12),
        });
        let max = |x: Option<Spread>| x.map(|x| x.max);
        let delayed = max(f.retries_delayed);
        out.push(Target {
            name: format!("{what}: delayed retries (worst run)"),
            wanted: "0".into(),
            measured: delayed.map_or(format!("n/a{failed}"), |d| format!("{d:.0}{failed}")),
            met: delayed.map(|d| d == 0.0),
        });
        let dead = max(f.dead_lettered);
        out.push(Target {
            name: format!("{what}: dead letters (worst run)"),
            wanted: "0".into(),
            measured: dead.map_or(format!("n/a{failed}"), |d| format!("{d:.0}{failed}")),
            met: dead.map(|d| d == 0.0 && s.failures.is_empty()),
        });
        out.push(Target {
            name: format!("{what}: time paused (identity_linker_rate_limit_paused_seconds_total)"),
            wanted: "reported".into(),
            measured: f
                .paused_secs
                .map_or("n/a".into(), |p| format!("{:.1} s", p.median)),
            met: None,
        });
    }
    let capacity: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.kind == Kind::Capacity)
        .collect();
    for s in &capacity {
        let Some(f) = &s.flow else { continue };
        let ratio = f.ratio_to_capacity.map(|r| r.median);
        out.push(Target {
            name: format!(
                "{}: throughput / capacity ({:.0} msg/s)",
                s.name,
                f.capacity_msg_per_s.unwrap_or(0.0)
            ),
            wanted: ">= 0.9".into(),
            measured: match (ratio, s.msg_per_s) {
                (Some(r), Some(m)) => format!("{r:.2} ({:.0} msg/s)", m.median),
                _ => "n/a".into(),
            },
            met: ratio.map(|r| r >= 0.9 - 1e-9),
        });
    }
    let adaptive = capacity
        .iter()
        .find(|s| s.flow.as_ref().is_some_and(|f| f.concurrency.is_none()));
    for fixed in capacity
        .iter()
        .filter(|s| s.flow.as_ref().is_some_and(|f| f.concurrency.is_some()))
    {
        if let Some(adaptive) = adaptive {
            let (a, b) = (
                adaptive.p99_ms.map(|p| p.median),
                fixed.p99_ms.map(|p| p.median),
            );
            out.push(Target {
                name: format!(
                    "capacity: p99 delivery-to-ack, adaptive vs {}",
                    fixed.name.rsplit(", ").next().unwrap_or("fixed")
                ),
                wanted: "adaptive <= fixed".into(),
                measured: match (a, b) {
                    (Some(a), Some(b)) => format!("{a:.1} vs {b:.1} ms"),
                    _ => "n/a".into(),
                },
                met: a.zip(b).map(|(a, b)| a <= b + 1e-9),
            });
        }
    }
    if let Some(s) = find(Kind::Repeated) {
        let calls = s.calls_per_event.map(|c| c.median);
        out.push(Target {
            name: "repeated logins: API calls per event".into(),
            wanted: "<= 0.1".into(),
            measured: calls.map_or("n/a".into(), |c| format!("{c:.3}")),
            met: calls.map(|c| c <= 0.1 + 1e-9),
        });
    }
    if let (Some(large), Some(base)) = (find(Kind::Large), find(Kind::Instant)) {
        let (l, b) = (
            large.peak_rss_mib.map(|r| r.median),
            base.peak_rss_mib.map(|r| r.median),
        );
        let met = l.zip(b).map(|(l, b)| l <= b * 1.15 + 2.0);
        out.push(Target {
            name: format!(
                "peak RSS flat with backlog ({} vs {} messages)",
                large.events, base.events
            ),
            wanted: "within 15 % (+2 MiB)".into(),
            measured: match (l, b) {
                (Some(l), Some(b)) => format!("{l:.1} vs {b:.1} MiB"),
                _ => "n/a".into(),
            },
            met,
        });
        let (lr, br) = (
            large.msg_per_s.map(|r| r.median),
            base.msg_per_s.map(|r| r.median),
        );
        out.push(Target {
            name: "throughput flat with backlog".into(),
            wanted: "within 15 % of the 100k figure".into(),
            measured: match (lr, br) {
                (Some(l), Some(b)) => format!("{l:.0} vs {b:.0} msg/s"),
                _ => "n/a".into(),
            },
            met: lr.zip(br).map(|(l, b)| l >= b * 0.85),
        });
    }
    out
}

/// One Markdown table row.
fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn cell(s: Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) if s.min.is_finite() && (s.max - s.min).abs() > 0.0 => {
            format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
        }
        Some(s) => format!("{:.d$}", s.median, d = digits),
        None => "–".into(),
    }
}

/// The results table, as Markdown (also readable on a terminal).
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | events | msg/s median (min–max) | ratio | p50 ms | p99 ms | peak RSS MiB | CPU s / 1k msg | API calls / event |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in summaries {
        let ratio = match s.kind {
            Kind::Bare => "1.00 (ref)".to_owned(),
            Kind::BareBatched => s.ratio_to_bare.map_or("–".into(), |r| {
                format!("{:.2} of bare (reference)", r.median)
            }),
            Kind::Latency => match (s.ratio_to_reference, s.bound_msg_per_s) {
                (Some(r), Some(b)) => format!("{r:.2} of min(bound {b:.0}, instant)"),
                _ => "–".into(),
            },
            Kind::Replicas => {
                let bound = s
                    .bound_msg_per_s
                    .map_or(String::new(), |b| format!(" (bound {b:.0})"));
                if s.replicas == 1 {
                    format!("1.00 (ref){bound}")
                } else {
                    s.ratio_to_one_replica
                        .map_or("–".into(), |r| format!("{r:.2}x of 1 replica{bound}"))
                }
            }
            Kind::RateLimit => match s.flow.as_ref().map(|f| (f.drain_ratio, f.drain_bound_secs)) {
                Some((Some(r), Some(b))) => format!("drain {:.2}x of bound {b:.1} s", r.median),
                _ => "–".into(),
            },
            Kind::Capacity => match s
                .flow
                .as_ref()
                .map(|f| (f.ratio_to_capacity, f.capacity_msg_per_s))
            {
                Some((Some(r), Some(c))) => format!("{:.2} of capacity {c:.0}", r.median),
                _ => "–".into(),
            },
            _ => s
                .ratio_to_bare
                .map_or("–".into(), |r| format!("{:.2} of bare", r.median)),
        };
        out.push_str(&row(&[
            labelled(s),
            s.events.to_string(),
            cell(s.msg_per_s, 0),
            ratio,
            cell(s.p50_ms, 1),
            cell(s.p99_ms, 1),
            cell(s.peak_rss_mib, 1),
            cell(s.cpu_s_per_1k, 3),
            cell(s.calls_per_event, 3),
        ]));
    }
    out
}

/// A scenario's name, with how many runs failed if any did.
fn labelled(s: &Summary) -> String {
    if s.failures.is_empty() {
        s.name.clone()
    } else {
        format!("{} **{} failed**", s.name, s.failures.len())
    }
}

/// The rate-limit and capacity scenarios' own figures (empty if none ran).
pub fn flow_table(summaries: &[Summary]) -> String {
    let flows: Vec<(&Summary, &FlowSummary)> = summaries
        .iter()
        .filter_map(|s| Some((s, s.flow.as_ref()?)))
        .collect();
    if flows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "| scenario | events | drain s | bound s | drain / bound | 429 share | worker rate limits | paused s | retries immediate / delayed | dead letters | concurrency limit min / end | sim requests | sim max in flight | sim 503 (overloaded) | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (s, f) in flows {
        out.push_str(&row(&[
            labelled(s),
            s.events.to_string(),
            cell(f.drain_secs, 2),
            f.drain_bound_secs.map_or("–".into(), |b| format!("{b:.1}")),
            cell(f.drain_ratio, 2),
            f.rate_limited_share.map_or("–".into(), |r| {
                cell(
                    Some(Spread {
                        median: r.median * 100.0,
                        min: r.min * 100.0,
                        max: r.max * 100.0,
                    }),
                    2,
                ) + " %"
            }),
            cell(f.worker_rate_limited, 0),
            cell(f.paused_secs, 1),
            format!(
                "{} / {}",
                cell(f.retries_immediate, 0),
                cell(f.retries_delayed, 0)
            ),
            cell(f.dead_lettered, 0),
            format!(
                "{} / {}",
                cell(f.concurrency_limit_min, 0),
                cell(f.concurrency_limit_end, 0)
            ),
            cell(f.sim_requests, 0),
            cell(f.sim_max_in_flight_seen, 0),
            cell(f.sim_overloaded, 0),
            cell(s.p99_ms, 1),
        ]));
    }
    out
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("| target | wanted | measured | met |\n|---|---|---|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.name, t.wanted, t.measured, met
        ));
    }
    out
}

/// Where the CPU went, per 1 000 messages (median), and interference.
pub fn cpu_table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| scenario | consumer CPU s/1k | mos-sim CPU s/1k | broker CPU s/1k | machine busy cores | other processes (cores) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for s in summaries {
        out.push_str(&row(&[
            s.name.clone(),
            cell(s.cpu_s_per_1k, 3),
            cell(s.sim_cpu_s_per_1k, 3),
            cell(s.broker_cpu_s_per_1k, 3),
            cell(s.machine_busy_cores, 2),
            cell(s.other_busy_cores, 2),
        ]));
    }
    out
}
