"""How far the image's import is from a loader that costs nothing, in a venv where refmarshal is
enabled (`benchmarks/imports.py` makes one: /tmp/rm-bench-<cache tag>):

    python benchmarks/ceiling.py --venv VENV [--runs 10] [STATEMENT ...]

Each statement (default: import sympy / boto3 / django.contrib.admin) runs in fresh
`VENV/bin/python` processes, three arms interleaved, their order alternating by round:

  stock     REFMARSHAL=0: .pyc files found, read and unmarshalled by importlib
  image     the hook on: modules found and loaded through the image
  ceiling   REFMARSHAL=0, and before the timer starts the child unmarshals the .pyc of every
            module the statement imports (learnt from one stock run) and puts a finder before
            PathFinder whose loader's get_code hands those code objects out: finding as stock,
            loading free.  Issues 12 and 14 measure the image against this floor.

Reported per arm, medians: the statement's in-process time, the bytes the process read while
it ran (`rchar` of /proc/self/io: .pyc files for stock, the image for the image), and the
process's peak RSS (`ru_maxrss`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

STATEMENTS = ["import sympy", "import boto3", "import django.contrib.admin"]

# The child: optional ceiling set-up (untimed), then the statement, timed; one JSON line out.
CHILD = r'''
import json, os, resource, sys, time
stmt, names_file = sys.argv[1], sys.argv[2]

def rchar():
    with open("/proc/self/io") as fh:
        return int(fh.read().split("rchar: ")[1].split()[0])

if names_file != "-":
    import marshal
    from importlib.machinery import PathFinder, SourceFileLoader
    from importlib.util import cache_from_source
    with open(names_file) as fh:
        origins = json.load(fh)
    codes = {}
    for origin in origins:
        with open(cache_from_source(origin), "rb") as fh:
            codes[origin] = marshal.loads(fh.read()[16:])

    class CeilingLoader(SourceFileLoader):
        def get_code(self, fullname):
            code = codes.get(self.path)
            return code if code is not None else super().get_code(fullname)

    class CeilingFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            spec = PathFinder.find_spec(name, path, target)
            if spec is not None and type(spec.loader) is SourceFileLoader \
                    and spec.origin in codes:
                spec.loader = CeilingLoader(name, spec.origin)
            return spec

    sys.meta_path.insert(sys.meta_path.index(PathFinder), CeilingFinder)

r0 = rchar()
t0 = time.perf_counter()
exec(stmt)
dt = time.perf_counter() - t0
read = rchar() - r0
print(json.dumps([dt, read, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
'''

# One stock run lists the .py files the statement imports (their .pyc exist after it).
DISCOVER = r'''
import json, sys
from importlib.machinery import SourceFileLoader
exec(sys.argv[1])
print(json.dumps(sorted(m.__spec__.origin for m in list(sys.modules.values())
                        if getattr(m, "__spec__", None) is not None
                        and type(m.__spec__.loader) is SourceFileLoader
                        and (m.__spec__.origin or "").endswith(".py"))))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("statements", nargs="*", default=STATEMENTS)
    args = ap.parse_args()
    py = os.path.join(args.venv, "bin", "python")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("REFMARSHAL") and k not in ("PYTHONPATH",
                                                            "PYTHONDONTWRITEBYTECODE")}
    stock_env = dict(base, REFMARSHAL="0")
    results = {}
    with tempfile.TemporaryDirectory(prefix="rm-ceiling-") as cwd:
        lists = {}
        for s in args.statements:
            out = subprocess.run([py, "-c", DISCOVER, s], env=stock_env, cwd=cwd, check=True,
                                 capture_output=True, text=True).stdout
            lists[s] = os.path.join(cwd, f"names-{len(lists)}.json")
            with open(lists[s], "w") as fh:
                fh.write(out)
        arms = {"stock": (stock_env, lambda s: "-"), "image": (base, lambda s: "-"),
                "ceiling": (stock_env, lambda s: lists[s])}

        def run(s, arm):
            env, names = arms[arm]
            out = subprocess.run([py, "-c", CHILD, s, names(s)], env=env, cwd=cwd, check=True,
                                 capture_output=True, text=True).stdout
            return json.loads(out)

        for s in args.statements:                               # warm-up, untimed
            for a in arms:
                run(s, a)
        for r in range(args.runs):
            order = list(arms) if r % 2 == 0 else list(arms)[::-1]
            for s in args.statements:
                for a in order:
                    results.setdefault((s, a), []).append(run(s, a))
            print(f"  round {r + 1}/{args.runs}", file=sys.stderr, flush=True)

    version = subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"CPython {version}, {args.runs} interleaved rounds, medians; in-process time of the "
          "statement, bytes read while it ran, peak RSS of the process\n")
    print("| statement | stock ms | image ms | ceiling ms | image ÷ ceiling | stock ÷ image | "
          "read stock MB | read image MB | RSS stock MB | RSS image MB | RSS ceiling MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in args.statements:
        med = {a: [statistics.median(x[i] for x in results[(s, a)]) for i in range(3)]
               for a in arms}
        ms = {a: med[a][0] * 1e3 for a in arms}
        print(f"| `{s}` | {ms['stock']:.1f} | {ms['image']:.1f} | {ms['ceiling']:.1f} | "
              f"{ms['image'] / ms['ceiling']:.2f}× | {ms['stock'] / ms['image']:.2f}× | "
              f"{med['stock'][1] / 1e6:.1f} | {med['image'][1] / 1e6:.1f} | "
              f"{med['stock'][2] / 1024:.1f} | {med['image'][2] / 1024:.1f} | "
              f"{med['ceiling'][2] / 1024:.1f} |")


if __name__ == "__main__":
    main()
