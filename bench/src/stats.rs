//! Histogram quantiles and medians over the worker's /metrics (parsed by
//! `testkit::scrape`).

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
    fn spreads() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }
}
