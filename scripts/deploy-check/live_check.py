#!/usr/bin/env python3
"""Live checks of the deploy files against a running worker.

1. Every metric name the alerts and the dashboard use (metric_names.py) is on the
   worker's live /metrics page: no alert or panel queries a name that does not exist.
2. A real Prometheus (Debian's, from $PROMETHEUS) scrapes the worker, and a query
   through its HTTP API returns identity_linker_messages_total with the expected value.

Starts mos-sim and the worker (cargo build of the two binaries, private queue names, free ports),
publishes N events with `identity-link-worker publish`, checks, then cleans up
(processes killed, queues and exchanges deleted through the management API).
Needs RabbitMQ (scripts/ensure-rabbitmq). Exits 1 on any failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import defaults  # noqa: E402

EVENTS = 5
KEY = "live-check-key-" + uuid.uuid4().hex[:8]
MANAGEMENT = "http://127.0.0.1:15672/api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, auth: bool = False, timeout: float = 5) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def wait(what: str, check, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - retried until the deadline
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"live check: timed out waiting for {what}")
        time.sleep(0.25)


def delete(kind: str, name: str) -> None:
    request = urllib.request.Request(
        f"{MANAGEMENT}/{kind}/%2f/{urllib.parse.quote(name, safe='')}", method="DELETE"
    )
    request.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
    try:
        urllib.request.urlopen(request, timeout=5).read()
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def main() -> int:
    prometheus_bin = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not prometheus_bin or not Path(prometheus_bin).exists():
        print("live check: no prometheus binary (set PROMETHEUS)", file=sys.stderr)
        return 1
    subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", "identity-link-worker", "-p", "mos-sim"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    worker_bin, sim_bin = target / "identity-link-worker", target / "mos-sim"

    suffix = uuid.uuid4().hex[:8]
    queue, exchange = f"live-{suffix}", f"live-{suffix}.auth.events"
    sim_port, ops_port, prom_port = free_port(), free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="ilw-live-"))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LINKER_QUEUE": queue,
        "LINKER_EXCHANGE": exchange,
        "LINKER_MOS_ENDPOINT_URL": f"http://127.0.0.1:{sim_port}/api/v1/envs/live/endpoints/link-identities",
        "LINKER_MOS_SECRET_KEY": KEY,
        "LINKER_HTTP_ADDR": f"127.0.0.1:{ops_port}",
    }
    processes: list[subprocess.Popen] = []
    try:
        log = lambda name: open(work / f"{name}.log", "wb")  # noqa: E731
        processes.append(subprocess.Popen(
            [str(sim_bin), "--addr", f"127.0.0.1:{sim_port}"],
            env={"PATH": env["PATH"], "MOS_SIM_KEY": KEY}, stdout=log("sim"), stderr=subprocess.STDOUT,
        ))
        processes.append(subprocess.Popen([str(worker_bin), "run"], env=env, stdout=log("worker"), stderr=subprocess.STDOUT))
        wait("the worker to be ready", lambda: get(f"http://127.0.0.1:{ops_port}/readyz") is not None)
        for i in range(EVENTS):
            subprocess.run(
                [str(worker_bin), "publish", "--event", "user.signed_up", "--anonymous", f"a-live-{i}", "--user", f"u-live-{i}"],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )

        def linked() -> float:
            total = 0.0
            for line in get(f"http://127.0.0.1:{ops_port}/metrics").decode().splitlines():
                if line.startswith("identity_linker_messages_total{") and 'outcome="linked"' in line:
                    total += float(line.rsplit(" ", 1)[1])
            return total

        wait(f"{EVENTS} linked events", lambda: linked() == EVENTS)

        # 1. Names used by alerts and the dashboard exist on the live page.
        names = subprocess.run(
            [sys.executable, str(ROOT / "scripts/deploy-check/metric_names.py")],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        samples = {
            line.split("{", 1)[0].split(" ", 1)[0]
            for line in get(f"http://127.0.0.1:{ops_port}/metrics").decode().splitlines()
            if line and not line.startswith("#")
        }
        unknown = [n for n in names if n not in samples and f"{n}_bucket" not in samples]
        if not names or unknown:
            print(f"live check: names used in deploy files but not on /metrics: {unknown or '(none found)'}")
            return 1
        found = f"{len(names)} metric names used by alerts/dashboard all on the live /metrics"

        # 2. A real Prometheus scrapes the worker and answers the query.
        config = work / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: identity-link-worker\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{ops_port}']\n"
        )
        processes.append(subprocess.Popen(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log("prometheus"), stderr=subprocess.STDOUT,
        ))
        query = urllib.parse.quote('sum(identity_linker_messages_total{outcome="linked"})')
        result: dict = {}

        def answered() -> bool:
            nonlocal result
            result = json.loads(get(f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"))
            values = result.get("data", {}).get("result", [])
            return bool(values) and float(values[0]["value"][1]) == EVENTS

        wait("Prometheus to scrape the worker", answered, limit=90)
        print(f"{found}; Prometheus ({prometheus_bin}) scraped the worker and answered "
              f"sum(identity_linker_messages_total{{outcome=\"linked\"}}) = {EVENTS}")
        return 0
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        # The worker runs with the default ladder (docs/interface.md).
        for name in [queue, f"{queue}.dead"] + [f"{queue}.retry.{d}" for d in defaults().retry_delays]:
            delete("queues", name)
        for name in [exchange, f"{queue}.dead"]:
            delete("exchanges", name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
