#!/usr/bin/env bash
# `cargo build` and `cargo test` must resolve the same features for every crate the service
# builds. Where a dev-dependency turns on one more feature of such a crate, that crate and all
# above it (tract, our own library) are compiled once per command: twice in CI, and twice for
# anyone who runs the README's two commands. Cargo.toml names those features among its
# dependencies; this fails, naming the crates, when the two resolutions drift apart again.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
resolve() {
  cargo tree --locked --prefix none --format '{p} [{f}]' --target "$host" -e "$1" |
    sed 's/ (\*)$//' | sort -u
}
drift=$(comm -23 <(resolve normal,build) <(resolve normal,build,dev))
if [ -n "$drift" ]; then
  echo "cargo test builds these crates with other features than cargo build does:"
  echo "$drift"
  echo "name the features that cargo test adds in Cargo.toml's [dependencies] (see bit-vec there)"
  exit 1
fi
echo "cargo build and cargo test resolve the same features"
