#!/usr/bin/env python3
"""The deploy files query only metrics that exist.

- every identity_linker_* name used (metric_names.py) is a metric of the metrics table of
  docs/interface.md (check_interface.py keeps that table equal to src/ops/metrics.rs);
- `_bucket`/`_sum`/`_count` are used only on its histograms;
- every rabbitmq_* name is one of the rabbitmq_prometheus metrics in common.py;
- the dashboard shows every metric the table marks `fixed`.

The live half (the names exist on a running worker's /metrics) is live_check.py, which
calls metric_names.py.
"""

from __future__ import annotations

import re
import sys

from common import (
    INTERFACE_DOC,
    RABBITMQ_METRICS,
    documented_metrics,
    fail_if,
    rel,
    run_main,
)
from metric_names import DASHBOARD, used_names


def main() -> None:
    problems: list[str] = []
    metrics = documented_metrics()
    histograms = {n for n, m in metrics.items() if m.kind == "histogram"}
    fixed = {n for n, m in metrics.items() if m.stability == "fixed"}
    source = rel(INTERFACE_DOC)

    names = used_names()
    for name, files in sorted(names.items()):
        if name.startswith("identity_linker_") and name not in metrics:
            problems.append(f"{name} (in {', '.join(sorted(files))}) is not in the metrics "
                            f"table of {source}")
        if name.startswith("rabbitmq_") and name not in RABBITMQ_METRICS:
            problems.append(f"{name} (in {', '.join(sorted(files))}) is not a known "
                            f"rabbitmq_prometheus metric")
    for name, files in sorted(used_names(raw=True).items()):
        m = re.match(r"^(identity_linker_\w+)_(bucket|sum|count)$", name)
        if m and m.group(1) not in histograms:
            problems.append(f"{name} (in {', '.join(sorted(files))}): "
                            f"{m.group(1)} is not a histogram")
        if name in histograms:
            problems.append(f"{name} (in {', '.join(sorted(files))}) is a histogram: "
                            f"query its _bucket/_sum/_count series")

    on_dashboard = {n for n, files in names.items() if rel(DASHBOARD) in files}
    missing = sorted(fixed - on_dashboard)
    if missing:
        problems.append(f"{rel(DASHBOARD)} does not show {missing} (fixed in {source})")
    fail_if(problems, "metric names")
    ours = sorted(n for n in names if n.startswith("identity_linker_"))
    others = sorted(n for n in names if not n.startswith("identity_linker_"))
    extra = sorted(set(metrics) - fixed - on_dashboard)
    print(f"{len(ours)} identity_linker_* names used ⊆ the {len(metrics)} of {source}; "
          f"dashboard shows all {len(fixed)} fixed ones"
          f"{' (not shown: extra ' + ', '.join(extra) + ')' if extra else ''}; "
          f"others: {', '.join(others)}")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
