//! `mos-sim healthcheck`: one `GET` over plain HTTP/1.1. The sim's image is
//! distroless (no shell, no curl) and holds only this binary, so the probe is
//! built in; a few lines over a TCP stream spare the binary an HTTP client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Below the compose healthcheck's own 5 s timeout, so a hung sim is
/// reported by this process rather than killed by Docker.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A status line is short; what follows it is not read.
const MAX_HEAD: usize = 1024;

/// `/healthz` on the port the server listens on; a wildcard bind is probed
/// on loopback (the probe runs in the server's own container).
pub fn default_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, addr.port()))
}

/// Exit 0 on a 2xx answer, else 1 with one line on stderr.
pub async fn run(url: &str) -> ExitCode {
    match tokio::time::timeout(TIMEOUT, status(url)).await {
        Ok(Ok(code)) if (200..300).contains(&code) => ExitCode::SUCCESS,
        Ok(Ok(code)) => {
            eprintln!("healthcheck: {url} answered {code}");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("healthcheck: {url}: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("healthcheck: {url}: no answer within {TIMEOUT:?}");
            ExitCode::FAILURE
        }
    }
}

/// The status code of `GET url` (`http://host[:port][/path]`).
pub async fn status(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("no host in the URL".to_owned());
    }
    // `[::1]` and `host` carry no port; `[::1]:8080` and `host:8080` do.
    let target = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    let mut stream = TcpStream::connect(&target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: mos-sim-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_HEAD {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP answer: {:?}", line.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mos_sim::{MosSim, SimConfig};

    async fn sim(control_routes: bool) -> MosSim {
        let config = SimConfig {
            control_routes,
            ..SimConfig::default()
        };
        MosSim::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn healthz_is_200_with_or_without_control_routes() {
        for control in [false, true] {
            let sim = sim(control).await;
            let url = default_url(sim.addr());
            assert_eq!(status(&url).await, Ok(200), "control {control}");
            assert_eq!(run(&url).await, ExitCode::SUCCESS);
        }
    }

    #[tokio::test]
    async fn other_answers_and_no_answer_fail() {
        let sim = sim(false).await;
        // Control routes off: a 404, which the probe reports as a failure.
        let stats = format!("{}/_sim/stats", sim.base_url());
        assert_eq!(status(&stats).await, Ok(404));
        assert_eq!(run(&stats).await, ExitCode::FAILURE);
        // Nothing listening any more.
        let url = default_url(sim.addr());
        sim.shutdown().await;
        assert!(status(&url).await.is_err());
        assert_eq!(run(&url).await, ExitCode::FAILURE);
        assert!(status("https://127.0.0.1:1/healthz").await.is_err());
        assert!(status("http:///healthz").await.is_err());
    }

    #[test]
    fn the_default_url_probes_loopback_on_the_listening_port() {
        let url = |addr: &str| default_url(addr.parse().unwrap());
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080/healthz");
        assert_eq!(url("127.0.0.1:9"), "http://127.0.0.1:9/healthz");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Busy\r\nx: y"), Ok(503));
        assert!(parse_status_line(b"").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
