"""A load run through tritonclient's asyncio clients over HTTP and gRPC: for each variant and
concurrency level, that many callers classify one JPEG per request for a fixed time. Prints
throughput and latency percentiles; exits non-zero on any error."""

import argparse
import asyncio
import glob
import json
import os
import time

import numpy as np
import tritonclient.grpc.aio as tgrpc
import tritonclient.http.aio as thttp

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--http", required=True)
p.add_argument("--grpc", required=True)
p.add_argument("--data", required=True)
p.add_argument("--variants", default="mobilenet_v1_1.0_224,mobilenet_v1_0.25_128")
p.add_argument("--concurrency", default="1,4,16")
p.add_argument("--seconds", type=float, default=5.0)
p.add_argument("--json", help="also write the table here")
args = p.parse_args()

jpegs = [open(f, "rb").read() for f in sorted(glob.glob(os.path.join(args.data, "*.JPEG")))[:64]]
if not jpegs:
    raise SystemExit(f"no *.JPEG in {args.data}")


async def level(mod, client, variant, concurrency):
    latencies, errors = [], []
    stop = time.perf_counter() + args.seconds

    async def caller(k):
        i = k
        while time.perf_counter() < stop:
            inp = mod.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([jpegs[i % len(jpegs)]], dtype=np.object_))
            i += concurrency
            t0 = time.perf_counter()
            try:
                r = await client.infer(variant, [inp],
                                       outputs=[mod.InferRequestedOutput("probs", class_count=5)])
                r.as_numpy("probs")
                latencies.append(time.perf_counter() - t0)
            except Exception as e:  # every error counts, whatever its kind
                errors.append(str(e)[:120])

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t0
    ms = np.array(latencies) * 1e3
    return {
        "requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


async def main():
    rows = []
    for proto, mod, url in (("http", thttp, args.http), ("grpc", tgrpc, args.grpc)):
        client = mod.InferenceServerClient(url)
        for variant in args.variants.split(","):
            for c in (int(x) for x in args.concurrency.split(",")):
                r = await level(mod, client, variant, c)
                r.update(protocol=proto, variant=variant, concurrency=c)
                rows.append(r)
                print(f"{proto:4} {variant:24} c={c:<3} {r['rps']:8.1f} req/s  "
                      f"p50 {r['p50_ms'] or 0:7.2f} ms  p99 {r['p99_ms'] or 0:7.2f} ms  "
                      f"errors {r['errors']}" + (f" ({r['first_error']})" if r["errors"] else ""),
                      flush=True)
        await client.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = sum(r["errors"] for r in rows)
    if failed:
        raise SystemExit(f"{failed} requests failed")
    print("load: zero errors")


asyncio.run(main())
