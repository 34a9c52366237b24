"""Writes the starting inputs of each fuzz target into fuzz/regressions/<target>/seed-*
(the import target's two mini models into the ignored fuzz/corpus/import/).

Run once when a target or its input format changes (needs Pillow, numpy and onnx from PyPI):
    python3 fuzz/make_seeds.py
The files are small, made here, and committed: the fuzzer starts from them and the normal
tests replay them (tests/fuzz_regressions.rs).
"""

import base64
import io
import json
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

OUT = Path(__file__).resolve().parent / "regressions"


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def picture(w, h, mode="RGB"):
    """A small gradient, so that encoders have some structure to compress."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def encoded(img, fmt, **opts):
    buf = io.BytesIO()
    img.save(buf, fmt, **opts)
    return buf.getvalue()


def images():
    """Every format and pixel kind the decoder handles, each a few hundred bytes."""
    return {
        "baseline.jpg": encoded(picture(24, 16), "JPEG", quality=80),
        "progressive.jpg": encoded(picture(16, 24), "JPEG", progressive=True),
        "gray.jpg": encoded(picture(16, 16, "L"), "JPEG"),
        "cmyk.jpg": encoded(picture(16, 16, "CMYK"), "JPEG"),
        "rgb.png": encoded(picture(17, 9), "PNG"),
        "rgba.png": encoded(picture(9, 17, "RGBA"), "PNG"),
        "palette.png": encoded(picture(16, 16, "P"), "PNG"),
        "gray16.png": encoded(picture(8, 8, "I;16"), "PNG"),
        "interlaced.png": encoded(picture(16, 16), "PNG", interlace=1),
        "animated.gif": encoded(
            picture(12, 12, "P"),
            "GIF",
            save_all=True,
            append_images=[picture(12, 12, "P").rotate(90)],
        ),
        "rgb.bmp": encoded(picture(7, 5), "BMP"),
        "lossy.webp": encoded(picture(16, 16), "WEBP", quality=50),
        "lossless.webp": encoded(picture(16, 16), "WEBP", lossless=True),
    }


def classify_bodies(imgs):
    """content-type line, query line, body."""
    png, jpg = imgs["rgb.png"], imgs["baseline.jpg"]
    b64 = base64.b64encode(png).decode()
    boundary = "XyZ"
    form = b"".join(
        f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="{n}"\r\n'
        f"content-type: image/png\r\n\r\n".encode() + data + b"\r\n"
        for n, data in [("a.png", png), ("b.jpg", jpg)]
    ) + f"--{boundary}--\r\n".encode()
    return {
        "raw": b"image/png\ntop_k=3\n" + png,
        "octet": b"application/octet-stream\nmodel=mobilenet_v1_0.25_128&timeout_ms=50\n" + jpg,
        "json-one": b"application/json\nalpha=0.5&resolution=160\n"
        + json.dumps({"image": "data:image/png;base64," + b64}).encode(),
        "json-many": b"application/json\nmax_latency_ms=3&fallback=fastest\n"
        + json.dumps({"images": [b64[:40] + "\n" + b64[40:], b64]}).encode(),
        "multipart": f"multipart/form-data; boundary={boundary}\nmin_top1=0.6\n".encode() + form,
    }


def oip_rest_bodies(imgs):
    """Four bytes of Inference-Header-Content-Length (little-endian), then the body."""

    def body(request, binary=b""):
        head = json.dumps(request).encode()
        length = len(head) if binary else 0xFFFFFFFF
        return struct.pack("<I", length) + head + binary

    fp32 = {
        "id": "a",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 2],
             "data": [[0.5, -1.0, 1e-3, 2.0]] * 3}
        ],
        "outputs": [{"name": "probs", "parameters": {"classification": 3}}],
        "parameters": {"timeout": 100000},
    }
    raw = np.arange(12, dtype="<f4").tobytes()
    binary_fp32 = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 2],
             "parameters": {"binary_data_size": len(raw)}}
        ],
        "parameters": {"binary_data_output": True},
    }
    png = imgs["rgb.png"]
    images = struct.pack("<I", len(png)) + png
    binary_bytes = {
        "model_name": "mobilenet_v1_1.0_224",
        "model_version": "1",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1, 1],
             "parameters": {"binary_data_size": len(images)}}
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    }
    json_bytes = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "data": ["abc", "\u00e9"]}]
    }
    return {
        "fp32-json": body(fp32),
        "fp32-binary": body(binary_fp32, raw),
        "bytes-binary": body(binary_bytes, images),
        "bytes-json": body(json_bytes),
    }


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def text(number, s):
    return field(number, 2, s.encode())


def parameter(key, number, value):
    """A map<string, InferParameter> entry; `number` picks the oneof field."""
    wire = 0 if number in (1, 2, 5) else 2
    inner = field(number, wire, value if wire == 0 else value.encode())
    return text(1, key) + field(2, 2, inner)


def oip_grpc_requests(imgs):
    """ModelInferRequest messages, encoded by hand (the schema is proto/inference.proto)."""

    def tensor(name, datatype, shape, contents=b"", params=b""):
        packed = b"".join(varint(d) for d in shape)
        return text(1, name) + text(2, datatype) + field(3, 2, packed) + params + contents

    raw = np.linspace(-1, 1, 12, dtype="<f4").tobytes()
    png = imgs["rgb.png"]
    fp32 = np.linspace(-1, 1, 12, dtype="<f4").tobytes()
    typed = tensor("input", "FP32", [1, 3, 2, 2], field(5, 2, field(6, 2, fp32)))
    output = field(6, 2, text(1, "probs") + field(2, 2, parameter("classification", 2, 5)))
    timeout = field(4, 2, parameter("timeout", 2, 250000))
    return {
        "fp32-raw": text(1, "mobilenet_v1_0.25_128") + text(3, "r1")
        + field(5, 2, tensor("input", "FP32", [1, 3, 2, 2])) + field(7, 2, raw) + timeout,
        "fp32-typed": text(1, "mobilenet_v1_1.0_224") + text(2, "1") + field(5, 2, typed) + output,
        "bytes-raw": text(1, "mobilenet_v1_1.0_224")
        + field(5, 2, tensor("image", "BYTES", [1]))
        + field(7, 2, struct.pack("<I", len(png)) + png),
        "bytes-typed": text(1, "mobilenet_v1_1.0_224")
        + field(5, 2, tensor("image", "BYTES", [2, 1], field(5, 2, field(8, 2, png) + field(8, 2, b"x")))),
    }


def mini_mobilenet(nhwc, opset):
    """Stem conv, one depthwise-separable block, pooling and a classifier: every op the importer
    folds or fuses, at 8 channels and 16x16, so the file is a few kilobytes."""
    rng = np.random.default_rng(7)
    inits, nodes = [], []

    def weight(name, *dims):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, dims).astype(np.float32), name))
        return name

    size = 16
    shape = ["N", size, size, 3] if nhwc else ["N", 3, size, size]
    x = "input"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["t"], perm=[0, 3, 1, 2]))
        x = "t"
    nodes.append(helper.make_node("Conv", [x, weight("w0", 8, 3, 3, 3), weight("b0", 8)], ["c0"],
                                  kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    if opset >= 11:
        lo = numpy_helper.from_array(np.array(0, np.float32), "lo")
        hi = numpy_helper.from_array(np.array(6, np.float32), "hi")
        inits.extend([lo, hi])
        nodes.append(helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"]))
    else:
        nodes.append(helper.make_node("Clip", ["c0"], ["r0"], min=0.0, max=6.0))
    nodes.append(helper.make_node("Conv", ["r0", weight("w1", 8, 1, 3, 3)], ["c1"],
                                  kernel_shape=[3, 3], group=8, pads=[1, 1, 1, 1]))
    scale = numpy_helper.from_array(np.abs(rng.normal(1, 0.1, 8)).astype(np.float32) + 0.5, "var")
    inits.append(scale)
    nodes.append(helper.make_node("BatchNormalization",
                                  ["c1", weight("g", 8), weight("beta", 8), weight("mean", 8), "var"],
                                  ["n1"], epsilon=1e-3))
    nodes.append(helper.make_node("Relu", ["n1"], ["r1"]))
    nodes.append(helper.make_node("Conv", ["r1", weight("w2", 16, 8, 1, 1), weight("b2", 16)],
                                  ["c2"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("GlobalAveragePool", ["c2"], ["p"]))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], axis=1))
    nodes.append(helper.make_node("Gemm", ["f", weight("wf", 10, 16), weight("bf", 10)], ["g0"],
                                  transB=1))
    nodes.append(helper.make_node("Softmax", ["g0"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "mini",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


def main():
    imgs = images()
    for name, data in imgs.items():
        write("decode", name, data)
    for name, data in classify_bodies(imgs).items():
        write("classify_body", name, data)
    for name, data in oip_rest_bodies(imgs).items():
        write("oip_rest", name, data)
    for name, data in oip_grpc_requests(imgs).items():
        write("oip_grpc", name, data)
    # Models are data, not committed: they go to the local, ignored corpus directory.
    corpus = OUT.parent / "corpus" / "import"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "seed-nchw-opset13.onnx").write_bytes(mini_mobilenet(False, 13))
    (corpus / "seed-nhwc-opset9.onnx").write_bytes(mini_mobilenet(True, 9))
    for d in sorted(OUT.iterdir()):
        print(d.name, len(list(d.iterdir())), "files")


if __name__ == "__main__":
    main()
