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
    pub runs: Vec<RunResult>,
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
        .find(|s| s.kind == Kind::Instant)
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
    let find = |k: Kind| summaries.iter().find(|s| s.kind == k);
    let mut out = Vec::new();
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
            _ => s
                .ratio_to_bare
                .map_or("–".into(), |r| format!("{:.2} of bare", r.median)),
        };
        let fail = if s.failures.is_empty() {
            String::new()
        } else {
            format!(" **{} failed**", s.failures.len())
        };
        out.push_str(&row(&[
            format!("{}{fail}", s.name),
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
