#!/usr/bin/env python3
"""docs/interface.md agrees with the code.

- the variables table lists exactly the LINKER_* variables of src/config.rs, each with the
  default the code uses (variables the code gives no default must be documented as
  required or unset);
- the metrics table lists exactly the metrics registered in src/ops/metrics.rs, with the
  same type and label names (counters with their `_total` suffix);
- the headers table lists exactly the x-linker-* headers of src/broker/headers.rs;
- the outcomes table names exactly the skip and dead-letter reasons of src/domain/outcome.rs.

The other checks take their lists from docs/interface.md, so this is what ties the deploy
files to the code. Standard library only.
"""

from __future__ import annotations

import sys

from common import (
    CONFIG_RS,
    HEADERS_RS,
    INTERFACE_DOC,
    METRICS_RS,
    OUTCOME_RS,
    code_defaults,
    code_headers,
    code_metrics,
    code_reasons,
    code_variables,
    documented_headers,
    documented_metrics,
    documented_reasons,
    documented_variables,
    fail_if,
    rel,
    run_main,
)


def compare_sets(doc: set[str], code: set[str], what: str, code_file) -> list[str]:
    doc_name, code_name = rel(INTERFACE_DOC), rel(code_file)
    problems = [f"{name}: in {doc_name} ({what}) but not in {code_name}"
                for name in sorted(doc - code)]
    problems += [f"{name}: in {code_name} but missing from {doc_name} ({what})"
                 for name in sorted(code - doc)]
    return problems


def main() -> None:
    problems: list[str] = []
    doc = rel(INTERFACE_DOC)

    variables = documented_variables()
    problems += compare_sets(set(variables), code_variables(), "variables table", CONFIG_RS)
    code_default = code_defaults()
    for name in sorted(set(variables) & code_variables()):
        documented, actual = variables[name], code_default.get(name)
        if actual is None and documented is not None:
            problems.append(f"{name}: {doc} gives the default `{documented}`, but "
                            f"{rel(CONFIG_RS)} has none (document it as required or unset)")
        elif actual is not None and documented != actual:
            problems.append(f"{name}: default is `{actual}` in {rel(CONFIG_RS)} but "
                            f"{'`' + documented + '`' if documented else 'not given'} in {doc}")

    metrics, registered = documented_metrics(), code_metrics()
    problems += compare_sets(set(metrics), set(registered), "metrics table", METRICS_RS)
    for name in sorted(set(metrics) & set(registered)):
        d, c = metrics[name], registered[name]
        if d.kind != c.kind:
            problems.append(f"{name}: a {c.kind} in {rel(METRICS_RS)}, a {d.kind} in {doc}")
        if d.labels != c.labels:
            problems.append(f"{name}: labels {sorted(c.labels)} in {rel(METRICS_RS)}, "
                            f"{sorted(d.labels)} in {doc}")

    headers = documented_headers()
    problems += compare_sets(headers, code_headers(), "headers table", HEADERS_RS)
    reasons = documented_reasons()
    problems += compare_sets(reasons, code_reasons(), "reasons of the outcomes table", OUTCOME_RS)

    fail_if(problems, f"{doc} and the code disagree")
    fixed = sum(1 for m in metrics.values() if m.stability == "fixed")
    print(f"{doc} matches the code: {len(variables)} LINKER_* variables with their defaults "
          f"({rel(CONFIG_RS)}), {len(metrics)} metrics ({fixed} fixed) with types and labels "
          f"({rel(METRICS_RS)}), {len(headers)} x-linker-* headers, {len(reasons)} reasons")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
