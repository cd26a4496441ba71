"""What refmarshal costs and saves at the start of a process, in a venv where it is enabled
(`refmarshal build && refmarshal enable`, or `benchmarks/imports.py` made one):

    python benchmarks/startup.py --venv VENV hook [--runs 150] [--line TEXT]
    python benchmarks/startup.py --venv VENV first-import [--runs 5]
    python benchmarks/startup.py --venv VENV imports [--runs 30] STATEMENT ...

hook          `VENV/bin/python -c pass` with refmarshal.pth in site-packages and moved away,
              interleaved: the start-up hook's cost.  `--line TEXT` puts TEXT in the .pth
              instead of refmarshal's line for the hook arm (e.g. "import sys": what any .pth
              line costs).
first-import  in one fresh process after start, each step the first import through the image
              takes, timed in turn: importing refmarshal's modules and the accelerator, opening
              the image, the first directory lookup and the first get_code.
imports       each statement in fresh processes, REFMARSHAL=0 (stock) and the image interleaved:
              median wall time of the whole process and of the statement inside it, and how
              many bytes of the image the statement read.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

FIRST_IMPORT = r"""
import sys, time
T = time.perf_counter
steps = []
def step(name, f):
    t = T(); f(); steps.append((name, (T() - t) * 1e3))
import refmarshal
step("refmarshal.errors", lambda: __import__("refmarshal.errors"))
step("refmarshal.importer", lambda: __import__("refmarshal.importer"))
step("refmarshal.format", lambda: __import__("refmarshal.format"))
step("_cffi_backend", lambda: __import__("_cffi_backend"))
step("refmarshal._accel._loader", lambda: __import__("refmarshal._accel._loader"))
step("refmarshal._accel.loader", lambda: __import__("refmarshal._accel.loader"))
from refmarshal._accel.loader import AccelImage
from refmarshal.importer import default_image_path
img = []
step("open", lambda: img.append(AccelImage(default_image_path())))
step("first_entry", lambda: img[0].entry("json.decoder"))
step("first_get_code", lambda: img[0].get_code("json.decoder"))
print(" ".join(f"{n}={ms:.3f}" for n, ms in steps))
print("imported:", " ".join(m for m in ("struct", "zlib") if m in sys.modules) or "-")
"""

IMPORTS = r"""
import sys, time
t = time.perf_counter()
exec(sys.argv[1])
ms = (time.perf_counter() - t) * 1e3
f = [f for f in sys.meta_path if type(f).__module__ == "refmarshal.importer"]
print(ms, f[0].image.bytes_read if f else 0)
"""


def python(venv):
    return os.path.join(venv, "bin", "python")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REFMARSHAL") and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env.update(extra)
    return env


def hook(args):
    py = python(args.venv)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = os.path.join(site, "refmarshal.pth")
    parked = pth + ".parked"
    if not os.path.exists(pth):
        sys.exit(f"{pth} does not exist: run `refmarshal enable` in the venv first")
    with open(pth) as fh:
        original = fh.read()
    wall = {"hook": [], "no hook": []}
    cpu = {"hook": [], "no hook": []}
    try:
        os.rename(pth, parked)
        for i in range(args.runs):
            for arm in ("hook", "no hook") if i % 2 else ("no hook", "hook"):
                if arm == "hook":
                    with open(pth, "w") as fh:
                        fh.write(args.line + "\n" if args.line is not None else original)
                elif os.path.exists(pth):
                    os.remove(pth)
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run([py, "-c", "pass"], env=clean_env(), check=True)
                wall[arm].append((time.perf_counter() - t0) * 1e3)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[arm].append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e3)
    finally:
        if os.path.exists(pth):
            os.remove(pth)
        os.rename(parked, pth)
    what = "refmarshal.pth" if args.line is None else f".pth line {args.line!r}"
    print(f"python -c pass, {args.runs} interleaved runs each, {what} in site-packages or not")
    for arm in wall:
        print(f"  {arm:8s} wall median {statistics.median(wall[arm]):6.2f} ms, "
              f"CPU mean {statistics.mean(cpu[arm]):6.2f} ms")
    print(f"  difference: wall median {statistics.median(wall['hook']) - statistics.median(wall['no hook']):+.2f} ms, "
          f"CPU mean {statistics.mean(cpu['hook']) - statistics.mean(cpu['no hook']):+.2f} ms")


def first_import(args):
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([python(args.venv), "-c", FIRST_IMPORT], env=clean_env(REFMARSHAL="0"),
                             capture_output=True, text=True, check=True).stdout.splitlines()
        runs.append(dict(kv.split("=") for kv in out[0].split()))
        also = out[1]
    print(f"the first import's steps, {args.runs} fresh processes, ms (min-max):")
    total = [sum(float(v) for v in r.values()) for r in runs]
    for name in runs[0]:
        vals = [float(r[name]) for r in runs]
        print(f"  {name:28s} {min(vals):.2f}-{max(vals):.2f}")
    print(f"  {'in all':28s} {min(total):.2f}-{max(total):.2f}")
    print(f"  {also}")


def imports(args):
    py = python(args.venv)
    print(f"{args.runs} interleaved runs per arm; medians; stock = REFMARSHAL=0")
    for stmt in args.statements:
        wall = {"0": [], "1": []}
        inner = {"0": [], "1": []}
        read = 0
        for i in range(args.runs):
            for arm in ("0", "1") if i % 2 else ("1", "0"):
                t0 = time.perf_counter()
                out = subprocess.run([py, "-c", IMPORTS, stmt], env=clean_env(REFMARSHAL=arm),
                                     capture_output=True, text=True, check=True).stdout.split()
                wall[arm].append((time.perf_counter() - t0) * 1e3)
                inner[arm].append(float(out[0]))
                if arm == "1":
                    read = int(out[1])
        w0, w1 = statistics.median(wall["0"]), statistics.median(wall["1"])
        i0, i1 = statistics.median(inner["0"]), statistics.median(inner["1"])
        print(f"  {stmt:28s} process: stock {w0:6.1f} image {w1:6.1f} ms ({w0 / w1:.2f}x); "
              f"statement: stock {i0:6.1f} image {i1:6.1f} ms ({i0 / i1:.2f}x); "
              f"image read {read / 1e6:.1f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", required=True, help="a venv where refmarshal is enabled")
    sub = ap.add_subparsers(dest="what", required=True)
    h = sub.add_parser("hook", help="the .pth hook's cost on `python -c pass`")
    h.add_argument("--runs", type=int, default=150)
    h.add_argument("--line", help="this .pth line instead of refmarshal's")
    f = sub.add_parser("first-import", help="the first import's fixed cost, step by step")
    f.add_argument("--runs", type=int, default=5)
    i = sub.add_parser("imports", help="statements, stock against the image")
    i.add_argument("--runs", type=int, default=30)
    i.add_argument("statements", nargs="+")
    args = ap.parse_args()
    {"hook": hook, "first-import": first_import, "imports": imports}[args.what](args)


if __name__ == "__main__":
    main()
