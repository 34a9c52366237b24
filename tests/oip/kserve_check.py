"""Acceptance with the KServe Python SDK (PyPI `kserve`), a second independent client of the
Open Inference Protocol: its REST client (v2 protocol) and its gRPC client doing health checks
and inference with JSON tensors, binary images and the classification parameter, compared with
our own /classify answers. Runs in its own process: kserve and tritonclient.grpc both register
the protobuf package `inference` and cannot be imported together."""

import asyncio
import sys

import numpy as np

from common import check, nchw, parse_args, reference, sample

args = parse_args(__doc__)
# Importing kserve parses sys.argv as a model server's command line: hide ours from it.
sys.argv = sys.argv[:1]
from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput  # noqa: E402

rows = sample(args.data, args.images)
images = np.array([img for img, _ in rows], dtype=np.object_)
n = len(rows)


def image_input():
    i = InferInput("image", [n], "BYTES")
    i.set_data_from_numpy(images)  # binary over REST, raw_input_contents over gRPC
    return i


def verify(variant, result, expected_top, what):
    out = {o.name: o.as_numpy() for o in result.outputs}
    check(set(out) == {"logits", "probs"}, f"{what}: outputs logits and probs")
    check(out["logits"].argmax(1).tolist() == expected_top, f"{what}: top-1 equals /classify's")
    check(np.allclose(out["probs"].astype(np.float64).sum(1), 1, atol=1e-4), f"{what}: probs sum to 1")
    return out["logits"]


async def main():
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    base = f"http://{args.http}"
    grpc = InferenceGRPCClient(args.grpc, timeout=60)
    print(f"== kserve REST at {base} and gRPC at {args.grpc}")
    check(await rest.is_server_live(base), "REST server live")
    check(await rest.is_server_ready(base), "REST server ready")
    check(await grpc.is_server_live(), "gRPC server live")
    check(await grpc.is_server_ready(), "gRPC server ready")
    for variant in args.variants.split(","):
        print(f"-- {variant}")
        check(await rest.is_model_ready(base, variant), "REST model ready")
        check(await grpc.is_model_ready(variant), "gRPC model ready")
        ref = reference(args.http, variant, [i for i, _ in rows])
        offset = 1  # TF-slim's background class comes first in the 1001 outputs
        top = [i + offset for i, _ in ref]

        r = await rest.infer(base, InferRequest(variant, [image_input()]), model_name=variant)
        logits = verify(variant, r, top, "REST images (binary)")
        r = await grpc.infer(InferRequest(variant, [image_input()]))
        verify(variant, r, top, "gRPC images (raw)")

        # FP32 as a plain JSON list over REST and as typed contents over gRPC.
        x = nchw(args.tensors, variant, 2)
        for name, call in (
            ("REST FP32 JSON", lambda req: rest.infer(base, req, model_name=variant)),
            ("gRPC FP32 contents", lambda req: grpc.infer(req)),
        ):
            inp = InferInput("input", list(x.shape), "FP32", data=x.flatten().tolist())
            r = await call(InferRequest(variant, [inp], request_outputs=[RequestedOutput("logits")]))
            got = r.outputs[0].as_numpy()
            diff = float(np.abs(got - logits[:2]).max())
            check(diff < 1e-3 * max(1.0, float(np.abs(logits).max())), f"{name}: same logits ({diff:.2e})")

        req = InferRequest(
            variant, [image_input()],
            request_outputs=[RequestedOutput("probs", parameters={"classification": 3})])
        r = await rest.infer(base, req, model_name=variant)
        labels = [row[0].split(":", 2)[2] for row in r.outputs[0].as_numpy()]
        check(labels == [label for _, label in ref], "REST classification labels equal /classify's")
    await rest.close()
    await grpc.close()
    print("kserve: all checks passed")


asyncio.run(main())
