//! Reading the worker's /metrics, histogram quantiles, medians.

use std::collections::BTreeMap;

/// What the harness needs from one scrape of the worker's /metrics.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    /// `identity_linker_messages_total`, by outcome (all event types summed).
    pub outcomes: BTreeMap<String, u64>,
    /// `identity_linker_message_duration_seconds` buckets: (upper bound, cumulative count).
    pub duration_buckets: Vec<(f64, u64)>,
    pub api_requests: u64,
    /// `_sum` and `_count` of the API call and message duration histograms (exact means).
    pub api_duration: (f64, u64),
    pub message_duration: (f64, u64),
    pub cache_hits: u64,
    pub retries: u64,
}

impl Scrape {
    pub fn settled(&self) -> u64 {
        self.outcomes.values().sum()
    }
    pub fn outcome(&self, name: &str) -> u64 {
        self.outcomes.get(name).copied().unwrap_or(0)
    }
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// Parses the Prometheus / OpenMetrics text of the worker.
pub fn parse_metrics(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let count = value as u64;
        match name {
            "identity_linker_messages_total" => {
                if let Some(outcome) = label(labels, "outcome") {
                    *scrape.outcomes.entry(outcome.to_owned()).or_default() += count;
                }
            }
            "identity_linker_message_duration_seconds_bucket" => {
                if let Some(le) = label(labels, "le") {
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::INFINITY)
                    };
                    scrape.duration_buckets.push((bound, count));
                }
            }
            "identity_linker_api_requests_total" => scrape.api_requests += count,
            "identity_linker_api_request_duration_seconds_sum" => scrape.api_duration.0 = value,
            "identity_linker_api_request_duration_seconds_count" => scrape.api_duration.1 = count,
            "identity_linker_message_duration_seconds_sum" => scrape.message_duration.0 = value,
            "identity_linker_message_duration_seconds_count" => scrape.message_duration.1 = count,
            "identity_linker_linked_cache_hits_total" => scrape.cache_hits += count,
            "identity_linker_retries_total" => scrape.retries += count,
            _ => {}
        }
    }
    scrape.duration_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    scrape
}

/// Bucket-wise difference `later - earlier` (same bounds), so a quantile can
/// cover only the measurement window.
pub fn bucket_delta(later: &[(f64, u64)], earlier: &[(f64, u64)]) -> Vec<(f64, u64)> {
    later
        .iter()
        .map(|(le, n)| {
            let before = earlier.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m);
            (*le, n.saturating_sub(before))
        })
        .collect()
}

/// `histogram_quantile` as Prometheus computes it: find the bucket holding
/// the q-th observation and interpolate linearly inside it (from 0 for the
/// first bucket). Past the last finite bound, the last finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let inside = (cumulative - below) as f64;
            let fraction = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * fraction);
        }
        lower = upper;
        below = cumulative;
    }
    Some(lower)
}

/// Exact quantile (nearest rank) of raw samples.
pub fn exact_quantile(q: f64, sorted: &[f64]) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The bounds of the worker's delivery-to-ack histogram (ops/metrics.rs):
/// 1 ms doubling, 16 buckets.
pub fn worker_duration_bounds() -> Vec<f64> {
    (0..16).map(|i| 0.001 * 2f64.powi(i)).collect()
}

/// Cumulative buckets for raw samples, with the given finite bounds.
pub fn bucketize(samples: &[f64], bounds: &[f64]) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = bounds
        .iter()
        .map(|b| (*b, samples.iter().filter(|s| **s <= *b).count() as u64))
        .collect();
    out.push((f64::INFINITY, samples.len() as u64));
    out
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Mean of a histogram over a window, from `_sum`/`_count` at both ends.
pub fn window_mean(end: (f64, u64), start: (f64, u64)) -> Option<f64> {
    let n = end.1.checked_sub(start.1)?;
    (n > 0).then(|| (end.0 - start.0) / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let buckets = vec![(0.001, 0), (0.002, 50), (0.004, 100), (f64::INFINITY, 100)];
        assert!((histogram_quantile(0.5, &buckets).unwrap() - 0.002).abs() < 1e-12);
        assert!((histogram_quantile(0.75, &buckets).unwrap() - 0.003).abs() < 1e-12);
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0), (f64::INFINITY, 0)]),
            None
        );
    }

    #[test]
    fn parses_worker_metrics() {
        let text = "# TYPE identity_linker_messages counter\n\
            identity_linker_messages_total{event_type=\"user.logged_in\",outcome=\"linked\"} 7\n\
            identity_linker_messages_total{event_type=\"other\",outcome=\"linked\"} 1\n\
            identity_linker_message_duration_seconds_bucket{le=\"0.001\"} 3\n\
            identity_linker_message_duration_seconds_bucket{le=\"+Inf\"} 8\n\
            # EOF\n";
        let scrape = parse_metrics(text);
        assert_eq!(scrape.outcome("linked"), 8);
        assert_eq!(scrape.settled(), 8);
        assert_eq!(scrape.duration_buckets.len(), 2);
    }

    #[test]
    fn spreads() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }
}
