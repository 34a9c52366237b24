#!/usr/bin/env sh
# Makes the MobileNet v1 zoo available in this folder by symlinking it from a local copy.
# Usage: models/link-zoo.sh [ZOO_DIR]   (default: ../shared/models next to the repository)
# The weights are Google's and are not redistributed with this project; see models/README.md
# for where to get them elsewhere.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
zoo=${1:-$here/../../shared/models}
if [ ! -f "$zoo/manifest.json" ]; then
  echo "no model zoo at $zoo (expected manifest.json and the ONNX files)." >&2
  echo "See models/README.md for where the weights come from, then run: $0 /path/to/zoo" >&2
  exit 1
fi
zoo=$(cd "$zoo" && pwd)
count=0
for f in "$zoo"/*.onnx "$zoo"/manifest.json "$zoo"/imagenet_classes.txt; do
  [ -e "$f" ] || continue
  ln -sf "$f" "$here/$(basename "$f")"
  count=$((count + 1))
done
echo "linked $count files from $zoo into $here"
