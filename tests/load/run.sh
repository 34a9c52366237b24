#!/usr/bin/env bash
# Load comparison, closed loop with wrk: our service against FastAPI + ONNX Runtime + Pillow
# (2 worker processes, no batching), JPEG requests at increasing concurrency, next to the
# engine-only throughput of `bench --threads 1 --streams 2`. A benchmark, not a test: it prints numbers.
#
# Needs: wrk (apt install wrk), a release build (cargo build --release), and a Python with
# tests/load/requirements.txt (PYTHON=path/to/venv/bin/python).
# PHOTO=1 sends a 12 MP photo instead of a 227 px image (below).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS_DIR=${MODELS_DIR:-../shared/models}
DATASET_DIR=${DATASET_DIR:-../shared/imagenet/val1300}
VARIANTS=${VARIANTS:-mobilenet_v1_1.0_224,mobilenet_v1_0.25_128}
# Ours may serve more than the peer: its 8-bit twins (e.g. mobilenet_v1_1.0_224_quant, from the
# zoo's int8/), which the FP32 peer is compared with line by line.
OURS_VARIANTS=${OURS_VARIANTS:-$VARIANTS}
CONCURRENCY=${CONCURRENCY:-1 4 16 64}
DURATION=${DURATION:-10}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
OURS_PORT=18080
PEER_PORT=18100
OUT=target/load
BIN=target/release/mobilenet-serve
mkdir -p "$OUT"

# The request: a 227x227 JPEG made from the first labelled sample image, or with PHOTO=1 a
# 12 MP "phone photo" (4032x3024, quality 90): a mosaic of the first samples, detailed
# everywhere as a camera's picture is (4-5 MB). The peer decodes it with Pillow as a Python user
# would (Image.open, convert, resize: no draft mode); we with the default resize=fast.
first=$(awk -F'\t' '!/^#/ {print $1; exit}' "$DATASET_DIR/labels.tsv")
if [ "${PHOTO:-0}" = 1 ]; then
  IMAGE="$OUT/photo.jpg"
  "$PYTHON" -c "
import os
from PIL import Image
names = [l.split('\t')[0] for l in open('$DATASET_DIR/labels.tsv') if l.strip() and not l.startswith('#')]
photo = Image.new('RGB', (4032, 3024))
for k, (y, x) in enumerate((y, x) for y in range(0, 3024, 227) for x in range(0, 4032, 227)):
    photo.paste(Image.open(os.path.join('$DATASET_DIR', names[k % len(names)])).convert('RGB'), (x, y))
photo.save('$IMAGE', quality=90)
"
  size=4032x3024
else
  IMAGE="$OUT/request.jpg"
  "$PYTHON" -c "
from PIL import Image
Image.open('$DATASET_DIR/$first').convert('RGB').resize((227, 227), Image.BILINEAR).save('$IMAGE', quality=95)
"
  size=227x227
fi
export IMAGE
echo "request image: $IMAGE ($(stat -c %s "$IMAGE") bytes, $size)"

wait_for() { # url
  for _ in $(seq 1 600); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  return 1
}

load() { # server-name port variants
  local name=$1 port=$2 variants=$3 v c line
  for v in ${variants//,/ }; do
    wrk -t1 -c4 -d2s -s tests/load/post_image.lua "http://127.0.0.1:$port/classify?model=$v" >/dev/null
    for c in $CONCURRENCY; do
      line=$(wrk -t1 -c"$c" -d"${DURATION}s" --timeout 10s -s tests/load/post_image.lua \
        "http://127.0.0.1:$port/classify?model=$v" | grep '^RESULT')
      read -r _ n secs p50 p99 bad errs <<<"$line"
      printf '%-8s %-24s %5d %9.1f %9.2f %9.2f %7d %7d\n' "$name" "$v" "$c" \
        "$(echo "$n / $secs" | bc -l)" "$p50" "$p99" "$bad" "$errs" | tee -a "$OUT/load.txt"
      # wrk hangs up with requests in flight; let the server finish them before the next level,
      # so that their leftovers do not fill the next run's queue.
      sleep 2
    done
  done
}

: >"$OUT/load.txt"
printf '%-8s %-24s %5s %9s %9s %9s %7s %7s\n' server variant conc req/s "p50 ms" "p99 ms" non-2xx errors

"$BIN" --models "$MODELS_DIR" serve --http-port $OURS_PORT --variants "$OURS_VARIANTS" \
  --engine-threads "$THREADS" >"$OUT/ours.log" 2>&1 &
ours=$!
wait_for "http://127.0.0.1:$OURS_PORT/readyz"
kill -0 $ours # still running: the port was ours, not a leftover server's
load ours $OURS_PORT "$OURS_VARIANTS"
kill -TERM $ours
wait $ours || true

MODELS_DIR=$(realpath "$MODELS_DIR") VARIANTS=$VARIANTS ORT_THREADS=1 \
  "$PYTHON" -m uvicorn fastapi_ort:app --app-dir tests/load --workers "$THREADS" \
  --port $PEER_PORT --log-level warning >"$OUT/peer.log" 2>&1 &
peer=$!
wait_for "http://127.0.0.1:$PEER_PORT/openapi.json"
kill -0 $peer
load fastapi $PEER_PORT "$VARIANTS"
kill -TERM $peer
wait $peer || true

echo
echo "engine only, $THREADS batches at once, each on its own thread (bench --streams $THREADS):"
"$BIN" --models "$MODELS_DIR" bench --variants "$OURS_VARIANTS" --batch 1,8 --streams "$THREADS" --iters 100
