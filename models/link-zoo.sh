#!/usr/bin/env sh
# Makes the MobileNet v1 zoo available in this folder by symlinking it from a local copy: the
# float grid here, and the 8-bit grid (the zoo's int8/ folder) in int8/.
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
link() { # link SOURCE_DIR TARGET_DIR FILES...
  from=$1 to=$2
  shift 2
  for f in "$@"; do
    [ -e "$from/$f" ] || continue
    ln -sf "$from/$f" "$to/$f"
    count=$((count + 1))
  done
}
names() { # the ONNX files of a folder, by name
  for f in "$1"/*.onnx; do [ -e "$f" ] && basename "$f"; done
}
link "$zoo" "$here" $(names "$zoo") manifest.json imagenet_classes.txt
if [ -f "$zoo/int8/manifest.json" ]; then
  mkdir -p "$here/int8"
  link "$zoo/int8" "$here/int8" $(names "$zoo/int8") manifest.json
fi
echo "linked $count files from $zoo into $here"
