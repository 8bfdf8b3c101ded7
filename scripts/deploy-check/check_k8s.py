#!/usr/bin/env python3
"""Check 1: the Kubernetes manifests.

For deploy/kubernetes/base and every overlay under deploy/kubernetes/overlays:
  1. render the kustomization with `kubectl kustomize` (kustomize built into kubectl;
     $KUBECTL names the binary),
  2. validate every rendered object against its schema:
       - core kinds (Deployment, Service, ConfigMap, PodDisruptionBudget, ...):
         the Kubernetes OpenAPI schemas shipped offline in the PyPI package
         kubernetes-validate, in strict mode (unknown fields are errors), for the
         oldest and the newest Kubernetes version in K8S_VERSIONS;
       - CRDs (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication):
         the schemas in scripts/deploy-check/crd-schemas/ (typed subsets of the
         upstream CRDs, unknown spec fields rejected);
     a kind with neither is an error;
  3. check how the objects fit together and with the worker's interface, docs/interface.md (probes,
     restricted security context, grace period vs LINKER_SHUTDOWN_GRACE, secret
     file path, selectors, KEDA queue name, known LINKER_* variables, ...).
deploy/kubernetes/base/secret.example.yaml (not part of the kustomization) is
validated too.
"""

from __future__ import annotations

import re

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

import kubernetes_validate.utils as kv

from common import (
    DEPLOY,
    SECRET_FILE_PATH,
    CheckFailed,
    defaults,
    documented_variables,
    duration_ms,
    fail_if,
    rel,
    run_main,
)

K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
CRD_DIR = Path(__file__).resolve().parent / "crd-schemas"
K8S_VERSIONS = ("1.30.0", kv.latest_version())

CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _crd_validators():
    def load(name):
        with open(CRD_DIR / name, encoding="utf-8") as f:
            return json.load(f)

    common = load("_common.json")
    registry = Registry().with_resource("crd-common.json", Resource.from_contents(common))
    out = {}
    for key, name in CRDS.items():
        schema = load(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        out[key] = jsonschema.Draft202012Validator(schema, registry=registry)
    return out


CRD_VALIDATORS = _crd_validators()


def render(kustomization: Path) -> list[dict]:
    kubectl = os.environ.get("KUBECTL", "kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(kustomization)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(f"kubectl kustomize {rel(kustomization)} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def validate_schema(doc: dict, where: str) -> list[str]:
    name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_VALIDATORS:
        errors = sorted(CRD_VALIDATORS[key].iter_errors(doc), key=lambda e: list(e.path))
        return [f"{name}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
    problems = []
    for version in K8S_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "<root>"
            problems.append(f"{name}: Kubernetes {e.version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema: {e.message}")
    return problems


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, where: str) -> dict:
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise CheckFailed(f"{where}: expected exactly one {kind}, found {len(found)}")
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_fit(docs: list[dict], where: str, overlay: bool) -> list[str]:
    """How the rendered objects fit together and with docs/interface.md."""
    p: list[str] = []
    dep = one(docs, "Deployment", where)
    svc = one(docs, "Service", where)
    pdb = one(docs, "PodDisruptionBudget", where)
    smon = one(docs, "ServiceMonitor", where)
    so = one(docs, "ScaledObject", where)
    tauth = one(docs, "TriggerAuthentication", where)
    rule = one(docs, "PrometheusRule", where)
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}

    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if not selects(spec["selector"], pod_labels):
        p.append("Deployment selector does not match its pod labels")
    containers = pod["containers"]
    if len(containers) != 1:
        p.append("Deployment should have exactly one container")
    c = containers[0]

    # configuration
    env_from = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    config: dict[str, str] = {}
    for name in env_from:
        if name not in cms:
            p.append(f"envFrom ConfigMap {name} is not rendered")
        else:
            config.update(cms[name].get("data", {}))
    env = {e["name"]: e for e in c.get("env", [])}
    for key in list(config) + list(env):
        if key.startswith("LINKER_") and key not in documented_variables():
            p.append(f"{key} is not a variable of docs/interface.md")
    for secret_var in ("LINKER_MOS_SECRET_KEY", "LINKER_AMQP_URL"):
        if secret_var in config:
            p.append(f"{secret_var} must not be in a ConfigMap")
    if "LINKER_MOS_SECRET_KEY" in env:
        p.append("use LINKER_MOS_SECRET_KEY_FILE with a mounted Secret, not LINKER_MOS_SECRET_KEY")
    amqp = env.get("LINKER_AMQP_URL", {})
    amqp_ref = amqp.get("valueFrom", {}).get("secretKeyRef")
    if not amqp_ref:
        p.append("LINKER_AMQP_URL must come from a Secret (valueFrom.secretKeyRef)")
    if overlay:
        url = config.get("LINKER_MOS_ENDPOINT_URL", "")
        if not url.startswith("https://") or "/endpoints/link-identities" not in url:
            p.append(f"LINKER_MOS_ENDPOINT_URL should be the endpoint's https URL, got {url!r}")

    # secret key file mounted from a Secret at the configured path
    key_file = config.get("LINKER_MOS_SECRET_KEY_FILE") or env.get(
        "LINKER_MOS_SECRET_KEY_FILE", {}).get("value")
    if key_file != SECRET_FILE_PATH:
        p.append(f"LINKER_MOS_SECRET_KEY_FILE should be {SECRET_FILE_PATH}, got {key_file!r}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = False
    for m in c.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        if "secret" in vol and key_file and key_file.startswith(m["mountPath"].rstrip("/") + "/"):
            item = key_file[len(m["mountPath"].rstrip("/")) + 1:]
            items = vol["secret"].get("items")
            if items is None or any(i["path"] == item for i in items):
                mounted = True
                if not m.get("readOnly"):
                    p.append("the secret volume should be mounted readOnly")
    if not mounted:
        p.append(f"{key_file} is not provided by a mounted Secret volume")

    # HTTP port and probes
    ports = {pt.get("name"): pt["containerPort"] for pt in c.get("ports", [])}
    http_port = int(config.get("LINKER_HTTP_ADDR", f"0.0.0.0:{defaults().http_port}").rsplit(":", 1)[1])
    if ports.get("metrics") != http_port:
        p.append(f"container port 'metrics' should be {http_port} (LINKER_HTTP_ADDR)")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("metrics", http_port):
            p.append(f"{probe} should GET {path} on the metrics port")

    # restricted security context
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        p.append("runAsNonRoot must be true")
    if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.append("seccompProfile must be RuntimeDefault")
    if csc.get("allowPrivilegeEscalation") is not False:
        p.append("allowPrivilegeEscalation must be false")
    if csc.get("readOnlyRootFilesystem") is not True:
        p.append("readOnlyRootFilesystem must be true")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        p.append("capabilities.drop must be [ALL]")
    if pod.get("automountServiceAccountToken") is not False:
        p.append("automountServiceAccountToken should be false (no API access needed)")

    # resources
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                p.append(f"resources.{kind}.{r} missing")

    # graceful shutdown
    grace = duration_ms(config.get("LINKER_SHUTDOWN_GRACE", defaults().shutdown_grace)) / 1000
    tgp = pod.get("terminationGracePeriodSeconds", 30)
    if tgp <= grace:
        p.append(f"terminationGracePeriodSeconds ({tgp}) must exceed LINKER_SHUTDOWN_GRACE ({grace}s)")

    # image
    image = c["image"]
    if overlay and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        p.append(f"image {image!r} should carry a fixed tag")

    # Service, ServiceMonitor, PDB
    if svc["spec"].get("selector") != {k: pod_labels[k] for k in svc["spec"].get("selector", {})
                                         if k in pod_labels} or not svc["spec"].get("selector"):
        p.append("Service selector does not match the pod labels")
    svc_ports = {pt.get("name"): pt for pt in svc["spec"]["ports"]}
    if "metrics" not in svc_ports or svc_ports["metrics"]["port"] != http_port:
        p.append(f"Service needs port 'metrics' = {http_port}")
    if not selects(smon["spec"]["selector"], svc["metadata"].get("labels", {})):
        p.append("ServiceMonitor selector does not match the Service labels")
    for ep in smon["spec"]["endpoints"]:
        if ep.get("port") not in svc_ports or ep.get("path", "/metrics") != "/metrics":
            p.append("ServiceMonitor endpoint should scrape /metrics on a named Service port")
    if not selects(pdb["spec"]["selector"], pod_labels):
        p.append("PodDisruptionBudget selector does not match the pod labels")

    # KEDA
    sospec = so["spec"]
    if sospec["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
        p.append("ScaledObject does not target the Deployment")
    if "replicas" in spec:
        p.append("Deployment sets replicas although a ScaledObject owns them")
    lo, hi = sospec.get("minReplicaCount", 0), sospec.get("maxReplicaCount", 100)
    if not 1 <= lo <= hi:
        p.append(f"ScaledObject replicas should satisfy 1 <= min ({lo}) <= max ({hi})")
    rabbit = [t for t in sospec["triggers"] if t["type"] == "rabbitmq"]
    if len(rabbit) != 1:
        p.append("ScaledObject needs one rabbitmq trigger")
    for t in rabbit:
        md = t["metadata"]
        queue = config.get("LINKER_QUEUE", "identity-linker")
        # The backlog is the work queue plus its partition queues: a regex summed over the
        # management API, matching exactly those names.
        pattern = md.get("queueName", "")
        wanted = [queue] + [f"{queue}.partition.{i}" for i in range(3)]
        others = [f"{queue}.dead", f"{queue}.retry.10s", f"x{queue}", f"{queue}.partition.x"]
        try:
            rx = re.compile(pattern)
            matches = all(rx.fullmatch(n) for n in wanted) and not any(rx.fullmatch(n) for n in others)
        except re.error:
            matches = False
        if md.get("useRegex") != "true" or md.get("operation", "sum") != "sum" or not matches:
            p.append(f"rabbitmq trigger should sum LINKER_QUEUE and its partitions "
                     f"(useRegex, operation sum), not {pattern!r}")
        if md.get("protocol") != "http":
            p.append("rabbitmq trigger protocol must be http (only the management API sums queues)")
        partitions = int(config.get("LINKER_PARTITIONS", "16"))
        if partitions and hi > partitions:
            p.append(f"maxReplicaCount {hi} above LINKER_PARTITIONS {partitions}: the rest would stand by")
        if md.get("mode") not in ("QueueLength", "MessageRate"):
            p.append("rabbitmq trigger mode must be QueueLength or MessageRate")
        try:
            if float(md.get("value", "")) <= 0:
                raise ValueError
        except ValueError:
            p.append("rabbitmq trigger value must be a positive number")
        auth = t.get("authenticationRef", {}).get("name")
        if auth != tauth["metadata"]["name"]:
            p.append("rabbitmq trigger authenticationRef does not name the TriggerAuthentication")
        if "host" in md:
            p.append("rabbitmq trigger must not carry the AMQP URL in plain metadata")
    hosts = [r for r in tauth["spec"].get("secretTargetRef", []) if r["parameter"] == "host"]
    if amqp_ref and not any(h["name"] == amqp_ref["name"] and h["key"] == "management-url"
                            for h in hosts):
        p.append("TriggerAuthentication host should be the management-url of the worker's AMQP Secret")

    # alert rules travel unchanged
    with open(DEPLOY / "prometheus" / "alerts.yml", encoding="utf-8") as f:
        if rule["spec"]["groups"] != yaml.safe_load(f)["groups"]:
            p.append("rendered PrometheusRule differs from deploy/prometheus/alerts.yml")

    # namespaces
    namespaces = {d.get("metadata", {}).get("namespace") for d in docs
                  if d["kind"] not in CLUSTER_SCOPED}
    if overlay and (len(namespaces) != 1 or None in namespaces):
        p.append(f"every namespaced object should get the overlay's namespace, got {namespaces}")

    # the Secrets the pod reads are described by secret.example.yaml
    with open(SECRET_EXAMPLE, encoding="utf-8") as f:
        examples = {d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d}
    wanted = [(amqp_ref or {}).get("name"), (amqp_ref or {}).get("key")]
    refs = [tuple(wanted)] if amqp_ref else []
    for v in volumes.values():
        if "secret" in v:
            for item in v["secret"].get("items", []):
                refs.append((v["secret"]["secretName"], item["key"]))
    for name, key in refs:
        data = {**examples.get(name, {}).get("data", {}), **examples.get(name, {}).get("stringData", {})}
        if key not in data:
            p.append(f"Secret {name} key {key} is not described in {rel(SECRET_EXAMPLE)}")
    return [f"{where}: {x}" for x in p]


def kustomize_version() -> str:
    kubectl = os.environ.get("KUBECTL", "kubectl")
    proc = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("Kustomize Version:"):
            return "kustomize " + line.split(":", 1)[1].strip()
    return "kustomize"


def main() -> None:
    targets = [BASE] + sorted(d for d in (K8S / "overlays").iterdir() if d.is_dir())
    problems: list[str] = []
    rendered = []
    for target in targets:
        where = rel(target)
        docs = render(target)
        n_before = len(problems)
        for doc in docs:
            problems += validate_schema(doc, where)
        problems += check_fit(docs, where, overlay=target != BASE)
        kinds = sorted({d["kind"] for d in docs})
        status = "ok" if len(problems) == n_before else "FAILED"
        print(f"  {where}: {len(docs)} objects ({', '.join(kinds)}): {status}")
        rendered.append(f"{where.replace('deploy/kubernetes/', '')} ({len(docs)} objects)")
    with open(SECRET_EXAMPLE, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                problems += validate_schema(doc, rel(SECRET_EXAMPLE))
    fail_if(problems, "Kubernetes manifests")
    print(f"rendered {' and '.join(rendered)} with `kubectl kustomize` ({kustomize_version()}); "
          f"core kinds valid against kubernetes-validate's schemas (strict, Kubernetes "
          f"{' and '.join(K8S_VERSIONS)}), {len(CRDS)} CRD kinds against crd-schemas/; "
          f"probes, security context, grace period, secrets, selectors, KEDA trigger consistent; "
          f"secret.example.yaml valid")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
