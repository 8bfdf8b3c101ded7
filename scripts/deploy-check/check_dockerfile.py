#!/usr/bin/env python3
"""The images of the Dockerfile (part of check 11, after hadolint).

- the last stage, the default target and so the production image, is
  distroless, non-root (USER 65532), holds only `identity-link-worker` in
  /usr/local/bin, runs it (CMD) with a HEALTHCHECK through its `healthcheck`
  subcommand and EXPOSEs the ops port; no instruction of it names mos-sim;
- the stage it copies from builds the worker alone, as documented:
  `cargo build --release --locked --no-default-features -p identity-link-worker`
  (no `demo` feature, so no simulator code in the binary either);
- a stage named `mos-sim` is the simulator's image: distroless, non-root,
  only `mos-sim` in /usr/local/bin, HEALTHCHECK through `mos-sim healthcheck`
  (the image has no shell and no other binary), built by `-p mos-sim` alone.

Which compose service builds which target is check_compose.py's.
"""

from __future__ import annotations

import re
import sys

from common import DOCKERFILE, Stage, defaults, dockerfile_stages, fail_if, rel, run_main

DISTROLESS = "gcr.io/distroless/cc-debian12:nonroot"
SIM_STAGE = "mos-sim"


def cargo_builds(stage: Stage) -> list[str]:
    """The `cargo build ...` commands of a stage's RUN instructions."""
    return [m.group(0) for run in stage.all("RUN")
            for m in re.finditer(r"cargo build[^&;|]*", run)]


def packages(build: str) -> set[str]:
    return set(re.findall(r"(?:-p|--package)\s+(\S+)", build))


def check_build(stage: Stage, by_name: dict[str, Stage], package: str, flags: list[str]) -> list[str]:
    """The stage that `stage` copies its binary from builds `package` alone."""
    p = []
    sources = [by_name[s] for s in stage.copies_from() if s in by_name]
    if len(sources) != 1:
        return [f"{stage.label()}: should copy from exactly one build stage, "
                f"copies from {sorted(stage.copies_from())}"]
    builder = sources[0]
    builds = cargo_builds(builder)
    if len(builds) != 1:
        return [f"{builder.label()}: expected one `cargo build`, found {len(builds)}"]
    build = builds[0]
    if packages(build) != {package}:
        p.append(f"{builder.label()}: `{build.strip()}` should build -p {package} alone, "
                 f"builds {sorted(packages(build))}")
    for flag in ["--release", "--locked", *flags]:
        if flag not in build.split():
            p.append(f"{builder.label()}: `{build.strip()}` lacks {flag}")
    copied = {m.group(1) for run in builder.all("RUN")
              for m in re.finditer(r"target/release/([\w-]+)", run)}
    if copied != {package}:
        p.append(f"{builder.label()}: copies target/release/{sorted(copied)} out, "
                 f"should copy only {package}")
    return p


def check_runtime(stage: Stage, binary: str, port: int) -> list[str]:
    p = []
    if stage.base != DISTROLESS:
        p.append(f"{stage.label()}: should be FROM {DISTROLESS}, is FROM {stage.base}")
    if stage.binaries() != {binary}:
        p.append(f"{stage.label()}: /usr/local/bin should hold only {binary}, "
                 f"holds {sorted(stage.binaries())}")
    if not (stage.last("USER") or "").startswith("65532"):
        p.append(f"{stage.label()}: USER should be 65532 (numeric, for runAsNonRoot)")
    if str(port) not in (stage.last("EXPOSE") or "").split():
        p.append(f"{stage.label()}: should EXPOSE {port}")
    cmd = stage.exec_form("CMD")
    if not cmd or cmd[0] != binary:
        p.append(f"{stage.label()}: CMD should run {binary} (exec form), is {cmd}")
    health = stage.exec_form("HEALTHCHECK")
    if health != [binary, "healthcheck"]:
        p.append(f"{stage.label()}: HEALTHCHECK should be CMD [\"{binary}\", \"healthcheck\"] "
                 f"(distroless: no shell, and {binary} is the only binary), is {health}")
    return p


def main() -> None:
    stages = dockerfile_stages()
    problems: list[str] = []
    names = [s.name for s in stages if s.name]
    if len(names) != len(set(names)):
        problems.append(f"stage names repeat: {names}")
    by_name = {s.name: s for s in stages if s.name}

    production = stages[-1]
    problems += check_runtime(production, "identity-link-worker", defaults().http_port)
    problems += check_build(production, by_name, "identity-link-worker", ["--no-default-features"])
    mentions = [f"{kw} {args}" for kw, args in production.instructions if "mos-sim" in args]
    if mentions:
        problems.append(f"{production.label()}: the production image must not mention mos-sim: "
                        f"{mentions}")

    sim = by_name.get(SIM_STAGE)
    if sim is None:
        problems.append(f"no stage named {SIM_STAGE} (docker-compose.yml builds that target)")
    elif sim is production:
        problems.append(f"the {SIM_STAGE} stage must not be the last (default) target")
    else:
        addr = next((m.group(1) for env in sim.all("ENV")
                     for m in [re.search(r"MOS_SIM_ADDR=\S*:(\d+)", env)] if m), None)
        if addr is None:
            problems.append(f"{sim.label()}: should set MOS_SIM_ADDR (the binary's default "
                            f"listens on 127.0.0.1 only)")
        problems += check_runtime(sim, "mos-sim", int(addr or 8080))
        problems += check_build(sim, by_name, "mos-sim", [])

    fail_if(problems, rel(DOCKERFILE))
    print(f"{len(stages)} stages; the default target `{production.name}` holds only "
          f"identity-link-worker (built --no-default-features -p identity-link-worker); "
          f"target `{SIM_STAGE}` holds only mos-sim; both distroless, uid 65532, "
          f"HEALTHCHECK via their own `healthcheck`")


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
