#!/usr/bin/env bash
# Overload or soak (tests/load/pressure.py) against `mobilenet-serve serve` on one variant.
# A measurement for the closing notes, not a CI step.
#   tests/load/pressure.sh overload            # 5x capacity for 20 s, then recovery
#   tests/load/pressure.sh soak --seconds 600  # 70 % of capacity for 10 minutes, RSS every 10 s
# MODEL (default mobilenet_v1_1.0_224), MODELS_DIR, DATASET_DIR; extra arguments go to the driver.
# CLIENT_NICE (e.g. -10, as root) runs the driver ahead of the server's engine threads, so that
# on a small machine its latencies are the server's, not the driver's waits for a core.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/server.sh
mode=$1
shift
models=${MODELS_DIR:-../shared/models}
data=${DATASET_DIR:-../shared/imagenet/val1300}
model=${MODEL:-mobilenet_v1_1.0_224}
out=${CARGO_TARGET_DIR:-target}/load
mkdir -p "$out"
cargo build --release --locked --quiet
trap stop_server EXIT
start_server "$out/pressure-server.log" "${CARGO_TARGET_DIR:-target}/release/mobilenet-serve" \
  --models "$models" serve --variants "$model"
image=$data/$(awk -F'\t' '!/^#/ {print $1; exit}' "$data/labels.tsv")
nice -n "${CLIENT_NICE:-0}" python3 tests/load/pressure.py "$mode" --url "http://127.0.0.1:$http_port" --pid "$server" \
  --image "$image" --model "$model" --json "$out/$mode.json" "$@"
kill -TERM "$server"
status=0
wait "$server" || status=$?
server=
echo "server exit status after SIGTERM: $status"
