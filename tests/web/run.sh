#!/usr/bin/env bash
# The web page in Debian's headless Chromium, driven by playwright-core from the npm registry,
# against `mobilenet-serve serve` with every variant, then against one that needs an API key.
# Installs Chromium when missing.
# Screenshots go to $CARGO_TARGET_DIR/web (default target/web). CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/server.sh
models=${MODELS_DIR:-../shared/models}
data=$(realpath "${DATASET_DIR:-../shared/imagenet/val1300}")
target=${CARGO_TARGET_DIR:-target}
shots=$(realpath -m "$target/web")
mkdir -p "$shots"
if ! command -v chromium >/dev/null; then
  sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
command -v npm >/dev/null || { echo "Node.js and npm are needed (the machine image has them)"; exit 1; }
(cd tests/web && npm ci --no-audit --no-fund --silent)
[ "${SETUP_ONLY:-}" = 1 ] && exit 0  # .ci/run fetches the downloads ahead, while cargo builds
cargo build --release --locked --quiet
trap stop_server EXIT
start_server "$shots/server.log" "$target/release/mobilenet-serve" --models "$models" serve
port=$http_port
image=$data/$(awk -F'\t' '!/^#/ {print $1; exit}' "$data/labels.tsv")
# Every variant the manifests list: the float grid's and its subfolders' (int8/).
variants=$(ls "$models"/*.onnx >/dev/null && python3 -c "import glob,json,sys; print(sum(len(json.load(open(f))) for f in [sys.argv[1] + '/manifest.json'] + glob.glob(sys.argv[1] + '/*/manifest.json')))" "$models")
node tests/web/page.test.mjs "http://127.0.0.1:$port" "$image" "$shots" "$variants"

# The same page against a server that needs an API key.
stop_server
key=web-test-key-$RANDOM$RANDOM
API_KEY=$key start_server "$shots/server-auth.log" "$target/release/mobilenet-serve" \
  --models "$models" serve --variants mobilenet_v1_0.25_128,mobilenet_v1_0.5_160
node tests/web/auth.test.mjs "http://127.0.0.1:$http_port" "$key" 2
