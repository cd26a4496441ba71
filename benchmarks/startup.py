"""What refmarshal costs and saves at the start of a process, in a venv where it is enabled
(`refmarshal build && refmarshal enable`, or `benchmarks/imports.py` made one):

    python benchmarks/startup.py --venv VENV hook [--runs 150] [--line TEXT]
    python benchmarks/startup.py --venv VENV first-import [--runs 20] [--clock wall|cpu]
    python benchmarks/startup.py --venv VENV imports [--runs 30] STATEMENT ...

hook          `VENV/bin/python -c pass` with refmarshal.pth in site-packages and moved away,
              interleaved: the start-up hook's cost.  `--line TEXT` puts TEXT in the .pth
              instead of refmarshal's line for the hook arm (e.g. "import sys": what any .pth
              line costs).
first-import  in fresh processes after start, each step the first import through the image
              takes, timed in turn: the accelerator's C module, the finder it makes (opening
              the image), its place on sys.meta_path, then find_spec and get_code of two modules
              (json, keyword), first or second in turn: the first's extra time is part of the
              fixed cost.  `--runs` processes (default 20), medians.
imports       each statement in fresh processes, REFMARSHAL=0 (stock) and the image interleaved:
              median wall time of the whole process and of the statement inside it, and how
              many bytes of the image the statement read.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# Children run in an empty folder: run from a checkout, '' on sys.path would find the
# checkout's refmarshal instead of the venv's (the hook then hands over to it).
NEUTRAL = tempfile.mkdtemp(prefix="rm-startup-")

FIRST_IMPORT = r"""
import sys, time
T = {"wall": time.perf_counter, "cpu": time.thread_time}[sys.argv[3]]
steps = []
def step(name, f):
    t = T(); r = f(); steps.append((name, (T() - t) * 1e3)); return r
S = sys.modules["refmarshal._startup"]   # the .pth line loaded it (REFMARSHAL=0: did nothing)
# What stock import would pay at its first import too: a FileFinder (a directory listing) for
# every sys.path entry, and (sys.argv[4]) a first module loaded from a .pyc (the modules
# imported at start are frozen): its Python steps run for the first time in the process.
from _frozen_importlib_external import PathFinder
PathFinder.find_spec("refmarshal_benchmark_no_such_module")
if sys.argv[4] == "warm":
    import colorsys
# what PendingFinder.find_spec does at the first import (_startup._install_quickly), step by
# step: the accelerator's C module, the finder it makes (opening the image), its place
hook = step("refmarshal._accel._hook (the .so)", S.load_hook_module)
f = step("open_finder", lambda: hook.open_finder(S.default_image_path(), True,
                                                 S.warn_in_import))
step("place", lambda: S.place(f))
first, second = sys.argv[1:3]
for i, name in enumerate((first, second)):
    spec = step(f"find_spec {i}", lambda: f.find_spec(name))
    step(f"get_code {i}", lambda: spec.loader.get_code(name))
assert f.hits == 2, f
import json
print(json.dumps(steps))
print("imported:", " ".join(m for m in ("refmarshal", "refmarshal.importer",
                                        "_cffi_backend", "refmarshal._accel._loader",
                                        "refmarshal.format", "refmarshal.errors", "struct",
                                        "zlib", "warnings") if m in sys.modules) or "-")
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
                subprocess.run([py, "-c", "pass"], env=clean_env(), check=True, cwd=NEUTRAL)
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
    dw = statistics.median(wall["hook"]) - statistics.median(wall["no hook"])
    dc = statistics.mean(cpu["hook"]) - statistics.mean(cpu["no hook"])
    print(f"  difference: wall median {dw:+.2f} ms, CPU mean {dc:+.2f} ms")


def first_import(args):
    runs = []
    pair = ("json", "keyword")      # two modules the image holds, not imported at start
    also = set()
    for i in range(args.runs):
        first, second = pair if i % 2 else pair[::-1]
        out = subprocess.run([python(args.venv), "-c", FIRST_IMPORT, first, second, args.clock,
                              "cold" if args.cold else "warm"],
                             env=clean_env(REFMARSHAL="0"), capture_output=True, text=True,
                             check=True, cwd=NEUTRAL).stdout.splitlines()
        steps = dict(json.loads(out[0]))
        # by module: its find_spec and get_code as the process's first or second
        for k, n in (("0", first), ("1", second)):
            steps[f"find_spec {n} ({'first' if k == '0' else 'second'})"] = steps.pop(
                f"find_spec {k}")
            steps[f"get_code {n} ({'first' if k == '0' else 'second'})"] = steps.pop(
                f"get_code {k}")
        runs.append(steps)
        also.add(out[1])
    keys = dict.fromkeys(k for r in runs for k in r)      # each module first in half the runs
    med = {k: statistics.median(r[k] for r in runs if k in r) for k in keys}
    print(f"the first import's steps, {args.runs} fresh processes (REFMARSHAL=0, each step "
          f"timed by hand in the order the start-up hook takes them), {args.clock} time, ms, "
          f"median:")
    fixed = 0.0
    for name, ms in med.items():
        if name.startswith(("find_spec ", "get_code ")):
            continue
        fixed += ms
        print(f"  {name:34s} {ms:6.3f}")
    # the first lookup and load pay once for what later ones find ready (the directory's
    # pages, the singletons' table...): the same module's first less its second
    for what in ("find_spec", "get_code"):
        for n in pair:
            a, b = med[f"{what} {n} (first)"], med[f"{what} {n} (second)"]
            print(f"  {what} {n:9s} first {a:6.3f}, second {b:6.3f}")
        extra = statistics.mean(med[f"{what} {n} (first)"] - med[f"{what} {n} (second)"]
                                for n in pair)
        fixed += extra
        print(f"  {what + ': first less second':34s} {extra:6.3f}")
    print(f"  {'fixed cost in all':34s} {fixed:6.3f}")
    print(f"  {' / '.join(sorted(also))}")


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
                                     capture_output=True, text=True, check=True,
                                     cwd=NEUTRAL).stdout.split()
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
    f.add_argument("--runs", type=int, default=20)
    f.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the thread's CPU time, less disturbed by a busy machine")
    f.add_argument("--cold", action="store_true",
                   help="refmarshal's modules are the process's first loaded from a .pyc")
    i = sub.add_parser("imports", help="statements, stock against the image")
    i.add_argument("--runs", type=int, default=30)
    i.add_argument("statements", nargs="+")
    args = ap.parse_args()
    {"hook": hook, "first-import": first_import, "imports": imports}[args.what](args)


if __name__ == "__main__":
    main()
