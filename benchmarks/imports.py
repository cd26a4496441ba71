"""Import times of real packages before and after `refmarshal build && refmarshal enable`, in a
fresh virtual environment, as a new user would set it up:

    python benchmarks/imports.py [--python python3.12] [--runs 30] [--venv /tmp/rm-bench-312]

1. ``python -m venv VENV``; ``VENV/bin/python -m pip install <this project> sympy boto3 django``;
2. ``refmarshal build`` (timed) and ``refmarshal enable`` in VENV (``--reuse``: take VENV and
   its image as they are, skip 1 and the build);
3. every statement in fresh ``VENV/bin/python -c`` processes, three arms side by side,
   interleaved, their order alternating from round to round:
     no hook        refmarshal.pth moved out of site-packages (the environment before enable)
     REFMARSHAL=0   the hook installed but switched off
     image          the hook on: imports come from the image
   and prints the median wall and CPU time of each, and how many of the modules the statement
   imports came from the image.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
sys.path.insert(0, PROJECT)
from refmarshal.hookstate import probe_code  # noqa: E402

PACKAGES = ["sympy", "boto3", "django"]
STATEMENTS = ["pass", "import sympy", "import boto3", "import django.contrib.admin"]
PROBE = "\n" + probe_code("f.hits if f else 0", "f.fallbacks if f else 0", "len(sys.modules)")


def sh(argv, **kw):
    print("$", " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, check=True, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter to make the "
                    "venv with (default: this one)")
    ap.add_argument("--venv", help="where (default: /tmp/rm-bench-<version>)")
    ap.add_argument("--reuse", action="store_true",
                    help="use VENV and its image as they are (no install, no build)")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    tag = subprocess.run([args.python, "-c", "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    venv = args.venv or f"/tmp/rm-bench-{tag}"
    py = os.path.join(venv, "bin", "python")
    if not args.reuse:
        sh([args.python, "-m", "venv", "--clear", venv])
        sh([py, "-m", "pip", "install", "-q", PROJECT, *PACKAGES])
    versions = subprocess.run(
        [py, "-c", "import sys, importlib.metadata as m; print(sys.version.split()[0], *("
                   f"p + ' ' + m.version(p) for p in {PACKAGES!r}), sep=', ')"],
        capture_output=True, text=True, check=True).stdout.strip()
    refmarshal = os.path.join(venv, "bin", "refmarshal")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REFMARSHAL") and k != "PYTHONPATH"}
    build = "image reused (--reuse)"
    if not args.reuse:
        t = time.perf_counter()
        out = sh([refmarshal, "build"], env=env, capture_output=True, text=True).stdout
        build = [line for line in out.splitlines() if " modules, " in line][-1] + \
            f" (wall {time.perf_counter() - t:.1f} s, -j default)"
    sh([refmarshal, "enable"], env=env, capture_output=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = os.path.join(site, "refmarshal.pth")
    parked = os.path.join(venv, "refmarshal.pth.parked")

    arms = {"no hook": (False, env), "REFMARSHAL=0": (True, dict(env, REFMARSHAL="0")),
            "image": (True, env)}
    wall = {(s, a): [] for s in STATEMENTS for a in arms}
    cpu = {(s, a): [] for s in STATEMENTS for a in arms}
    with tempfile.TemporaryDirectory(prefix="rm-bench-cwd-") as cwd:
        def run(stmt, arm):
            hooked, arm_env = arms[arm]
            if hooked != os.path.exists(pth):
                os.replace(*((parked, pth) if hooked else (pth, parked)))
            c = _children_cpu()
            t = time.perf_counter()
            subprocess.run([py, "-c", stmt], env=arm_env, cwd=cwd, check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - t, _children_cpu() - c

        try:
            served = {}
            for s in STATEMENTS:
                run(s, "image")
                out = subprocess.run([py, "-c", s + PROBE], env=env, cwd=cwd, check=True,
                                     capture_output=True, text=True).stdout.split()
                served[s] = [int(x) for x in out]
                for a in arms:                                   # warm-up round, untimed
                    run(s, a)
            for r in range(args.runs):
                order = list(arms) if r % 2 == 0 else list(arms)[::-1]
                for s in STATEMENTS:
                    for a in order:
                        w, c = run(s, a)
                        wall[(s, a)].append(w)
                        cpu[(s, a)].append(c)
                print(f"  round {r + 1}/{args.runs}", file=sys.stderr, flush=True)
        finally:
            if os.path.exists(parked):
                os.replace(parked, pth)

    print(f"{versions}; {args.runs} rounds; medians (ms) of whole `python -c` processes")
    print(f"build: {build}")
    for title, samples in (("wall time", wall), ("CPU time (user + sys)", cpu)):
        print(f"\n{title}\n")
        print("| statement | no hook | REFMARSHAL=0 | image | no hook / image | "
              "modules from the image |")
        print("|---|---|---|---|---|---|")
        for s in STATEMENTS:
            m = {a: statistics.median(samples[(s, a)]) * 1000 for a in arms}
            hits, fallbacks, total = served[s]
            print(f"| `{s}` | {m['no hook']:.1f} | {m['REFMARSHAL=0']:.1f} | {m['image']:.1f} | "
                  f"{m['no hook'] / m['image']:.2f}x | {hits} of {total} in sys.modules"
                  f"{f', {fallbacks} fell back' if fallbacks else ''} |")
        m = {a: statistics.median(samples[("pass", a)]) * 1000 for a in arms}
        print(f"\nstart-up cost of the hook (`pass`): image - no hook {m['image'] - m['no hook']:+.1f}"
              f" ms; REFMARSHAL=0 - no hook {m['REFMARSHAL=0'] - m['no hook']:+.1f} ms")


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


if __name__ == "__main__":
    main()
