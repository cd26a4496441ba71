"""Timing fresh interpreters side by side: stock import against import through the image.

Each sample is the wall time of a whole child process (start-up, the statement, exit), so the
hook's own cost at start-up is counted.  Arms are interleaved, their order alternating from one
round to the next, so a change in machine load hits both alike; medians are reported.
"""

import os
import statistics
import subprocess
import tempfile
import time

from .hookstate import probe_code

# Tried in this order; the first few that are installed are measured by default.
HEAVY_PACKAGES = ("sympy", "boto3", "django.contrib.admin", "pandas", "requests", "setuptools")
STDLIB_FALLBACK = ("asyncio", "unittest", "http.server")

# What a child reports after its statement, when asked: modules served by the image, modules
# imported in all.  (-1 when no refmarshal finder is on sys.meta_path.)
_PROBE = probe_code("f.hits if f else -1", "len(sys.modules)")


class BenchError(Exception):
    """A child failed: the statement does not run in this environment."""


def default_modules(count=3):
    """A few installed heavy packages, else standard-library modules."""
    from importlib.util import find_spec
    found = [m for m in HEAVY_PACKAGES if find_spec(m.partition(".")[0]) is not None]
    return list(found[:count]) or list(STDLIB_FALLBACK)


def statement(module):
    return "pass" if module is None else f"import {module}"


class Arm:
    """One way of starting the interpreter: a label and the environment changes it makes."""

    def __init__(self, label, env_changes):
        self.label = label
        self.env = dict(os.environ)
        for key, value in env_changes.items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value


def stock_and_image():
    """The two arms of ``refmarshal bench``: REFMARSHAL=0 against the hook as installed."""
    return [Arm("stock", {"REFMARSHAL": "0"}), Arm("refmarshal", {"REFMARSHAL": None})]


def run_once(python, stmt, arm, cwd):
    """Wall seconds of one child running ``stmt``; raises BenchError when it fails."""
    t = time.perf_counter()
    proc = subprocess.run([python, "-c", stmt], env=arm.env, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{arm.label}: python -c {stmt!r} failed: {last}")
    return elapsed


def probe(python, stmt, arm):
    """(modules the image served, modules imported) in one child running ``stmt``."""
    with tempfile.TemporaryDirectory(prefix="refmarshal-bench-") as cwd:
        proc = subprocess.run([python, "-c", stmt + "\n" + _PROBE], env=arm.env, cwd=cwd,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{arm.label}: python -c {stmt!r} failed: {last}")
    hits, total = proc.stdout.split()
    return int(hits), int(total)


def measure(python, statements, arms, runs, progress=None):
    """{(stmt, arm label): [seconds, ...]} for every statement and arm, ``runs`` rounds,
    interleaved, after one untimed warm-up round (page cache, .pyc files)."""
    samples = {(s, a.label): [] for s in statements for a in arms}
    with tempfile.TemporaryDirectory(prefix="refmarshal-bench-") as cwd:
        for s in statements:
            for a in arms:
                run_once(python, s, a, cwd)
        for r in range(runs):
            order = arms if r % 2 == 0 else arms[::-1]
            for s in statements:
                for a in order:
                    samples[(s, a.label)].append(run_once(python, s, a, cwd))
            if progress is not None:
                progress(r + 1, runs)
    return samples


def median_ms(values):
    return statistics.median(values) * 1000


def table(statements, arms, samples):
    """Rows of (statement, median ms per arm..., first arm / last arm) as text lines."""
    width = max(len(s) for s in statements) + 2
    head = f"{'python -c':<{width}}" + "".join(f"{a.label:>14}" for a in arms) + f"{'ratio':>10}"
    lines = [head]
    for s in statements:
        meds = [median_ms(samples[(s, a.label)]) for a in arms]
        lines.append(f"{s:<{width}}" + "".join(f"{m:>11.1f} ms" for m in meds)
                     + f"{meds[0] / meds[-1]:>9.2f}x")
    return lines
