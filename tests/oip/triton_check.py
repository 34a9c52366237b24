"""Acceptance with NVIDIA's tritonclient (PyPI), over HTTP and gRPC: health, metadata, inference
with FP32 tensors and with encoded images, the classification extension and error codes, each
compared with our own /classify answers and with each other."""

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from common import check, nchw, parse_args, reference, resolution, sample

args = parse_args(__doc__)
rows = sample(args.data, args.images)
images = np.array([img for img, _ in rows], dtype=np.object_)
n = len(rows)


def expect_error(call, http_status, grpc_status, what):
    try:
        call()
    except InferenceServerException as e:
        got = str(e.status())
        check(got in (str(http_status), grpc_status), f"{what}: {got} ({e.message()[:70]})")
        return
    raise AssertionError(f"{what}: no error")


for proto, mod, url in (("http", thttp, args.http), ("grpc", tgrpc, args.grpc)):
    print(f"== tritonclient.{proto} at {url}")
    c = mod.InferenceServerClient(url)
    check(c.is_server_live(), "server live")
    check(c.is_server_ready(), "server ready")
    meta = c.get_server_metadata(as_json=True) if proto == "grpc" else c.get_server_metadata()
    check({"classification", "binary_tensor_data"} <= set(meta["extensions"]),
          f"server metadata {meta['name']} {meta['version']} {meta['extensions']}")
    if proto == "http":
        check(not c.is_model_ready("no_such_model"), "unknown model is not ready")
    else:
        expect_error(lambda: c.is_model_ready("no_such_model"), 404, "StatusCode.NOT_FOUND",
                     "unknown model readiness")

    for variant in args.variants.split(","):
        rho = resolution(variant)
        print(f"-- {variant}")
        check(c.is_model_ready(variant), "model ready")
        m = c.get_model_metadata(variant, as_json=True) if proto == "grpc" else \
            c.get_model_metadata(variant)
        inputs = {t["name"]: [int(d) for d in t["shape"]] for t in m["inputs"]}
        outputs = {t["name"]: [int(d) for d in t["shape"]] for t in m["outputs"]}
        check(inputs == {"input": [-1, 3, rho, rho], "image": [-1]}, f"inputs {inputs}")
        classes = outputs["logits"][1]
        check(outputs == {"logits": [-1, classes], "probs": [-1, classes]}, f"outputs {outputs}")
        offset = classes - 1000

        # Encoded images, all outputs (binary over HTTP by default, raw over gRPC).
        img = mod.InferInput("image", [n], "BYTES")
        img.set_data_from_numpy(images)
        r = c.infer(variant, [img], timeout=30_000_000)
        logits, probs = r.as_numpy("logits"), r.as_numpy("probs")
        check(logits.shape == (n, classes) and probs.shape == (n, classes), "image -> shapes")
        check(np.allclose(probs.sum(1), 1, atol=1e-4), "probs sum to 1")
        top = logits.argmax(1)
        check((probs.argmax(1) == top).all(), "probs and logits agree")
        ref = reference(args.http, variant, [i for i, _ in rows])
        check([i + offset for i, _ in ref] == top.tolist(),
              f"top-1 equals /classify's ({sum(int(t) - offset == c for t, (_, c) in zip(top, rows))}"
              f"/{n} match the ImageNet labels)")

        # Preprocessed FP32 tensors must give the same logits as the server's preprocessing.
        x = nchw(args.tensors, variant, n)
        inp = mod.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        r = c.infer(variant, [inp], outputs=[mod.InferRequestedOutput("logits")])
        diff = float(np.abs(r.as_numpy("logits") - logits).max())
        check(diff < 1e-3 * max(1.0, float(np.abs(logits).max())), f"input -> same logits (max diff {diff:.2e})")

        if proto == "http":
            # Plain JSON both ways (no binary extension), on two images to keep the body small.
            inp = thttp.InferInput("input", [2, 3, rho, rho], "FP32")
            inp.set_data_from_numpy(x[:2], binary_data=False)
            r = c.infer(variant, [inp], outputs=[thttp.InferRequestedOutput("logits", binary_data=False)])
            check(r.get_response()["outputs"][0].get("data") is not None, "JSON output has data")
            diff = float(np.abs(r.as_numpy("logits") - logits[:2]).max())
            check(diff < 1e-3 * max(1.0, float(np.abs(logits).max())), f"JSON input -> same logits ({diff:.2e})")

        # The classification extension: "score:index:label", best first.
        r = c.infer(variant, [img], outputs=[mod.InferRequestedOutput("probs", class_count=5)])
        cls = r.as_numpy("probs")
        check(cls.shape == (n, 5), "classification shape [N, 5]")
        for row, p, (_, label) in zip(cls, probs, ref):
            score, index, name = row[0].decode().split(":", 2)
            assert int(index) == p.argmax(), (index, p.argmax())
            assert abs(float(score) - p.max()) < 1e-5, (score, p.max())
            assert name == label, (name, label)
            scores = [float(s.decode().split(":")[0]) for s in row]
            assert scores == sorted(scores, reverse=True), scores
        check(True, "classification strings match probs and /classify's labels")

        # Errors a client can cause, with the protocol's codes.
        bad = mod.InferInput("input", [1, 3, rho + 1, rho + 1], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, rho + 1, rho + 1), np.float32))
        expect_error(lambda: c.infer(variant, [bad]), 400, "StatusCode.INVALID_ARGUMENT", "wrong shape")
        junk = mod.InferInput("image", [1], "BYTES")
        junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        expect_error(lambda: c.infer(variant, [junk]), 400, "StatusCode.INVALID_ARGUMENT", "not an image")
        expect_error(lambda: c.infer(variant, [img], outputs=[mod.InferRequestedOutput("nope")]),
                     400, "StatusCode.INVALID_ARGUMENT", "unknown output")
    expect_error(lambda: c.infer("no_such_model", [img]), 404, "StatusCode.NOT_FOUND", "unknown model")

    # The model repository extension (the server runs with --model-control-mode explicit).
    def index():
        listed = c.get_model_repository_index(as_json=True) if proto == "grpc" else \
            c.get_model_repository_index()
        listed = listed.get("models", []) if isinstance(listed, dict) else listed
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in listed}
    names = args.variants.split(",")
    listed = index()
    check(all(listed[v][0] == "READY" for v in names), f"repository index: {len(listed)} models, "
          f"{sum(s == 'READY' for s, _ in listed.values())} ready")
    gone = names[-1]
    c.unload_model(gone)
    check(index()[gone] == ("UNAVAILABLE", "unloaded"), f"unload_model({gone}): UNAVAILABLE, unloaded")
    if proto == "http":
        check(not c.is_model_ready(gone), "an unloaded model is not ready")
    expect_error(lambda: c.infer(gone, [img]), 404, "StatusCode.NOT_FOUND", "inference on an unloaded model")
    c.load_model(gone)
    check(index()[gone][0] == "READY" and c.is_model_ready(gone), f"load_model({gone}): READY again")
    r = c.infer(gone, [img], outputs=[mod.InferRequestedOutput("logits")])
    check(r.as_numpy("logits").shape[0] == n, "inference after the reload")
    expect_error(lambda: c.load_model("no_such_model"), 404, "StatusCode.NOT_FOUND", "load of an unknown model")
    c.close()
print("tritonclient: all checks passed")
