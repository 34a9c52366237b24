#!/usr/bin/env bash
# Acceptance of the Open Inference Protocol with clients nobody on this project wrote:
# tritonclient (HTTP and gRPC, the repository extension included) and the KServe SDK (REST and
# gRPC), from PyPI in their own venv,
# against `mobilenet-serve serve` on free local ports; then a load run through tritonclient's
# asyncio clients. Ends with SIGTERM and requires a clean exit. CI runs it (.ci/run).
#   LOAD_SECONDS  seconds per load level (default 4)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/server.sh
models=${MODELS_DIR:-../shared/models}
data=$(realpath "${DATASET_DIR:-../shared/imagenet/val1300}")
seconds=${LOAD_SECONDS:-4}
variants=mobilenet_v1_1.0_224,mobilenet_v1_0.5_160,mobilenet_v1_0.25_128
target=${CARGO_TARGET_DIR:-target}
work=$(realpath -m "$target/oip-acceptance")
images=8
mkdir -p "$work"
py=$(venv_python "$work/venv" tests/oip/requirements.txt)
[ "${SETUP_ONLY:-}" = 1 ] && exit 0  # .ci/run fetches the downloads ahead, while cargo builds
cargo build --release --locked --quiet
bin=$target/release/mobilenet-serve
for size in 224 160 128; do
  "$bin" preprocess --data "$data" --size "$size" --limit "$images" --out "$work/inputs_$size.npy" >/dev/null
done

on_exit() {
  status=$?
  stop_server
  if [ "$status" -ne 0 ] && [ -f "$work/server.log" ]; then
    echo "--- last lines of $work/server.log"
    tail -40 "$work/server.log"
  fi
}
trap on_exit EXIT

# Explicit model control, so that the clients' repository calls (load, unload) are allowed.
start_server "$work/server.log" "$bin" --models "$models" serve --model-control-mode explicit \
  $(for v in ${variants//,/ }; do printf -- '--load-model %s ' "$v"; done)

common=(--http "127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" --data "$data"
  --tensors "$work" --variants "$variants" --images "$images")
(cd tests/oip && "$py" triton_check.py "${common[@]}")
(cd tests/oip && "$py" kserve_check.py "${common[@]}")
(cd tests/oip && "$py" triton_load.py --http "127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" \
  --data "$data" --seconds "$seconds" --json "$work/load.json")

kill -TERM "$server"
status=0
wait "$server" || status=$?
server=
if [ "$status" -ne 0 ]; then
  echo "the server exited with status $status after SIGTERM"
  exit 1
fi
echo "OIP acceptance passed; the server drained and exited 0"
