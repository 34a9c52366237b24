"""Builds the large-image evaluation set: every labelled image of a folder (val1300) upscaled
SCALE times with Lanczos (not the bilinear filter of our resize, so that the set is not our own
resize run backwards) and re-encoded as baseline JPEG at quality 90, with its labels.tsv.

    python tests/large_images/build.py --data ../shared/imagenet/val1300 --out target/large4x

`mobilenet-serve eval --data OUT --resize exact|fast` then compares the two resize modes on
images several times larger than any model input (908x908 from 227x227), as photos are.
"""

import argparse
import os

from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with labels.tsv and its images")
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    labels = os.path.join(args.data, "labels.tsv")
    rows = [line for line in open(labels) if line.strip() and not line.startswith("#")]
    if args.limit:
        rows = rows[: args.limit]
    with open(os.path.join(args.out, "labels.tsv"), "w") as out:
        out.write(f"# {args.scale}x Lanczos upscale of {args.data}, JPEG quality {args.quality}\n")
        for row in rows:
            name = row.split("\t")[0]
            image = Image.open(os.path.join(args.data, name)).convert("RGB")
            big = image.resize((image.width * args.scale, image.height * args.scale), Image.LANCZOS)
            big.save(os.path.join(args.out, name), format="JPEG", quality=args.quality)
            out.write(row if row.endswith("\n") else row + "\n")
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
