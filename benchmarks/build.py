"""`refmarshal build` against `python -m compileall` for the same files: the standard library of
the running interpreter (every module `refmarshal build --dir <stdlib>` finds, test suite
included; site-packages is not part of it).  Each variant runs in a fresh process, rounds
interleaved, medians reported.  compileall writes into a temporary PYTHONPYCACHEPREFIX, so the
installation is left alone.

    python benchmarks/build.py [--rounds 3]      # needs refmarshal importable
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from refmarshal import environment
    stdlib = sysconfig.get_paths()["stdlib"]
    files = list(environment.discover([stdlib]).values())
    with tempfile.TemporaryDirectory(prefix="rm-build-bench-") as tmp:
        listing = os.path.join(tmp, "files.txt")
        with open(listing, "w") as fh:
            fh.write("".join(f + "\n" for f in files))
        img = os.path.join(tmp, "stdlib.img")
        variants = {
            "compileall -j 1": [sys.executable, "-m", "compileall", "-f", "-q", "-j", "1",
                                "-i", listing],
            "compileall -j 2": [sys.executable, "-m", "compileall", "-f", "-q", "-j", "2",
                                "-i", listing],
            "refmarshal build -j 1": [sys.executable, "-m", "refmarshal", "build", "--dir",
                                      stdlib, "-o", img, "-j", "1"],
            "refmarshal build -j 2": [sys.executable, "-m", "refmarshal", "build", "--dir",
                                      stdlib, "-o", img, "-j", "2"],
        }
        env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(tmp, "pycache"))
        times = {k: [] for k in variants}
        cpu = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for k in order:
                t = time.perf_counter()
                c = _children_cpu()
                # compileall exits 1 for the files that do not compile (refmarshal skips them)
                subprocess.run(variants[k], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                times[k].append(time.perf_counter() - t)
                cpu[k].append(_children_cpu() - c)
                print(f"  round {r + 1}: {k}: {times[k][-1]:.1f} s wall, {cpu[k][-1]:.1f} s "
                      "CPU", file=sys.stderr)
        base = statistics.median(times["compileall -j 1"])
        base_cpu = statistics.median(cpu["compileall -j 1"])
        print(f"CPython {sys.version.split()[0]}, {len(files)} standard-library files, "
              f"median of {args.rounds} rounds, wall and CPU (user+sys, all processes) seconds")
        print("| command | wall s | vs compileall -j 1 | CPU s | vs compileall -j 1 |")
        print("|---|---|---|---|---|")
        for k in variants:
            m, c = statistics.median(times[k]), statistics.median(cpu[k])
            print(f"| `{k}` | {m:.1f} | {m / base:.2f}x | {c:.1f} | {c / base_cpu:.2f}x |")


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


if __name__ == "__main__":
    main()
