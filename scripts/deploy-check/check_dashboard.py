#!/usr/bin/env python3
"""Part of check 3: the Grafana dashboard and its provisioning.

- deploy/grafana/dashboard.json: uid/title/schemaVersion, unique panel ids,
  panels inside the 24-column grid without overlapping, every query with a
  refId and the ${datasource} variable, every $variable defined;
- every PromQL query parses: the queries (Grafana variables replaced by sample
  values) are written as recording rules to a temporary file and checked with
  `promtool check rules` ($PROMTOOL names the binary);
- the provisioning files point at the compose stack's Prometheus and at the
  path where docker-compose.yml mounts the dashboard.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from common import DEPLOY, REPO, fail_if, load_json, rel, run_main

DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"

# Sample values for Grafana's variables, to make the queries plain PromQL.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$job": "identity-link-worker",
    "$instance": ".*",
    "$queue": "identity-linker",
}
BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__all"}


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def check_structure(dash: dict) -> tuple[list[str], list[tuple[str, str]]]:
    p: list[str] = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            p.append(f"dashboard has no {key}")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    ids, queries, occupied = set(), [], {}
    for panel in all_panels(dash.get("panels", [])):
        pid, title = panel.get("id"), panel.get("title", "?")
        if pid in ids:
            p.append(f"panel id {pid} is used twice")
        ids.add(pid)
        g = panel.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            p.append(f"panel {title!r}: gridPos needs integer h, w, x, y")
            continue
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            p.append(f"panel {title!r} leaves the 24-column grid")
        for dx in range(g["w"]):
            for dy in range(g["h"]):
                cell = (g["x"] + dx, g["y"] + dy)
                if cell in occupied:
                    p.append(f"panel {title!r} overlaps {occupied[cell]!r}")
                    break
                occupied[cell] = title
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            p.append(f"panel {title!r} has no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            p.append(f"panel {title!r}: refIds must be set and unique")
        for t in targets:
            ds = t.get("datasource") or panel.get("datasource") or {}
            if ds.get("uid") != "${datasource}":
                p.append(f"panel {title!r}: query should use the ${{datasource}} variable")
            expr = t.get("expr", "")
            if not expr:
                p.append(f"panel {title!r} query {t.get('refId')} has no expr")
            queries.append((f"{title} ({t.get('refId')})", expr))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query":
            expr = q["query"] if isinstance(q, dict) else q
            m = re.match(r"^label_values\((.*),\s*\w+\)$", expr)
            queries.append((f"variable {var['name']}", m.group(1) if m else expr))
    for where, expr in queries:
        for v in re.findall(r"\$\{?(\w+)", expr):
            if v not in variables and v not in BUILTIN_VARS:
                p.append(f"{where}: ${v} is not a dashboard variable")
    return p, queries


def promql_parses(queries: list[tuple[str, str]]) -> list[str]:
    rules = []
    for i, (where, expr) in enumerate(queries):
        for var, value in SUBSTITUTIONS.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr,
                      "labels": {"dashboard_query": where[:60]}})
    promtool = os.environ.get("PROMTOOL", "promtool")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        proc = subprocess.run([promtool, "check", "rules", str(path)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        return [f"promtool rejects a dashboard query:\n{proc.stdout}{proc.stderr}"]
    return []


def check_provisioning() -> list[str]:
    p: list[str] = []
    with open(REPO / "docker-compose.yml", encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    grafana = services.get("grafana", {})
    mounts = {}
    for v in grafana.get("volumes", []):
        if isinstance(v, str) and v.startswith("./"):
            src, dst = v.split(":")[:2]
            mounts[dst] = (REPO / src).resolve()

    for f in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        doc = yaml.safe_load(f.read_text())
        for ds in doc.get("datasources", []):
            if ds.get("type") == "prometheus":
                url = urlsplit(ds.get("url", ""))
                if url.hostname not in services or url.port != 9090:
                    p.append(f"{rel(f)}: datasource url {ds.get('url')} is not the compose Prometheus")
                if ds.get("uid") != "prometheus":
                    p.append(f"{rel(f)}: datasource uid should be 'prometheus' (dashboard default)")
    for f in sorted((PROVISIONING / "dashboards").glob("*.y*ml")):
        doc = yaml.safe_load(f.read_text())
        for prov in doc.get("providers", []):
            path = prov.get("options", {}).get("path", "")
            mounted = [dst for dst, src in mounts.items()
                       if dst.startswith(path.rstrip("/") + "/") and src == DASHBOARD.resolve()]
            if not mounted:
                p.append(f"{rel(f)}: docker-compose.yml mounts no dashboard.json under {path}")
    home = grafana.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and mounts.get(home) != DASHBOARD.resolve():
        p.append(f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not the mounted dashboard")
    return p


def main() -> None:
    dash = load_json(DASHBOARD)
    problems, queries = check_structure(dash)
    problems += promql_parses(queries)
    problems += check_provisioning()
    fail_if(problems, "Grafana dashboard")
    panels = [p for p in all_panels(dash["panels"]) if p.get("type") != "row"]
    print(f"{rel(DASHBOARD)}: {len(panels)} panels, {len(queries)} PromQL queries parsed by "
          f"promtool; provisioning matches docker-compose.yml")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
