#!/usr/bin/env python3
"""Check 2: docker-compose.yml.

- validates against the Compose Specification JSON schema. The schema is the
  compose-spec.json that the PyPI package check-jsonschema vendors
  (check_jsonschema/builtin_schemas/vendor/compose-spec.json, taken from the
  compose-spec project). Before use it is verified to be that schema: its
  title, its $id, and the sha256 the package records for it;
- every file a service refers to exists (build context and Dockerfile, bind
  mounts, secrets, configs, env files);
- the services fit together: pinned image tags, a healthcheck on every service,
  `service_healthy` only on services that have one, the worker's LINKER_*
  variables listed in docs/interface.md and pointing at mos-sim, Prometheus scraping
  existing services and ports, RabbitMQ loading the mounted definitions,
  stop_grace_period longer than LINKER_SHUTDOWN_GRACE;
- the images: the worker builds the Dockerfile's last stage (the production
  image), mos-sim its `mos-sim` target, under different image names; the
  binary each built service runs (command and healthcheck) is in the image of
  its target (the images are distroless and hold one binary each), also for a
  service that runs the image another one builds;
- profiles: the default stack (no profile) is the five services rabbitmq,
  mos-sim, worker, prometheus, grafana and needs no profile service; every
  service a service depends on or sends its worker to is on whenever it is;
- every worker (every service running `identity-link-worker run`, e.g. the
  `cluster` profile's worker-cluster) passes the worker's checks, and each node of
  its LINKER_AMQP_URL (a comma-separated list) is a broker service it waits for;
- a RabbitMQ cluster (the services mounting deploy/rabbitmq/cluster.conf): its
  classic_config node list is exactly rabbit@<hostname> of those services, they
  share one RABBITMQ_ERLANG_COOKIE and set pause_minority, each has its own data
  volume, and a worker on it lists all of its nodes.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import sys
from urllib.parse import urlsplit

import jsonschema
import yaml

from common import (
    DEPLOY,
    DOCKERFILE,
    MOS_SIM_URL,
    REPO,
    CheckFailed,
    defaults,
    dockerfile_stages,
    documented_variables,
    duration_ms,
    fail_if,
    run_main,
)

COMPOSE = REPO / "docker-compose.yml"
CLUSTER_CONF = "deploy/rabbitmq/cluster.conf"
DEFAULT_STACK = {"rabbitmq", "mos-sim", "worker", "prometheus", "grafana"}


def compose_schema() -> tuple[dict, str]:
    vendor = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    raw = (vendor / "compose-spec.json").read_bytes()
    recorded = (vendor / "sha256" / "compose-spec.sha256").read_text().split()[0]
    actual = hashlib.sha256(raw).hexdigest()
    schema = json.loads(raw)
    if actual != recorded:
        raise CheckFailed(f"vendored compose-spec.json hash {actual} != recorded {recorded}")
    if schema.get("title") != "Compose Specification" or schema.get("$id") != "compose_spec.json":
        raise CheckFailed("check-jsonschema's compose-spec.json is not the Compose Specification "
                          f"schema (title {schema.get('title')!r}, $id {schema.get('$id')!r})")
    import check_jsonschema

    version = getattr(check_jsonschema, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("check-jsonschema")
    return schema, f"check-jsonschema {version}"


def duration_s(text: str) -> float:
    """Compose durations: 1m30s, 20s, 500ms."""
    total, rest = 0.0, text
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text):
        total += float(amount) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
        rest = rest.replace(amount + unit, "", 1)
    if rest.strip():
        raise ValueError(f"not a duration: {text!r}")
    return total


def env_map(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: str(v) for k, v in env.items()}


def check_files(name: str, svc: dict, doc: dict) -> list[str]:
    p = []
    build = svc.get("build")
    if build is not None:
        context = REPO / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not context.is_dir():
            p.append(f"{name}: build context {context} missing")
        elif not (context / dockerfile).is_file():
            p.append(f"{name}: {dockerfile} missing in {context}")
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            src = vol.split(":")[0]
            is_bind = src.startswith((".", "/", "~"))
        else:
            src, is_bind = vol.get("source", ""), vol.get("type") == "bind"
        if is_bind and not (REPO / src).exists():
            p.append(f"{name}: bind-mount source {src} missing")
        if not is_bind and src and src not in (doc.get("volumes") or {}):
            p.append(f"{name}: named volume {src} is not declared")
    for env_file in ([svc["env_file"]] if isinstance(svc.get("env_file"), str)
                     else svc.get("env_file", [])):
        path = env_file if isinstance(env_file, str) else env_file["path"]
        if not (REPO / path).is_file():
            p.append(f"{name}: env_file {path} missing")
    for kind in ("secrets", "configs"):
        for ref in svc.get(kind, []):
            ref_name = ref if isinstance(ref, str) else ref["source"]
            top = (doc.get(kind) or {}).get(ref_name)
            if top is None:
                p.append(f"{name}: {kind[:-1]} {ref_name} is not declared")
            elif "file" in top and not (REPO / top["file"]).is_file():
                p.append(f"{name}: {kind[:-1]} file {top['file']} missing")
    return p


def exec_binary(value) -> str | None:
    """The program of a command or of a healthcheck test (`CMD` / exec form)."""
    if isinstance(value, str):
        return value.split()[0] if value.split() else None
    if isinstance(value, list) and value:
        if value[0] == "CMD":
            return value[1] if len(value) > 1 else None
        if value[0] == "CMD-SHELL":
            return "/bin/sh"
        return value[0]
    return None


def enabled_with(dependent: dict, dependency: dict) -> bool:
    """Is `dependency` on whenever `dependent` is (by their profiles)?"""
    needed, have = set(dependent.get("profiles") or []), set(dependency.get("profiles") or [])
    return not have or (bool(needed) and needed <= have)


def is_worker(svc: dict) -> bool:
    command = svc.get("command")
    words = command.split() if isinstance(command, str) else list(command or [])
    return words[:2] == ["identity-link-worker", "run"]


def amqp_hosts(env: dict[str, str]) -> list[tuple[str | None, int | None]]:
    """(host, port) of each URL of a comma-separated LINKER_AMQP_URL."""
    out = []
    for url in (u.strip() for u in env.get("LINKER_AMQP_URL", "").split(",")):
        if url:
            parts = urlsplit(url)
            out.append((parts.hostname, parts.port or (5671 if parts.scheme == "amqps" else 5672)))
    return out


def conf_settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def check_worker(name: str, svc: dict, services: dict[str, dict]) -> list[str]:
    """One worker service: its variables, broker nodes, key file and stop grace."""
    p = []
    wenv = env_map(svc)
    for key in wenv:
        if key.startswith("LINKER_") and key not in documented_variables():
            p.append(f"{name}: {key} is not a variable of docs/interface.md")
    if wenv.get("LINKER_MOS_ENDPOINT_URL") != MOS_SIM_URL:
        p.append(f"{name}: LINKER_MOS_ENDPOINT_URL should be {MOS_SIM_URL}")
    if "LINKER_MOS_SECRET_KEY" in wenv:
        p.append(f"{name}: pass the key as a file (LINKER_MOS_SECRET_KEY_FILE)")
    hosts = amqp_hosts(wenv)
    if not hosts:
        p.append(f"{name}: LINKER_AMQP_URL names no broker")
    if len(set(hosts)) != len(hosts):
        p.append(f"{name}: LINKER_AMQP_URL names a node twice")
    depends = svc.get("depends_on", {})
    for host, port in hosts:
        broker = services.get(host)
        if broker is None:
            p.append(f"{name}: LINKER_AMQP_URL node {host} is not a compose service")
            continue
        if not enabled_with(svc, broker):
            p.append(f"{name}: its broker {host} is not on whenever {name} is (profiles)")
        if not isinstance(depends, dict) or \
                (depends.get(host) or {}).get("condition") != "service_healthy":
            p.append(f"{name}: should wait for its broker {host} (depends_on: service_healthy)")
        if port != 5672:
            p.append(f"{name}: {host} listens for AMQP on 5672, not {port}")
    grace = duration_ms(wenv.get("LINKER_SHUTDOWN_GRACE", defaults().shutdown_grace)) / 1000
    if duration_s(svc.get("stop_grace_period", "10s")) <= grace:
        p.append(f"{name}: stop_grace_period must exceed LINKER_SHUTDOWN_GRACE")
    sim_key = env_map(services.get("mos-sim", {})).get("MOS_SIM_KEY_FILE")
    if sim_key is None or wenv.get("LINKER_MOS_SECRET_KEY_FILE") != sim_key:
        p.append(f"{name} and mos-sim should read the same key file")
    return p


def mounts_of(svc: dict) -> dict[str, str]:
    """Bind mounts of a service: container path -> source."""
    return {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", []) if isinstance(v, str)}


def check_broker(name: str, svc: dict) -> list[str]:
    """A RabbitMQ service loads the mounted definitions and serves its metrics."""
    p = []
    mounts = mounts_of(svc)
    conf_src = next((src for dst, src in mounts.items()
                     if dst == "/etc/rabbitmq/conf.d/20-identity-linker.conf"), None)
    if conf_src is None:
        p.append(f"{name}: deploy/rabbitmq/rabbitmq.conf is not mounted in /etc/rabbitmq/conf.d/")
    else:
        conf = (REPO / conf_src).read_text()
        m = re.search(r"^\s*load_definitions\s*=\s*(\S+)", conf, re.M)
        if not m or m.group(1) not in mounts:
            p.append(f"{name}: load_definitions does not name a mounted file")
        elif mounts[m.group(1)].lstrip("./") != "deploy/rabbitmq/definitions.compose.json":
            p.append(f"{name}: should load deploy/rabbitmq/definitions.compose.json")
    plugins = mounts.get("/etc/rabbitmq/enabled_plugins")
    if plugins is None or "rabbitmq_prometheus" not in (REPO / plugins).read_text():
        p.append(f"{name}: rabbitmq_prometheus must be enabled")
    return p


def check_cluster(services: dict[str, dict], workers: list[str]) -> tuple[list[str], list[str]]:
    """The RabbitMQ cluster of the services mounting cluster.conf; its node services."""
    p: list[str] = []
    nodes = [n for n, svc in services.items()
             if any(src.lstrip("./") == CLUSTER_CONF for src in mounts_of(svc).values())]
    if not nodes:
        return p, nodes
    conf = conf_settings((REPO / CLUSTER_CONF).read_text())
    if conf.get("cluster_formation.peer_discovery_backend") != "classic_config":
        p.append(f"{CLUSTER_CONF}: peer_discovery_backend should be classic_config")
    listed = {v for k, v in conf.items() if k.startswith("cluster_formation.classic_config.nodes.")}
    named = {f"rabbit@{services[n].get('hostname')}" for n in nodes}
    if listed != named:
        p.append(f"{CLUSTER_CONF} lists {sorted(listed)}, the services mounting it are "
                 f"{sorted(named)} (rabbit@<hostname>)")
    if conf.get("cluster_partition_handling") != "pause_minority":
        p.append(f"{CLUSTER_CONF}: cluster_partition_handling should be pause_minority")
    if len(nodes) < 3 or len(nodes) % 2 == 0:
        p.append(f"cluster {nodes}: quorum queues want an odd number of nodes, at least 3")
    cookies = {env_map(services[n]).get("RABBITMQ_ERLANG_COOKIE") for n in nodes}
    if len(cookies) != 1 or None in cookies or "" in cookies:
        p.append(f"cluster {nodes}: every node needs the same RABBITMQ_ERLANG_COOKIE")
    data = [next((v.split(":")[0] for v in services[n].get("volumes", [])
                  if isinstance(v, str) and v.split(":")[1] == "/var/lib/rabbitmq"), None)
            for n in nodes]
    if None in data or len(set(data)) != len(data):
        p.append(f"cluster {nodes}: each node needs a data volume of its own at /var/lib/rabbitmq")
    for n in nodes:
        if not services[n].get("hostname"):
            p.append(f"{n}: needs a hostname (its node name)")
    on_cluster = [w for w in workers
                  if {h for h, _ in amqp_hosts(env_map(services[w]))} & set(nodes)]
    for w in on_cluster:
        hosts = {h for h, _ in amqp_hosts(env_map(services[w]))}
        if hosts != set(nodes):
            p.append(f"{w}: LINKER_AMQP_URL should list every node of the cluster "
                     f"{sorted(nodes)}, got {sorted(hosts)}")
        group = env_map(services[w]).get("LINKER_QUORUM_INITIAL_GROUP_SIZE")
        if group is not None and not (group.isdigit() and 1 <= int(group) <= len(nodes)):
            p.append(f"{w}: LINKER_QUORUM_INITIAL_GROUP_SIZE {group!r} should be 1..{len(nodes)}")
    if not on_cluster:
        p.append(f"no worker uses the cluster {nodes}")
    return p, nodes


def check_images(services: dict[str, dict]) -> list[str]:
    """Services built from this repository's Dockerfile run what their target holds."""
    p = []
    stages = dockerfile_stages()
    by_name = {s.name: s for s in stages if s.name}
    production = stages[-1]
    built: dict[str, object] = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        if (REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() \
                != DOCKERFILE.resolve():
            continue
        target = build.get("target")
        stage = production if target is None else by_name.get(target)
        if stage is None:
            p.append(f"{name}: build target {target!r} is not a stage of the Dockerfile "
                     f"({sorted(by_name)})")
            continue
        built[name] = stage
        binaries = stage.binaries()
        for what, value in (("command", svc.get("command")),
                            ("healthcheck", (svc.get("healthcheck") or {}).get("test"))):
            program = exec_binary(value)
            if program is not None and program not in binaries:
                p.append(f"{name}: {what} runs {program}, which the image of target "
                         f"{stage.name or stage.index} does not hold (it holds {sorted(binaries)})")
    # Services that run an image another service builds, instead of building it again.
    by_image = {services[n].get("image"): stage for n, stage in built.items()}
    for name, svc in services.items():
        if name in built or svc.get("image") not in by_image:
            continue
        stage = by_image[svc["image"]]
        if svc.get("pull_policy") != "never":
            p.append(f"{name}: runs the image that another service builds: pull_policy: never "
                     f"(never take {svc['image']} from a registry)")
        builder = next(n for n in built if services[n].get("image") == svc["image"])
        if not enabled_with(svc, services[builder]):
            p.append(f"{name}: {builder}, which builds its image, is not on whenever {name} is")
        for what, value in (("command", svc.get("command")),
                            ("healthcheck", (svc.get("healthcheck") or {}).get("test"))):
            program = exec_binary(value)
            if program is not None and program not in stage.binaries():
                p.append(f"{name}: {what} runs {program}, which its image does not hold")
    if built.get("worker") is not production:
        p.append("worker: should build the Dockerfile's last stage (the production image)")
    if built.get("mos-sim") is None or built["mos-sim"].name != "mos-sim":
        p.append("mos-sim: should build the Dockerfile's `mos-sim` target")
    images = [services[n].get("image") for n in built]
    if len(set(images)) != len(images):
        p.append(f"each service built from the Dockerfile needs an image name of its own: {images}")
    return p


def main() -> None:
    with open(COMPOSE, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    schema, schema_source = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(doc), key=lambda e: list(e.path))
    problems = [f"schema: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]

    services: dict[str, dict] = doc.get("services", {})
    for name, svc in services.items():
        problems += check_files(name, svc, doc)
        image = svc.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not image or (not tag and "build" not in svc) or tag == "latest":
            problems.append(f"{name}: image {image!r} should carry a pinned tag")
        if "healthcheck" not in svc:
            problems.append(f"{name}: no healthcheck")
        depends = svc.get("depends_on", {})
        if isinstance(depends, dict):
            for dep, cond in depends.items():
                if dep not in services:
                    problems.append(f"{name}: depends_on unknown service {dep}")
                elif cond.get("condition") == "service_healthy" and \
                        "healthcheck" not in services[dep]:
                    problems.append(f"{name}: waits for {dep} to be healthy, it has no healthcheck")
        for port in svc.get("ports", []):
            if isinstance(port, str) and not port.startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} should be bound to 127.0.0.1")

    # profiles: the default stack stands alone; dependencies are on with their dependents
    default = {n for n, svc in services.items() if not svc.get("profiles")}
    if default != DEFAULT_STACK:
        problems.append(f"the default stack (services without a profile) should be "
                        f"{sorted(DEFAULT_STACK)}, got {sorted(default)}")
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        for dep in (depends if isinstance(depends, (dict, list)) else []):
            if dep in services and not enabled_with(svc, services[dep]):
                problems.append(f"{name}: depends on {dep}, which is not on whenever {name} is")

    # the workers and the simulator
    workers = [n for n, svc in services.items() if is_worker(svc)]
    if "worker" not in workers:
        problems.append("worker: command should be identity-link-worker run")
    for name in workers:
        problems += check_worker(name, services[name], services)
    wenv = env_map(services.get("worker", {}))
    sim = services.get("mos-sim", {})
    senv = env_map(sim)
    sim_url = urlsplit(MOS_SIM_URL)
    if sim.get("command") not in (["mos-sim"], "mos-sim") and \
            not str(sim.get("command", "")).startswith("mos-sim"):
        problems.append("mos-sim: command should run the mos-sim binary")
    if senv.get("MOS_SIM_ADDR", "127.0.0.1:8080") != f"0.0.0.0:{sim_url.port}":
        problems.append(f"mos-sim: MOS_SIM_ADDR should listen on 0.0.0.0:{sim_url.port}")

    problems += check_images(services)

    # Prometheus scrapes services that exist, on their ports
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    known_ports = {w: {int(env_map(services[w]).get("LINKER_HTTP_ADDR", "0.0.0.0:9464")
                           .rsplit(":", 1)[1])} for w in workers}
    known_ports.update({"rabbitmq": {15692}, "localhost": {9090}})
    for job in prom_cfg.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, _, port = target.partition(":")
                if host != "localhost" and host not in services:
                    problems.append(f"prometheus job {job['job_name']}: {host} is not a service")
                elif host != "localhost" and services[host].get("profiles"):
                    problems.append(f"prometheus job {job['job_name']}: {host} is a profile "
                                    f"service; a static target would be down without the "
                                    f"profile (use dns_sd_configs)")
                elif int(port) not in known_ports.get(host, {int(port)}):
                    problems.append(f"prometheus job {job['job_name']}: {target} wrong port")
        # Profile services are found by name (no target at all while they are off).
        for sd in job.get("dns_sd_configs", []):
            for host in sd.get("names", []):
                if host not in services:
                    problems.append(f"prometheus job {job['job_name']}: {host} is not a service")
                elif sd.get("type") != "A" or sd.get("port") not in known_ports.get(host, set()):
                    problems.append(f"prometheus job {job['job_name']}: {host} should be an A "
                                    f"lookup on port {sorted(known_ports.get(host, set()))}")
    scraped = {h for job in prom_cfg.get("scrape_configs", [])
               if job["job_name"] == "identity-link-worker"
               for h in [t.partition(":")[0] for sc in job.get("static_configs", [])
                         for t in sc.get("targets", [])]
               + [n for sd in job.get("dns_sd_configs", []) for n in sd.get("names", [])]}
    for w in workers:
        if w not in scraped:
            problems.append(f"prometheus job identity-link-worker does not scrape {w}")
    if not any(j["job_name"] == "identity-link-worker" for j in prom_cfg["scrape_configs"]):
        problems.append("prometheus.yml: the alerts expect job=\"identity-link-worker\"")

    # every RabbitMQ service loads the definitions file that is mounted; the cluster
    brokers = [n for n, svc in services.items()
               if str(svc.get("image", "")).startswith("rabbitmq:")]
    if "rabbitmq" not in brokers:
        problems.append("rabbitmq: should run a rabbitmq image")
    for name in brokers:
        problems += check_broker(name, services[name])
    cluster_problems, cluster = check_cluster(services, workers)
    problems += cluster_problems

    fail_if(problems, "docker-compose.yml")
    cluster_note = (f"; cluster {', '.join(cluster)} (classic_config, one cookie, pause_minority)"
                    if cluster else "")
    print(f"valid against the Compose Specification schema "
          f"(vendored by {schema_source}, sha256 verified); {len(services)} services, "
          f"all referenced files exist, healthchecks and dependencies consistent; "
          f"worker built from the Dockerfile's last stage, mos-sim from its target, "
          f"each running only the binary its image holds; default stack without profiles; "
          f"{len(workers)} workers ({', '.join(workers)}) on their brokers{cluster_note}")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
