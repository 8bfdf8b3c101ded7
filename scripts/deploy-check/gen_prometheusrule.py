#!/usr/bin/env python3
"""Keep deploy/kubernetes/base/prometheusrule.yaml in step with deploy/prometheus/alerts.yml.

    python3 scripts/deploy-check/gen_prometheusrule.py --write   # regenerate from alerts.yml
    python3 scripts/deploy-check/gen_prometheusrule.py --check   # fail if the groups differ (check 4)

The comparison is on parsed YAML: `spec.groups` of the PrometheusRule must equal
`groups` of alerts.yml, so formatting and comments may differ, rules may not.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from common import DEPLOY, CheckFailed, rel, run_main

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RULE = DEPLOY / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by
#   python3 scripts/deploy-check/gen_prometheusrule.py --write
# Do not edit by hand: scripts/check-deploy.sh fails when the groups differ.
#
# Prometheus Operator picks PrometheusRules by its ruleSelector; with
# kube-prometheus-stack that usually means a `release: <helm release>` label,
# which the overlay adds where needed.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(groups) -> str:
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "identity-link-worker",
            "labels": {
                "app.kubernetes.io/name": "identity-link-worker",
                "app.kubernetes.io/component": "alerting",
            },
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=4096,
                              allow_unicode=True)


def load_groups():
    with open(ALERTS, encoding="utf-8") as f:
        return yaml.safe_load(f)["groups"]


def check() -> None:
    with open(RULE, encoding="utf-8") as f:
        rule = yaml.safe_load(f)
    groups = load_groups()
    if rule.get("kind") != "PrometheusRule" or rule.get("spec", {}).get("groups") != groups:
        raise CheckFailed(
            f"{rel(RULE)} does not carry the groups of {rel(ALERTS)}; run "
            f"python3 scripts/deploy-check/gen_prometheusrule.py --write")
    rules = sum(len(g["rules"]) for g in groups)
    print(f"{rel(RULE)}: spec.groups == groups of {rel(ALERTS)} "
          f"({len(groups)} group(s), {rules} rules)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true")
    group.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.write:
        RULE.write_text(render(load_groups()), encoding="utf-8")
        print(f"wrote {rel(RULE)}")
    else:
        check()


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
