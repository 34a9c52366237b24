#!/usr/bin/env bash
# Schemathesis (PyPI, in its own venv) attacks the HTTP API from our own /openapi.json: every
# operation, in every phase (the document's examples, boundary values, random and invalid data,
# stateful sequences), with every check but one, against a server without and then with an API
# key. It must find no 5xx, no status, content type, header or body that the document does not
# describe, no invalid request accepted; then the server must still be ready and exit 0 on
# SIGTERM. CI runs it (.ci/run).
#   SCHEMATHESIS_EXAMPLES  examples per operation and phase (default 100)
#   SCHEMATHESIS_SEED      the run's seed (default fixed, so CI replays the same cases)
#
# Left out: positive_data_acceptance, which expects every request that fits the schema to get a
# 2xx. A schema cannot say "these bytes decode as an image" or "model, alpha and a target do not
# go together", so random bytes and contradictory queries fit it and are rightly refused (400).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/server.sh
models=${MODELS_DIR:-../shared/models}
examples=${SCHEMATHESIS_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20261130}
target=${CARGO_TARGET_DIR:-target}
work=$(realpath -m "$target/schemathesis")
mkdir -p "$work"
venv_python "$work/venv" tests/schemathesis/requirements.txt >/dev/null
[ "${SETUP_ONLY:-}" = 1 ] && exit 0  # .ci/run fetches the downloads ahead, while cargo builds
cargo build --release --locked --quiet
bin=$(realpath "$target/release/mobilenet-serve")

on_exit() {
  status=$?
  stop_server
  if [ "$status" -ne 0 ] && [ -f "$work/server.log" ]; then
    echo "--- last lines of $work/server.log"
    tail -40 "$work/server.log"
  fi
}
trap on_exit EXIT

# run NAME EXAMPLES [SCHEMATHESIS_ARGS...]: one run against the server started last; then the
# server must still be ready and exit 0 on SIGTERM.
run() {
  local name=$1 n=$2
  shift 2
  # Its example database and reports stay under target/.
  (cd "$work" && "$work/venv/bin/schemathesis" run "http://127.0.0.1:$http_port/openapi.json" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$n" --seed "$seed" --workers 2 --request-timeout 30 \
    --report junit --report-dir "$work/report-$name" "$@")
  kill -0 "$server" || { echo "the server died during the run"; exit 1; }
  wait_ready "http://127.0.0.1:$http_port/readyz" "$server" 50 ||
    { echo "the server is not ready after the run"; exit 1; }
  kill -TERM "$server"
  local status=0
  wait "$server" || status=$?
  server=
  if [ "$status" -ne 0 ]; then
    echo "the server exited with status $status after SIGTERM"
    exit 1
  fi
}

# Two variants: the names in the document's examples, and a quick start.
variants=mobilenet_v1_0.25_128,mobilenet_v1_0.5_160
start_server "$work/server.log" "$bin" --models "$models" serve --variants "$variants"
run open "$examples"
# With an API key, sent on every request: the key path must answer as the document says too.
# (The document marks the key optional, as it is by default, so schemathesis's ignored_auth check
# does not expect 401s: tests/integration/auth.rs checks that every protected route refuses a
# missing or wrong key.)
key=schemathesis-key-$RANDOM$RANDOM
API_KEY=$key start_server "$work/server-auth.log" "$bin" --models "$models" serve \
  --variants "$variants"
run auth "$((examples / 5 + 1))" --header "Authorization: Bearer $key"
echo "schemathesis passed twice (without and with an API key); the server stayed ready and exited 0"
