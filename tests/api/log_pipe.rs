//! A log reader that stopped reading (a wedged collector) must not stop the
//! worker: logging drops lines (and counts them) instead of blocking, and
//! the final flush at exit is bounded.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use mos_sim::MosSim;
use testkit::names::Vars;
use testkit::process::{free_addr, signal, wait_exit};
use testkit::worker::Private;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");
const EVENTS: u64 = 300;

/// How the worker's outputs are connected; nobody ever reads them.
#[derive(Clone, Copy)]
enum Pipes {
    /// stdout and stderr each on a pipe of their own.
    Separate,
    /// Both on one pipe, as `2>&1` into a log collector does.
    Shared,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_blocks_neither_the_pipeline_nor_shutdown() {
    stalled_reader(Pipes::Separate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_of_both_outputs_on_one_pipe_neither() {
    stalled_reader(Pipes::Shared).await;
}

async fn stalled_reader(pipes: Pipes) {
    let sim = start_sim(sim_config()).await;
    let ops = free_addr();
    let vars = with(
        base_vars(&sim),
        &[
            ("RUST_LOG", "trace"),
            ("LINKER_HTTP_ADDR", ops.to_string().as_str()),
        ],
    );
    let private = Private::from_vars(vars.clone());
    let connection = broker().await;
    // Queued before the worker starts: a burst of trace output at once.
    queue_before_start(&connection, &private, pair_bodies("pipe", EVENTS as usize)).await;
    // The checks run in a task of their own, so the topology is deleted
    // whether they pass or fail (a failure kills the worker first).
    let result = tokio::spawn(run_and_stop(sim, vars, ops, pipes)).await;
    private.delete(&connection).await.unwrap();
    let _ = connection.close(200, "test done".into()).await;
    if let Err(error) = result {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Kills the worker if the test fails before it exits by itself.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the worker on pipes nobody reads, checks that it gets ready,
/// links every event, answers `/healthz`, counts the lines it dropped, and
/// exits 0 soon after SIGTERM.
async fn run_and_stop(sim: MosSim, vars: Vars, ops: SocketAddr, pipes: Pipes) {
    let mut command = testkit::process::command(BIN, &vars);
    command.arg("run");
    // The read ends stay open until the test ends, so once the 64 KiB pipe
    // buffer is full every write(2) blocks (rather than failing with EPIPE).
    let _read_end = match pipes {
        Pipes::Separate => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
        Pipes::Shared => {
            let (reader, writer) = std::io::pipe().unwrap();
            command.stdout(writer.try_clone().unwrap()).stderr(writer);
            Some(reader)
        }
    };
    // `Child` holds the read ends of `Stdio::piped()`.
    let mut worker = Reaper(command.spawn().unwrap());
    // Drop the parent's copies of the write end (moved into `command`).
    drop(command);

    // A client with a timeout: a worker whose threads are stuck in write(2)
    // accepts connections but never answers.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let status = |path: &'static str| {
        let http = http.clone();
        async move {
            match http.get(format!("http://{ops}{path}")).send().await {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            }
        }
    };
    wait_for("/readyz to answer 200", Duration::from_secs(30), || async {
        status("/readyz").await == 200
    })
    .await;
    wait_for(
        &format!("{EVENTS} links"),
        Duration::from_secs(60),
        || async { sim.stats().links >= EVENTS },
    )
    .await;
    assert_eq!(status("/healthz").await, 200, "/healthz answers");
    let metrics = http
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = sample(&metrics, "identity_linker_log_lines_dropped_total").unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "log lines were dropped and counted (got {dropped})"
    );

    signal(worker.0.id(), "TERM");
    // A liveness bound, not a timing target: the final flush of the logs
    // must not hang on the full pipe.
    let exit = wait_exit(&mut worker.0, Duration::from_secs(15), "the worker").await;
    assert_eq!(exit.code(), Some(0), "graceful exit");
    assert_eq!(sim.stats().links, EVENTS, "each event linked once");
    assert_eq!(sim.stats().duplicates, 0);
}

/// The value of an unlabelled sample of `/metrics`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}
