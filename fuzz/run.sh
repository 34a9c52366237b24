#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a while and reports executions and
# findings. Not part of CI: a few minutes per target is too long for every run.
#   fuzz/run.sh [--seconds N] [target...]      (default: 180 s each, all targets)
# Each target starts from fuzz/regressions/<target>/ (seeds and past findings, replayed by
# `cargo test --test fuzz_regressions`) and grows fuzz/corpus/<target>/ (local, ignored).
# A finding is left in fuzz/artifacts/<target>/; once fixed, copy it into
# fuzz/regressions/<target>/ so the tests replay it.
# Needs a nightly compiler for the sanitizer flags: `rustup toolchain` nightly where present,
# else the stable compiler with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=180
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=(decode classify_body oip_rest oip_grpc import)

version=0.13.2
tools=$(realpath -m ../target/tools)
if [ "$("$tools/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $version" ]; then
  env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-fuzz --version "$version" --root "$tools"
fi
export PATH="$tools/bin:$PATH"
# Read whole before matching: `grep -q` may close the pipe early, which pipefail reports.
toolchains=$(rustup toolchain list 2>/dev/null || true)
if grep -q '^nightly' <<<"$toolchains"; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
# The fuzz workspace resolves from the project's lock file, plus libFuzzer's few crates.
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock

"${fuzz[@]}" build
mkdir -p logs
printf '%-14s %8s %12s %10s %8s %s\n' target seconds executions exec/s corpus findings
found=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # Findings of earlier runs stay in artifacts/; only this run's are counted.
  touch "logs/$t.start"
  log="logs/$t.log"
  # -timeout: one input may take at most 10 s; -rss_limit_mb: the harness's decode limits
  # (1 MiB, 4 Mpx) let the decoder allocate about 100 MB, so 2 GB is a leak or an unbounded
  # allocation.
  # A dictionary of the format's tokens, where there is one (dicts/<target>.dict).
  dict=()
  [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  "${fuzz[@]}" run "$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dict[@]}" >"$log" 2>&1 || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  findings=$(find "artifacts/$t" -type f -newer "logs/$t.start" | wc -l)
  units=$(find "corpus/$t" -type f | wc -l)
  printf '%-14s %8s %12s %10s %8s %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$units" "$findings"
  if [ "$findings" -gt 0 ] || ! grep -q '^Done ' "$log"; then
    found=1
    grep -E '^(==[0-9]+==|thread .* panicked|SUMMARY)' "$log" | head -5 || true
    echo "  see fuzz/$log and fuzz/artifacts/$t/"
  fi
done
exit $found
