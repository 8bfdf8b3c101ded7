#!/usr/bin/env python3
"""Print the metric names that the deploy files query, one per line, sorted.

    python3 scripts/deploy-check/metric_names.py          # identity_linker_* names
    python3 scripts/deploy-check/metric_names.py --all    # also rabbitmq_* and `up`
    python3 scripts/deploy-check/metric_names.py --where  # name<TAB>files using it

Sources: the PromQL expressions of deploy/prometheus/alerts.yml,
deploy/kubernetes/base/prometheusrule.yaml and deploy/grafana/dashboard.json
(panel queries and template-variable queries).

Names are printed as docs/interface.md writes them: the sample names minus a
histogram's `_bucket`, `_sum` and `_count` suffix (so
`identity_linker_api_request_duration_seconds_bucket` prints as
`identity_linker_api_request_duration_seconds`); counters keep `_total`. A test
comparing with a live /metrics page should therefore match a printed name
against the sample names there, or against a family name plus `_total` (OpenMetrics
writes `# TYPE identity_linker_messages counter` for samples named
`identity_linker_messages_total`).

Standard library only (PyYAML is used when present, else the YAML files are
scanned as text), so any python3 can run it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEPLOY, rel  # noqa: E402

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = DEPLOY / "kubernetes" / "base" / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:identity_linker|rabbitmq)_[A-Za-z0-9_]+|up)(?![A-Za-z0-9_(])")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def names_in_expr(expr: str) -> set[str]:
    """Metric names in one PromQL expression (label values and strings ignored)."""
    code = _STRING.sub('""', expr)
    code = re.sub(r"#.*", "", code)  # PromQL comments
    # label names inside {...} and by/without (...) are not metric names
    code = re.sub(r"\{[^{}]*\}", "{}", code)
    code = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", code)
    return set(_NAME.findall(code))


def normalise(name: str) -> str:
    return _HISTOGRAM_SUFFIX.sub("", name) if name.startswith("identity_linker_") else name


def rule_exprs(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:  # no PyYAML: pick the `expr:` values out line by line
        return _exprs_from_text(text)
    doc = yaml.safe_load(text)
    groups = doc.get("groups") or doc.get("spec", {}).get("groups", [])
    return [str(r["expr"]) for g in groups for r in g.get("rules", [])]


def _exprs_from_text(text: str) -> list[str]:
    exprs, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(2).strip()
        if value[:1] in ("|", ">"):
            indent, block = len(m.group(1)), []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt.strip())
            value = " ".join(block)
        exprs.append(value)
    return exprs


def dashboard_exprs(path: Path) -> list[str]:
    dash = json.loads(path.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def sources() -> dict[Path, list[str]]:
    return {
        ALERTS: rule_exprs(ALERTS),
        PROMETHEUS_RULE: rule_exprs(PROMETHEUS_RULE),
        DASHBOARD: dashboard_exprs(DASHBOARD),
    }


def used_names(raw: bool = False) -> dict[str, set[str]]:
    """name -> files using it. raw=True keeps the _bucket/_sum/_count suffixes."""
    where: dict[str, set[str]] = {}
    for path, exprs in sources().items():
        for expr in exprs:
            for name in names_in_expr(expr):
                key = name if raw else normalise(name)
                where.setdefault(key, set()).add(rel(path))
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--all", action="store_true", help="include rabbitmq_* and up")
    ap.add_argument("--where", action="store_true", help="print the files using each name")
    args = ap.parse_args()
    for name, files in sorted(used_names().items()):
        if not args.all and not name.startswith("identity_linker_"):
            continue
        print(f"{name}\t{','.join(sorted(files))}" if args.where else name)


if __name__ == "__main__":
    main()
