"""Compare the speed of our int8 engine with ONNX Runtime, OpenVINO and our FP32 engine, on the same files.

For every selected float variant NAME of the zoo (manifest.json) this times three ONNX files of the
same cell (alpha, rho):
  fp32  the float zoo file (manifest.json),
  qat   the zoo's quantization-aware-trained twin NAME_quant (int8/manifest.json): uint8 weights per
        tensor, the TFLite file's own scales and zero points,
  s8    onnxruntime's quantize_static of the float file, after quant_pre_process (which ORT
        recommends): QDQ, int8 symmetric weights per output channel, uint8 activations per tensor,
        MinMax ranges of the first 64 images of labels.tsv in --data (Pillow preprocessing of
        ort_crosscheck.py, the float manifest's scale and offset). Made once and cached as
        WORK/s8/NAME/NAME_s8.onnx (delete it to make it again). Each file has a folder of its own,
        without a manifest: our catalogue names such a file mobilenet_v1_<alpha>_<rho>_quant from its
        graph, so two files of one cell would clash, and its input size is symbolic, hence
        `--resolution rho`.
with three engines, which alternate within every round and variant:
  ours      `mobilenet-serve bench --json --threads T,...`: one subprocess for NAME and NAME_quant
            (fp32, qat), then one for the s8 file's folder,
  ORT       in-process as in compare_speed.py (intra_op_num_threads=T, inter_op 1, sequential, all
            graph optimisations; sessions cached per file and thread count), then
  OpenVINO  in-process on the CPU device, the model reshaped to a static [N, 3, rho, rho] and compiled
            per file, thread count and batch size with INFERENCE_NUM_THREADS=T, NUM_STREAMS=1, the
            LATENCY hint and f32 inference precision (no bf16 for the float layers on hosts that have
            it; the quantized layers stay int8), its defaults otherwise (CPU pinning on); 2 warm-up
            runs, then --iters timed infer() calls,
ORT and OpenVINO on random input of the shape [N, 3, rho, rho], one tensor per round, thread count
and batch size for all files. Every measurement is a per-image median in ms (and the fastest run);
across rounds the script takes the median of the round medians and prints, per variant, thread
count and batch, the ms of the nine (engine, file) pairs, then the ratios
  qat/peer  ours on qat over the best int8 peer on its favourite file: min(ORT s8, OpenVINO s8),
  qat/fp32  ours on qat over ours on fp32 (the int8 speed-up, < 1 when int8 is faster),
  qat/s8    ours on qat over ours on s8 (what the file's quantization style costs us),
  qat/ORTq, qat/OVq  ours on qat over ORT resp. OpenVINO on the same qat file,
  s8/peer   ours on s8 over the best peer on that same s8 file,
and qat/peer of each engine's fastest run over all rounds (steadier on a shared host), then per
thread count and batch size the geometric mean of each ratio and how many variants have qat/peer < 1.
Ratios below 1 mean ours is faster. Before timing, a sanity line per variant: on the last
--check-images images of labels.tsv (not calibration ones), how many top-1s ORT and OpenVINO get
right on each file and how many equal ORT's on the float file, and how many conv/FC layers each runs
in int8 (ORT: QLinear*/QGemm nodes of its optimised graph; OpenVINO: the runtime precision of the
compiled model's Convolution/FullyConnected nodes). Speed alone does not say whether a peer computes
what the file says: on x86 without VNNI, ORT's and OpenVINO's u8 x s8 kernels can saturate
(vpmaddubsw sums pairs into int16), which costs the s8 files accuracy there; and OpenVINO may run a
file's convolutions in f32 (it does so with the qat files' uint8 weights).

Run (from the repository root; the script does not make its venv):
  python3 -m venv target/compare-int8/venv
  target/compare-int8/venv/bin/pip install -r tests/ort/requirements.txt -r tests/ort/requirements-speed.txt
  target/compare-int8/venv/bin/python tests/ort/compare_int8.py [--binary target/release/mobilenet-serve]
      [--models models] [--data ../shared/imagenet/val1300] [--variants a,b] [--batch 1,8]
      [--threads 1,2] [--iters 20] [--rounds 3] [--check-images 32] [--work-dir target/compare-int8]
      [--json-out FILE]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from compare_speed import fmt, geomean, make_session, time_ort
from ort_crosscheck import pillow_crop, read_labels

FILES = ("fp32", "qat", "s8")
ENGINES = {"ours": "ours", "ort": "ORT", "ov": "OV"}
COLUMNS = [f"{e}_{f}" for e in ENGINES for f in FILES]
CALIBRATION_IMAGES = 64
DEFAULT_VARIANTS = "mobilenet_v1_1.0_224,mobilenet_v1_0.5_160,mobilenet_v1_0.25_128"
# besides INFERENCE_NUM_THREADS = the thread count
OV_CONFIG = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
# (key, table header, numerator column, denominator columns: the fastest of them counts)
RATIOS = [
    ("ours_qat_over_best_s8_peer", "qat/peer", "ours_qat", ("ort_s8", "ov_s8")),
    ("ours_qat_over_ours_fp32", "qat/fp32", "ours_qat", ("ours_fp32",)),
    ("ours_qat_over_ours_s8", "qat/s8", "ours_qat", ("ours_s8",)),
    ("ours_qat_over_ort_qat", "qat/ORTq", "ours_qat", ("ort_qat",)),
    ("ours_qat_over_ov_qat", "qat/OVq", "ours_qat", ("ov_qat",)),
    ("ours_s8_over_best_s8_peer", "s8/peer", "ours_s8", ("ort_s8", "ov_s8")),
]
HEADLINE = RATIOS[0][0]


@dataclass
class Variant:
    """One cell: its three files and the preprocessing each expects."""
    name: str
    quant_name: str
    rho: int
    files: dict[str, Path]
    pre: dict[str, dict]
    label_offset: int  # output index of class 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default="target/release/mobilenet-serve")
    p.add_argument("--models", default=os.environ.get("MODELS_DIR", "models"),
                   help="folder with manifest.json and int8/manifest.json")
    p.add_argument("--data", default=os.environ.get("DATASET_DIR", "../shared/imagenet/val1300"),
                   help="folder with labels.tsv and the images (calibration and sanity check)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated float variant names; the int8 twin is NAME_quant")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (every engine)")
    p.add_argument("--iters", type=int, default=20, help="timed runs per variant, file, batch and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--check-images", type=int, default=32, help="images of the sanity check (0: none)")
    p.add_argument("--work-dir", default="target/compare-int8", help="where the s8 files are cached")
    p.add_argument("--json-out", help="write the per-round numbers and the summary here")
    return p.parse_args()


def load_variants(args) -> list[Variant]:
    """The selected cells, from the float and the int8 manifests."""
    models = Path(args.models)
    floats = {v["name"]: v for v in json.loads((models / "manifest.json").read_text())}
    quants = {v["name"]: v for v in json.loads((models / "int8" / "manifest.json").read_text())}
    out = []
    for name in args.variants.split(","):
        if name not in floats or f"{name}_quant" not in quants:
            sys.exit(f"{name}: needs {name} in {models}/manifest.json and {name}_quant in "
                     f"{models}/int8/manifest.json; float variants: {list(floats)}")
        fv, qv = floats[name], quants[f"{name}_quant"]
        s8 = Path(args.work_dir) / "s8" / name / f"{name}_s8.onnx"
        out.append(Variant(name, qv["name"], fv["resolution"],
                           {"fp32": models / fv["file"], "qat": models / "int8" / qv["file"], "s8": s8},
                           {"fp32": fv["preprocessing"], "qat": qv["preprocessing"], "s8": fv["preprocessing"]},
                           fv["label_offset"]))
    return out


def crops(data: Path, names: list[str], rho: int) -> np.ndarray:
    """uint8 [N, rho, rho, 3] Pillow crops of the named images."""
    return np.stack([pillow_crop(data / n, rho) for n in names])


def normalise(u8: np.ndarray, pre: dict) -> np.ndarray:
    """float32 NCHW model input of uint8 NHWC crops: x*scale+offset with a manifest's preprocessing."""
    x = u8.astype(np.float32) * np.float32(pre["scale"]) + np.float32(pre["offset"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Calibration(CalibrationDataReader):
    """Calibration input in batches of 8 (MinMax ranges do not depend on the batching)."""

    def __init__(self, x: np.ndarray):
        self.batches = iter([{"input": x[i:i + 8]} for i in range(0, len(x), 8)])

    def get_next(self):
        return next(self.batches, None)


def make_s8(v: Variant, calib: np.ndarray) -> None:
    """Quantize the float file into v.files["s8"]; written under a temporary name, then renamed,
    so that an interrupted run leaves no half file to be reused."""
    out = v.files["s8"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "s8.onnx"
        quant_pre_process(str(v.files["fp32"]), str(pre))
        quantize_static(str(pre), str(q), Calibration(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        os.replace(q, out)


def ours_catalogue_name(args, v: Variant) -> str:
    """The name our catalogue gives the s8 file; exits with our error when the engine refuses it."""
    cmd = [args.binary, "--models", str(v.files["s8"].parent), "--resolution", str(v.rho), "models"]
    proc = subprocess.run(cmd, env={**os.environ, "RUST_LOG": "warn"}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"our engine refuses {v.files['s8']} ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    # a header, one row per file, then "N variants ..."
    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line and not line[0].isdigit()]
    if len(rows) != 1 or rows[0][-1] != v.files["s8"].name:
        sys.exit(f"expected one variant, of {v.files['s8'].name}, from: {' '.join(cmd)}\n{proc.stdout}")
    return rows[0][0]


def run_ours(args, models: Path, batches: list[int], threads: list[int], variants: list[str] | None = None,
             resolution: int | None = None) -> dict:
    """One bench subprocess (every variant of `models` unless named): the JSON it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [args.binary, "--models", str(models), "--kernels", "auto"]
        if resolution is not None:
            cmd += ["--resolution", str(resolution)]
        cmd += ["bench", "--batch", ",".join(map(str, batches)), "--threads", ",".join(map(str, threads)),
                "--iters", str(args.iters), "--json", str(out)]
        if variants:
            cmd += ["--variants", ",".join(variants)]
        proc = subprocess.run(cmd, env={**os.environ, "RUST_LOG": "warn"}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
        return json.loads(out.read_text())


def compile_ov(core: ov.Core, path: Path, rho: int, batch: int, threads: int) -> ov.CompiledModel:
    """OpenVINO's CPU model of `path` for a static [batch, 3, rho, rho] input (how OpenVINO is
    deployed for speed; ORT and ours get the symbolic shape)."""
    model = core.read_model(str(path))
    model.reshape({"input": [batch, 3, rho, rho]})
    return core.compile_model(model, "CPU", {**OV_CONFIG, "INFERENCE_NUM_THREADS": threads})


def time_ov(compiled: ov.CompiledModel, x: np.ndarray, iters: int) -> tuple[float, float]:
    """(median, fastest) ms per image over `iters` timed runs, after 2 warm-up runs."""
    req = compiled.create_infer_request()
    for _ in range(2):
        req.infer({"input": x}, share_inputs=True, share_outputs=True)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        req.infer({"input": x}, share_inputs=True, share_outputs=True)
        times.append((time.perf_counter() - t0) * 1e3 / x.shape[0])
    return statistics.median(times), min(times)


def ort_int8_layers(path: Path) -> tuple[int, int]:
    """(int8, all) conv/FC nodes of the graph ORT runs, read back from its optimised model."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        so.log_severity_level = 3  # silences "the serialised NCHWc model is hardware specific"
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    layers = [op for op in ops if "Conv" in op or "Gemm" in op or "MatMul" in op]
    return sum(op.startswith(("QLinear", "QGemm")) or op.endswith("Integer") for op in layers), len(layers)


def ov_int8_layers(compiled: ov.CompiledModel) -> tuple[int, int]:
    """(int8, all) Convolution/FullyConnected nodes of OpenVINO's compiled (runtime) model."""
    info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    precisions = [rt["runtimePrecision"].astype(str) for rt in info
                  if rt["layerType"].astype(str) in ("Convolution", "FullyConnected")]
    return sum(p in ("u8", "i8") for p in precisions), len(precisions)


def sanity(v: Variant, core: ov.Core, u8: np.ndarray, classes: np.ndarray, session, threads: int) -> dict:
    """Right top-1s of ORT and OpenVINO on each file, how many agree with ORT's on the float file,
    and how many conv/FC layers each runs in int8; prints one line."""
    top1, layers = {}, {}
    for f in FILES:
        x = normalise(u8, v.pre[f])
        top1[f"ort_{f}"] = session(v.files[f], threads).run(["logits"], {"input": x})[0].argmax(1)
        compiled = compile_ov(core, v.files[f], v.rho, len(x), threads)
        top1[f"ov_{f}"] = compiled.create_infer_request().infer({"input": x})[compiled.output("logits")].argmax(1)
        layers[f"ort_{f}"], layers[f"ov_{f}"] = ort_int8_layers(v.files[f]), ov_int8_layers(compiled)
    right = {k: int(np.sum(t - v.label_offset == classes)) for k, t in top1.items()}
    agree = {k: int(np.sum(t == top1["ort_fp32"])) for k, t in top1.items()}
    n = len(u8)
    print(f"sanity {v.name} on {n} images, top-1 right (same as ORT fp32's): "
          + ", ".join(f"{column_label(k)} {right[k]} ({agree[k]})" for k in top1)
          + "; int8 conv/FC layers: "
          + ", ".join(f"{column_label(k)} {i}/{t}" for k, (i, t) in layers.items() if not k.endswith("fp32")),
          flush=True)
    return {"images": n, "top1_right": right, "top1_agrees_with_ort_fp32": agree, "int8_layers": layers}


def column_label(column: str) -> str:
    """The table label of a column: "ours qat" of "ours_qat"."""
    engine, file = column.split("_")
    return f"{ENGINES[engine]} {file}"


def ratios(ms: dict[str, float]) -> dict[str, float]:
    """Every ratio of RATIOS from one ms figure per column."""
    return {key: ms[num] / min(ms[d] for d in dens) for key, _, num, dens in RATIOS}


def main() -> None:
    args = parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    variants = load_variants(args)
    data = Path(args.data)
    labels = read_labels(data, None)
    names = [name for name, _ in labels]
    core = ov.Core()

    ort_sessions: dict[tuple[Path, int], ort.InferenceSession] = {}

    def session(path: Path, t: int) -> ort.InferenceSession:
        if (path, t) not in ort_sessions:
            ort_sessions[(path, t)] = make_session(path, t)
        return ort_sessions[(path, t)]

    ov_models: dict[tuple[Path, int, int], ov.CompiledModel] = {}
    s8_names, checks = {}, {}
    for v in variants:
        if not v.files["s8"].is_file():
            print(f"quantizing {v.files['fp32']} at {v.rho} into {v.files['s8']}", file=sys.stderr)
            make_s8(v, normalise(crops(data, names[:CALIBRATION_IMAGES], v.rho), v.pre["fp32"]))
        s8_names[v.name] = ours_catalogue_name(args, v)
        if args.check_images > 0:
            classes = np.array([c for _, c in labels[-args.check_images:]])
            u8 = crops(data, names[-args.check_images:], v.rho)
            checks[v.name] = sanity(v, core, u8, classes, session, max(threads))

    rng = np.random.default_rng(0)
    # samples[(name, threads, batch)][column] = per-round median ms per image;
    # [column + "_min"] = per-round fastest ms per image
    samples = {(v.name, t, b): {c + s: [] for c in COLUMNS for s in ("", "_min")}
               for v in variants for t in threads for b in batches}
    kernels, peak = None, None
    for r in range(args.rounds):
        for v in variants:
            # The s8 file's catalogue name is the qat twin's too: the folder tells them apart.
            reps = [({v.name: "ours_fp32", v.quant_name: "ours_qat"},
                     run_ours(args, Path(args.models), batches, threads, [v.name, v.quant_name])),
                    ({s8_names[v.name]: "ours_s8"},
                     run_ours(args, v.files["s8"].parent, batches, threads, resolution=v.rho))]
            for columns, rep in reps:
                kernels, peak = rep["kernels"], rep["fma_peak_gflops"]
                for res in rep["results"]:
                    col = columns[res["name"]]
                    s = samples[(v.name, res["threads"], res["batch"])]
                    s[col].append(res["median_ms"])
                    s[col + "_min"].append(res["min_ms"])
            for t in threads:
                for b in batches:
                    x = rng.uniform(-1.0, 1.0, size=(b, 3, v.rho, v.rho)).astype(np.float32)
                    s = samples[(v.name, t, b)]
                    for f in FILES:
                        path = v.files[f]
                        if (path, t, b) not in ov_models:
                            ov_models[(path, t, b)] = compile_ov(core, path, v.rho, b, t)
                        for col, timed in ((f"ort_{f}", time_ort(session(path, t), x, args.iters)),
                                           (f"ov_{f}", time_ov(ov_models[(path, t, b)], x, args.iters))):
                            s[col].append(timed[0])
                            s[col + "_min"].append(timed[1])
            print(f"round {r + 1}/{args.rounds} {v.name} done", file=sys.stderr)

    rows = []
    for (name, t, b), s in samples.items():
        ms = {c: statistics.median(s[c]) for c in COLUMNS}
        fastest = {c: min(s[c + "_min"]) for c in COLUMNS}
        rows.append({"name": name, "threads": t, "batch": b, "ms": ms, "fastest_ms": fastest,
                     "ratios": ratios(ms), "fastest_ratios": ratios(fastest),
                     "best_s8_peer": "ort" if ms["ort_s8"] <= ms["ov_s8"] else "ov", "rounds": s})

    print(f"ours: kernels {kernels}, each batch split across the threads; single-core FMA peak "
          + (f"{peak:.1f} GFLOP/s" if peak else "unknown"))
    print(f"ORT {ort.__version__}: intra_op_num_threads=threads, inter_op 1, sequential, ORT_ENABLE_ALL")
    print(f"OpenVINO {ov.get_version()}: CPU, static input shape, INFERENCE_NUM_THREADS=threads, "
          + ", ".join(f"{k}={val}" for k, val in OV_CONFIG.items()))
    print("files: fp32 = float zoo file, qat = the zoo's int8 QAT twin (u8 weights per tensor), "
          "s8 = ORT quantize_static of fp32 (s8 weights per channel, u8 activations)")
    print(f"ms per image, median of {args.rounds} round medians of {args.iters} runs; ratio < 1: ours faster")
    head = f"{'variant':<24}{'thr':>4}{'batch':>6}"
    print(head + "".join(f"{column_label(c):>10}" for c in COLUMNS))
    for row in rows:
        print(f"{row['name']:<24}{row['threads']:>4}{row['batch']:>6}"
              + "".join(fmt(row["ms"][c], ".3f", 10) for c in COLUMNS))
    print("qat/peer: ours qat over min(ORT s8, OV s8), the peer in the last column; "
          "fastest q/p: the same of each engine's fastest run")
    print(head + "".join(f"{h:>9}" for _, h, _, _ in RATIOS) + f"{'fastest q/p':>12}{'peer':>6}")
    for row in rows:
        print(f"{row['name']:<24}{row['threads']:>4}{row['batch']:>6}"
              + "".join(fmt(row["ratios"][k], ".2f", 9) for k, _, _, _ in RATIOS)
              + fmt(row["fastest_ratios"][HEADLINE], ".2f", 12) + f"{ENGINES[row['best_s8_peer']]:>6}")

    summary = []
    for t, b in [(t, b) for t in threads for b in batches]:
        rb = [r for r in rows if r["threads"] == t and r["batch"] == b]
        sm = {"threads": t, "batch": b, "variants": len(rb),
              **{f"geomean_{k}": geomean([r["ratios"][k] for r in rb]) for k, _, _, _ in RATIOS},
              f"geomean_fastest_{HEADLINE}": geomean([r["fastest_ratios"][HEADLINE] for r in rb]),
              "ours_qat_faster_than_best_s8_peer": sum(r["ratios"][HEADLINE] < 1 for r in rb)}
        summary.append(sm)
        print(f"threads {t}, batch {b}: geomean "
              + ", ".join(f"{h} {sm[f'geomean_{k}']:.2f}" for k, h, _, _ in RATIOS)
              + f"; fastest q/p {sm[f'geomean_fastest_{HEADLINE}']:.2f}; qat/peer < 1 for "
              f"{sm['ours_qat_faster_than_best_s8_peer']} of {sm['variants']} variants")
    print(f"all rows: geomean qat/peer {geomean([r['ratios'][HEADLINE] for r in rows]):.2f}, "
          f"qat/fp32 {geomean([r['ratios']['ours_qat_over_ours_fp32'] for r in rows]):.2f}")

    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"kernels": kernels, "fma_peak_gflops": peak, "ort_version": ort.__version__,
             "openvino_version": ov.get_version(),
             "openvino_config": {"INFERENCE_NUM_THREADS": "threads", **OV_CONFIG},
             "threads": threads, "batches": batches, "iters": args.iters, "rounds": args.rounds,
             "files": {v.name: {f: str(p) for f, p in v.files.items()} for v in variants},
             "ours_s8_names": s8_names, "sanity": checks, "rows": rows, "summary": summary}, indent=1))
        print(f"wrote {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
