//! Accept loop and the [`MosSim`] handle.
//!
//! `axum::serve` cannot close one connection without answering, which the
//! drop fault needs, so each connection is served by hyper directly with a
//! per-connection kill token in every request's extensions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::faults::Faults;
use super::routes::{ConnKill, router};
use super::state::Shared;
use super::{ENDPOINT_PATH, SimConfig, SimLink, SimStats};

/// How long shutdown waits for in-flight requests before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running simulator. Dropping it stops the server in the background;
/// [`MosSim::shutdown`] stops it and waits.
pub struct MosSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MosSim {
    /// Binds `addr` (port 0 picks a free port) and starts serving on the
    /// current tokio runtime.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<MosSim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let control_routes = config.control_routes;
        let shared = Arc::new(Shared::new(
            config.secret_key,
            config.pause,
            config.plain_success,
            config.faults,
        ));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            router(shared.clone(), control_routes),
            shutdown.clone(),
        ));
        Ok(MosSim {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`; a wildcard bind is reported as loopback so the URL
    /// can be used by a client.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The link route for environment `sim`.
    pub fn endpoint_url(&self) -> String {
        format!("{}{ENDPOINT_PATH}", self.base_url())
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// All stored links, oldest first.
    pub fn links(&self) -> Vec<SimLink> {
        self.shared.store.snapshot()
    }

    /// Replaces all faults (a rate limit starts again with a full bucket; the
    /// in-flight count is kept). Invalid values are made harmless rather than
    /// rejected: statuses outside 4xx/5xx become 500, probabilities are
    /// clamped, a rate limit gets `per_second` > 0 and `burst` >= 1, a
    /// capacity `1 <= max_in_flight <= hard_limit` and a finite
    /// `latency_per_extra_ms` >= 0.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// The faults still to come (`statuses` and `drop` show what is left).
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Changes the accepted secret key (e.g. to simulate revocation).
    pub fn set_key(&self, key: &str) {
        self.shared.set_key(key);
    }

    /// Changes the pause between check and create.
    pub fn set_pause(&self, pause: Duration) {
        self.shared.set_pause(pause);
    }

    /// Clears links, counters and faults; keeps key and pause.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, lets in-flight requests finish (up to a few seconds)
    /// and closes every connection.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "mos-sim server task failed");
        }
    }
}

impl Drop for MosSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let mut http = http1::Builder::new();
    // The timer lets hyper enforce its header-read timeout on idle sockets.
    http.timer(TokioTimer::new());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(
                        stream,
                        http.clone(),
                        router.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "mos-sim accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("mos-sim shutdown grace elapsed, closing remaining connections");
        conns.shutdown().await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    http: http1::Builder,
    router: Router,
    shutdown: CancellationToken,
) {
    // Small request/response pairs: do not let Nagle add latency.
    let _ = stream.set_nodelay(true);
    let kill = CancellationToken::new();
    let conn_kill = ConnKill(kill.clone());
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn_kill.clone());
        router.clone().oneshot(req)
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_conn_end(result),
        // Returning drops `conn` and with it the socket: the client sees the
        // connection close with no response.
        _ = kill.cancelled() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => log_conn_end(result),
                _ = kill.cancelled() => {}
            }
        }
    }
}

fn log_conn_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Clients hanging up mid-request are routine under load.
        tracing::debug!(error = %e, "mos-sim connection ended with an error");
    }
}
