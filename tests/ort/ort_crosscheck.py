"""Cross-check our engine's ImageNet accuracy with ONNX Runtime on the same ONNX files.

For every selected variant of the model zoo (manifest.json) this measures top-1 / top-5 with
onnxruntime in two preprocessing modes:

  pillow  the reference pipeline: PIL decode to RGB, resize the shorter side to round(rho / 0.875)
          with Image.BILINEAR (torchvision Resize semantics), center crop rho x rho, x*scale+offset.
  ours    the tensors our `preprocess` command wrote: DIR/inputs_<rho>.npy, float32 [N, rho, rho, 3]
          NHWC, already normalised, images in labels.tsv order (only with --ours-npy-dir).

With --ours-json (the JSON of our `eval --json`) it also prints our engine's top-1 and
|ours - ORT on our tensors| (engine error alone) and |ours - ORT with Pillow| (engine plus
preprocessing), and exits 1 when any variant with the same image count exceeds 0.3 resp. 1.0 points.

Run (from the repository root):
  python3 -m venv /tmp/ortvenv && /tmp/ortvenv/bin/pip install -r tests/ort/requirements.txt
  /tmp/ortvenv/bin/python tests/ort/ort_crosscheck.py --models models --data DIR \
      [--variants a,b] [--limit N] [--ours-json FILE] [--ours-npy-dir DIR] [--threads T] [--json-out FILE]
      [--no-fusion]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

BATCH = 32
CROP_FRACTION = 0.875
MAX_DIFF_OURS = 0.3  # points of top-1: our engine vs ORT on the very same input tensors
MAX_DIFF_PILLOW = 1.0  # points of top-1: our engine vs ORT with the Pillow reference preprocessing


def read_labels(data_dir: Path, limit: int | None) -> list[tuple[str, int]]:
    """(filename, class 0..999) pairs of labels.tsv, in file order."""
    out = []
    for line in (data_dir / "labels.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        out.append((cols[0], int(cols[1])))
    return out[:limit] if limit is not None else out


def pillow_crop(path: Path, rho: int) -> np.ndarray:
    """uint8 [rho, rho, 3]: shorter side to round(rho / 0.875), bilinear, center crop."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = round(rho / CROP_FRACTION)
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - rho) / 2)), int(round((new_h - rho) / 2))
    return np.asarray(img.crop((left, top, left + rho, top + rho)), dtype=np.uint8)


class PillowInputs:
    """Pillow crops cached per resolution (uint8 NHWC), so each image is preprocessed once per rho."""

    def __init__(self, data_dir: Path, labels: list[tuple[str, int]]):
        self.paths = [data_dir / name for name, _ in labels]
        self.cache: dict[int, np.ndarray] = {}

    def nhwc(self, rho: int, scale: float, offset: float) -> np.ndarray:
        if rho not in self.cache:
            self.cache[rho] = np.stack([pillow_crop(p, rho) for p in self.paths])
        return self.cache[rho].astype(np.float32) * np.float32(scale) + np.float32(offset)


def accuracy(session: ort.InferenceSession, nhwc: np.ndarray, classes: np.ndarray,
             label_offset: int) -> tuple[float, float]:
    """Top-1 and top-5 in percent; background (output index < label_offset) is a wrong answer."""
    top1 = top5 = 0
    for start in range(0, len(nhwc), BATCH):
        batch = np.ascontiguousarray(nhwc[start:start + BATCH].transpose(0, 3, 1, 2), dtype=np.float32)
        (logits,) = session.run(["logits"], {"input": batch})
        best = np.argsort(-logits, axis=1, kind="stable")[:, :5] - label_offset
        truth = classes[start:start + BATCH, None]
        top1 += int(np.sum(best[:, 0] == truth[:, 0]))
        top5 += int(np.sum(np.any(best == truth, axis=1)))
    n = len(nhwc)
    return 100.0 * top1 / n, 100.0 * top5 / n


def load_ours_npy(npy_dir: Path, rho: int, limit: int | None) -> np.ndarray:
    path = npy_dir / f"inputs_{rho}.npy"
    if not path.is_file():
        sys.exit(f"{path}: missing (write it with our `preprocess` command at --size {rho})")
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.float32 or arr.ndim != 4 or arr.shape[1:] != (rho, rho, 3):
        sys.exit(f"{path}: expected float32 [N, {rho}, {rho}, 3], got {arr.dtype} {arr.shape}")
    return arr[:limit] if limit is not None else arr


def fmt(x: float | None) -> str:
    return f"{x:7.2f}" if x is not None else f"{'-':>7}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder with manifest.json and the ONNX files")
    ap.add_argument("--data", type=Path, required=True, help="folder with labels.tsv and the images")
    ap.add_argument("--variants", help="comma-separated variant names (default: all in the manifest)")
    ap.add_argument("--limit", type=int, help="only the first N images of labels.tsv")
    ap.add_argument("--ours-json", type=Path, help="JSON written by our `eval --json`")
    ap.add_argument("--ours-npy-dir", type=Path, help="folder with our inputs_<rho>.npy tensors")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    ap.add_argument("--json-out", type=Path, help="write every number here")
    ap.add_argument("--no-fusion", action="store_true",
                    help="run ORT with graph optimisations off (ORT_DISABLE_ALL): a QDQ graph then runs as "
                         "written, DequantizeLinear -> float Conv -> QuantizeLinear, which is the ONNX "
                         "definition itself; with them on, ORT fuses QDQ into its integer kernels, whose "
                         "u8 x s8 products saturate on x86 CPUs without VNNI (int8 weights lose accuracy there)")
    args = ap.parse_args()

    manifest = json.loads((args.models / "manifest.json").read_text())
    if args.variants:
        wanted = args.variants.split(",")
        unknown = sorted(set(wanted) - {v["name"] for v in manifest})
        if unknown:
            ap.error(f"unknown variants: {', '.join(unknown)}")
        manifest = [v for v in manifest if v["name"] in wanted]
    labels = read_labels(args.data, args.limit)
    classes = np.array([c for _, c in labels], dtype=np.int64)
    pillow = PillowInputs(args.data, labels)
    engine = {}
    if args.ours_json:
        engine = {v["name"]: v for v in json.loads(args.ours_json.read_text())["variants"]}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    if args.no_fusion:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    fusion = ", graph optimisations off" if args.no_fusion else ""
    print(f"onnxruntime {ort.__version__}, {len(labels)} images, batch {BATCH}, {args.threads} threads{fusion}")
    head = f"{'variant':<24} {'n':>5} {'pil@1':>7} {'pil@5':>7} {'ours@1':>7} {'ours@5':>7}"
    if engine:
        head += f" {'eng@1':>7} {'|e-o|':>7} {'|e-p|':>7}"
    print(head + f" {'sec':>6}", flush=True)
    rows, max_ours, max_pil, failed = [], None, None, False
    for v in manifest:
        started = time.perf_counter()
        rho, pre = v["resolution"], v["preprocessing"]
        session = ort.InferenceSession(str(args.models / v["file"]), opts, providers=["CPUExecutionProvider"])
        row = {"name": v["name"], "resolution": rho, "images": len(labels)}
        row["pillow_top1"], row["pillow_top5"] = accuracy(
            session, pillow.nhwc(rho, pre["scale"], pre["offset"]), classes, v["label_offset"])
        ours_t1 = ours_t5 = None
        if args.ours_npy_dir:
            ours = load_ours_npy(args.ours_npy_dir, rho, args.limit)
            if len(ours) > len(labels):
                sys.exit(f"inputs_{rho}.npy has {len(ours)} images, labels.tsv only {len(labels)}")
            ours_t1, ours_t5 = accuracy(session, ours, classes[:len(ours)], v["label_offset"])
            row.update(ours_images=len(ours), ours_top1=ours_t1, ours_top5=ours_t5)
        line = f"{v['name']:<24} {len(labels):>5} " + " ".join(
            fmt(x) for x in (row["pillow_top1"], row["pillow_top5"], ours_t1, ours_t5))
        if engine:
            e = engine.get(v["name"])
            d_ours = d_pil = None
            if e is not None and e["images"] == len(labels):
                d_pil = abs(e["top1"] - row["pillow_top1"])
                max_pil = max(max_pil or 0.0, d_pil)
                failed |= d_pil > MAX_DIFF_PILLOW
            if e is not None and ours_t1 is not None and e["images"] == row["ours_images"]:
                d_ours = abs(e["top1"] - ours_t1)
                max_ours = max(max_ours or 0.0, d_ours)
                failed |= d_ours > MAX_DIFF_OURS
            if e is not None:
                row.update(engine_images=e["images"], engine_top1=e["top1"], engine_top5=e["top5"],
                           diff_ours_top1=d_ours, diff_pillow_top1=d_pil)
            line += f" {fmt(e and e['top1'])} {fmt(d_ours)} {fmt(d_pil)}"
        row["seconds"] = time.perf_counter() - started
        print(line + f" {row['seconds']:6.1f}", flush=True)
        rows.append(row)

    summary = {"onnxruntime": ort.__version__, "images": len(labels), "threads": args.threads,
               "graph_optimisations": not args.no_fusion, "variants": rows}
    if engine:
        summary.update(max_diff_ours=max_ours, max_diff_pillow=max_pil,
                       limits={"ours": MAX_DIFF_OURS, "pillow": MAX_DIFF_PILLOW}, passed=not failed)
        checks = (("on our tensors", max_ours, MAX_DIFF_OURS), ("with Pillow   ", max_pil, MAX_DIFF_PILLOW))
        for what, worst, limit in checks:
            shown = "not compared" if worst is None else f"{worst:.2f} points"
            print(f"max |engine - ORT {what}| top-1: {shown} (limit {limit})")
        if max_ours is None and max_pil is None:
            print("note: no variant of --ours-json matched by name and image count; nothing compared")
        print("FAIL" if failed else "OK")
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
