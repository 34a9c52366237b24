"""Compare the speed of our engine, ONNX Runtime and tract on the same ONNX files.

For every selected variant of the model zoo (manifest.json) and every round, this runs
  ours + tract  one `mobilenet-serve bench --json --threads T,...` subprocess (tract only at batch 1
                and single-threaded; our binary times ours, then tract), then
  ORT           in-process on random input of the same shape [N, 3, rho, rho], per thread count
                and batch size: 2 warm-up runs, then --iters runs timed with time.perf_counter
                around session.run,
so the engines alternate within one run. Threads: ours splits each batch across T threads
(`bench --threads T`), ORT gets intra_op_num_threads=T (inter_op 1, sequential, all graph
optimisations). Every measurement is a per-image median in ms (and the fastest run); across
rounds the script takes the median of the round medians and prints, per variant, thread count and batch: ours ms, ORT ms,
tract ms (batch 1, one thread), ours/ORT, ours/tract (tract's one thread against ours at T) and our
% of the FMA peak of T cores, and ours/ORT of each engine's fastest run over all rounds (on a shared
host, the runs least disturbed by other tenants: a steadier ratio than that of medians), then per
thread count and batch size the geometric mean of each ratio and how many variants have ours/ORT < 1,
and our speed-up from more threads (of medians, and of fastest runs).
Ratios below 1 mean ours is faster. ORT sessions are created once per variant and thread count,
and cached.

Run (from the repository root, venv from tests/ort/requirements.txt):
  /tmp/ortvenv/bin/python tests/ort/compare_speed.py [--binary target/release/mobilenet-serve]
      [--models models] [--variants a,b] [--batch 1,8] [--threads 1,2] [--iters 20] [--rounds 3]
      [--json-out FILE]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default="target/release/mobilenet-serve")
    p.add_argument("--models", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--variants", help="comma-separated variant names (default: all in the manifest)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", default="1", help="comma-separated thread counts (ours and ORT)")
    p.add_argument("--iters", type=int, default=20, help="timed runs per variant, batch and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json-out", help="write the per-round numbers and the summary here")
    return p.parse_args()


def run_ours(args, name: str, batches: list[int], threads: list[int]) -> dict:
    """One bench subprocess: {"kernels", "fma_peak_gflops", "results": [...]} of our JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [args.binary, "--models", args.models, "--kernels", "auto", "bench", "--variants", name,
               "--batch", ",".join(map(str, batches)), "--threads", ",".join(map(str, threads)),
               "--iters", str(args.iters), "--json", str(out)]
        if 1 in batches:
            cmd.append("--tract")
        proc = subprocess.run(cmd, env={**os.environ, "RUST_LOG": "warn"}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
        return json.loads(out.read_text())


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_ort(sess: ort.InferenceSession, x: np.ndarray, iters: int) -> tuple[float, float]:
    """(median, fastest) ms per image over `iters` timed runs, after 2 warm-up runs."""
    feed = {"input": x}
    for _ in range(2):
        sess.run(["logits"], feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(["logits"], feed)
        times.append((time.perf_counter() - t0) * 1e3 / x.shape[0])
    return statistics.median(times), min(times)


def geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def fmt(v, spec: str, width: int) -> str:
    return format(v, spec).rjust(width) if v is not None else "-".rjust(width)


def main() -> None:
    args = parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    models = Path(args.models)
    manifest = {v["name"]: v for v in json.loads((models / "manifest.json").read_text())}
    names = args.variants.split(",") if args.variants else list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        sys.exit(f"unknown variants {unknown}; the manifest has {list(manifest)}")

    rng = np.random.default_rng(0)
    # created once per variant and thread count, on first use
    sessions: dict[tuple[str, int], ort.InferenceSession] = {}
    # samples[(name, threads, batch)][engine] = per-round median ms per image (or % of peak);
    # [engine + "_min"] = per-round fastest ms per image
    samples = {(n, t, b): {"ours": [], "ort": [], "tract": [], "peak": [], "ours_min": [], "ort_min": []}
               for n in names for t in threads for b in batches}
    kernels, peak = None, None
    for r in range(args.rounds):
        for name in names:
            rep = run_ours(args, name, batches, threads)
            kernels, peak = rep["kernels"], rep["fma_peak_gflops"]
            tract_ms = {}
            for res in rep["results"]:
                s = samples[(name, res["threads"], res["batch"])]
                s["ours"].append(res["median_ms"])
                if res.get("min_ms") is not None:  # absent from binaries older than the field
                    s["ours_min"].append(res["min_ms"])
                s["peak"].append(res["peak_percent"])
                if res.get("tract_median_ms") is not None:
                    tract_ms.setdefault(res["batch"], []).append(res["tract_median_ms"])
            # tract runs on one thread whatever ours uses: one figure per batch for every row.
            for b, ms in tract_ms.items():
                for t in threads:
                    samples[(name, t, b)]["tract"].append(statistics.median(ms))
            rho = manifest[name]["resolution"]
            for t in threads:
                if (name, t) not in sessions:
                    sessions[(name, t)] = make_session(models / manifest[name]["file"], t)
                for b in batches:
                    x = rng.uniform(-1.0, 1.0, size=(b, 3, rho, rho)).astype(np.float32)
                    median, fastest = time_ort(sessions[(name, t)], x, args.iters)
                    samples[(name, t, b)]["ort"].append(median)
                    samples[(name, t, b)]["ort_min"].append(fastest)
            print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)

    rows = []
    for (name, t, b), s in samples.items():
        ours, onnx, tract = (statistics.median(s[k]) if s[k] else None for k in ("ours", "ort", "tract"))
        rows.append({"name": name, "threads": t, "batch": b, "ours_ms": ours, "ort_ms": onnx, "tract_ms": tract,
                     "ours_over_ort": ours / onnx, "ours_over_tract": ours / tract if tract else None,
                     "fastest_ours_over_ort": min(s["ours_min"]) / min(s["ort_min"])
                     if s["ours_min"] and s["ort_min"] else None,
                     "ours_peak_percent": None if None in s["peak"] else statistics.median(s["peak"]),
                     "rounds": s})

    print(f"ours: kernels {kernels}, each batch split across the threads; single-core FMA peak "
          + (f"{peak:.1f} GFLOP/s" if peak else "unknown"))
    print(f"ORT {ort.__version__}: intra_op_num_threads=threads, inter_op 1, sequential, ORT_ENABLE_ALL")
    print(f"ms per image, median of {args.rounds} round medians of {args.iters} runs; ratio < 1: ours faster;")
    print("fastest o/O: ours/ORT of each engine's fastest run over all rounds (steadier on a noisy host)")
    print(f"{'variant':<24}{'thr':>4}{'batch':>6}{'ours ms':>9}{'ORT ms':>9}{'tract ms':>9}"
          f"{'ours/ORT':>9}{'ours/tr':>8}{'%peak':>7}{'fastest o/O':>12}")
    for row in rows:
        pct = "-" if row["ours_peak_percent"] is None else f"{row['ours_peak_percent']:.0f}%"
        print(f"{row['name']:<24}{row['threads']:>4}{row['batch']:>6}{fmt(row['ours_ms'], '.3f', 9)}{fmt(row['ort_ms'], '.3f', 9)}"
              f"{fmt(row['tract_ms'], '.3f', 9)}{fmt(row['ours_over_ort'], '.2f', 9)}"
              f"{fmt(row['ours_over_tract'], '.2f', 8)}{pct:>7}{fmt(row['fastest_ours_over_ort'], '.2f', 12)}")
    summary = []
    for t, b in [(t, b) for t in threads for b in batches]:
        rb = [r for r in rows if r["batch"] == b and r["threads"] == t]
        vs_ort = [r["ours_over_ort"] for r in rb]
        vs_tract = [r["ours_over_tract"] for r in rb if r["ours_over_tract"] is not None]
        sm = {"threads": t, "batch": b, "geomean_ours_over_ort": geomean(vs_ort), "variants": len(rb),
              "geomean_ours_over_tract": geomean(vs_tract) if vs_tract else None,
              "ours_faster_than_ort": sum(v < 1 for v in vs_ort),
              "geomean_fastest_ours_over_ort": geomean([r["fastest_ours_over_ort"] for r in rb
                                                        if r["fastest_ours_over_ort"] is not None])}
        summary.append(sm)
        tract_txt = f", ours/tract {sm['geomean_ours_over_tract']:.2f}" if vs_tract else ""
        print(f"threads {t}, batch {b}: geomean ours/ORT {sm['geomean_ours_over_ort']:.2f}{tract_txt}; "
              f"ours/ORT < 1 for {sm['ours_faster_than_ort']} of {sm['variants']} variants; "
              f"fastest runs: geomean ours/ORT {sm['geomean_fastest_ours_over_ort']:.2f}")
    print(f"all rows: geomean ours/ORT {geomean([r['ours_over_ort'] for r in rows]):.2f}")
    # Our speed-up from more threads, per variant: ms at the fewest threads over ms at T.
    by_key = {(r["name"], r["threads"], r["batch"]): r for r in rows}
    for t in threads[1:]:
        for b in batches:
            ups = {n: by_key[(n, threads[0], b)]["ours_ms"] / by_key[(n, t, b)]["ours_ms"] for n in names}
            worst = min(ups, key=ups.get)
            summary.append({"speedup_threads": [threads[0], t], "batch": b,
                            "geomean_speedup": geomean(list(ups.values())), "per_variant": ups})
            print(f"ours, {t} threads over {threads[0]}, batch {b}: geomean speed-up "
                  f"{geomean(list(ups.values())):.2f}x, lowest {ups[worst]:.2f}x ({worst})")
            # The same from each thread count's fastest run (steadier on a noisy host).
            fast = {n: min(by_key[(n, threads[0], b)]["rounds"]["ours_min"])
                    / min(by_key[(n, t, b)]["rounds"]["ours_min"])
                    for n in names if by_key[(n, t, b)]["rounds"]["ours_min"]
                    and by_key[(n, threads[0], b)]["rounds"]["ours_min"]}
            if fast:
                slowest = min(fast, key=fast.get)
                summary.append({"fastest_speedup_threads": [threads[0], t], "batch": b,
                                "geomean_speedup": geomean(list(fast.values())), "per_variant": fast})
                print(f"  from the fastest runs: geomean {geomean(list(fast.values())):.2f}x, "
                      f"lowest {fast[slowest]:.2f}x ({slowest})")

    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"kernels": kernels, "fma_peak_gflops": peak, "ort_version": ort.__version__,
             "threads": threads, "iters": args.iters, "rounds": args.rounds,
             "rows": rows, "summary": summary}, indent=1))
        print(f"wrote {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
