# Sourced by .ci/run: work that does not need this run's build starts in the background at once,
# and each later step waits for its part just before it runs (each step still installs whatever
# is missing itself, so a background failure only costs time):
# - the later steps' downloads (PyPI venvs, Debian and npm packages) need the network rather
#   than the cores;
# - cargo-deny's own build runs at the lowest priority, on the cycles our build leaves idle.
#   setsid puts it in a session of its own and so, where the kernel schedules by autogroup
#   (sched_autogroup_enabled), in a group of its own that gets an equal share of the CPU
#   whatever the nice value of its processes: measured here, a nice 19 loop in such a group took
#   half the CPU from two nice 0 loops. The group itself is niced (/proc/self/autogroup), which
#   cut that share to about 1%.

# start_background: starts both; sets $downloads and $deny_build (their PIDs) and $logs.
start_background() {
  logs=${CARGO_TARGET_DIR:-target}/ci-background
  mkdir -p "$logs"
  (
    failed=0
    for step in .ci/ort-crosscheck.sh tests/oip/run.sh tests/schemathesis/run.sh \
      .ci/deploy-check.sh tests/web/run.sh; do
      echo "-- $step"
      SETUP_ONLY=1 "$step" || { echo "-- $step: failed here, it installs again when it runs"; failed=1; }
    done
    exit "$failed"
  ) >"$logs/downloads.log" 2>&1 &
  downloads=$!
  # In a session of its own, so that its whole process tree can be stopped (below).
  SETUP_ONLY=1 setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null || true
    exec nice -n 19 .ci/deny.sh' >"$logs/cargo-deny.log" 2>&1 &
  deny_build=$!
  trap stop_background EXIT
}

# stop_background: when a step fails and the run stops early, the downloads are let finish (an
# apt or dpkg run cut short can leave the machine's packages half-configured) and cargo-deny's
# build is stopped.
stop_background() {
  kill -- "-$deny_build" 2>/dev/null || true
  wait "$downloads" 2>/dev/null || true
}

# background NAME PID: waits for a background job and says how it ended.
background() {
  if wait "$2"; then
    echo "   ($1, started in the background: done)"
  else
    echo "   ($1, started in the background: failed, the step tries again; its log:)"
    tail -20 "$logs/$1.log"
  fi
}
