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
  its target (the images are distroless and hold one binary each).
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

    # the worker and the simulator
    worker = services.get("worker", {})
    wenv = env_map(worker)
    for key in wenv:
        if key.startswith("LINKER_") and key not in documented_variables():
            problems.append(f"worker: {key} is not a variable of docs/interface.md")
    if wenv.get("LINKER_MOS_ENDPOINT_URL") != MOS_SIM_URL:
        problems.append(f"worker: LINKER_MOS_ENDPOINT_URL should be {MOS_SIM_URL}")
    if "LINKER_MOS_SECRET_KEY" in wenv:
        problems.append("worker: pass the key as a file (LINKER_MOS_SECRET_KEY_FILE)")
    amqp = urlsplit(wenv.get("LINKER_AMQP_URL", ""))
    if amqp.hostname not in services:
        problems.append("worker: LINKER_AMQP_URL does not point at a compose service")
    grace = duration_ms(wenv.get("LINKER_SHUTDOWN_GRACE", defaults().shutdown_grace)) / 1000
    if duration_s(worker.get("stop_grace_period", "10s")) <= grace:
        problems.append("worker: stop_grace_period must exceed LINKER_SHUTDOWN_GRACE")
    sim = services.get("mos-sim", {})
    senv = env_map(sim)
    sim_url = urlsplit(MOS_SIM_URL)
    if sim.get("command") not in (["mos-sim"], "mos-sim") and \
            not str(sim.get("command", "")).startswith("mos-sim"):
        problems.append("mos-sim: command should run the mos-sim binary")
    if senv.get("MOS_SIM_ADDR", "127.0.0.1:8080") != f"0.0.0.0:{sim_url.port}":
        problems.append(f"mos-sim: MOS_SIM_ADDR should listen on 0.0.0.0:{sim_url.port}")
    key_files = {senv.get("MOS_SIM_KEY_FILE"), wenv.get("LINKER_MOS_SECRET_KEY_FILE")}
    if len(key_files) != 1 or None in key_files:
        problems.append("worker and mos-sim should read the same key file")

    problems += check_images(services)

    # Prometheus scrapes services that exist, on their ports
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    known_ports = {"worker": {int(wenv.get("LINKER_HTTP_ADDR", "0.0.0.0:9464").rsplit(":", 1)[1])},
                   "rabbitmq": {15692}, "localhost": {9090}}
    for job in prom_cfg.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, _, port = target.partition(":")
                if host != "localhost" and host not in services:
                    problems.append(f"prometheus job {job['job_name']}: {host} is not a service")
                elif int(port) not in known_ports.get(host, {int(port)}):
                    problems.append(f"prometheus job {job['job_name']}: {target} wrong port")
    if not any(j["job_name"] == "identity-link-worker" for j in prom_cfg["scrape_configs"]):
        problems.append("prometheus.yml: the alerts expect job=\"identity-link-worker\"")

    # RabbitMQ loads the definitions file that is mounted
    rabbit = services.get("rabbitmq", {})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in rabbit.get("volumes", [])
              if isinstance(v, str)}
    conf_src = next((src for dst, src in mounts.items() if dst.startswith("/etc/rabbitmq/conf.d/")),
                    None)
    if conf_src is None:
        problems.append("rabbitmq: no rabbitmq.conf mounted in /etc/rabbitmq/conf.d/")
    else:
        conf = (REPO / conf_src).read_text()
        m = re.search(r"^\s*load_definitions\s*=\s*(\S+)", conf, re.M)
        if not m or m.group(1) not in mounts:
            problems.append("rabbitmq: load_definitions does not name a mounted file")
        elif mounts[m.group(1)].lstrip("./") != "deploy/rabbitmq/definitions.compose.json":
            problems.append("rabbitmq: should load deploy/rabbitmq/definitions.compose.json")
    plugins = next((src for dst, src in mounts.items() if dst == "/etc/rabbitmq/enabled_plugins"),
                   None)
    if plugins is None or "rabbitmq_prometheus" not in (REPO / plugins).read_text():
        problems.append("rabbitmq: rabbitmq_prometheus must be enabled")

    fail_if(problems, "docker-compose.yml")
    print(f"valid against the Compose Specification schema "
          f"(vendored by {schema_source}, sha256 verified); {len(services)} services, "
          f"all referenced files exist, healthchecks and dependencies consistent; "
          f"worker built from the Dockerfile's last stage, mos-sim from its target, "
          f"each running only the binary its image holds")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
