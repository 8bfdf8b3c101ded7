"""Shared helpers for the deploy checks (scripts/check-deploy.sh).

Everything here is standard library only, so that metric_names.py can be run
by any python3 (the worker's live test calls it without the checks' venv).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# The contract lives in the shared folder beside the repository (CI clones the
# repo with shared/ next to it). It is optional: the lists below are the same
# names, and check_metrics.py fails if the two ever disagree.
CONTRACT_CANDIDATES = [
    os.environ.get("IDENTITY_LINKER_CONTRACT", ""),
    str(REPO.parent / "shared" / "design" / "contract.md"),
    str(REPO / "shared" / "design" / "contract.md"),
]

# Section 8 of the contract: every metric the worker exports under a fixed name.
CONTRACT_METRICS = frozenset(
    {
        "identity_linker_messages_total",
        "identity_linker_dead_lettered_total",
        "identity_linker_skipped_total",
        "identity_linker_retries_total",
        "identity_linker_api_requests_total",
        "identity_linker_api_request_duration_seconds",
        "identity_linker_message_duration_seconds",
        "identity_linker_event_age_seconds",
        "identity_linker_linked_cache_hits_total",
        "identity_linker_in_flight",
        "identity_linker_broker_connected",
        "identity_linker_circuit_open",
        "identity_linker_build_info",
    }
)

# The histograms among them: their samples carry _bucket/_sum/_count.
CONTRACT_HISTOGRAMS = frozenset(
    {
        "identity_linker_api_request_duration_seconds",
        "identity_linker_message_duration_seconds",
        "identity_linker_event_age_seconds",
    }
)

# Every LINKER_* variable the contract names.
CONTRACT_VARIABLES = frozenset(
    {
        "LINKER_EXCHANGE",
        "LINKER_ROUTING_KEYS",
        "LINKER_QUEUE",
        "LINKER_DECLARE_TOPOLOGY",
        "LINKER_ANONYMOUS_ID_POINTERS",
        "LINKER_USER_ID_POINTERS",
        "LINKER_BLOCKED_IDENTIFIERS",
        "LINKER_MOS_ENDPOINT_URL",
        "LINKER_MOS_SECRET_KEY",
        "LINKER_MOS_SECRET_KEY_FILE",
        "LINKER_LINKED_CACHE_TTL",
        "LINKER_LINKED_CACHE_SIZE",
        "LINKER_HTTP_TIMEOUT",
        "LINKER_IMMEDIATE_RETRIES",
        "LINKER_RETRY_DELAYS",
        "LINKER_CIRCUIT_PROBE_INTERVAL",
        "LINKER_CIRCUIT_FAILURE_THRESHOLD",
        "LINKER_HTTP_ADDR",
        "LINKER_AMQP_URL",
        "LINKER_PREFETCH",
        "LINKER_CONCURRENCY",
        "LINKER_LOG_FORMAT",
        "LINKER_LOG_IDENTIFIERS",
        "LINKER_SHUTDOWN_GRACE",
    }
)

# Metrics of RabbitMQ's own rabbitmq_prometheus plugin (3.10 and later) that the
# deploy files may use. The rabbitmq_detailed_* ones come from
# /metrics/detailed?family=queue_coarse_metrics (and queue_consumer_count),
# which carry `vhost` and `queue` labels.
RABBITMQ_METRICS = frozenset(
    {
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_messages",
        "rabbitmq_detailed_queue_consumers",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_unacked",
        "rabbitmq_queue_messages",
        "rabbitmq_queue_consumers",
    }
)

# Contract defaults the deploy files are written for.
DEFAULT_QUEUE = "identity-linker"
DEFAULT_EXCHANGE = "auth.events"
DEFAULT_ROUTING_KEYS = ("user.signed_up", "user.logged_in")
DEFAULT_RETRY_DELAYS = ("10s", "1m", "5m", "15m", "1h")
DEFAULT_DELIVERY_LIMIT = 20
DEFAULT_SHUTDOWN_GRACE = "20s"
DEFAULT_HTTP_PORT = 9464
MOS_SIM_URL = "http://mos-sim:8080/api/v1/envs/local/endpoints/link-identities"
SECRET_FILE_PATH = "/var/run/secrets/mos/key"

_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> int:
    """Parse the contract's durations (`250ms`, `10s`, `5m`, `1h`) to milliseconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def contract_path() -> Path | None:
    for candidate in CONTRACT_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def contract_metric_names(text: str) -> set[str]:
    """Metric names written in section 8 of the contract."""
    section = text.split("## 8.", 1)[1].split("\n## ", 1)[0] if "## 8." in text else text
    return set(re.findall(r"`(identity_linker_[a-z_]+)", section))


def contract_variable_names(text: str) -> set[str]:
    return set(re.findall(r"\bLINKER_[A-Z_]+[A-Z]\b", text))


def load_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


class CheckFailed(Exception):
    pass


def run_main(fn) -> None:
    """Run a check's main(); print problems and exit 1 if it raised CheckFailed."""
    try:
        fn()
    except CheckFailed as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)


def fail_if(problems: list[str], what: str) -> None:
    if problems:
        raise CheckFailed(f"{what}:\n  - " + "\n  - ".join(problems))
