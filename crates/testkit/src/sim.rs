//! A private mos-sim, in process, on a port of its own. In-process sims are
//! driven through [`MosSim`]'s methods, so they leave the `/_sim/*` control
//! routes off, as the real endpoint has none.

use mos_sim::{Faults, MosSim, SimConfig, SimStats};

/// Starts `config` on 127.0.0.1, port 0 (so parallel tests never collide).
pub async fn start(config: SimConfig) -> MosSim {
    MosSim::start("127.0.0.1:0".parse().expect("a socket address"), config)
        .await
        .expect("mos-sim starts on port 0")
}

/// Starts `config` accepting `key`.
pub async fn start_with_key(key: &str, config: SimConfig) -> MosSim {
    start(SimConfig {
        secret_key: key.to_owned(),
        ..config
    })
    .await
}

/// The counters of a mos-sim running as its own process on `port`; it must
/// have been started with `--control` (else `/_sim/stats` is a 404).
pub async fn remote_stats(http: &reqwest::Client, port: u16) -> Result<SimStats, String> {
    let url = format!("http://127.0.0.1:{port}/_sim/stats");
    crate::scrape::get(http, &url)
        .await?
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}

/// A simulator with a real 20 ms window between check and create (and 5 ms
/// of latency): two calls for one visitor at once WOULD create a duplicate.
pub fn race_window() -> SimConfig {
    SimConfig {
        pause: std::time::Duration::from_millis(20),
        ..latency(5)
    }
}

/// A simulator that adds `ms` of latency to every answer.
pub fn latency(ms: u64) -> SimConfig {
    SimConfig {
        faults: Faults {
            latency_ms: ms,
            ..Faults::default()
        },
        ..SimConfig::default()
    }
}
