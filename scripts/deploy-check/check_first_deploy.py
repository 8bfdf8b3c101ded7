#!/usr/bin/env python3
"""The README's production steps, run as far as a machine without a cluster can.

Reads the shell blocks of README.md's "Run it in production" section, in order
(the image, the first deploy on Kubernetes, operating in the cluster), and
follows each command with what it would change:

  docker build -t X . / docker push X     X is built from this repository's Dockerfile, then pushed;
  kustomize edit set image N=X (in DIR)   N is the image name the manifests use, X was pushed; the
                                          edit is made in a copy of deploy/kubernetes and rendered;
  kubectl get crd ...                     exactly the CRDs of the kinds the overlay renders;
  kubectl apply -f FILE                   FILE exists; a Namespace in it is created from then on;
  kubectl -n NS create secret ...         NS exists by then; the command is run with
                                          --dry-run=client (offline) and the Secret's keys kept;
  kubectl kustomize DIR / apply -k DIR    DIR renders; for apply: every namespaced object's
                                          namespace exists, every Secret it reads (env, volumes,
                                          KEDA) was created before with the keys read, and the
                                          image is the one pushed;
  kubectl -n NS rollout status deploy/D   D is a rendered Deployment in NS, applied before;
  kubectl -n NS exec deploy/D -c C -- identity-link-worker SUB ...
                                          D and C are rendered; SUB and its flags are commands of
                                          docs/interface.md (section 13), a --reason is a reason;
  kubectl create configmap ... | kubectl label --local ... | kubectl apply -f -
                                          the offline part is run: a ConfigMap labelled for
                                          Grafana's sidecar holding deploy/grafana/dashboard.json
                                          byte for byte, small enough for `kubectl apply`.

Any other command is an error (teach this check). Then the same steps with the
namespace moved after the Secrets must fail (the regression this check exists for).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from common import DEPLOY, REPO, CheckFailed, documented_reasons, interface_text, rel, run_main

README = REPO / "README.md"
SECTION = "## Run it in production"
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
# kubectl apply (client side) keeps the object in an annotation of at most 256 KiB.
APPLY_ANNOTATION_LIMIT = 262_144
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def kubectl() -> str:
    return os.environ.get("KUBECTL", "kubectl")


def section_blocks(text: str) -> list[str]:
    """The ```sh blocks of the README section, in order."""
    start = text.find(SECTION + "\n")
    if start < 0:
        raise CheckFailed(f"README.md has no section {SECTION!r}")
    body = text[start + len(SECTION):]
    end = re.search(r"^## ", body, re.M)
    body = body[: end.start()] if end else body
    return re.findall(r"^```sh\n(.*?)^```", body, re.M | re.S)


def commands(blocks: list[str]) -> list[str]:
    """Shell commands: continuation lines joined, comment lines dropped, $VARS expanded."""
    out: list[str] = []
    variables: dict[str, str] = {}
    for block in blocks:
        pending = ""
        for raw in block.splitlines():
            line = raw.strip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = (pending + line).strip()
            pending = ""
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)(?:\s+#.*)?", line)
            if m:
                variables[m.group(1)] = m.group(2)
                continue
            for name, value in variables.items():
                line = re.sub(rf"\$\{{?{name}\}}?", value, line)
            if "$" in line.replace("$(", ""):
                raise CheckFailed(f"unexpanded variable in {line!r}")
            out.append(line)
    return out


def split(line: str) -> list[list[str]]:
    """A command line as its commands' words, split at `|` and `&&`; `(cd DIR && cmd)` gives
    ["cd", DIR], [cmd...] (the subshell's parentheses only scope the cd)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&()")
    lexer.whitespace_split = True
    stages: list[list[str]] = [[]]
    for token in lexer:
        if token in ("|", "&&"):
            stages.append([])
        elif token not in ("(", ")"):
            stages[-1].append(token)
    return [s for s in stages if s]


def option(words: list[str], name: str) -> str | None:
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def run(args: list[str], stdin: str | None = None, cwd: Path = REPO) -> str:
    """A kubectl command that needs no cluster (no kubeconfig given)."""
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KUBECONFIG": os.devnull})
    if proc.returncode != 0:
        raise CheckFailed(f"`{shlex.join(args)}` failed offline:\n{proc.stderr.strip()}")
    return proc.stdout


def render(directory: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(run([kubectl(), "kustomize", str(directory)])) if d]


def secret_refs(docs: list[dict]) -> set[tuple[str, str, str]]:
    """(namespace, Secret, key) that the rendered workload and KEDA read."""
    refs: set[tuple[str, str, str]] = set()
    for d in docs:
        ns = d.get("metadata", {}).get("namespace")
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            for c in pod.get("containers", []):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.add((ns, ref["name"], ref["key"]))
            for v in pod.get("volumes", []):
                if "secret" in v:
                    for item in v["secret"].get("items", []):
                        refs.add((ns, v["secret"]["secretName"], item["key"]))
        if d["kind"] == "TriggerAuthentication":
            for r in d["spec"].get("secretTargetRef", []):
                refs.add((ns, r["name"], r["key"]))
    return refs


def documented_commands() -> dict[str, str]:
    """`identity-link-worker SUB ...` rows of docs/interface.md's command table: SUB -> row."""
    rows: dict[str, str] = {}
    for line in interface_text().splitlines():
        m = re.match(r"\| `identity-link-worker ([a-z-]+(?: [a-z-]+)?)", line)
        if m:
            rows[m.group(1)] = line
    return rows


class Steps:
    """What the commands have done so far."""

    def __init__(self, work: Path):
        self.work = work
        self.tree = work / "kubernetes"  # the copy that `kustomize edit` changes
        shutil.copytree(K8S, self.tree)
        self.namespaces: set[str] = set()
        self.secrets: dict[tuple[str, str], set[str]] = {}
        self.built: set[str] = set()
        self.pushed: set[str] = set()
        self.image: str | None = None
        self.edited: set[Path] = set()
        self.crds: set[str] | None = None
        self.applied: list[dict] = []
        self.notes: list[str] = []

    def copy_of(self, directory: str, cwd: Path) -> Path:
        path = (cwd / directory).resolve()
        try:
            return self.tree / path.relative_to(K8S.resolve())
        except ValueError:
            raise CheckFailed(f"{directory} is not under deploy/kubernetes") from None

    # ---- docker and kustomize -------------------------------------------------------
    def docker(self, words: list[str], cwd: Path) -> None:
        if words[1] == "build":
            tag = option(words, "-t")
            if not tag or words[-1] != "." or cwd != REPO or not (REPO / "Dockerfile").is_file():
                raise CheckFailed(f"`{shlex.join(words)}`: build `-t IMAGE:TAG .` from the repository's root")
            self.built.add(tag)
        elif words[1] == "push":
            if words[2] not in self.built:
                raise CheckFailed(f"`docker push {words[2]}` pushes an image not built before")
            self.pushed.add(words[2])
        else:
            raise CheckFailed(f"unexpected `{shlex.join(words)}`")

    def kustomize_edit(self, words: list[str], cwd: Path) -> None:
        if words[1:4] != ["edit", "set", "image"] or len(words) != 5 or "=" not in words[4]:
            raise CheckFailed(f"unexpected `{shlex.join(words)}`")
        name, image = words[4].split("=", 1)
        base_images = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
        if name not in {i["name"] for i in base_images}:
            raise CheckFailed(f"`kustomize edit set image {name}=…`: the manifests' image is named "
                              f"{[i['name'] for i in base_images]}, not {name!r}")
        if image not in self.pushed:
            raise CheckFailed(f"`kustomize edit set image` sets {image}, which was not pushed before")
        overlay = self.copy_of(".", cwd)
        kfile = overlay / "kustomization.yaml"
        kust = yaml.safe_load(kfile.read_text())
        repo, _, tag = image.rpartition(":")
        if "/" in tag or not repo:
            raise CheckFailed(f"{image}: give a fixed tag (IMAGE:TAG)")
        # What `kustomize edit set image` writes: the images entry of that name.
        entries = [i for i in kust.setdefault("images", []) if i["name"] != name]
        kust["images"] = entries + [{"name": name, "newName": repo, "newTag": tag}]
        kfile.write_text(yaml.safe_dump(kust, sort_keys=False))
        self.image = image
        self.edited.add(overlay)

    # ---- kubectl --------------------------------------------------------------------
    def kubectl(self, stages: list[list[str]], cwd: Path, line: str) -> None:
        words = stages[0]
        ns = option(words, "-n")
        rest = [w for i, w in enumerate(words[1:], 1)
                if w != "-n" and (i < 2 or words[i - 1] != "-n")]
        verb = rest[:2]
        if verb == ["get", "crd"]:
            self.crds = set(rest[2:])
        elif verb[0] == "apply" and option(words, "-f") and option(words, "-f") != "-":
            path = cwd / option(words, "-f")
            if not path.is_file():
                raise CheckFailed(f"`{line}`: no file {rel(path)}")
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "Namespace":
                    self.namespaces.add(doc["metadata"]["name"])
            self.notes.append(f"namespace from {rel(path)}")
        elif rest[:3] == ["create", "secret", "generic"]:
            self.create_secret(words, ns, cwd, line)
        elif verb == ["create", "configmap"]:
            self.dashboard(stages, ns, cwd, line)
        elif verb[0] == "kustomize":
            render(self.copy_of(rest[1], cwd))
        elif verb[0] == "apply" and option(words, "-k"):
            self.apply_k(self.copy_of(option(words, "-k"), cwd), line)
        elif verb == ["rollout", "status"]:
            self.deployment(ns, rest[2], line)
        elif verb[0] == "exec":
            self.exec(words, ns, rest, line)
        else:
            raise CheckFailed(f"`{line}`: a command this check does not know (teach it)")

    def create_secret(self, words: list[str], ns: str | None, cwd: Path, line: str) -> None:
        if ns not in self.namespaces:
            raise CheckFailed(f"`{line}`: creates a Secret in namespace {ns!r} before any step "
                              f"created it (on a fresh cluster: namespaces \"{ns}\" not found)")
        args = []
        for w in words:
            m = re.fullmatch(r"--from-file=([^=]+)=(.+)", w)
            if m and not (cwd / m.group(2)).is_file():
                # The operator's own file: a stand-in with some content.
                stand_in = self.work / f"stand-in-{len(args)}"
                stand_in.write_text("stand-in")
                w = f"--from-file={m.group(1)}={stand_in}"
            args.append(w)
        secret = json.loads(run(args + ["--dry-run=client", "-o", "json"], cwd=cwd))
        if secret["metadata"].get("namespace") != ns:
            raise CheckFailed(f"`{line}`: the Secret lands in {secret['metadata'].get('namespace')!r}")
        self.secrets[(ns, secret["metadata"]["name"])] = set(secret.get("data", {}))

    def apply_k(self, directory: Path, line: str) -> None:
        docs = render(directory)
        problems = []
        for d in docs:
            if d["kind"] in CLUSTER_SCOPED:
                continue
            ns = d["metadata"].get("namespace")
            if ns not in self.namespaces and not any(
                    o["kind"] == "Namespace" and o["metadata"]["name"] == ns for o in docs):
                problems.append(f"{d['kind']}/{d['metadata']['name']} goes to namespace {ns!r}, "
                                f"which no step creates")
        rendered = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs
                    if d["kind"] == "Secret"}
        refs = secret_refs(docs)
        for ns, name, key in sorted(refs):
            if (ns, name) in rendered:
                continue
            if (ns, name) not in self.secrets:
                problems.append(f"reads Secret {ns}/{name} (key {key}), not created before")
            elif key not in self.secrets[(ns, name)]:
                problems.append(f"reads key {key} of Secret {ns}/{name}, created with "
                                f"{sorted(self.secrets[(ns, name)])}")
        images = {c["image"] for d in docs if d["kind"] == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"]}
        if directory not in self.edited or images != {self.image}:
            problems.append(f"the Deployment runs {sorted(images)}; set the pushed image "
                            f"({self.image}) in this overlay before applying it")
        # Kinds of API groups that a cluster has only with their CRDs installed.
        groups = {d["kind"]: d["apiVersion"].rpartition("/")[0] for d in docs}
        kinds = {f"{kind.lower()}s.{group}" for kind, group in groups.items()
                 if "." in group and not group.endswith(".k8s.io")}
        if self.crds is None:
            problems.append(f"no `kubectl get crd` step before: it needs {sorted(kinds)}")
        elif self.crds != kinds:
            problems.append(f"`kubectl get crd` checks {sorted(self.crds)}, the overlay renders "
                            f"{sorted(kinds)}")
        if problems:
            raise CheckFailed(f"`{line}`:\n    " + "\n    ".join(problems))
        self.applied = docs
        self.notes.append(f"{len(docs)} objects applied, {len(refs)} Secret keys read, "
                          f"all created before")

    def deployment(self, ns: str | None, ref: str, line: str) -> dict:
        name = ref.removeprefix("deploy/").removeprefix("deployment/")
        for d in self.applied:
            if d["kind"] == "Deployment" and d["metadata"]["name"] == name \
                    and d["metadata"].get("namespace") == ns:
                return d
        raise CheckFailed(f"`{line}`: no Deployment {name} applied in namespace {ns!r} before")

    def exec(self, words: list[str], ns: str | None, rest: list[str], line: str) -> None:
        dep = self.deployment(ns, rest[1], line)
        container = option(words, "-c")
        names = [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
        if container not in names:
            raise CheckFailed(f"`{line}`: the container is {names}, not {container!r}")
        argv = words[words.index("--") + 1:]
        if argv[0] != "identity-link-worker":
            raise CheckFailed(f"`{line}`: runs {argv[0]!r}; the image holds identity-link-worker")
        documented = documented_commands()
        sub = " ".join(argv[1:3]) if " ".join(argv[1:3]) in documented else argv[1]
        if sub not in documented:
            raise CheckFailed(f"`{line}`: `identity-link-worker {sub}` is not a command of docs/interface.md")
        for flag in (w for w in argv if w.startswith("--")):
            if f"`{flag}" not in documented[sub] and f" {flag}" not in documented[sub] \
                    and f"[{flag}" not in documented[sub]:
                raise CheckFailed(f"`{line}`: {flag} is not an option of `identity-link-worker {sub}`")
        reason = option(argv, "--reason")
        if reason is not None and reason not in documented_reasons():
            raise CheckFailed(f"`{line}`: {reason!r} is not a dead-letter reason")

    def dashboard(self, stages: list[list[str]], ns: str | None, cwd: Path, line: str) -> None:
        if len(stages) != 3 or stages[1][:3] != ["kubectl", "label", "--local"] \
                or stages[2] != ["kubectl", "apply", "-f", "-"]:
            raise CheckFailed(f"`{line}`: expected create configmap … | kubectl label --local … | "
                              f"kubectl apply -f -")
        source = next((w.split("=", 2) for w in stages[0] if w.startswith("--from-file=")), None)
        if not source or len(source) != 3 or (cwd / source[2]).resolve() != DASHBOARD.resolve():
            raise CheckFailed(f"`{line}`: should load --from-file=NAME.json={rel(DASHBOARD)}")
        made = run(stages[0], cwd=cwd)
        labelled = yaml.safe_load(run(stages[1], stdin=made, cwd=cwd))
        labels = labelled["metadata"].get("labels", {})
        if "grafana_dashboard" not in labels:
            raise CheckFailed(f"`{line}`: the ConfigMap has no grafana_dashboard label: {labels}")
        if labelled["data"].get(source[1]) != DASHBOARD.read_text(encoding="utf-8"):
            raise CheckFailed(f"`{line}`: the ConfigMap's {source[1]} differs from {rel(DASHBOARD)}")
        size = len(json.dumps(labelled))
        if size >= APPLY_ANNOTATION_LIMIT:
            raise CheckFailed(f"`{line}`: {size} bytes, over kubectl apply's annotation limit; "
                              f"use kubectl apply --server-side")
        self.notes.append(f"dashboard ConfigMap {ns}/{labelled['metadata']['name']} labelled "
                          f"grafana_dashboard ({size // 1024} KiB)")


def follow(lines: list[str], work: Path) -> Steps:
    steps = Steps(work)
    for line in lines:
        cwd = REPO
        stages = []
        for stage in split(line):
            if stage[0] == "cd":  # `cd DIR && cmd`: cmd runs in DIR
                cwd = (REPO / stage[1]).resolve()
            elif stage != ["less"]:  # a pager changes nothing
                stages.append(stage)
        first = stages[0]
        if first[0] == "docker":
            steps.docker(first, cwd)
        elif first[0] == "kustomize":
            steps.kustomize_edit(first, cwd)
        elif first[0] == "kubectl":
            steps.kubectl(stages, cwd, line)
        else:
            raise CheckFailed(f"`{line}`: a command this check does not know (teach it)")
    if not steps.applied:
        raise CheckFailed("no `kubectl apply -k` step")
    return steps


def main() -> None:
    lines = commands(section_blocks(README.read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="ilw-first-deploy-") as tmp:
        steps = follow(lines, Path(tmp) / "run")
    # The regression: the namespace after the Secrets must be refused.
    ns_step = next(i for i, l in enumerate(lines) if re.search(r"kubectl apply -f \S*namespace", l))
    first_secret = next(i for i, l in enumerate(lines) if "create secret" in l)
    swapped = [l for i, l in enumerate(lines) if i != ns_step]
    swapped.insert(first_secret, lines[ns_step])  # just after the first Secret
    with tempfile.TemporaryDirectory(prefix="ilw-first-deploy-") as tmp:
        try:
            follow(swapped, Path(tmp) / "run")
        except CheckFailed as e:
            if "before any step created it" not in str(e):
                raise
        else:
            raise CheckFailed("the steps with the namespace moved after the Secrets passed: the order check is broken")
    print(f"README {SECTION[3:]!r}: {len(lines)} commands followed in order: image {steps.image} "
          f"built, pushed, set by kustomize edit and rendered; namespace before "
          f"{len(steps.secrets)} Secrets (kubectl --dry-run=client); "
          f"{'; '.join(steps.notes[1:])}; CRDs = rendered kinds; exec/rollout names rendered; "
          f"refuses the namespace after the Secrets")


if __name__ == "__main__":
    run_main(main)
