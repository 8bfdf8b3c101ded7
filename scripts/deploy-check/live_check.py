#!/usr/bin/env python3
"""Live checks of the deploy files against a running worker.

1. Every metric name the alerts and the dashboard use (metric_names.py) is on the
   worker's live /metrics page: no alert or panel queries a name that does not exist.
2. A real Prometheus (Debian's, from $PROMETHEUS) scrapes the worker, and a query
   through its HTTP API returns identity_linker_messages_total with the expected value.
3. The Dockerfile header's `docker run … check-config` example, run on the binary with
   the example's variables (and its mos-sim's), exits 0; without them, 2.

Starts mos-sim and the worker (cargo build of the two binaries, private queue names, free ports),
publishes N events with `identity-link-worker publish`, checks, then cleans up
(processes stopped, every queue of the private prefix and the exchanges deleted
through the management API).
Needs RabbitMQ (scripts/ensure-rabbitmq). Exits 1 on any failure.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from livekit import ROOT, build_binaries, free_port, get, private_names, require_broker, stop_and_clean  # noqa: E402
from livekit import wait as _wait  # noqa: E402

WHO = "live check"
EVENTS = 5
KEY = "live-check-key-" + uuid.uuid4().hex[:8]


def wait(what: str, check, limit: float = 60) -> None:
    _wait(WHO, what, check, limit)


def dockerfile_examples() -> tuple[dict[str, str], dict[str, str]]:
    """The -e variables of the Dockerfile header's `docker run` examples: (mos-sim's, check-config's)."""
    lines, pending = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        text = raw[1:].strip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        lines.append(pending + text)
        pending = ""
    runs = [shlex.split(line) for line in lines if line.startswith("docker run ")]
    sim = [r for r in runs if r[-1] == "mos-sim"]
    check = [r for r in runs if r[-2:] == ["identity-link-worker", "check-config"]]
    if len(sim) != 1 or len(check) != 1:
        raise SystemExit(f"{WHO}: the Dockerfile's header should hold one `docker run … mos-sim` and one "
                         f"`docker run … identity-link-worker check-config` example")

    def variables(words: list[str]) -> dict[str, str]:
        return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-e")

    return variables(sim[0]), variables(check[0])


def check_docker_example(worker_bin: Path, sim_bin: Path, work: Path) -> str:
    """Run the Dockerfile's check-config example on the binary: exit 0 with its variables, 2 without."""
    sim_env, check_env = dockerfile_examples()
    port = free_port()
    # The example's simulator listens on 127.0.0.1:8080 (published port); here on a free one.
    check_env = {k: v.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for k, v in check_env.items()}
    path = os.environ.get("PATH", "")
    sim = subprocess.Popen([str(sim_bin), "--addr", f"127.0.0.1:{port}"], env={"PATH": path, **sim_env},
                           stdout=open(work / "example-sim.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait("the example's mos-sim", lambda: get(f"http://127.0.0.1:{port}/healthz") is not None)
        bare = subprocess.run([str(worker_bin), "check-config"], env={"PATH": path},
                              capture_output=True, text=True, timeout=60)
        if bare.returncode != 2 or "LINKER_MOS_" not in bare.stderr:
            raise SystemExit(f"{WHO}: check-config without variables should exit 2 naming a LINKER_MOS_* "
                             f"variable: exit {bare.returncode}, stderr {bare.stderr!r}")
        full = subprocess.run([str(worker_bin), "check-config"], env={"PATH": path, **check_env},
                              capture_output=True, text=True, timeout=60)
        if full.returncode != 0:
            raise SystemExit(f"{WHO}: the Dockerfile's check-config example exits {full.returncode}:\n"
                             f"{full.stdout}{full.stderr}")
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
    return (f"the Dockerfile's `docker run … check-config` example exits 0 with its variables "
            f"({', '.join(sorted(check_env))}; 2 without)")


def main() -> int:
    prometheus_bin = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not prometheus_bin or not Path(prometheus_bin).exists():
        print("live check: no prometheus binary (set PROMETHEUS)", file=sys.stderr)
        return 1
    require_broker(WHO)
    worker_bin, sim_bin = build_binaries()

    queue, exchange = private_names("live")
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
        example = check_docker_example(worker_bin, sim_bin, work)
        print(f"{found}; {example}; Prometheus ({prometheus_bin}) scraped the worker and answered "
              f"sum(identity_linker_messages_total{{outcome=\"linked\"}}) = {EVENTS}")
        return 0
    finally:
        stop_and_clean(WHO, processes, queue, exchange)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
