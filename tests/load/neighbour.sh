#!/usr/bin/env bash
# Inference latency beside a CPU-bound neighbour, for choosing --engine-nice: the server on one
# variant, one busy loop per core at nice 0 (as an ordinary process on a shared host would be),
# and sequential requests whose server-side inference time is read from each answer. Prints the
# p50 / p95 / max of that time for each niceness given. A measurement for the closing notes, not
# a CI step.
#   tests/load/neighbour.sh [NICE...]        (default: 0 10)
# MODEL (default mobilenet_v1_0.5_160), REQUESTS (default 60), MODELS_DIR, DATASET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/server.sh
models=${MODELS_DIR:-../shared/models}
data=${DATASET_DIR:-../shared/imagenet/val1300}
model=${MODEL:-mobilenet_v1_0.5_160}
requests=${REQUESTS:-60}
out=${CARGO_TARGET_DIR:-target}/load
mkdir -p "$out"
cargo build --release --locked --quiet
image=$data/$(awk -F'\t' '!/^#/ {print $1; exit}' "$data/labels.tsv")
busy=()
stop_all() {
  [ ${#busy[@]} -gt 0 ] && kill "${busy[@]}" 2>/dev/null || true
  stop_server
}
trap stop_all EXIT
for nice in "${@:-0 10}"; do
  for n in $nice; do
    ENGINE_NICE=$n start_server "$out/neighbour-server.log" \
      "${CARGO_TARGET_DIR:-target}/release/mobilenet-serve" --models "$models" serve --variants "$model"
    busy=()
    for _ in $(seq "$(nproc)"); do
      nice -n 0 sh -c 'while :; do :; done' &
      busy+=($!)
    done
    python3 - "$http_port" "$image" "$model" "$requests" "$n" <<'PY'
import json, statistics, sys, urllib.request
port, image, model, n, nice = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
body = open(image, "rb").read()
ms = []
for _ in range(n):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/classify?model={model}", data=body,
                                 headers={"content-type": "image/jpeg"})
    ms.append(json.load(urllib.request.urlopen(req, timeout=60))["timings_ms"]["inference"])
ms.sort()
print(f"engine nice {nice:>2}: inference ms beside {len(__import__('os').sched_getaffinity(0))} busy "
      f"loops at nice 0, {n} requests: p50 {statistics.median(ms):.2f}  "
      f"p95 {ms[int(0.95 * (n - 1))]:.2f}  max {ms[-1]:.2f}")
PY
    kill "${busy[@]}" 2>/dev/null || true
    wait "${busy[@]}" 2>/dev/null || true
    busy=()
    stop_server
  done
done
