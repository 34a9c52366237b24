#!/usr/bin/env bash
# Acceptance of the Open Inference Protocol with clients nobody on this project wrote:
# tritonclient (HTTP and gRPC) and the KServe SDK (REST and gRPC), from PyPI in their own venv,
# against `mobilenet-serve serve` on free local ports; then a load run through tritonclient's
# asyncio clients. Ends with SIGTERM and requires a clean exit. CI runs it (.ci/run).
#   LOAD_SECONDS  seconds per load level (default 4)
set -euo pipefail
cd "$(dirname "$0")/../.."
models=${MODELS_DIR:-../shared/models}
data=${DATASET_DIR:-../shared/imagenet/val1300}
seconds=${LOAD_SECONDS:-4}
variants=mobilenet_v1_1.0_224,mobilenet_v1_0.5_160,mobilenet_v1_0.25_128
work=target/oip-acceptance
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
fi
py=$work/venv/bin/python
"$py" -m pip install --quiet --disable-pip-version-check -r tests/oip/requirements.txt
cargo build --release --locked --quiet
bin=target/release/mobilenet-serve
for size in 224 160 128; do
  "$bin" preprocess --data "$data" --size "$size" --limit 8 --out "$work/inputs_$size.npy" >/dev/null
done

read -r http_port grpc_port < <("$py" - <<'PY'
import socket
ports = []
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
    ports.append(s.getsockname()[1])
for s in socks:
    s.close()
print(*ports)
PY
)
"$bin" --models "$models" serve --host 127.0.0.1 --http-port "$http_port" --grpc-port "$grpc_port" \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
echo "server pid $server on http :$http_port grpc :$grpc_port (log $work/server.log)"
for _ in $(seq 1 600); do
  if "$py" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$http_port/v2/health/ready', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; echo "the server died"; exit 1; }
  sleep 0.2
done

data=$(realpath "$data")
common=(--http "127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" --data "$data"
  --tensors "$(realpath "$work")" --variants "$variants")
(cd tests/oip && "../../$py" triton_check.py "${common[@]}")
(cd tests/oip && "../../$py" kserve_check.py "${common[@]}")
(cd tests/oip && "../../$py" triton_load.py --http "127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" \
  --data "$data" --seconds "$seconds" --json "../../$work/load.json")

kill -TERM "$server"
status=0
wait "$server" || status=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
  tail -20 "$work/server.log"
  echo "the server exited with status $status after SIGTERM"
  exit 1
fi
echo "OIP acceptance passed; the server drained and exited 0"
