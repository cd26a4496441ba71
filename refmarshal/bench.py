"""Timing fresh interpreters side by side: stock import against import through the image
(``refmarshal bench``, ``refmarshal enable --bench``), measured as benchmarks/endtoend.py does.

Each sample is one whole child process (start-up, the statement, exit): its wall time, and its
CPU time (user + sys) from ``os.wait4``, so the hook's own cost at start-up is counted.  Stock
is this environment as it was before ``refmarshal enable``: ``refmarshal.pth`` is moved aside
for the stock runs (``REFMARSHAL=0`` would still run the hook's line, which costs about a
millisecond) and put back after each, and at the end whatever happens.  The arms are
interleaved, their order alternating from one round to the next, after one untimed warm-up
round; reported: medians and the middle half (first to third quartile) of the samples.
"""

import os
import signal
import statistics
import subprocess
import tempfile
import time

from .hookstate import probe_code

# Tried in this order; the first few that are installed are measured by default.
HEAVY_PACKAGES = ("sympy", "boto3", "django.contrib.admin", "pandas", "requests", "setuptools")
# Always measured by default: small programs, where the image's fixed cost shows.
STDLIB_STATEMENTS = ("pass", "import json", "import argparse", "import asyncio")

PARKED_SUFFIX = ".bench-stock"     # not a .pth name: site ignores it

# What a child reports after its statement, when asked: modules served by the image, modules
# imported in all.  (-1 when no refmarshal finder is on sys.meta_path.)
_PROBE = probe_code("f.hits if f else -1", "len(sys.modules)")


class BenchError(Exception):
    """A child failed: the statement does not run in this environment."""


def default_modules(count=3):
    """A few installed heavy packages (none when none is installed)."""
    from importlib.util import find_spec
    found = [m for m in HEAVY_PACKAGES if find_spec(m.partition(".")[0]) is not None]
    return list(found[:count])


def default_statements(count=3):
    """What ``refmarshal bench`` times without arguments: ``pass`` and a few standard-library
    imports, then up to ``count`` installed heavy packages."""
    return list(STDLIB_STATEMENTS) + [statement(m) for m in default_modules(count)]


def statement(module):
    return "pass" if module is None else f"import {module}"


class Arm:
    """One way of starting the interpreter: a label, the environment changes it makes, and
    whether ``refmarshal.pth`` is in place for it (``hooked``)."""

    def __init__(self, label, env_changes, hooked=True):
        self.label = label
        self.hooked = hooked
        self.env = dict(os.environ)
        for key, value in env_changes.items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value


def stock_and_image(pth=None):
    """The two arms of ``refmarshal bench``: stock (the hook moved aside when ``pth`` is
    given, else REFMARSHAL=0) against the hook as installed."""
    if pth is None:
        stock = Arm("stock", {"REFMARSHAL": "0"})
    else:
        stock = Arm("stock", {"REFMARSHAL": None}, hooked=False)
    return [stock, Arm("refmarshal", {"REFMARSHAL": None})]


class Hook:
    """Moves ``refmarshal.pth`` aside for the stock arm and back; ``restore`` at the end (and
    at the start: a run killed before it could restore left the file aside)."""

    def __init__(self, pth):
        self.pth = pth
        self.parked = None if pth is None else pth + PARKED_SUFFIX

    def set(self, hooked):
        if self.pth is None:
            return
        if hooked:
            self.restore()
        elif os.path.exists(self.pth):
            os.replace(self.pth, self.parked)

    def restore(self):
        if self.parked is not None and os.path.exists(self.parked):
            os.replace(self.parked, self.pth)


def run_once(python, stmt, arm, cwd, hook=None):
    """(wall seconds, CPU seconds) of one child running ``stmt``; raises BenchError when it
    fails."""
    if hook is not None:
        hook.set(arm.hooked)
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen([python, "-c", stmt], env=arm.env, cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
            last = (text.splitlines() or ["no output"])[-1]
            raise BenchError(f"{arm.label}: python -c {stmt!r} failed: {last}")
    return elapsed, usage.ru_utime + usage.ru_stime


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


class _Terminated(BaseException):
    pass


def _terminate(signum, frame):
    raise _Terminated()


def measure(python, statements, arms, runs, progress=None, pth=None):
    """{(stmt, arm label): [(wall seconds, CPU seconds), ...]} for every statement and arm,
    ``runs`` rounds, interleaved, after one untimed warm-up round (page cache, .pyc files).
    ``pth``: the hook's file, moved aside for arms that are not ``hooked`` and always put
    back, also on SIGTERM."""
    samples = {(s, a.label): [] for s in statements for a in arms}
    hook = Hook(pth)
    hook.restore()
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        with tempfile.TemporaryDirectory(prefix="refmarshal-bench-") as cwd:
            for s in statements:
                for a in arms:
                    run_once(python, s, a, cwd, hook)
            for r in range(runs):
                order = arms if r % 2 == 0 else arms[::-1]
                for s in statements:
                    for a in order:
                        samples[(s, a.label)].append(run_once(python, s, a, cwd, hook))
                if progress is not None:
                    progress(r + 1, runs)
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        hook.restore()
        signal.signal(signal.SIGTERM, old)
    return samples


def quartiles(values):
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, statistics.median(values), q3


def median_ms(values):
    return statistics.median(v[0] if isinstance(v, tuple) else v for v in values) * 1000


def compare(samples, stmt, stock, image):
    """Figures for one statement: wall quartiles (ms) of both arms, the wall and CPU speed-up
    (stock median / image median), and the verdict: 'faster', 'slower' or 'slower, within
    the spread' (the middle halves of the two arms overlap)."""
    def col(label, i):
        return [v[i] * 1000 for v in samples[(stmt, label)]]
    ws, wi = quartiles(col(stock, 0)), quartiles(col(image, 0))
    cs, ci = statistics.median(col(stock, 1)), statistics.median(col(image, 1))
    ratio = ws[1] / wi[1]
    if ratio >= 1:
        verdict = "faster"
    elif wi[0] <= ws[2]:
        verdict = "slower, within the spread"
    else:
        verdict = "slower"
    return {"stock": ws, "image": wi, "ratio": ratio, "cpu_ratio": cs / ci,
            "delta_ms": wi[1] - ws[1], "verdict": verdict}


def table(statements, arms, samples):
    """Text lines: a header, then per statement each arm's median wall time (ms) and its
    middle half, the wall and CPU speed-up (first arm / last arm), and the word 'slower'
    where the last arm's median is above the first's."""
    stock, image = arms[0].label, arms[-1].label
    width = max(len(s) for s in statements) + 2
    head = (f"{'python -c':<{width}}{stock + ' ms':>20}{image + ' ms':>22}"
            f"{'speed-up':>10}{'CPU':>8}")
    lines = [head]
    for s in statements:
        c = compare(samples, s, stock, image)
        cells = "".join(f"{f'{q[1]:.1f} ({q[0]:.1f}-{q[2]:.1f})':>{w}}"
                        for q, w in ((c["stock"], 20), (c["image"], 22)))
        line = f"{s:<{width}}{cells}{c['ratio']:>9.2f}x{c['cpu_ratio']:>7.2f}x"
        if c["verdict"] != "faster":
            line += f"  {c['verdict']} (+{c['delta_ms']:.1f} ms)"
        lines.append(line)
    return lines


def summary(statements, arms, samples):
    """One plain sentence: which statements the image made slower, or that it made none."""
    stock, image = arms[0].label, arms[-1].label
    slower = [(s, compare(samples, s, stock, image)) for s in statements]
    slower = [(s, c) for s, c in slower if c["verdict"] != "faster"]
    if not slower:
        return "faster with the image for every statement timed"
    listed = ", ".join(f"{s} (+{c['delta_ms']:.1f} ms, {c['ratio']:.2f}x)" for s, c in slower)
    return (f"SLOWER with the image: {listed}: here the image costs more at start-up than it "
            f"saves for {'this statement' if len(slower) == 1 else 'these statements'}")


def run(python, pth, statements, runs, say, progress=None):
    """``refmarshal bench``: probe, measure, print; raises BenchError."""
    arms = stock_and_image(pth)
    served = [probe(python, s, arms[1]) for s in statements if s != "pass"]
    say(f"timing {len(statements)} statements x {len(arms)} arms x {runs} rounds, "
        f"interleaved, in fresh interpreters ({python}); refmarshal.pth is moved aside for "
        f"the stock runs")
    samples = measure(python, statements, arms, runs, progress, pth)
    for line in table(statements, arms, samples):
        say(line)
    for s, (hits, total) in zip([s for s in statements if s != "pass"], served):
        note = "no finder: is the hook active?" if hits < 0 else f"{hits} of {total} modules " \
               f"in sys.modules came from the image"
        say(f"  {s}: {note}")
    say(f"median wall time of a whole `python -c` process and, in brackets, the middle half "
        f"of the {runs} samples (first to third quartile); speed-up = stock / refmarshal "
        f"(CPU: user + sys); stock = this environment without refmarshal.pth")
    say(summary(statements, arms, samples))
    return samples
