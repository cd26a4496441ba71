"""Materialise every standard-library module (minus test, idlelib, tkinter, lib2to3, turtledemo)
several ways, each in a fresh process, best of N runs, side by side:

  marshal              marshal.loads of each module's .pyc data (read into memory first), kept alive
  image                refmarshal's accelerator as shipped: open the image, get_code every module
                       (bytes read on demand into anonymous memory, 4 KiB pages)
  image-huge-pages     the same with memory advised to use transparent huge pages
  image-file-mapping   the same with the file mapped privately (copy-on-write faults)
  memcpy               the floor: copy the image's bytes (already read) into fresh memory
  memcpy-huge-pages    the same into memory advised to use huge pages

    python benchmarks/materialize.py [--runs 5]
"""

import argparse
import marshal
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

EXCLUDE = ("test", "idlelib", "tkinter", "lib2to3", "turtledemo")

_IMAGE = """
import sys, time
from refmarshal._accel.loader import AccelImage
names = open(sys.argv[3]).read().split()
t, c = time.perf_counter(), time.process_time()
img = AccelImage(sys.argv[2], mode=%r)
keep = [img.get_code(n) for n in names]
print(time.perf_counter() - t, time.process_time() - c)
"""

CHILD = {
    "marshal": """
import marshal, sys, time
blobs = marshal.load(open(sys.argv[1], "rb"))
t, c = time.perf_counter(), time.process_time()
keep = [marshal.loads(b) for b in blobs]
print(time.perf_counter() - t, time.process_time() - c)
""",
    "image": _IMAGE % "small-pages",
    "image-huge-pages": _IMAGE % "huge-pages",
    "image-file-mapping": _IMAGE % "file-mapping",
    "memcpy": """
import sys, time
data = open(sys.argv[2], "rb").read()
t, c = time.perf_counter(), time.process_time()
copy = bytearray(data)
print(time.perf_counter() - t, time.process_time() - c)
""",
    "memcpy-huge-pages": """
import mmap, sys, time
data = open(sys.argv[2], "rb").read()
t, c = time.perf_counter(), time.process_time()
m = mmap.mmap(-1, len(data))
m.madvise(mmap.MADV_HUGEPAGE)
m[:] = data
print(time.perf_counter() - t, time.process_time() - c)
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
    names_file = os.path.join(tmp, "names.txt")
    with open(names_file, "w") as fh:
        fh.write("\n".join(result.modules))
    best, best_cpu = {}, {}
    for _ in range(args.runs):
        for kind, code in CHILD.items():
            # in the temporary folder: run from a checkout, '' on sys.path would find the
            # checkout's refmarshal (without its built accelerator) instead of the installed one
            out = subprocess.run([sys.executable, "-c", code, blob_file, img, names_file],
                                 check=True, capture_output=True, text=True, cwd=tmp).stdout
            wall, cpu = map(float, out.split())
            best[kind] = min(best.get(kind, 1e9), wall)
            best_cpu[kind] = min(best_cpu.get(kind, 1e9), cpu)
    print(f"CPython {sys.version.split()[0]}: {len(result.modules)} modules, "
          f"marshal data {sum(map(len, blobs)) / 1e6:.1f} MB, image {result.size / 1e6:.1f} MB; "
          f"best of {args.runs} (wall clock; CPU time of the process in brackets)")
    for kind in CHILD:
        print(f"  {kind:20s} {best[kind] * 1000:8.1f} ms ({best_cpu[kind] * 1000:6.1f})"
              f"   marshal/this {best['marshal'] / best[kind]:6.2f}x")
    floor = min(best["memcpy"], best["memcpy-huge-pages"])
    print(f"  image vs marshal.loads: {best['marshal'] / best['image']:.2f}x faster; "
          f"image vs memcpy floor: {best['image'] / floor:.2f}x the floor "
          f"(the floor itself is {best['marshal'] / floor:.1f}x faster than marshal)")


if __name__ == "__main__":
    main()
