#!/usr/bin/env python3
"""Check 6: the deploy files query only metrics that exist.

- every identity_linker_* name used (metric_names.py) is a metric of the contract
  (section 8 of shared/design/contract.md when it is beside the repository, else
  the same list in common.py; the two must agree);
- `_bucket`/`_sum`/`_count` are used only on the contract's histograms;
- every rabbitmq_* name is one of the rabbitmq_prometheus metrics in common.py;
- the dashboard shows every metric of the contract.

The live half (the names exist on a running worker's /metrics) is the worker's
own test, which calls metric_names.py.
"""

from __future__ import annotations

import re
import sys

from common import (
    CONTRACT_HISTOGRAMS,
    CONTRACT_METRICS,
    RABBITMQ_METRICS,
    contract_metric_names,
    contract_path,
    fail_if,
    rel,
    run_main,
)
from metric_names import DASHBOARD, used_names


def main() -> None:
    problems: list[str] = []
    contract = contract_path()
    if contract is not None:
        from_contract = contract_metric_names(contract.read_text(encoding="utf-8"))
        if from_contract != CONTRACT_METRICS:
            problems.append(
                f"common.CONTRACT_METRICS differs from {contract}: only in contract "
                f"{sorted(from_contract - CONTRACT_METRICS)}, only in common.py "
                f"{sorted(CONTRACT_METRICS - from_contract)}")
        source = rel(contract)
    else:
        source = "scripts/deploy-check/common.py (contract not found beside the repo)"

    names = used_names()
    for name, files in sorted(names.items()):
        if name.startswith("identity_linker_") and name not in CONTRACT_METRICS:
            problems.append(f"{name} (in {', '.join(sorted(files))}) is not a contract metric")
        if name.startswith("rabbitmq_") and name not in RABBITMQ_METRICS:
            problems.append(f"{name} (in {', '.join(sorted(files))}) is not a known "
                            f"rabbitmq_prometheus metric")
    for name, files in sorted(used_names(raw=True).items()):
        m = re.match(r"^(identity_linker_\w+)_(bucket|sum|count)$", name)
        if m and m.group(1) not in CONTRACT_HISTOGRAMS:
            problems.append(f"{name} (in {', '.join(sorted(files))}): "
                            f"{m.group(1)} is not a histogram")
        if name in CONTRACT_HISTOGRAMS:
            problems.append(f"{name} (in {', '.join(sorted(files))}) is a histogram: "
                            f"query its _bucket/_sum/_count series")

    on_dashboard = {n for n, files in names.items() if rel(DASHBOARD) in files}
    missing = sorted(CONTRACT_METRICS - on_dashboard)
    if missing:
        problems.append(f"{rel(DASHBOARD)} does not show {missing}")
    fail_if(problems, "metric names")
    ours = sorted(n for n in names if n.startswith("identity_linker_"))
    others = sorted(n for n in names if not n.startswith("identity_linker_"))
    print(f"{len(ours)} identity_linker_* names used ⊆ the {len(CONTRACT_METRICS)} of {source}; "
          f"dashboard shows all of them; others: {', '.join(others)}")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
