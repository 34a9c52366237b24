# Sourced by the scripts that start `mobilenet-serve serve` for a check (.ci/deploy-check.sh,
# tests/oip/run.sh, tests/web/run.sh): free ports, and waiting for readiness.

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
