"""What the live checks share (live_check.py, publisher_check.py): the local
broker, the two binaries, free ports, waits, and cleanup by name prefix.

Standard library only. The broker is the local RabbitMQ (127.0.0.1:5672,
guest/guest, management on 15672); a missing broker fails loudly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AMQP = ("127.0.0.1", 5672)
MANAGEMENT = "http://127.0.0.1:15672/api"
_AUTH = "Basic " + b64encode(b"guest:guest").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_names(kind: str) -> tuple[str, str]:
    """(queue, exchange) of one run: a random prefix that no other run shares."""
    suffix = uuid.uuid4().hex[:8]
    return f"{kind}-{suffix}", f"{kind}-{suffix}.auth.events"


def get(url: str, auth: bool = False, timeout: float = 5) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", _AUTH)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def management(method: str, path: str, body: dict | None = None) -> bytes:
    """A call to the broker's management API (path after /api)."""
    request = urllib.request.Request(
        f"{MANAGEMENT}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": _AUTH, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def require_broker(who: str) -> None:
    """Exit 1 with one line naming what is missing, before anything starts."""
    try:
        with socket.create_connection(AMQP, timeout=3):
            pass
        management("GET", "/overview")
    except OSError as e:
        raise SystemExit(f"{who}: RabbitMQ is not reachable at amqp://{AMQP[0]}:{AMQP[1]} with its "
                         f"management API on {MANAGEMENT} ({e}); start it with scripts/ensure-rabbitmq")


def build_binaries() -> tuple[Path, Path]:
    """(identity-link-worker, mos-sim), debug builds in CARGO_TARGET_DIR."""
    subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", "identity-link-worker", "-p", "mos-sim"],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    return target / "identity-link-worker", target / "mos-sim"


def wait(who: str, what: str, check, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - retried until the deadline
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{who}: timed out waiting for {what}")
        time.sleep(0.25)


def counter(metrics_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` on a /metrics page whose labels include `labels`."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in get(metrics_url).decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(w in line for w in wanted):
                total += float(line.rsplit(" ", 1)[1])
    return total


def delete_topology(prefix: str, exchanges: list[str]) -> list[str]:
    """Delete every queue whose name starts with `prefix` and the given exchanges.

    Listing by prefix catches all of the worker's queues (work, retry, dead,
    partitions) whatever its settings. Returns what could not be deleted.
    """
    left: list[str] = []
    try:
        queues = json.loads(management("GET", "/queues/%2f?columns=name"))
    except OSError as e:
        return [f"queues {prefix}* (cannot list: {e})"]
    for name in [q["name"] for q in queues if q["name"].startswith(prefix)]:
        try:
            management("DELETE", f"/queues/%2f/{quote(name)}")
        except OSError as e:
            left.append(f"queue {name} ({e})")
    for name in exchanges:
        try:
            management("DELETE", f"/exchanges/%2f/{quote(name)}")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                left.append(f"exchange {name} ({e})")
        except OSError as e:
            left.append(f"exchange {name} ({e})")
    return left


def stop_and_clean(who: str, processes: list[subprocess.Popen], queue: str, exchange: str) -> None:
    """SIGTERM the processes (last started first), kill what has not exited
    within 30 s, then delete every queue of the `queue` prefix (work, retry,
    dead, partitions) and the two exchanges; what is left is reported."""
    for process in reversed(processes):
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    left = delete_topology(queue, [exchange, f"{queue}.dead"])
    if left:
        print(f"{who}: could not clean up: {', '.join(left)}", file=sys.stderr)
