"""What the OIP acceptance scripts share: arguments, the sample images, the preprocessed
tensors written by `mobilenet-serve preprocess`, and our own /classify as the reference."""

import argparse
import json
import os
import urllib.request

import numpy as np


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--http", required=True, help="host:port of the HTTP port")
    p.add_argument("--grpc", required=True, help="host:port of the gRPC port")
    p.add_argument("--data", required=True, help="folder with the images and labels.tsv")
    p.add_argument("--tensors", required=True, help="folder with inputs_<rho>.npy (NHWC)")
    p.add_argument("--variants", required=True, help="comma-separated variant names")
    p.add_argument("--images", type=int, default=8)
    return p.parse_args()


def sample(data_dir, n):
    """The first n images of labels.tsv: (file bytes, ImageNet class index)."""
    rows = []
    with open(os.path.join(data_dir, "labels.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            name, cls = line.split("\t")[:2]
            with open(os.path.join(data_dir, name), "rb") as img:
                rows.append((img.read(), int(cls)))
            if len(rows) == n:
                break
    return rows


def resolution(variant):
    return int(variant.rsplit("_", 1)[1])


def nchw(tensors_dir, variant, n):
    """The first n preprocessed images of the sample for this variant's resolution, as NCHW."""
    nhwc = np.load(os.path.join(tensors_dir, f"inputs_{resolution(variant)}.npy"))[:n]
    return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)).astype(np.float32)


def reference(http, variant, images):
    """Our own POST /classify answers: (ImageNet index, label) of each image's top-1."""
    out = []
    for img in images:
        req = urllib.request.Request(
            f"http://{http}/classify?model={variant}&top_k=1",
            data=img,
            headers={"content-type": "image/jpeg"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            top = json.load(r)["predictions"][0]
        out.append((top["index"], top["label"]))
    return out


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"  ok  {what}")
