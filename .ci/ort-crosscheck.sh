#!/usr/bin/env bash
# Accuracy cross-check with ONNX Runtime (PyPI) on the same ONNX files and the ImageNet sample:
# our engine's top-1 must be within 0.3 points of ORT fed our preprocessed tensors, and within
# 1 point of ORT fed Pillow's preprocessing. The 8-bit zoo (int8/, when the models directory has
# it) is compared with Pillow's preprocessing only: our `preprocess` tensors use the float zoo's
# normalisation. Installs its own venv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${MODELS_DIR:-../shared/models}
data=${DATASET_DIR:-../shared/imagenet/val1300}
work=target/ort-crosscheck
mkdir -p "$work"
# A venv left half-made (no pip) is made again.
if ! "$work/venv/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$work/venv"
  python3 -m venv "$work/venv"
fi
"$work/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/ort/requirements.txt
[ "${SETUP_ONLY:-}" = 1 ] && exit 0  # .ci/run fetches the downloads ahead, while cargo builds
cargo build --release --locked --quiet
bin=target/release/mobilenet-serve
for size in 224 192 160 128; do
  "$bin" preprocess --data "$data" --size "$size" --out "$work/inputs_$size.npy"
done
"$bin" --models "$models" eval --data "$data" --jobs 2 --batch 8 --json "$work/eval.json" --svg "$work/eval.svg"
"$work/venv/bin/python" tests/ort/ort_crosscheck.py --models "$models" --data "$data" \
  --ours-json "$work/eval.json" --ours-npy-dir "$work" --json-out "$work/ort.json"
if [ -f "$models/int8/manifest.json" ]; then
  "$work/venv/bin/python" tests/ort/ort_crosscheck.py --models "$models/int8" --data "$data" \
    --ours-json "$work/eval.json" --json-out "$work/ort-int8.json"
fi
