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
       - CRDs (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication,
         RabbitmqCluster): the schemas in scripts/deploy-check/crd-schemas/ (typed
         subsets of the upstream CRDs, unknown spec fields rejected);
     a kind with neither is an error;
  3. check how the objects fit together and with the worker's interface, docs/interface.md (probes,
     restricted security context, grace period vs LINKER_SHUTDOWN_GRACE, secret
     file paths, selectors, KEDA queue name, known LINKER_* variables, the
     LINKER_AMQP_URL node list and where its credentials come from, ...);
  4. where an overlay renders a RabbitmqCluster (RabbitMQ Cluster Operator): the
     worker's node list names exactly its pods on the headless Service (or its
     client Service), TLS and the CA file match spec.tls, the broker settings the
     worker relies on match deploy/rabbitmq/rabbitmq.conf, and
     LINKER_QUORUM_INITIAL_GROUP_SIZE fits spec.replicas.
Every Secret the objects read must be rendered, created by a rendered
RabbitmqCluster (its default-user Secret), or described by
deploy/kubernetes/base/secret.example.yaml or the overlay's own
secret.example.yaml (neither part of a kustomization; both validated too).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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
    # Typed subset of the RabbitMQ Cluster Operator's CRD (v2.22), kept here so the
    # check runs offline like the others.
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmqcluster-rabbitmq-v1beta1.json",
}
WORKER = "identity-link-worker"  # app.kubernetes.io/name of the worker's own objects
# Keys of the Secret `<name>-default-user` that the RabbitMQ Cluster Operator
# creates for a RabbitmqCluster (internal/resource/default_user_secret.go).
DEFAULT_USER_KEYS = {"username", "password", "host", "port", "provider", "type",
                     "default_user.conf", "connection_string"}
RABBITMQ_CONF = DEPLOY / "rabbitmq" / "rabbitmq.conf"
# Broker settings the worker's limits and failover rely on: a RabbitmqCluster's
# additionalConfig must set them, to rabbitmq.conf's value where it has one.
CLUSTER_SETTINGS = {"cluster_partition_handling": "pause_minority", "max_message_size": None}
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
    """The worker's one object of a kind (an overlay may add others, e.g. a broker's PDB)."""
    found = [d for d in by_kind(docs, kind)
             if d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name") == WORKER]
    if len(found) != 1:
        raise CheckFailed(f"{where}: expected exactly one {kind} labelled "
                          f"app.kubernetes.io/name={WORKER}, found {len(found)}")
    return found[0]


def conf_settings(text: str) -> dict[str, str]:
    """key = value lines of a rabbitmq.conf (comments and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def amqp_nodes(env_list: list[dict], p: list[str]) -> list[tuple[str, int, bool, bool]]:
    """Check where LINKER_AMQP_URL and its credentials come from; its nodes.

    Either the whole value comes from a Secret (valueFrom.secretKeyRef: then the
    nodes are unknown here, []), or it is a literal list of URLs whose password
    parts are only $(VAR) references to variables defined earlier in `env` from
    Secrets (Kubernetes expands $(VAR) from earlier entries only), or URLs that
    log in by certificate (?auth_mechanism=external, no password). Returns
    (host, port, tls, external) per listed URL, after the worker's own rules
    (amqp:// or amqps://, each node once).
    """
    names = [e["name"] for e in env_list]
    if names.count("LINKER_AMQP_URL") != 1:
        p.append("exactly one LINKER_AMQP_URL env entry expected")
        return []
    index = names.index("LINKER_AMQP_URL")
    entry = env_list[index]
    if entry.get("valueFrom", {}).get("secretKeyRef"):
        return []
    value = entry.get("value")
    if value is None:
        p.append("LINKER_AMQP_URL must come from a Secret (valueFrom.secretKeyRef) "
                 "or be a value built from Secret variables ($(VAR))")
        return []
    earlier = {e["name"]: e for e in env_list[:index]}
    for var in dict.fromkeys(_VAR_REF.findall(value)):
        ref = earlier.get(var)
        if ref is None:
            p.append(f"LINKER_AMQP_URL uses $({var}), which is not defined before it in env "
                     f"(Kubernetes would leave it unexpanded)")
        elif not ref.get("valueFrom", {}).get("secretKeyRef"):
            p.append(f"$({var}) in LINKER_AMQP_URL should come from a Secret (secretKeyRef)")
    nodes: list[tuple[str, int, bool, bool]] = []
    for url in (u.strip() for u in value.split(",")):
        if not url:
            continue
        shown = _VAR_REF.sub("VAR", url)
        if not url.startswith(("amqp://", "amqps://")):
            p.append(f"LINKER_AMQP_URL: each URL must start with amqp:// or amqps://, got {shown!r}")
            continue
        parts = urlsplit(_VAR_REF.sub("x", url))
        external = "external" in (v.lower() for v in parse_qs(parts.query).get("auth_mechanism", []))
        userinfo = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        password = userinfo.partition(":")[2]
        if password and not _VAR_REF.fullmatch(password):
            p.append(f"LINKER_AMQP_URL carries a literal password ({shown!r}): take it from a "
                     f"Secret ($(VAR) of a secretKeyRef variable)")
        if not password and not external:
            p.append(f"LINKER_AMQP_URL {shown!r} has no password and no ?auth_mechanism=external")
        tls = url.startswith("amqps://")
        port = parts.port or (5671 if tls else 5672)
        if (parts.hostname, port) in {(h, pt) for h, pt, _, _ in nodes}:
            p.append(f"LINKER_AMQP_URL names the node {parts.hostname}:{port} twice")
        nodes.append((parts.hostname or "", port, tls, external))
    if not nodes and not p:
        p.append("LINKER_AMQP_URL names no broker URL")
    return nodes


def check_rabbitmq_cluster(cluster: dict, namespace: str | None, nodes, config, env,
                           file_sources, ta_params, secrets: dict[str, dict]) -> list[str]:
    """The worker against a RabbitmqCluster rendered next to it."""
    p: list[str] = []
    name = cluster["metadata"]["name"]
    ns = cluster["metadata"].get("namespace")
    spec = cluster.get("spec", {})
    replicas = spec.get("replicas", 1)
    tls = spec.get("tls", {})
    where = f"RabbitmqCluster {name}"
    if ns != namespace:
        p.append(f"{where} is in namespace {ns!r}, the worker in {namespace!r}: the worker "
                 f"cannot read its default-user Secret across namespaces")
    if replicas < 3 or replicas % 2 == 0:
        p.append(f"{where}: replicas {replicas}; quorum queues want an odd number, at least 3")

    # broker settings the worker relies on
    settings = conf_settings(spec.get("rabbitmq", {}).get("additionalConfig", ""))
    compose_conf = conf_settings(RABBITMQ_CONF.read_text(encoding="utf-8"))
    for key, wanted in CLUSTER_SETTINGS.items():
        wanted = wanted or compose_conf.get(key)
        if settings.get(key) != wanted:
            p.append(f"{where}: rabbitmq.additionalConfig should set {key} = {wanted} "
                     f"(got {settings.get(key)!r})")

    # the node list: its pods on the headless Service, or its client Service
    if nodes:
        port = 5671 if tls.get("secretName") else 5672
        pods = {f"{name}-server-{i}.{name}-nodes.{ns}.svc" for i in range(replicas)}
        pods_fqdn = {f"{h}.cluster.local" for h in pods}
        client = {f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"}
        hosts = {h for h, _, _, _ in nodes}
        if not (hosts <= client and len(hosts) == 1) and hosts != pods and hosts != pods_fqdn:
            p.append(f"LINKER_AMQP_URL should list every pod of {where} on its headless "
                     f"Service ({', '.join(sorted(pods))}) or name its client Service "
                     f"({name}.{ns}.svc), got {sorted(hosts)}")
        for h, pt, is_tls, _ in nodes:
            if pt != port or is_tls != bool(tls.get("secretName")):
                p.append(f"LINKER_AMQP_URL node {h}:{pt}: {where} serves "
                         f"{'amqps' if tls.get('secretName') else 'amqp'} on {port}")
    # TLS: the worker trusts the CA that the cluster's Secrets carry
    if tls.get("secretName"):
        ca_file = config.get("LINKER_AMQP_CA_FILE") or env.get("LINKER_AMQP_CA_FILE", {}).get("value")
        ca_secrets = {tls.get("caSecretName") or tls["secretName"], tls["secretName"]}
        source = file_sources.get("LINKER_AMQP_CA_FILE")
        if not ca_file:
            p.append(f"{where} serves TLS: set LINKER_AMQP_CA_FILE to its CA (ca.crt)")
        elif not source or source[0] not in ca_secrets or source[1] != "ca.crt":
            p.append(f"LINKER_AMQP_CA_FILE should be key ca.crt of {' or '.join(sorted(ca_secrets))}, "
                     f"mounted from it (got {source})")
        if not ta_params.get("tls") or not ta_params.get("ca"):
            p.append(f"{where} serves its management API over TLS only with its own CA: the "
                     f"TriggerAuthentication needs the tls (enable) and ca parameters")
        elif ta_params["ca"] != (tls.get("caSecretName") or tls["secretName"], "ca.crt") \
                and ta_params["ca"][0] not in ca_secrets:
            p.append("TriggerAuthentication ca should be the cluster's CA (ca.crt)")
    # KEDA's management URL, where this overlay renders it: the client Service
    host_secret, host_key = ta_params.get("host", ("", ""))
    if host_secret in secrets:
        doc = secrets[host_secret]
        raw = (doc.get("stringData") or {}).get(host_key)
        if raw is None and host_key in (doc.get("data") or {}):
            raw = base64.b64decode(doc["data"][host_key]).decode()
        url = urlsplit(raw or "")
        scheme, port = ("https", 15671) if tls.get("secretName") else ("http", 15672)
        if url.scheme != scheme or url.hostname not in (f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local") \
                or url.port != port or url.username or url.password:
            p.append(f"KEDA's {host_key} ({raw!r}) should be {scheme}://{name}.{ns}.svc:{port}/%2f, "
                     f"the management API of {where}, without credentials")
    group = config.get("LINKER_QUORUM_INITIAL_GROUP_SIZE")
    if group is not None and not (group.isdigit() and 1 <= int(group) <= replicas):
        p.append(f"LINKER_QUORUM_INITIAL_GROUP_SIZE {group!r} should be 1..{replicas} "
                 f"(spec.replicas of {where})")
    return p


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def secret_examples(target: Path) -> dict[str, dict]:
    """Secrets described by base/secret.example.yaml and the target's own secret.example.yaml."""
    examples: dict[str, dict] = {}
    for path in dict.fromkeys([SECRET_EXAMPLE, target / "secret.example.yaml"]):
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                examples.update({d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d})
    return examples


def secret_keys(doc: dict) -> set[str]:
    return set(doc.get("data") or {}) | set(doc.get("stringData") or {})


def check_fit(docs: list[dict], where: str, target: Path) -> list[str]:
    """How the rendered objects fit together and with docs/interface.md."""
    overlay = target != BASE
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
    nodes = amqp_nodes(c.get("env", []), p)
    if overlay:
        url = config.get("LINKER_MOS_ENDPOINT_URL", "")
        if not url.startswith("https://") or "/endpoints/link-identities" not in url:
            p.append(f"LINKER_MOS_ENDPOINT_URL should be the endpoint's https URL, got {url!r}")

    # files read by the worker, each mounted from a Secret at the configured path
    def setting(name: str) -> str | None:
        return config.get(name) or env.get(name, {}).get("value")

    key_file = setting("LINKER_MOS_SECRET_KEY_FILE")
    if key_file != SECRET_FILE_PATH:
        p.append(f"LINKER_MOS_SECRET_KEY_FILE should be {SECRET_FILE_PATH}, got {key_file!r}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def secret_file(path: str) -> tuple[str, str] | None:
        """(Secret, key) that a read-only Secret volume provides at this path."""
        for m in c.get("volumeMounts", []):
            vol = volumes.get(m["name"], {})
            base = m["mountPath"].rstrip("/") + "/"
            if "secret" in vol and path.startswith(base):
                item = path[len(base):]
                items = vol["secret"].get("items")
                found = item if items is None else next(
                    (i["key"] for i in items if i["path"] == item), None)
                if found is not None:
                    if not m.get("readOnly"):
                        p.append(f"the secret volume {m['name']} should be mounted readOnly")
                    return vol["secret"]["secretName"], found
        return None

    file_sources: dict[str, tuple[str, str]] = {}
    for var in ("LINKER_MOS_SECRET_KEY_FILE", "LINKER_AMQP_CA_FILE",
                "LINKER_AMQP_CLIENT_CERT_FILE", "LINKER_AMQP_CLIENT_KEY_FILE"):
        path = setting(var)
        if not path:
            continue
        source = secret_file(path)
        if source is None:
            p.append(f"{var}={path} is not provided by a mounted Secret volume")
        else:
            file_sources[var] = source
    tls_files = [v for v in ("LINKER_AMQP_CA_FILE", "LINKER_AMQP_CLIENT_CERT_FILE",
                             "LINKER_AMQP_CLIENT_KEY_FILE") if setting(v)]
    if tls_files and nodes and not any(tls for _, _, tls, _ in nodes):
        p.append(f"{', '.join(tls_files)} set, but no LINKER_AMQP_URL is amqps:// "
                 f"(the worker refuses to start)")
    if bool(setting("LINKER_AMQP_CLIENT_CERT_FILE")) != bool(setting("LINKER_AMQP_CLIENT_KEY_FILE")):
        p.append("LINKER_AMQP_CLIENT_CERT_FILE and LINKER_AMQP_CLIENT_KEY_FILE go together")
    if any(ext for _, _, _, ext in nodes) and not setting("LINKER_AMQP_CLIENT_CERT_FILE"):
        p.append("?auth_mechanism=external needs a client certificate (LINKER_AMQP_CLIENT_CERT_FILE)")

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
    ta_params = {r["parameter"]: (r["name"], r["key"]) for r in tauth["spec"].get("secretTargetRef", [])}
    if ta_params.get("host", ("", ""))[1] != "management-url":
        p.append("TriggerAuthentication host should be the key management-url of a Secret")
    if ("username" in ta_params) != ("password" in ta_params):
        p.append("TriggerAuthentication username and password go together")

    # alert rules travel unchanged
    with open(DEPLOY / "prometheus" / "alerts.yml", encoding="utf-8") as f:
        if rule["spec"]["groups"] != yaml.safe_load(f)["groups"]:
            p.append("rendered PrometheusRule differs from deploy/prometheus/alerts.yml")

    # namespaces
    namespaces = {d.get("metadata", {}).get("namespace") for d in docs
                  if d["kind"] not in CLUSTER_SCOPED}
    if overlay and (len(namespaces) != 1 or None in namespaces):
        p.append(f"every namespaced object should get the overlay's namespace, got {namespaces}")

    # a RabbitmqCluster rendered next to the worker
    clusters = by_kind(docs, "RabbitmqCluster")
    if len(clusters) > 1:
        p.append("more than one RabbitmqCluster: the worker reaches one cluster")
    for cluster in clusters:
        p += check_rabbitmq_cluster(cluster, dep["metadata"].get("namespace"), nodes, config,
                                    env, file_sources, ta_params,
                                    {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")})

    # every Secret the pod and KEDA read is rendered, made by the operator, or described
    refs: list[tuple[str, str, str]] = []
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs.append((ref["name"], ref["key"], f"env {e['name']}"))
    for v in volumes.values():
        if "secret" in v:
            for item in v["secret"].get("items", []):
                refs.append((v["secret"]["secretName"], item["key"], f"volume {v['name']}"))
    for param, (name, key) in ta_params.items():
        refs.append((name, key, f"TriggerAuthentication {param}"))
    rendered = {d["metadata"]["name"]: secret_keys(d) for d in by_kind(docs, "Secret")}
    made = {f"{d['metadata']['name']}-default-user": DEFAULT_USER_KEYS for d in clusters}
    examples = {n: secret_keys(d) for n, d in secret_examples(target).items()}
    described = [rel(SECRET_EXAMPLE)] + ([rel(target / "secret.example.yaml")]
                                         if (target / "secret.example.yaml").is_file() else [])
    for name, key, user in refs:
        for source in (rendered, made, examples):
            if name in source:
                if key not in source[name]:
                    p.append(f"{user}: Secret {name} has no key {key}")
                break
        else:
            p.append(f"{user}: Secret {name} is neither rendered, nor made by a RabbitmqCluster, "
                     f"nor described in {' or '.join(described)}")
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
    clusters = 0
    for target in targets:
        where = rel(target)
        docs = render(target)
        n_before = len(problems)
        for doc in docs:
            problems += validate_schema(doc, where)
        problems += check_fit(docs, where, target)
        kinds = sorted({d["kind"] for d in docs})
        clusters += len(by_kind(docs, "RabbitmqCluster"))
        status = "ok" if len(problems) == n_before else "FAILED"
        print(f"  {where}: {len(docs)} objects ({', '.join(kinds)}): {status}")
        rendered.append(f"{where.replace('deploy/kubernetes/', '')} ({len(docs)} objects)")
    examples = [SECRET_EXAMPLE] + [t / "secret.example.yaml" for t in targets
                                   if (t / "secret.example.yaml").is_file() and t != BASE]
    for path in examples:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    problems += validate_schema(doc, rel(path))
    fail_if(problems, "Kubernetes manifests")
    print(f"rendered {' and '.join(rendered)} with `kubectl kustomize` ({kustomize_version()}); "
          f"core kinds valid against kubernetes-validate's schemas (strict, Kubernetes "
          f"{' and '.join(K8S_VERSIONS)}), {len(CRDS)} CRD kinds against crd-schemas/; "
          f"probes, security context, grace period, secrets, selectors, KEDA trigger, "
          f"broker URLs consistent{' (and with the RabbitmqCluster)' if clusters else ''}; "
          f"{len(examples)} secret.example.yaml valid")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
