# Sourced by the scripts that start `mobilenet-serve serve` for a check (.ci/deploy-check.sh,
# tests/oip/run.sh, tests/web/run.sh, tests/schemathesis/run.sh): free ports, waiting for
# readiness, starting a server, and the Python venv of a third-party client.

# Prints two free loopback ports (HTTP and gRPC). They are released before the server binds
# them, so another process may take one in between; callers that care retry.
free_ports() {
  python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])'
}

# wait_ready URL PID TRIES: succeeds once URL answers 2xx; fails when process PID has exited or
# after TRIES attempts 0.2 s apart.
wait_ready() {
  local url=$1 pid=$2 tries=$3
  for _ in $(seq 1 "$tries"); do
    if python3 -c "import urllib.request as u; u.urlopen('$url', timeout=1)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# start_server LOG COMMAND...: runs COMMAND (`mobilenet-serve ... serve ...`) with free loopback
# ports appended, logging to LOG, and waits until it is ready. Sets server (its pid), http_port
# and grpc_port. A free port may be taken between picking and binding it, so a server that
# cannot bind is started again on new ports. Fails when the server never becomes ready.
start_server() {
  local log=$1
  shift
  for attempt in 1 2 3; do
    read -r http_port grpc_port < <(free_ports)
    "$@" --host 127.0.0.1 --http-port "$http_port" --grpc-port "$grpc_port" >"$log" 2>&1 &
    server=$!
    echo "server pid $server on http :$http_port grpc :$grpc_port (attempt $attempt)"
    if wait_ready "http://127.0.0.1:$http_port/readyz" "$server" 600; then
      return 0
    fi
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
    grep -qi "address.*in use" "$log" || break
  done
  echo "the server never became ready; last lines of $log:"
  tail -20 "$log"
  return 1
}

# venv_python DIR REQUIREMENTS: makes (or reuses) a venv in DIR with REQUIREMENTS installed and
# prints its python. A venv left half-made (no pip) is made again.
venv_python() {
  local dir=$1 requirements=$2
  if ! "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$dir"
    python3 -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
  echo "$dir/bin/python"
}

# stop_server: stops the server start_server started, if it runs.
stop_server() {
  if [ -n "${server:-}" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
}
