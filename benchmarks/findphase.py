"""The import system's find phase alone, stock against the image, without a profiler's per-call
overhead, in a venv where refmarshal is enabled (`benchmarks/imports.py` makes one):

    python benchmarks/findphase.py --venv VENV [--rounds 10] [STATEMENT ...]

For each statement (default: import sympy / boto3 / django.contrib.admin):

  record   one stock run (REFMARSHAL=0) of the statement notes every call the import system
           makes to importlib._bootstrap._find_spec (every finder on sys.meta_path): the name,
           the path it was given (a package's __path__, as a list) and the spec's origin.
  replay   fresh `VENV/bin/python -c` processes call _find_spec with that sequence, nothing
           else, one timer around the first call (which, with the image, opens it: the .pth
           hook's PendingFinder installs the finder) and one around the rest.  Arms stock
           (REFMARSHAL=0) and image interleaved, their order alternating by round.  A
           top-level name that nothing provided in the recording (`try: import nt`) is asked
           for as the import statement asks, with __import__ (failing), in both arms: the
           image's finder answers such a name only when C import asks (rm_import.c:
           answer_absent), and the failed import's own cost (about 12 us) is in both.

Every replay's specs must have the origins of the recording, in both arms (a mismatch is
reported and fails the run).  What replay leaves out, in both arms alike: the module bodies
between the calls (so caches are warmer than in a real import) and what those bodies do to
sys.path, sys.meta_path or sys.path_hooks (botocore's vendored six appends a finder to
sys.meta_path, which stock consults only after PathFinder failed: specs it gave in the
recording are not compared).

Reported per statement: medians of the rounds (ms) for the first call, the rest and the whole,
the spread (min-max), and image / stock.
"""

import argparse
import marshal
import os
import statistics
import subprocess
import sys
import tempfile

STATEMENTS = ["import sympy", "import boto3", "import django.contrib.admin"]

# Run as `python -c RECORD STATEMENT OUT`, stock: the _find_spec calls the statement makes.
RECORD = r'''
import sys, marshal
import _frozen_importlib as b
stmt, out = sys.argv[1], sys.argv[2]
orig = b._find_spec
calls = []
def _find_spec(name, path, target=None):
    spec = orig(name, path, target)
    calls.append([name, None if path is None else list(path), spec])
    return spec
before = list(sys.meta_path)
b._find_spec = _find_spec
try:
    exec(stmt)
finally:
    b._find_spec = orig
# a spec from a finder the statement put on sys.meta_path (botocore's vendored six) cannot
# be replayed: "?" accepts whatever replay finds
added = [f for f in sys.meta_path if f not in before]
for c in calls:
    spec = c[2]
    outside = spec is not None and any(spec.loader is f or type(spec.loader) is type(f)
                                       for f in added)
    c[2] = "?" if outside else None if spec is None else str(spec.origin)
calls = [tuple(c) for c in calls]
with open(out, "wb") as fh:
    marshal.dump(calls, fh)
'''

# Run as `python -c REPLAY CALLS`: the calls, timed; prints marshal'd results as hex.  Imports
# nothing that is not built in before its timer stops.
REPLAY = r'''
import sys, marshal
from time import perf_counter_ns as now
import _frozen_importlib as b
with open(sys.argv[1], "rb") as fh:
    calls = marshal.loads(fh.read())
fs = b._find_spec
def absent(name):
    try:
        __import__(name)
    except ModuleNotFoundError:
        return None
    raise SystemExit(f"{name} was found")
n0, p0, o0 = calls[0]
t0 = now()
first = fs(n0, p0)
t1 = now()
specs = [absent(n) if o is None and p is None else fs(n, p) for n, p, o in calls[1:]]
t2 = now()
specs.insert(0, first)
origins = [None if s is None else str(s.origin) for s in specs]
image = any(type(f).__module__.startswith("refmarshal") for f in sys.meta_path)
sys.stdout.write(marshal.dumps((t1 - t0, t2 - t1, origins, image)).hex())
'''


def child_env(stock):
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("REFMARSHAL_IMAGE", None)
    env.pop("REFMARSHAL", None)
    if stock:
        env["REFMARSHAL"] = "0"
    return env


def record(python, stmt, out, cwd):
    subprocess.run([python, "-c", RECORD, stmt, out], env=child_env(True), cwd=cwd, check=True)
    with open(out, "rb") as fh:
        return marshal.load(fh)


def replay(python, calls_file, stock, cwd):
    proc = subprocess.run([python, "-c", REPLAY, calls_file], env=child_env(stock), cwd=cwd,
                          check=True, capture_output=True, text=True)
    first, rest, origins, image = marshal.loads(bytes.fromhex(proc.stdout))
    if image == stock:
        sys.exit(f"findphase: the {'stock' if stock else 'image'} arm ran "
                 f"{'with' if image else 'without'} the image (is refmarshal enabled?)")
    return first, rest, origins


def spread(values):
    return f"{min(values) / 1e6:.2f}-{max(values) / 1e6:.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("statements", nargs="*", default=STATEMENTS)
    opts = ap.parse_args(argv)
    python = os.path.join(opts.venv, "bin", "python")
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"CPython {version}, {opts.venv}, {opts.rounds} rounds, medians (ms), spread min-max")
    print("| statement | calls | stock first | stock rest | stock all | image first | "
          "image rest | image all | image / stock |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = False
    with tempfile.TemporaryDirectory(prefix="rm-findphase-") as tmp:
        cwd = os.path.join(tmp, "cwd")       # an empty current directory ('' on sys.path)
        os.mkdir(cwd)
        for k, stmt in enumerate(opts.statements):
            calls_file = os.path.join(tmp, f"calls{k}")
            calls = record(python, stmt, calls_file, cwd)
            want = [o for n, p, o in calls]
            times = {True: ([], []), False: ([], [])}
            for r in range(opts.rounds):
                for stock in ((True, False) if r % 2 == 0 else (False, True)):
                    first, rest, origins = replay(python, calls_file, stock, cwd)
                    bad = [(c[0], o, w) for c, o, w in zip(calls, origins, want)
                           if o != w and w != "?"]
                    if bad or len(origins) != len(want):
                        print(f"{stmt}: {'stock' if stock else 'image'} replay found other "
                              f"specs than the recording, e.g. {bad[:3]}", file=sys.stderr)
                        failed = True
                    times[stock][0].append(first)
                    times[stock][1].append(rest)
            cells = []
            alls = {}
            for stock in (True, False):
                f, rest = times[stock]
                a = [x + y for x, y in zip(f, rest)]
                alls[stock] = statistics.median(a)
                cells += [f"{statistics.median(f) / 1e6:.2f} ({spread(f)})",
                          f"{statistics.median(rest) / 1e6:.2f} ({spread(rest)})",
                          f"{alls[stock] / 1e6:.2f} ({spread(a)})"]
            ratio = alls[False] / alls[True]
            print(f"| `{stmt}` | {len(calls)} | " + " | ".join(cells) + f" | {ratio:.2f}× |",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
