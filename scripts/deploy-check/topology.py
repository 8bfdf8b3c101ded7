#!/usr/bin/env python3
"""The worker's RabbitMQ topology (docs/interface.md, section 3) as RabbitMQ definitions.

    python3 scripts/deploy-check/topology.py --check   # verify the definitions files (check 7)
    python3 scripts/deploy-check/topology.py --write   # regenerate them after a default changes

Files:
  deploy/rabbitmq/definitions.json          topology only (vhost "/"): import it into a broker
                                            whose definitions are managed outside the worker
                                            (then run the worker with LINKER_DECLARE_TOPOLOGY=false)
  deploy/rabbitmq/definitions.compose.json  the same topology plus the users and permissions of
                                            the local docker-compose stack (RabbitMQ skips its
                                            default user when definitions are loaded at boot)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common import (
    DEPLOY,
    CheckFailed,
    defaults,
    duration_ms,
    fail_if,
    load_json,
    rel,
    run_main,
)

VHOST = "/"
TOPOLOGY_FILE = DEPLOY / "rabbitmq" / "definitions.json"
COMPOSE_FILE = DEPLOY / "rabbitmq" / "definitions.compose.json"
TOPOLOGY_KEYS = ("exchanges", "queues", "bindings")


def expected_topology(
    queue: str | None = None,
    exchange: str | None = None,
    routing_keys=None,
    retry_delays=None,
    delivery_limit: int | None = None,
    partitions: int | None = None,
) -> dict:
    """The topology the worker declares; unset arguments take the defaults documented in
    docs/interface.md (check_interface.py keeps them equal to src/config.rs)."""
    d = defaults()
    queue = d.queue if queue is None else queue
    exchange = d.exchange if exchange is None else exchange
    routing_keys = d.routing_keys if routing_keys is None else routing_keys
    retry_delays = d.retry_delays if retry_delays is None else retry_delays
    delivery_limit = d.delivery_limit if delivery_limit is None else delivery_limit
    partitions = d.partitions if partitions is None else partitions
    dead = f"{queue}.dead"
    exchanges = [
        {"name": exchange, "vhost": VHOST, "type": "topic", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}},
        {"name": dead, "vhost": VHOST, "type": "fanout", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}},
    ]
    queues = [
        {"name": queue, "vhost": VHOST, "durable": True, "auto_delete": False,
         "arguments": {
             "x-queue-type": "quorum",
             "x-delivery-limit": delivery_limit,
             "x-dead-letter-exchange": dead,
             "x-dead-letter-strategy": "at-least-once",
             "x-overflow": "reject-publish",
             "x-single-active-consumer": True,
         }},
        {"name": dead, "vhost": VHOST, "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "quorum"}},
    ]
    for delay in retry_delays:
        queues.append(
            {"name": f"{queue}.retry.{delay}", "vhost": VHOST, "durable": True,
             "auto_delete": False,
             # Quorum like the work queue (as the worker declares them), so the way
             # back after the TTL is dead-lettered at-least-once too.
             "arguments": {
                 "x-queue-type": "quorum",
                 "x-message-ttl": duration_ms(delay),
                 "x-dead-letter-exchange": "",
                 "x-dead-letter-routing-key": queue,
                 "x-dead-letter-strategy": "at-least-once",
                 "x-overflow": "reject-publish",
             }})
    for i in range(partitions):
        # Like the work queue, with one active consumer at a time across replicas.
        queues.append(
            {"name": f"{queue}.partition.{i}", "vhost": VHOST, "durable": True,
             "auto_delete": False,
             "arguments": queues[0]["arguments"]})
    bindings = [
        {"source": exchange, "vhost": VHOST, "destination": queue,
         "destination_type": "queue", "routing_key": key, "arguments": {}}
        for key in routing_keys
    ]
    bindings.append(
        {"source": dead, "vhost": VHOST, "destination": dead,
         "destination_type": "queue", "routing_key": "", "arguments": {}})
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def topology_document() -> dict:
    return {"vhosts": [{"name": VHOST}], **expected_topology()}


def dump(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def rabbit_password_hash(password: str, salt: bytes) -> str:
    """rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ utf8(password)))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def check_password(password: str, password_hash: str) -> bool:
    raw = base64.b64decode(password_hash)
    return rabbit_password_hash(password, raw[:4]) == password_hash


def _key(obj: dict, kind: str):
    if kind == "bindings":
        return (obj["vhost"], obj["source"], obj["destination_type"], obj["destination"],
                obj["routing_key"])
    return (obj["vhost"], obj["name"])


def compare_topology(actual: dict, expected: dict, label: str) -> list[str]:
    problems = []
    for kind in TOPOLOGY_KEYS:
        if kind not in actual or not isinstance(actual[kind], list):
            problems.append(f"{label}: '{kind}' missing or not a list")
            continue
        got = {_key(o, kind): o for o in actual[kind]}
        want = {_key(o, kind): o for o in expected[kind]}
        if len(got) != len(actual[kind]):
            problems.append(f"{label}: duplicate {kind}")
        for k in sorted(set(want) - set(got), key=str):
            problems.append(f"{label}: missing {kind[:-1]} {k}")
        for k in sorted(set(got) - set(want), key=str):
            problems.append(f"{label}: unexpected {kind[:-1]} {k}")
        for k in sorted(set(got) & set(want), key=str):
            if got[k] != want[k]:
                problems.append(f"{label}: {kind[:-1]} {k} is {got[k]} but should be {want[k]}")
    return problems


def check() -> None:
    problems: list[str] = []
    topology = load_json(TOPOLOGY_FILE)
    expected = expected_topology()
    problems += compare_topology(topology, expected, rel(TOPOLOGY_FILE))
    if topology.get("vhosts") != [{"name": VHOST}]:
        problems.append(f"{rel(TOPOLOGY_FILE)}: vhosts should be [{{'name': '/'}}]")
    extra = set(topology) - {"vhosts", *TOPOLOGY_KEYS}
    if extra:
        problems.append(f"{rel(TOPOLOGY_FILE)}: keeps only topology, found {sorted(extra)}")

    compose = load_json(COMPOSE_FILE)
    # The same topology as definitions.json.
    problems += compare_topology(compose, expected, rel(COMPOSE_FILE))
    users = {u["name"]: u for u in compose.get("users", [])}
    perms = {(p["user"], p["vhost"]) for p in compose.get("permissions", [])}
    if VHOST not in {v["name"] for v in compose.get("vhosts", [])}:
        problems.append(f"{rel(COMPOSE_FILE)}: vhost '/' missing")
    for name, user in users.items():
        if user.get("hashing_algorithm") != "rabbit_password_hashing_sha256":
            problems.append(f"{rel(COMPOSE_FILE)}: user {name}: use rabbit_password_hashing_sha256")
        if (name, VHOST) not in perms:
            problems.append(f"{rel(COMPOSE_FILE)}: user {name} has no permissions on '/'")
    if not any("administrator" in u.get("tags", []) for u in users.values()):
        problems.append(f"{rel(COMPOSE_FILE)}: no administrator user for the management UI")

    # The worker's AMQP URL in docker-compose.yml must log in as a user of this file.
    import yaml  # only this part needs PyYAML; the rest runs on the standard library

    with open(DEPLOY.parent / "docker-compose.yml", encoding="utf-8") as f:
        compose_yaml = yaml.safe_load(f)
    for svc_name, svc in compose_yaml.get("services", {}).items():
        env = svc.get("environment") or {}
        urls = env.get("LINKER_AMQP_URL") if isinstance(env, dict) else None
        # One URL, or a cluster's nodes separated by commas (the cluster profile).
        for url in (u.strip() for u in (urls or "").split(",") if u.strip()):
            parts = urlsplit(url)
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            if user not in users:
                problems.append(f"docker-compose.yml: {svc_name} logs in as {user!r}, "
                                f"not a user of {rel(COMPOSE_FILE)}")
            elif not check_password(password, users[user]["password_hash"]):
                problems.append(f"docker-compose.yml: {svc_name}'s password for {user!r} does "
                                f"not match the hash in {rel(COMPOSE_FILE)}")
            if unquote(parts.path.lstrip("/")) != VHOST:
                problems.append(f"docker-compose.yml: {svc_name} uses vhost "
                                f"{unquote(parts.path.lstrip('/'))!r}, definitions are for '/'")
    fail_if(problems, "RabbitMQ definitions")
    print(f"{rel(TOPOLOGY_FILE)}: {len(topology['exchanges'])} exchanges, "
          f"{len(topology['queues'])} queues, {len(topology['bindings'])} bindings as the worker "
          f"declares them; {rel(COMPOSE_FILE)}: same topology, users {sorted(users)}")


def write() -> None:
    TOPOLOGY_FILE.write_text(dump(topology_document()), encoding="utf-8")
    compose = load_json(COMPOSE_FILE) if COMPOSE_FILE.exists() else {}
    compose.update(expected_topology())
    COMPOSE_FILE.write_text(dump(compose), encoding="utf-8")
    print(f"wrote {rel(TOPOLOGY_FILE)} and the topology of {rel(COMPOSE_FILE)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true")
    group.add_argument("--write", action="store_true")
    group.add_argument("--hash", metavar="PASSWORD",
                       help="print a rabbit_password_hashing_sha256 hash for a users entry")
    args = ap.parse_args()
    if args.hash is not None:
        import os

        print(rabbit_password_hash(args.hash, os.urandom(4)))
    elif args.write:
        write()
    else:
        check()


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
