//! The worker's `/metrics`, parsed: the series the fault suite and the
//! benchmark read, summed over labels.

use std::collections::BTreeMap;

/// One scrape of the worker's `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    /// `identity_linker_messages_total`, by outcome (all event types summed).
    pub outcomes: BTreeMap<String, u64>,
    /// `identity_linker_dead_lettered_total`, by reason.
    pub dead_lettered: BTreeMap<String, u64>,
    /// `identity_linker_skipped_total`, by reason.
    pub skipped: BTreeMap<String, u64>,
    pub in_flight: i64,
    pub circuit_open: i64,
    pub broker_connected: i64,
    /// `identity_linker_message_duration_seconds` buckets: (upper bound, cumulative count).
    pub duration_buckets: Vec<(f64, u64)>,
    pub api_requests: u64,
    /// `_sum` and `_count` of the API call and message duration histograms (exact means).
    pub api_duration: (f64, u64),
    pub message_duration: (f64, u64),
    pub cache_hits: u64,
    pub retries: u64,
    /// The whole text, for what the fields above leave out.
    pub text: String,
}

impl Scrape {
    pub fn outcome(&self, name: &str) -> u64 {
        self.outcomes.get(name).copied().unwrap_or(0)
    }

    /// Messages with any outcome.
    pub fn settled(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// Parses the Prometheus / OpenMetrics text of the worker.
pub fn parse(text: String) -> Scrape {
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
        let add = |map: &mut BTreeMap<String, u64>, key: &str| {
            if let Some(key) = label(labels, key) {
                *map.entry(key.to_owned()).or_default() += count;
            }
        };
        match name {
            "identity_linker_messages_total" => add(&mut scrape.outcomes, "outcome"),
            "identity_linker_dead_lettered_total" => add(&mut scrape.dead_lettered, "reason"),
            "identity_linker_skipped_total" => add(&mut scrape.skipped, "reason"),
            "identity_linker_in_flight" => scrape.in_flight = value as i64,
            "identity_linker_circuit_open" => scrape.circuit_open = value as i64,
            "identity_linker_broker_connected" => scrape.broker_connected = value as i64,
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
    scrape.text = text;
    scrape
}

/// GETs `url` (a worker's `/metrics`) and parses it.
pub async fn fetch(http: &reqwest::Client, url: &str) -> Result<Scrape, String> {
    let text = get(http, url)
        .await?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(parse(text))
}

/// GET `url`; the error names it.
pub(crate) async fn get(http: &reqwest::Client, url: &str) -> Result<reqwest::Response, String> {
    http.get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_worker_metrics() {
        let text = "# TYPE identity_linker_messages counter\n\
            identity_linker_messages_total{event_type=\"user.logged_in\",outcome=\"linked\"} 7\n\
            identity_linker_messages_total{event_type=\"other\",outcome=\"linked\"} 1\n\
            identity_linker_dead_lettered_total{reason=\"malformed\"} 2\n\
            identity_linker_skipped_total{reason=\"same_identifier\"} 3\n\
            identity_linker_in_flight 4\n\
            identity_linker_circuit_open 1\n\
            identity_linker_message_duration_seconds_bucket{le=\"+Inf\"} 8\n\
            identity_linker_message_duration_seconds_bucket{le=\"0.001\"} 3\n\
            identity_linker_retries_total{kind=\"immediate\"} 5\n\
            # EOF\n";
        let scrape = parse(text.to_owned());
        assert_eq!(scrape.outcome("linked"), 8);
        assert_eq!(scrape.settled(), 8);
        assert_eq!(scrape.dead_lettered["malformed"], 2);
        assert_eq!(scrape.skipped["same_identifier"], 3);
        assert_eq!((scrape.in_flight, scrape.circuit_open), (4, 1));
        assert_eq!(
            scrape.duration_buckets,
            vec![(0.001, 3), (f64::INFINITY, 8)],
            "sorted by bound"
        );
        assert_eq!(scrape.retries, 5);
        assert_eq!(scrape.text, text);
    }
}
