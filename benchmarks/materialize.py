"""Materialise every standard-library module (minus test, idlelib, tkinter, lib2to3, turtledemo)
three ways, each in a fresh process, best of N runs, side by side:

  marshal  marshal.loads of each module's .pyc data (read into memory first), results kept alive
  image    refmarshal's accelerator: Image.get_code for every module of an image of them
  memcpy   copying the image's bytes into fresh memory (the floor for bringing them in)

    python benchmarks/materialize.py [--runs 5]
"""

import argparse
import marshal
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

EXCLUDE = ("test", "idlelib", "tkinter", "lib2to3", "turtledemo")

CHILD = {
    "marshal": """
import marshal, sys, time
blobs = marshal.load(open(sys.argv[1], "rb"))
t = time.perf_counter()
keep = [marshal.loads(b) for b in blobs]
print(time.perf_counter() - t)
""",
    "image": """
import sys, time, refmarshal
t = time.perf_counter()
img = refmarshal.Image(sys.argv[2], implementation="accel")
keep = [img.get_code(n) for n in img.names()]
print(time.perf_counter() - t)
""",
    "memcpy": """
import sys, time
data = open(sys.argv[2], "rb").read()
t = time.perf_counter()
copy = bytearray(data)
print(time.perf_counter() - t)
""",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import corpus
    import refmarshal
    entries = [(n, p) for n, p in corpus.stdlib_modules() if n.split(".")[0] not in EXCLUDE]
    tmp = tempfile.mkdtemp()
    img = os.path.join(tmp, "stdlib.img")
    result = refmarshal.build(img, entries)
    blobs = []
    for n in result.modules:
        path = dict(entries)[n]
        blobs.append(marshal.dumps(compile(open(path, "rb").read(), path, "exec",
                                           dont_inherit=True)))
    blob_file = os.path.join(tmp, "blobs.marshal")
    with open(blob_file, "wb") as fh:
        marshal.dump(blobs, fh)
    best = {}
    for _ in range(args.runs):
        for kind, code in CHILD.items():
            out = subprocess.run([sys.executable, "-c", code, blob_file, img], check=True,
                                 capture_output=True, text=True).stdout
            best[kind] = min(best.get(kind, 1e9), float(out))
    print(f"CPython {sys.version.split()[0]}: {len(result.modules)} modules, "
          f"marshal data {sum(map(len, blobs)) / 1e6:.1f} MB, image {result.size / 1e6:.1f} MB; "
          f"best of {args.runs}")
    for kind in CHILD:
        print(f"  {kind:8s} {best[kind] * 1000:8.1f} ms")
    print(f"  image vs marshal.loads: {best['marshal'] / best['image']:.2f}x faster; "
          f"image vs memcpy floor: {best['image'] / best['memcpy']:.2f}x the floor")


if __name__ == "__main__":
    main()
