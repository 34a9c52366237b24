"""Server-side time of large photos, `resize=exact` against `resize=fast`, on a running server.

Makes the photos with Pillow (a 12 MP "phone photo" two ways, progressive, grayscale, a 1080p
PNG and WebP) unless they exist, posts each REPEAT times per mode, and prints the median of each
stage of the server's own `timings_ms` and the ratio fast / exact. A benchmark: it prints numbers.

    python tests/load/photo.py --url http://127.0.0.1:8000 --data ../shared/imagenet/val1300 \
        --model mobilenet_v1_0.25_128 --out target/photos
"""

import argparse
import json
import os
import statistics
import urllib.request

from PIL import Image


def make_photos(data, out):
    """The inputs: every one from val1300's first images, at a phone camera's 4032x3024."""
    os.makedirs(out, exist_ok=True)
    names = sorted(n for n in os.listdir(data) if n.endswith(".JPEG"))
    paths = {
        "12mp_smooth.jpg": "a 227 px sample upscaled (bicubic): little detail",
        "12mp_detailed.jpg": "a mosaic of 13x18 samples: detail everywhere, like sensor noise",
        "12mp_progressive.jpg": "the mosaic, progressive",
        "12mp_gray.jpg": "the smooth photo in grayscale",
        "1080p.png": "the mosaic at 1920x1080, PNG",
        "1080p.webp": "the mosaic at 1920x1080, lossy WebP (quality 90)",
        "1080p_lossless.webp": "the mosaic at 1920x1080, lossless WebP",
    }
    if all(os.path.exists(os.path.join(out, p)) for p in paths):
        return paths
    first = Image.open(os.path.join(data, names[0])).convert("RGB")
    smooth = first.resize((4032, 3024), Image.BICUBIC)
    mosaic = Image.new("RGB", (4032, 3024))
    k = 0
    for y in range(0, 3024, 227):
        for x in range(0, 4032, 227):
            mosaic.paste(Image.open(os.path.join(data, names[k % len(names)])).convert("RGB"), (x, y))
            k += 1
    smooth.save(os.path.join(out, "12mp_smooth.jpg"), quality=90)
    mosaic.save(os.path.join(out, "12mp_detailed.jpg"), quality=90)
    mosaic.save(os.path.join(out, "12mp_progressive.jpg"), quality=90, progressive=True)
    smooth.convert("L").save(os.path.join(out, "12mp_gray.jpg"), quality=90)
    hd = mosaic.resize((1920, 1080), Image.BILINEAR)
    hd.save(os.path.join(out, "1080p.png"))
    hd.save(os.path.join(out, "1080p.webp"), quality=90)
    hd.save(os.path.join(out, "1080p_lossless.webp"), lossless=True)
    return paths


def post(url, body, content_type):
    request = urllib.request.Request(url, data=body, headers={"content-type": content_type})
    with urllib.request.urlopen(request) as reply:
        return json.loads(reply.read())["timings_ms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="mobilenet_v1_0.25_128")
    parser.add_argument("--out", default="target/photos")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--modes", default="exact,fast")
    args = parser.parse_args()
    photos = make_photos(args.data, args.out)
    stages = ["decode", "preprocess", "inference", "total"]
    print(f"{args.model}, median of {args.repeat} (ms, the server's timings)")
    print(f"{'image':<22} {'mode':<6} " + " ".join(f"{s:>10}" for s in stages) + "  fast/exact")
    for name, what in photos.items():
        body = open(os.path.join(args.out, name), "rb").read()
        kind = {"png": "image/png", "webp": "image/webp"}.get(name.rsplit(".", 1)[1], "image/jpeg")
        totals = {}
        for mode in args.modes.split(","):
            url = f"{args.url}/classify?model={args.model}&top_k=1&resize={mode}"
            post(url, body, kind)  # warm
            runs = [post(url, body, kind) for _ in range(args.repeat)]
            med = {s: statistics.median(r[s] for r in runs) for s in stages}
            totals[mode] = med["total"]
            ratio = f"{totals[mode] / totals['exact']:.2f}" if "exact" in totals and mode != "exact" else ""
            print(f"{name:<22} {mode:<6} " + " ".join(f"{med[s]:10.2f}" for s in stages) + f"  {ratio:>10}")
        print(f"  ({what}; {len(body) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
