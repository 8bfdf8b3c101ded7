"""Shared helpers for the deploy checks (scripts/check-deploy.sh).

Everything here is standard library only, so that metric_names.py can be run
by any python3 (the worker's live test calls it without the checks' venv).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# The worker's external interface, as the repository documents it. The
# variables, metrics and headers tables of this page are the lists the checks
# use; check_interface.py fails when they and the code disagree.
INTERFACE_DOC = REPO / "docs" / "interface.md"

# Where the code defines the same things.
# The configuration module: its section types and its value parsers.
CONFIG_RS = REPO / "src" / "config"
METRICS_RS = REPO / "src" / "ops" / "metrics.rs"
HEADERS_RS = REPO / "src" / "broker" / "headers.rs"
OUTCOME_RS = REPO / "src" / "domain" / "outcome.rs"

# Column headers that identify each machine-read table of docs/interface.md.
VARIABLES_TABLE = ("variable", "default", "meaning")
METRICS_TABLE = ("metric", "type", "labels", "stability", "meaning")
HEADERS_TABLE = ("header", "type", "retry copy", "hand-back", "dead letter", "meaning")
OUTCOMES_TABLE = ("case", "outcome", "reason", "acknowledged")

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

# Choices of the deploy files themselves (not part of the worker's interface).
MOS_SIM_URL = "http://mos-sim:8080/api/v1/envs/local/endpoints/link-identities"
SECRET_FILE_PATH = "/var/run/secrets/mos/key"

_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> int:
    """Parse durations (`250ms`, `10s`, `5m`, `1h`) to milliseconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


# ---- docs/interface.md ---------------------------------------------------------

_BACKTICKED = re.compile(r"`([^`]*)`")


def _cells(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def markdown_tables(text: str) -> list[tuple[tuple[str, ...], list[list[str]]]]:
    """Every pipe table of a markdown text: (lower-cased header cells, body rows)."""
    tables: list[tuple[tuple[str, ...], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*", lines[i + 1])):
            header = tuple(c.lower() for c in _cells(lines[i]))
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def interface_text() -> str:
    if not INTERFACE_DOC.is_file():
        raise CheckFailed(f"{rel(INTERFACE_DOC)} is missing: it documents the worker's "
                          f"interface and holds the lists these checks use")
    return INTERFACE_DOC.read_text(encoding="utf-8")


def interface_table(columns: tuple[str, ...]) -> list[list[str]]:
    """The rows of the one table of docs/interface.md with these column headers."""
    found = [rows for header, rows in markdown_tables(interface_text()) if header == columns]
    if len(found) != 1:
        raise CheckFailed(f"{rel(INTERFACE_DOC)}: expected exactly one table with the columns "
                          f"| {' | '.join(columns)} |, found {len(found)}")
    rows = found[0]
    for row in rows:
        if len(row) != len(columns):
            raise CheckFailed(f"{rel(INTERFACE_DOC)}: a row of the | {' | '.join(columns)} | "
                              f"table has {len(row)} cells, not {len(columns)}: {row}")
    return rows


def _first_backticked(cell: str, table: tuple[str, ...]) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell.strip())
    if not m:
        raise CheckFailed(f"{rel(INTERFACE_DOC)}: the first cell of each row of the "
                          f"| {' | '.join(table)} | table must be one backticked name, got {cell!r}")
    return m.group(1)


def documented_variables() -> dict[str, str | None]:
    """LINKER_* variables of the variables table -> their default (None: required/unset)."""
    out: dict[str, str | None] = {}
    for row in interface_table(VARIABLES_TABLE):
        name = _first_backticked(row[0], VARIABLES_TABLE)
        if not name.startswith("LINKER_"):
            continue  # RUST_LOG
        if name in out:
            raise CheckFailed(f"{rel(INTERFACE_DOC)}: {name} is listed twice")
        m = re.fullmatch(r"`([^`]*)`", row[1].strip())
        out[name] = m.group(1) if m else None
    return out


def documented_default(name: str) -> str:
    value = documented_variables().get(name)
    if value is None:
        raise CheckFailed(f"{rel(INTERFACE_DOC)}: no default documented for {name}")
    return value


class Metric:
    """One row of the metrics table, or one metric registered in the code."""

    def __init__(self, kind: str, labels: frozenset[str], stability: str = ""):
        self.kind, self.labels, self.stability = kind, labels, stability


def documented_metrics() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for row in interface_table(METRICS_TABLE):
        name = _first_backticked(row[0], METRICS_TABLE)
        kind = row[1].strip().lower()
        if kind not in ("counter", "gauge", "histogram"):
            raise CheckFailed(f"{rel(INTERFACE_DOC)}: {name}: type must be counter, gauge or "
                              f"histogram, got {row[1]!r}")
        stability = row[3].strip().lower()
        if stability not in ("fixed", "extra"):
            raise CheckFailed(f"{rel(INTERFACE_DOC)}: {name}: stability must be fixed or extra, "
                              f"got {row[3]!r}")
        if name in out:
            raise CheckFailed(f"{rel(INTERFACE_DOC)}: {name} is listed twice")
        out[name] = Metric(kind, frozenset(_BACKTICKED.findall(row[2])), stability)
    return out


def documented_headers() -> set[str]:
    return {_first_backticked(row[0], HEADERS_TABLE) for row in interface_table(HEADERS_TABLE)}


def documented_reasons() -> set[str]:
    """The reasons of the outcomes table (dead-letter and skip reasons)."""
    return {r for row in interface_table(OUTCOMES_TABLE) for r in _BACKTICKED.findall(row[2])}


class Defaults:
    """The documented defaults the deploy files are written for."""

    def __init__(self) -> None:
        split = lambda name: tuple(  # noqa: E731
            v.strip() for v in documented_default(name).split(",") if v.strip())
        self.queue = documented_default("LINKER_QUEUE")
        self.exchange = documented_default("LINKER_EXCHANGE")
        self.routing_keys = split("LINKER_ROUTING_KEYS")
        self.retry_delays = split("LINKER_RETRY_DELAYS")
        self.delivery_limit = int(documented_default("LINKER_DELIVERY_LIMIT"))
        self.partitions = int(documented_default("LINKER_PARTITIONS"))
        self.shutdown_grace = documented_default("LINKER_SHUTDOWN_GRACE")
        self.http_port = int(documented_default("LINKER_HTTP_ADDR").rsplit(":", 1)[1])


def defaults() -> Defaults:
    return Defaults()


# ---- the same, read from the code -------------------------------------------------

def _read(path: Path) -> str:
    """A source file, or every .rs file of a module folder, without unit tests."""
    files = sorted(path.glob("*.rs")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise CheckFailed(f"{rel(path)} is missing")
    # Unit tests are not the interface.
    return "\n".join(f.read_text(encoding="utf-8").split("#[cfg(test)]", 1)[0] for f in files)


def code_variables() -> set[str]:
    """LINKER_* names used in src/config.rs (outside its tests)."""
    return set(re.findall(r"\bLINKER_[A-Z][A-Z0-9_]*[A-Z0-9]\b", _read(CONFIG_RS)))


_RUST_VALUE = r'("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.]+)'


def _rust_value(token: str, consts: dict[str, str]) -> str:
    if token.startswith('"'):
        return token[1:-1]
    if token in consts:
        return consts[token]
    return token.replace("_", "") if re.fullmatch(r"[0-9_]+", token) else token


def code_defaults() -> dict[str, str]:
    """Default of each LINKER_* variable in src/config.rs, where the code spells one out.

    Recognised forms: a parse helper called as `helper("LINKER_X", raw.x, <default>)`
    (or with a `const VAR: &str = "LINKER_X"` of the function), a `pub const DEFAULT_X`
    for `LINKER_X`, and `x: match raw.x ... { None | Some("<default>") => ...`.
    """
    text = _read(CONFIG_RS)
    consts = {m.group(1): m.group(2) for m in
              re.finditer(r'pub const (DEFAULT_[A-Z_]+): &str\s*=\s*"((?:[^"\\]|\\.)*)";', text)}
    # Plain numbers: `const DEFAULT_X: u16 = 16;`
    consts.update({m.group(1): m.group(2) for m in
                   re.finditer(r'const (DEFAULT_[A-Z_]+): u(?:\d+|size)\s*=\s*(\d+);', text)})
    # Numbers that must be at least 1: `const DEFAULT_X: NonZeroU16 = NonZeroU16::new(256).unwrap();`
    consts.update({m.group(1): m.group(2) for m in
                   re.finditer(r'const (DEFAULT_[A-Z_]+): NonZero\w+\s*=\s*NonZero\w+::new\((\d+)\)', text)})
    # Functions naming their variable once, as `const VAR: &str = "LINKER_X";`.
    chunks = re.split(r"\n(?=(?:pub(?:\([a-z]+\))? )?(?:async )?fn )", text)
    for i, chunk in enumerate(chunks):
        m = re.search(r'const (\w+): &str = "(LINKER_[A-Z_]+)";', chunk)
        if m:
            chunks[i] = re.sub(rf"\b{m.group(1)}\b", f'"{m.group(2)}"', chunk)
    text = "\n".join(chunks)
    out: dict[str, str] = {}
    for m in re.finditer(r'\b[a-z_]+\(\s*"(LINKER_[A-Z_]+)",\s*[^,()]+(?:\(\))?,\s*'
                         + _RUST_VALUE + r"\s*,?\s*\)", text):
        out[m.group(1)] = _rust_value(m.group(2), consts)
    for name, value in consts.items():
        out.setdefault("LINKER_" + name[len("DEFAULT_"):], value)
    for m in re.finditer(r'\b([a-z_]+): match raw\.\w+[^{]*\{\s*None \| Some\("([^"]*)"\)', text):
        out.setdefault("LINKER_" + m.group(1).upper(), m.group(2))
    return out


def code_metrics() -> dict[str, Metric]:
    """Metrics registered in src/ops/metrics.rs, by exposed name (counters with _total)."""
    text = _read(METRICS_RS)
    label_structs = {m.group(1): frozenset(re.findall(r"\b(\w+)\s*:", m.group(2)))
                     for m in re.finditer(r"struct (\w+)\s*\{([^}]*)\}", text)}
    out: dict[str, Metric] = {}
    for m in re.finditer(r'registry\.register\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*(\w+)\.clone\(\)',
                         text):
        name, var = m.group(1), m.group(2)
        decl = re.search(rf"let (?:mut )?{var}\s*(?::[^=]+)?=\s*([^;]+);", text)
        if not decl:
            raise CheckFailed(f"{rel(METRICS_RS)}: cannot tell the type of {name} "
                              f"(no `let {var} = ...`)")
        expr = decl.group(1)
        family = re.match(r"Family::<\s*(\w+)\s*,\s*(Counter|Gauge|Histogram)\s*>", expr)
        plain = re.match(r"(Counter|Gauge|Histogram)\b", expr)
        if family:
            kind, labels = family.group(2).lower(), label_structs.get(family.group(1), frozenset())
        elif plain:
            kind, labels = plain.group(1).lower(), frozenset()
        else:
            raise CheckFailed(f"{rel(METRICS_RS)}: cannot tell the type of {name} from `{expr}`")
        out[name + "_total" if kind == "counter" else name] = Metric(kind, labels)
    # Counter families by reason, registered through `reason_family(&mut registry, "name", ...)`.
    for m in re.finditer(r'reason_family\(\s*&mut registry,\s*"(\w+)"', text):
        out[m.group(1) + "_total"] = Metric("counter", frozenset({"reason"}))
    if not out:
        raise CheckFailed(f"{rel(METRICS_RS)}: no registry.register(...) calls found")
    return out


def code_headers() -> set[str]:
    return set(re.findall(r'pub const \w+: &str = "(x-linker-[a-z-]+)";', _read(HEADERS_RS)))


def code_reasons() -> set[str]:
    """Dead-letter and skip reasons of src/domain/outcome.rs."""
    return set(re.findall(r'(?:SkipReason|DeadLetterReason)::\w+ => "([a-z_]+)"', _read(OUTCOME_RS)))

# ---- Dockerfile ---------------------------------------------------------------------

DOCKERFILE = REPO / "Dockerfile"


class Stage:
    """One `FROM ... [AS name]` stage of a Dockerfile and its instructions."""

    def __init__(self, index: int, base: str, name: str | None):
        self.index, self.base, self.name = index, base, name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        """The arguments of every `keyword` instruction, in order."""
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def copies_from(self) -> set[str]:
        """Stages (or images) this stage copies files from (`COPY --from=`)."""
        return {m.group(1) for args in self.all("COPY")
                for m in [re.search(r"--from=(\S+)", args)] if m}

    def binaries(self) -> set[str]:
        """Names of the files copied into /usr/local/bin/."""
        out: set[str] = set()
        for args in self.all("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if len(words) >= 2 and words[-1].rstrip("/") == "/usr/local/bin":
                out |= {w.rsplit("/", 1)[-1] for w in words[:-1]}
        return out

    def exec_form(self, keyword: str) -> list[str] | None:
        """The JSON exec form of the last CMD/ENTRYPOINT/HEALTHCHECK ... CMD."""
        args = self.last(keyword)
        if args is None:
            return None
        if keyword == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
            args = m.group(1) if m else ""
        try:
            value = json.loads(args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None

    def label(self) -> str:
        return f"stage {self.index} ({self.name or self.base})"


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile: comments dropped, continuation lines joined."""
    stages: list[Stage] = []
    logical, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            if not m:
                raise CheckFailed(f"{rel(path)}: cannot read FROM {args!r}")
            stages.append(Stage(len(stages), m.group(1), m.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    if not stages:
        raise CheckFailed(f"{rel(path)}: no FROM")
    return stages


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
