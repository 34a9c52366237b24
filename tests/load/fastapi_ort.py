"""The peer a Python user would otherwise run: FastAPI + ONNX Runtime + Pillow, no batching.

Serves POST /classify?model=NAME&top_k=K with a raw JPEG body, preprocessing as the manifest says
(shorter side to round(rho/0.875) with Pillow's bilinear filter, centre crop, x*scale+offset, NCHW).
Run with several worker processes, one ONNX Runtime thread each:

    MODELS_DIR=../shared/models VARIANTS=mobilenet_v1_1.0_224 \
        uvicorn fastapi_ort:app --workers 2 --port 8100 --app-dir tests/load
"""

import io
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image

MODELS = os.environ.get("MODELS_DIR", "../shared/models")
THREADS = int(os.environ.get("ORT_THREADS", "1"))
with open(os.path.join(MODELS, "manifest.json")) as f:
    SPECS = {m["name"]: m for m in json.load(f)}
with open(os.path.join(MODELS, "imagenet_classes.txt")) as f:
    LABELS = [line.strip() for line in f]


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


WANTED = [v for v in os.environ.get("VARIANTS", ",".join(SPECS)).split(",") if v]
SESSIONS = {name: session(os.path.join(MODELS, SPECS[name]["file"])) for name in WANTED}
app = FastAPI()


def preprocess(data, spec):
    rho = spec["resolution"]
    pre = spec["preprocessing"]
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    short = round(rho / 0.875)
    if w <= h:
        size = (short, int(short * h / w))
    else:
        size = (int(short * w / h), short)
    img = img.resize(size, Image.BILINEAR)
    left = round((size[0] - rho) / 2)
    top = round((size[1] - rho) / 2)
    img = img.crop((left, top, left + rho, top + rho))
    x = np.asarray(img, dtype=np.float32) * pre["scale"] + pre["offset"]
    return x.transpose(2, 0, 1)[None]


@app.post("/classify")
async def classify(request: Request, model: str = WANTED[0], top_k: int = 5):
    if model not in SESSIONS:
        raise HTTPException(404, f"unknown model {model}")
    spec = SPECS[model]
    sess = SESSIONS[model]
    x = preprocess(await request.body(), spec)
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
    offset = spec.get("label_offset", 0)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    classes = p[offset:]
    best = np.argsort(-classes)[:top_k]
    return {
        "model": model,
        "predictions": [
            {"index": int(i), "label": LABELS[i], "score": float(classes[i])} for i in best
        ],
    }
