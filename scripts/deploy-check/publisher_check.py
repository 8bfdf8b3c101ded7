#!/usr/bin/env python3
"""Live check: the example Python publisher (examples/publisher-python) against the real worker.

Starts mos-sim (control routes on) and the worker binary on the local RabbitMQ
with private queue and exchange names, then runs examples/publisher-python/publish.py
with $PUBLISHER_PYTHON (a venv holding exactly its requirements.txt) as the
auth service would, and checks:
  1. a user.signed_up event is confirmed, linked (the pair is stored by mos-sim,
     counted `linked` by the worker) and the worker read its message_id (the
     `linked` log line's event_id);
  2. a user.logged_in event for the same pair, without --message-id, counts
     `already_linked` and creates no second link;
  3. what went over the wire: a queue of this check bound to the exchange with
     the same keys receives both copies, persistent (delivery mode 2),
     application/json, with the message ids and the JSON fields the worker's
     default pointers find (anonymousId, userId, eventId, occurredAt);
  4. an unbound routing key (user.deleted) is refused: exit 1, one line that
     says unroutable, nothing reaches the worker;
  5. a broker that is not there: exit 1, one line, no password printed.
Then cleans up: processes stopped, every queue of the private prefix and both
exchanges deleted. A missing broker fails the check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import shutil
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from livekit import (  # noqa: E402
    ROOT,
    build_binaries,
    counter,
    free_port,
    get,
    management,
    private_names,
    quote,
    require_broker,
    stop_and_clean,
    wait,
)

WHO = "publisher check"
EXAMPLE = ROOT / "examples" / "publisher-python" / "publish.py"
KEY = "publisher-check-key-" + uuid.uuid4().hex[:8]
KEYS = ("user.signed_up", "user.logged_in")


def fail(message: str) -> None:
    raise SystemExit(f"{WHO}: {message}")


def main() -> int:
    python = os.environ.get("PUBLISHER_PYTHON")
    if not python or not Path(python).exists():
        fail("set PUBLISHER_PYTHON to a python with examples/publisher-python/requirements.txt installed")
    require_broker(WHO)
    worker_bin, sim_bin = build_binaries()

    queue, exchange = private_names("pub")
    capture = f"{queue}.capture"
    sim_port, ops_port = free_port(), free_port()
    sim, metrics = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{ops_port}/metrics"
    work = Path(tempfile.mkdtemp(prefix="ilw-publisher-"))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LINKER_QUEUE": queue,
        "LINKER_EXCHANGE": exchange,
        "LINKER_MOS_ENDPOINT_URL": f"{sim}/api/v1/envs/publisher/endpoints/link-identities",
        "LINKER_MOS_SECRET_KEY": KEY,
        "LINKER_HTTP_ADDR": f"127.0.0.1:{ops_port}",
        "LINKER_LOG_FORMAT": "json",
        "LINKER_LOG_IDENTIFIERS": "plain",
        # The `linked` line (with the event id) is a debug line.
        "RUST_LOG": "info,identity_link_worker=debug",
    }
    processes: list[subprocess.Popen] = []
    worker_log = work / "worker.log"

    def publisher(*args: str, url: str = "amqp://guest:guest@127.0.0.1:5672/%2f") -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, str(EXAMPLE), *args],
            env={"PATH": env["PATH"], "AMQP_URL": url, "AUTH_EVENTS_EXCHANGE": exchange},
            capture_output=True, text=True, timeout=60,
        )

    def links() -> list[dict]:
        return json.loads(get(f"{sim}/_sim/links"))

    try:
        processes.append(subprocess.Popen(
            [str(sim_bin), "--addr", f"127.0.0.1:{sim_port}", "--control"],
            env={"PATH": env["PATH"], "MOS_SIM_KEY": KEY},
            stdout=open(work / "sim.log", "wb"), stderr=subprocess.STDOUT,
        ))
        processes.append(subprocess.Popen([str(worker_bin), "run"], env=env,
                                          stdout=open(worker_log, "wb"), stderr=subprocess.STDOUT))
        wait(WHO, "the worker to be ready", lambda: get(f"http://127.0.0.1:{ops_port}/readyz") is not None)

        # A queue of the check's own beside the worker's, to see what the publisher sent.
        management("PUT", f"/queues/%2f/{quote(capture)}", {"durable": False, "auto_delete": False})
        for key in KEYS:
            management("POST", f"/bindings/%2f/e/{quote(exchange)}/q/{quote(capture)}", {"routing_key": key})

        suffix = uuid.uuid4().hex[:8]
        anonymous, user, message_id = f"anon-py-{suffix}", f"user-py-{suffix}", f"msg-py-{suffix}"

        # 1. sign-up: confirmed, linked, message id read
        out = publisher("--event", "user.signed_up", "--anonymous", anonymous, "--user", user,
                        "--message-id", message_id)
        if out.returncode != 0 or "(confirmed)" not in out.stdout or out.stderr:
            fail(f"publish user.signed_up: exit {out.returncode}, stdout {out.stdout!r}, stderr {out.stderr!r}")
        wait(WHO, "the sign-up to be linked",
             lambda: counter(metrics, "identity_linker_messages_total",
                             event_type="user.signed_up", outcome="linked") == 1)
        stored = [(lk["anonymousIdentifier"], lk["userIdentifier"]) for lk in links()]
        if stored != [(anonymous, user)]:
            fail(f"mos-sim should hold exactly the link {anonymous} -> {user}, holds {stored}")

        def logged_linked() -> bool:
            for line in worker_log.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                fields = entry.get("fields", entry)
                if fields.get("message") == "linked" and fields.get("event_id") == message_id:
                    return True
            return False

        wait(WHO, f"the worker's `linked` log line with event_id {message_id}", logged_linked, limit=10)

        # 2. login for the same pair, default message id
        out = publisher("--event", "user.logged_in", "--anonymous", anonymous, "--user", user)
        if out.returncode != 0 or "(confirmed)" not in out.stdout:
            fail(f"publish user.logged_in: exit {out.returncode}, stdout {out.stdout!r}, stderr {out.stderr!r}")
        generated = out.stdout.split("message_id=", 1)[-1].split(" ", 1)[0]
        wait(WHO, "the login to count already_linked",
             lambda: counter(metrics, "identity_linker_messages_total",
                             event_type="user.logged_in", outcome="already_linked") == 1)
        stats = json.loads(get(f"{sim}/_sim/stats"))
        if stats["links"] != 1 or stats["duplicates"] != 0:
            fail(f"after the login mos-sim should hold 1 link, no duplicate: {stats}")

        # 3. the two copies as published
        copies = json.loads(management("POST", f"/queues/%2f/{quote(capture)}/get",
                                       {"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"}))
        seen = [(c["routing_key"], c["properties"].get("message_id")) for c in copies]
        if seen != [("user.signed_up", message_id), ("user.logged_in", generated)]:
            fail(f"the bound queue got {seen}, expected the sign-up ({message_id}) then the login ({generated})")
        uuid.UUID(generated)  # the default message id is a UUID
        for c in copies:
            props, body = c["properties"], json.loads(c["payload"])
            if props.get("delivery_mode") != 2 or props.get("content_type") != "application/json":
                fail(f"{c['routing_key']}: delivery_mode {props.get('delivery_mode')}, "
                     f"content_type {props.get('content_type')!r} (want 2, application/json)")
            want = {"eventId": props["message_id"], "anonymousId": anonymous, "userId": user}
            if {k: body.get(k) for k in want} != want:
                fail(f"{c['routing_key']}: body {body} lacks {want}")
            datetime.fromisoformat(body["occurredAt"].replace("Z", "+00:00"))

        # 4. an unbound routing key
        out = publisher("--event", "user.deleted", "--anonymous", anonymous, "--user", user)
        if out.returncode != 1 or "unroutable" not in out.stderr or len(out.stderr.strip().splitlines()) != 1:
            fail(f"publish user.deleted should exit 1 with one `unroutable` line: "
                 f"exit {out.returncode}, stderr {out.stderr!r}")

        # 5. no broker there: one line, exit 1, the password not shown
        out = publisher("--event", "user.signed_up", "--anonymous", anonymous, "--user", user,
                        url=f"amqp://guest:s3cret-{suffix}@127.0.0.1:{free_port()}/%2f")
        if out.returncode != 1 or len(out.stderr.strip().splitlines()) != 1 or "s3cret" in out.stderr + out.stdout:
            fail(f"publish to a closed port should exit 1 with one line and no password: "
                 f"exit {out.returncode}, stderr {out.stderr!r}")

        total = counter(metrics, "identity_linker_messages_total")
        if total != 2:
            fail(f"the worker should have handled exactly 2 events, counted {total}")
        version = subprocess.run([python, "-c", "import pika; print(pika.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        print(f"examples/publisher-python (pika {version}): user.signed_up confirmed and linked "
              f"(mos-sim holds the pair; event_id = message_id in the worker's log), user.logged_in "
              f"already_linked, both persistent JSON with anonymousId/userId/eventId/occurredAt; "
              f"unroutable key and absent broker refused with one line, exit 1")
        return 0
    finally:
        stop_and_clean(WHO, processes, queue, exchange)
        if sys.exc_info()[0] is not None and worker_log.exists():
            print(f"--- worker log (last lines) ---\n"
                  + "\n".join(worker_log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
