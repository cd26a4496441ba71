"""End to end: what a user sees, whole processes, every arm side by side in one run (issue 14).

    python3.12 benchmarks/endtoend.py [--versions 3.11,3.12,3.13] [--rounds 30] [--reuse]
        [--statements json,sympy,...] [--arms stock,checked,...] [--out DIR]

Per CPython version (pyenv builds 3.11.7, 3.12.1, 3.13.0, else pythonX.Y on PATH), four venvs
under PREFIX-<cache tag>-* (default PREFIX /tmp/e2e), made unless --reuse finds them:
  std      the standard library + refmarshal (this checkout), `refmarshal build` (the whole
           environment) and `refmarshal enable`: the six standard-library statements;
  pkg      the same + sympy, boto3, django, rich, pytest: the six package statements;
  cds-std, cds-pkg   the same packages + code-data-share (pycds) instead of refmarshal
           (3.11 and 3.12: pycds does not build on 3.13).
--reinstall keeps the venvs and their packages, reinstalls refmarshal from this checkout and
rebuilds the images (what to do after the code changed).

Arms (--arms picks some):
  stock         the refmarshal venv with refmarshal.pth moved out of site-packages: the
                environment as it was before `refmarshal enable`.  (REFMARSHAL=0 would still
                run the .pth line, importing refmarshal and refmarshal._startup, so it is not
                stock: benchmarks/imports.py shows both.)
  checked       the hook as `refmarshal enable` leaves it (source mtime and size checked).
  unchecked     the same with REFMARSHAL_UNCHECKED=1 (the image trusted, no stat per module).
  ceiling       stock, and before the timer the child unmarshals the .pyc of every module the
                statement imports (learnt from one stock run) and puts a finder before
                PathFinder whose loader hands those code objects out: finding as stock, loading
                free (benchmarks/ceiling.py).  The set-up's own wall and CPU time, measured in
                the child, are subtracted from the whole-process figures; its peak RSS is
                reported as measured (it includes the .pyc bytes, read one at a time).
  pycds         the cds venv, PYCDSMODE=SHARE with an archive traced (PYCDSMODE=TRACE) and
                dumped (cds.dump.run_dump) for the same statement in this run; names ending in
                `.__main__` are left out of the archive (runpy asks a loader for get_code, which
                pycds's loader lacks).  Its archive is mapped at start-up, before the timer:
                its in-process time leaves that out, its whole-process time does not.
  cold-stock, cold-checked   stock and checked with a cold page cache: before each run every
                file of the venv, of the standard library (the interpreter's lib/pythonX.Y,
                its libpython and executable) and the image is opened and
                posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)'d (no root needed).  Pages other
                processes have mapped stay, and so do directory entries and inodes: this is a
                cold *data* cache.  These two arms run after the warm ones, interleaved with
                each other (each run evicts first, so what ran before does not matter; run
                among the warm arms they would leave the next warm run cold).

Every run is a fresh `VENV/bin/python -c WRAPPER ...` process; the wrapper (the same in every
arm) times the statement in-process and writes the time to a pipe; `-m pytest --version` and
`-m pip --version` run through runpy._run_module_as_main, as `python -m` does.  Measures: wall
time of the child (spawn to reap), its CPU time (user + sys, from os.wait4's rusage), its peak
RSS (VmHWM of /proc/self/status, read by the wrapper at its end: the child's ru_maxrss would
also count the pages of this process, whose address space the child had until it ran exec),
and the statement's in-process time.  One untimed warm-up round, then --rounds
rounds; in each, the arms run in an order rotated by one from the round before.

Output: a Markdown table per version (paste into BENCHMARKS.md) on stdout and in
OUT/endtoend-<date>.md, every raw sample in OUT/endtoend-<date>.json (OUT default: /tmp).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)

VERSIONS = {"3.11": "3.11.7", "3.12": "3.12.1", "3.13": "3.13.0"}
PACKAGES = ["sympy", "boto3", "django", "rich", "pytest"]
STD_STATEMENTS = ["pass", "import json", "import argparse", "import unittest", "import asyncio",
                  "import http.server"]
PKG_STATEMENTS = ["import sympy", "import boto3", "import django.contrib.admin",
                  "import rich.console", "-m pytest --version", "-m pip --version"]
STATEMENTS = STD_STATEMENTS + PKG_STATEMENTS
WARM_ARMS = ["stock", "checked", "unchecked", "ceiling", "pycds"]
COLD_ARMS = ["cold-stock", "cold-checked"]
ARMS = WARM_ARMS + COLD_ARMS
# A priori guesses (ms of one warm stock process) for the estimate printed before anything runs.
GUESS_MS = {"pass": 20, "import json": 30, "import argparse": 35, "import unittest": 60,
            "import asyncio": 75, "import http.server": 75, "import sympy": 600,
            "import boto3": 350, "import django.contrib.admin": 400, "import rich.console": 90,
            "-m pytest --version": 300, "-m pip --version": 250}

# The child, the same in every arm.  argv: fd mode statement names-file action
#   mode: c (exec the statement as -c would) or m (run the module as -m would)
#   names-file: "-" or the ceiling's list of .py files whose code is unmarshalled before the
#   timer; action: "time", "probe" (also count who served the modules) or a file to write the
#   statement's stock-loaded .py files to (the ceiling's list).
# It imports nothing the interpreter has not imported at start-up (os, sys, and the frozen
# importlib are there; time and marshal are built in), so every arm times the same imports.
WRAPPER = r'''
def _e2e():
    import sys, time, os
    fd, mode, stmt, names, action = sys.argv[1:6]
    fd = int(fd)
    setup_wall = setup_cpu = 0.0
    if names != "-":
        t, c = time.perf_counter(), time.process_time()
        import marshal, _frozen_importlib_external as bx
        with open(names) as fh:
            origins = [line for line in fh.read().split("\n") if line]
        codes = {}
        for origin in origins:
            with open(bx.cache_from_source(origin), "rb") as fh:
                codes[origin] = marshal.loads(fh.read()[16:])

        class CeilingLoader(bx.SourceFileLoader):
            def get_code(self, fullname):
                code = codes.get(self.path)
                return code if code is not None else super().get_code(fullname)

        class CeilingFinder:
            @staticmethod
            def find_spec(name, path=None, target=None):
                spec = bx.PathFinder.find_spec(name, path, target)
                if spec is not None and type(spec.loader) is bx.SourceFileLoader \
                        and spec.origin in codes:
                    spec.loader = CeilingLoader(name, spec.origin)
                return spec

        sys.meta_path.insert(sys.meta_path.index(bx.PathFinder), CeilingFinder)
        setup_wall, setup_cpu = time.perf_counter() - t, time.process_time() - c
    status = 0
    if mode == "c":
        sys.argv[:] = ["-c"]
        g = sys.modules["__main__"].__dict__
        t = time.perf_counter()
        exec(stmt, g)
        dt = time.perf_counter() - t
    else:
        import runpy
        words = stmt.split()
        sys.argv[:] = ["-m", *words[1:]]
        t = time.perf_counter()
        try:
            runpy._run_module_as_main(words[0])
        except SystemExit as exc:
            status = exc.code
        dt = time.perf_counter() - t
    extra = ""
    if action == "probe":
        image = [f for f in sys.meta_path if type(f).__name__ == "ImageFinder"]
        counts = {}
        for m in list(sys.modules.values()):
            kind = type(getattr(m, "__loader__", None)).__name__
            counts[kind] = counts.get(kind, 0) + 1
        served = (image[0].hits if image else 0) + counts.get("CDSFinder", 0) \
            + counts.get("CeilingLoader", 0)
        extra = f" {served} {len(sys.modules)}"
    elif action != "time":
        bx = sys.modules["_frozen_importlib_external"]
        with open(action, "w") as fh:
            for m in list(sys.modules.values()):
                spec = getattr(m, "__spec__", None)
                if spec is not None and type(spec.loader) is bx.SourceFileLoader \
                        and (spec.origin or "").endswith(".py"):
                    fh.write(spec.origin + "\n")
    with open("/proc/self/status") as fh:
        hwm = fh.read().split("VmHWM:")[1].split()[0]
    os.write(fd, f"{dt!r} {setup_wall!r} {setup_cpu!r} {hwm}{extra}".encode())
    return status
raise SystemExit(_e2e())
'''


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(argv, **kw):
    log("$", " ".join(map(str, argv)))
    return subprocess.run(argv, check=True, **kw)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REFMARSHAL", "PYCDS"))
           and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHOME")}
    env.update(extra)
    return env


def base_python(version):
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("pyenv") else ""
    path = os.path.join(root, "versions", VERSIONS[version], "bin", "python")
    return path if root and os.path.exists(path) else shutil.which(f"python{version}")


def ask(py, code, env=None):
    return subprocess.run([py, "-c", code], capture_output=True, text=True, check=True,
                          env=env or clean_env()).stdout.strip()


class Venv:
    def __init__(self, path):
        self.path = path
        self.python = os.path.join(path, "bin", "python")
        self.error = None           # why this venv is unusable (pycds that does not install)

    def exists(self):
        return os.path.exists(self.python)

    def site(self):
        return ask(self.python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")


class RefVenv(Venv):
    """A venv with refmarshal enabled; its hook can be parked (stock) and put back."""

    def setup(self, base, packages, reuse, reinstall):
        env = clean_env()
        if not (reuse and self.exists()):
            sh([base, "-m", "venv", "--clear", self.path], env=env)
            sh([self.python, "-m", "pip", "install", "-q", PROJECT, *packages], env=env)
        elif reinstall:
            sh([self.python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
                PROJECT], env=env)
        self.pth = os.path.join(self.site(), "refmarshal.pth")
        self.parked = os.path.join(self.path, "refmarshal.pth.parked")
        self.unpark()                   # a run that was killed may have left it parked
        rm = os.path.join(self.path, "bin", "refmarshal")
        self.image = ask(self.python, "from refmarshal._startup import default_image_path as d;"
                                      " print(d())")
        self.build = "image reused (--reuse)"
        if not (reuse and os.path.exists(self.image) and os.path.exists(self.pth)) or reinstall:
            t = time.perf_counter()
            out = sh([rm, "build"], env=env, capture_output=True, text=True).stdout
            lines = [line for line in out.splitlines() if " modules, " in line]
            self.build = (lines[-1] if lines else "built") + \
                f" (`refmarshal build`: {time.perf_counter() - t:.1f} s)"
            sh([rm, "enable"], env=env, capture_output=True)
        if not os.path.exists(self.pth):
            raise SystemExit(f"{self.pth} missing after refmarshal enable")

    pth = parked = None

    def park(self):
        if os.path.exists(self.pth):
            os.replace(self.pth, self.parked)

    def unpark(self):
        if self.parked is not None and os.path.exists(self.parked):
            os.replace(self.parked, self.pth)


class CdsVenv(Venv):
    def setup(self, base, packages, reuse):
        env = clean_env()
        if reuse and self.exists() and self._works():
            return
        self.error = None
        try:
            sh([base, "-m", "venv", "--clear", self.path], env=env)
            sh([self.python, "-m", "pip", "install", "-q", "code-data-share", *packages],
               env=env, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or "").strip().splitlines()
            errors = [line.strip() for line in tail if "error" in line.lower()] or tail
            self.error = f"`{' '.join(exc.cmd[2:5])} ...` failed: " + \
                (" / ".join(errors[-3:]) if errors else f"exit status {exc.returncode}")
            return
        if not self._works():
            self.error = self.error or "`import cds` fails in the venv"

    def _works(self):
        r = subprocess.run([self.python, "-c", "import cds, _cds"], capture_output=True,
                           text=True, env=clean_env())
        if r.returncode != 0:
            self.error = (r.stderr.strip().splitlines() or ["?"])[-1]
        return r.returncode == 0


def statement_argv(stmt):
    """(mode, text) for the wrapper: 'm' for `-m module args`, 'c' for a -c statement."""
    return ("m", stmt[3:]) if stmt.startswith("-m ") else ("c", stmt)


class ChildFailed(Exception):
    pass


def run_child(py, stmt, env, cwd, names="-", action="time"):
    """One fresh process: dict(wall, cpu, rss, stmt, setup_wall, setup_cpu[, served, total])."""
    mode, text = statement_argv(stmt)
    r, w = os.pipe()
    with tempfile.TemporaryFile(dir=cwd) as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([py, "-c", WRAPPER, str(w), mode, text, names, action], env=env,
                             cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, pass_fds=(w,))
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            out = fh.read().decode().split()
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    if p.returncode != 0 or len(out) < 4:
        raise ChildFailed(f"{stmt!r} exited with {p.returncode}: "
                          f"{(stderr.splitlines() or ['no output'])[-1]}")
    s = {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": int(out[3]) * 1024,
         "stmt": float(out[0]), "setup_wall": float(out[1]), "setup_cpu": float(out[2]),
         "ru_maxrss": ru.ru_maxrss * 1024}
    if len(out) >= 6:
        s["served"], s["total"] = int(out[4]), int(out[5])
    if stderr:
        s["stderr"] = stderr[-500:]
    return s


def evict(files):
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_to_evict(venv):
    """Every regular file of the venv, the interpreter's standard library, its libpython and
    executable, and the image."""
    info = json.loads(ask(venv.python, "import json, sys, sysconfig, os; print(json.dumps(["
                                       "sysconfig.get_paths()['stdlib'], "
                                       "os.path.realpath(sys._base_executable), "
                                       "sysconfig.get_config_var('LIBDIR') or '']))"))
    stdlib, exe, libdir = info
    files = {exe, venv.image}
    for top in (venv.path, stdlib):
        for d, _, names in os.walk(top):
            for n in names:
                p = os.path.join(d, n)
                if os.path.isfile(p) and not os.path.islink(p):
                    files.add(p)
    if libdir and os.path.isdir(libdir):
        files.update(os.path.join(libdir, n) for n in os.listdir(libdir)
                     if n.startswith("libpython"))
    return sorted(files)


def slug(stmt):
    return "".join(c if c.isalnum() else "_" for c in stmt).strip("_")


class Version:
    """Everything for one CPython version: venvs, arms, the statement list, samples."""

    def __init__(self, version, args):
        self.version = version
        self.args = args
        self.base = base_python(version)
        if self.base is None:
            raise SystemExit(f"no CPython {version} (pyenv {VERSIONS[version]} or "
                             f"python{version} on PATH)")
        self.tag = ask(self.base, "import sys; print(sys.implementation.cache_tag)")
        p = f"{args.prefix}-{self.tag}"
        self.ref = {"std": RefVenv(p + "-std"), "pkg": RefVenv(p + "-pkg")}
        self.cds = {"std": CdsVenv(p + "-cds-std"), "pkg": CdsVenv(p + "-cds-pkg")}
        self.statements = [s for s in args.statements]
        self.arms = list(args.arms)
        self.unavailable = {}           # (statement or None, arm) -> why
        self.samples = {}               # (statement, arm) -> [sample, ...]
        self.served = {}                # (statement, arm) -> (served, modules)

    def kind(self, stmt):
        return "std" if stmt in STD_STATEMENTS else "pkg"

    def setup(self):
        kinds = sorted({self.kind(s) for s in self.statements})
        a = self.args
        for k in kinds:
            self.ref[k].setup(self.base, PACKAGES if k == "pkg" else [], a.reuse, a.reinstall)
        if "pycds" in self.arms:
            if self.version == "3.13":
                # Not tried each run: pip spends a minute building the sdist to fail.
                self.unavailable[(None, "pycds")] = (
                    "no 3.13 wheel; `pip install code-data-share` (0.1.0) builds the sdist "
                    "and fails: `_cdsmodule.h:20:10: fatal error: internal/pycore_opcode.h: "
                    "No such file or directory` (tried 2026-11-29)")
            else:
                for k in kinds:
                    self.cds[k].setup(self.base, PACKAGES if k == "pkg" else [], a.reuse)
                    if self.cds[k].error:
                        log(f"pycds unavailable ({self.version}, {k}): {self.cds[k].error}")
        pkg_venv = self.ref["pkg"] if "pkg" in kinds else self.ref["std"]
        self.versions = ask(pkg_venv.python, "import sys, importlib.metadata as m\n"
                            "out = ['CPython ' + sys.version.split()[0]]\n"
                            f"for p in {PACKAGES + ['pip']!r}:\n"
                            "    try: out.append(p + ' ' + m.version(p))\n"
                            "    except Exception: pass\n"
                            "print(', '.join(out))")
        if "pycds" in self.arms and (None, "pycds") not in self.unavailable:
            cds_ok = [v for v in self.cds.values() if v.exists() and not v.error]
            if cds_ok:
                self.versions += ", code-data-share " + ask(
                    cds_ok[0].python, "import importlib.metadata as m; "
                    "print(m.version('code-data-share'))")

    def prepare(self, work):
        """Names files for the ceiling, pycds archives, eviction lists, probes."""
        self.work = work
        self.names, self.archives, self.evict = {}, {}, {}
        cold = [a for a in self.arms if a in COLD_ARMS]
        for k in sorted({self.kind(s) for s in self.statements}):
            if cold:
                self.evict[k] = files_to_evict(self.ref[k])
                t = time.perf_counter()
                evict(self.evict[k])
                self.evict_s = time.perf_counter() - t
                log(f"{k}: {len(self.evict[k])} files to evict before each cold run "
                    f"({self.evict_s:.2f} s each)")
        for s in self.statements:
            venv = self.ref[self.kind(s)]
            if "ceiling" in self.arms:
                self.names[s] = os.path.join(work, f"names-{slug(s)}.txt")
                venv.park()
                try:
                    run_child(venv.python, s, clean_env(), work, action=self.names[s])
                finally:
                    venv.unpark()
            if "pycds" in self.arms and (None, "pycds") not in self.unavailable:
                self.make_archive(s)
        for s in self.statements:
            for a in self.arms:
                if a.startswith("cold-") or (s, a) in self.unavailable \
                        or (None, a) in self.unavailable:
                    continue
                try:
                    smp = self.run(s, a, action="probe")
                    self.served[(s, a)] = (smp.get("served"), smp.get("total"))
                    if smp.get("stderr"):
                        log(f"note: {s} / {a} wrote to stderr: {smp['stderr']}")
                except ChildFailed as exc:
                    self.unavailable[(s, a)] = str(exc)
                    log(f"{self.version} {a}: {exc}")

    def make_archive(self, s):
        venv = self.cds[self.kind(s)]
        if venv.error:
            self.unavailable[(s, "pycds")] = venv.error
            return
        lst = os.path.join(self.work, f"cds-{slug(s)}.lst")
        img = os.path.join(self.work, f"cds-{slug(s)}.img")
        for f in (lst, img):
            if os.path.exists(f):
                os.remove(f)
        try:
            run_child(venv.python, s, clean_env(PYCDSMODE="TRACE", PYCDSLIST=lst), self.work)
            with open(lst) as fh:
                names = [n for n in fh.read().split() if not n.endswith(".__main__")
                         and n != "__main__"]
            with open(lst, "w") as fh:
                fh.write("\n".join(names) + "\n")
            r = subprocess.run([venv.python, "-c", "import cds.dump, sys; "
                                "cds.dump.run_dump(sys.argv[1], sys.argv[2])", lst, img],
                               env=clean_env(), cwd=self.work, capture_output=True, text=True)
            if not os.path.exists(img):
                raise ChildFailed(f"cds.dump.run_dump wrote no archive (exit {r.returncode}: "
                                  f"{(r.stderr.strip().splitlines() or [''])[-1]})")
            self.archives[s] = img
        except (ChildFailed, OSError) as exc:
            self.unavailable[(s, "pycds")] = str(exc)
            log(f"pycds unavailable for {s!r} ({self.version}): {exc}")

    def run(self, s, arm, action="time"):
        k = self.kind(s)
        venv = self.ref[k]
        names = "-"
        if arm == "pycds":
            return run_child(self.cds[k].python, s, clean_env(
                PYCDSMODE="SHARE", PYCDSARCHIVE=self.archives[s]), self.work, action=action)
        hooked = arm in ("checked", "unchecked", "cold-checked")
        if hooked:
            venv.unpark()
        else:
            venv.park()
        env = clean_env(REFMARSHAL_UNCHECKED="1") if arm == "unchecked" else clean_env()
        if arm == "ceiling":
            names = self.names[s]
        if arm.startswith("cold-"):
            evict(self.evict[k])
        return run_child(venv.python, s, env, self.work, names=names, action=action)

    def usable(self, s, a):
        return (s, a) not in self.unavailable and (None, a) not in self.unavailable

    def measure(self, rounds):
        try:
            self._measure(rounds)
        finally:
            for v in self.ref.values():
                v.unpark()

    def _measure(self, rounds):
        started = time.perf_counter()
        for phase in (WARM_ARMS, COLD_ARMS):
            arms = [a for a in self.arms if a in phase]
            if not arms:
                continue
            for r in range(-1, rounds):         # round -1: warm-up, untimed, not kept
                t = time.perf_counter()
                shift = r % len(arms) if r >= 0 else 0
                order = arms[shift:] + arms[:shift]
                for s in self.statements:
                    for a in order:
                        if not self.usable(s, a):
                            continue
                        try:
                            smp = self.run(s, a)
                        except ChildFailed as exc:
                            self.unavailable[(s, a)] = str(exc)
                            log(f"{self.version} {a}: {exc}")
                            continue
                        if r >= 0:
                            self.samples.setdefault((s, a), []).append(smp)
                dt = time.perf_counter() - t
                if r == -1:
                    log(f"{self.version} {'/'.join(arms)}: warm-up round {dt:.1f} s; about "
                        f"{dt * rounds / 60:.1f} min for {rounds} rounds")
                elif (r + 1) % 5 == 0 or r + 1 == rounds:
                    log(f"{self.version}: round {r + 1}/{rounds} of "
                        f"{'warm' if phase is WARM_ARMS else 'cold'} arms "
                        f"({time.perf_counter() - started:.0f} s so far)")
        self.seconds = time.perf_counter() - started


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def cell(xs, scale, digits, ratio_to=None, rss=False):
    q1, med, q3 = quartiles([x * scale for x in xs])
    text = f"{med:.{digits}f} <sub>{q1:.{digits}f}–{q3:.{digits}f}</sub>"
    if ratio_to is not None:
        if rss:
            text += f" {(med / ratio_to - 1) * 100:+.0f} %"
        else:
            text += f" **{ratio_to / med:.2f}×**"
    return text


MEASURES = [("wall", "Whole-process wall time, ms", 1e3, 1),
            ("cpu", "Whole-process CPU time (user + sys), ms", 1e3, 1),
            ("rss", "Peak RSS, MB", 1 / 2 ** 20, 1),
            ("stmt", "The statement's in-process time, ms", 1e3, 1)]


def value(smp, key, arm):
    """A sample's figure; the ceiling's set-up (unmarshalling before the timer) taken out of
    its whole-process times."""
    v = smp[key]
    if arm == "ceiling" and key == "wall":
        v -= smp["setup_wall"]
    elif arm == "ceiling" and key == "cpu":
        v -= smp["setup_cpu"]
    return v


def markdown(v, rounds, command):
    out = [f"### CPython {v.versions.split(',')[0].split()[1]}", ""]
    out.append(f"{v.versions}; {rounds} rounds; {now_text()}; {machine()}; command: `{command}`")
    out.append("")
    for k in ("std", "pkg"):
        if any(v.kind(s) == k for s in v.statements):
            out.append(f"- {k} venv: {v.ref[k].build}")
    for (s, a), why in sorted(v.unavailable.items(), key=lambda x: (x[0][0] or "", x[0][1])):
        out.append(f"- {a} unavailable{'' if s is None else f' for `{s}`'}: {why}")
    out.append("")
    out.append("Cells: median <sub>first–third quartile</sub>; **ratio** = stock's median ÷ "
               "the arm's (above 1: faster than stock; the cold arms against cold stock); "
               "peak RSS: per cent above stock.  The ceiling's set-up is taken out of its "
               "whole-process times.")
    arms = v.arms
    for key, title, scale, digits in MEASURES:
        out += ["", f"{title}:", ""]
        out.append("| statement | " + " | ".join(arms) + " |")
        out.append("|---" * (len(arms) + 1) + "|")
        for s in v.statements:
            if key == "stmt" and (s == "pass" or s.startswith("-m ")):
                continue
            row = [f"`{'python ' + s if s.startswith('-m') else s}`"]
            for a in arms:
                xs = [value(x, key, a) for x in v.samples.get((s, a), [])]
                if not xs:
                    row.append("n/a")
                    continue
                ref = "cold-stock" if a.startswith("cold-") else "stock"
                base = [value(x, key, ref) for x in v.samples.get((s, ref), [])]
                ratio_to = statistics.median(base) * scale if base and a != ref else None
                row.append(cell(xs, scale, digits, ratio_to, rss=key == "rss"))
            out.append("| " + " | ".join(row) + " |")
    served = [f"`{s}` {a} {n}/{t}" for (s, a), (n, t) in v.served.items()
              if a in ("checked", "pycds") and n is not None]
    if served:
        out += ["", "Modules served (image / archive) of those in sys.modules after the "
                "statement, from a probe run: " + "; ".join(served) + "."]
    return "\n".join(out) + "\n"


def now_text():
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as fh:
        mem = int(fh.readline().split()[1]) / 2 ** 20
    return (f"{os.cpu_count()} × {cpu}, {mem:.0f} GB, Linux {platform.release()}, "
            f"load average at the end {os.getloadavg()[0]:.2f}")


def estimate(args):
    warm = [a for a in args.arms if a in WARM_ARMS]
    cold = [a for a in args.arms if a in COLD_ARMS]
    per_round = sum(GUESS_MS[s] for s in args.statements) / 1e3
    total = per_round * (len(warm) + len(cold) * 2.5) + 0.3 * len(cold) * len(args.statements)
    return total * (args.rounds + 1) * len(args.versions)


def pick(value, known, what):
    if value is None:
        return list(known)
    chosen = []
    for token in value.split(","):
        token = token.strip()
        hits = [k for k in known if k == token] or [k for k in known if token in k]
        if not hits:
            raise SystemExit(f"no {what} matches {token!r}; known: {', '.join(known)}")
        chosen += [h for h in hits if h not in chosen]
    return [k for k in known if k in chosen]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", help="comma list of 3.11, 3.12, 3.13 (default: all three)")
    ap.add_argument("--statements", help="comma list; each word picks the statements it is "
                    "part of, e.g. json,sympy,pytest (default: all twelve)")
    ap.add_argument("--arms", help=f"comma list of {', '.join(ARMS)} (default: all)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reuse", action="store_true",
                    help="use the venvs (and their images) that exist; make only missing ones")
    ap.add_argument("--reinstall", action="store_true",
                    help="with --reuse: reinstall refmarshal from this checkout into the venvs "
                    "and rebuild their images")
    ap.add_argument("--prefix", default="/tmp/e2e", help="venvs go to PREFIX-<cache tag>-*")
    ap.add_argument("--out", default="/tmp", help="where the .md and .json files go")
    ap.add_argument("--estimate", action="store_true", help="print the estimate and stop")
    args = ap.parse_args()
    args.versions = pick(args.versions, VERSIONS, "version")
    args.statements = pick(args.statements, STATEMENTS, "statement")
    args.arms = pick(args.arms, ARMS, "arm")
    command = "python benchmarks/endtoend.py " + " ".join(sys.argv[1:])
    log(f"{len(args.versions)} versions × {len(args.statements)} statements × "
        f"{len(args.arms)} arms × {args.rounds} rounds (+1 warm-up): about "
        f"{estimate(args) / 60:.0f} min of measuring (a priori; a better estimate follows "
        f"each warm-up round), plus making the venvs and images unless --reuse")
    if args.estimate:
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    os.makedirs(args.out, exist_ok=True)
    md_path = os.path.join(args.out, f"endtoend-{stamp}.md")
    json_path = os.path.join(args.out, f"endtoend-{stamp}.json")
    commit = subprocess.run(["git", "-C", PROJECT, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    raw = {"command": command, "refmarshal": commit, "machine": machine(), "versions": {}}
    tables = []
    t_all = time.perf_counter()
    for ver in args.versions:
        v = Version(ver, args)
        t = time.perf_counter()
        v.setup()
        setup_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory(prefix=f"e2e-run-{v.tag}-") as work:
            v.prepare(work)
            v.measure(args.rounds)
        tables.append(markdown(v, args.rounds, command))
        print(tables[-1], flush=True)
        raw["versions"][ver] = {
            "versions": v.versions, "setup_seconds": setup_s, "measure_seconds": v.seconds,
            "builds": {k: getattr(r, "build", None) for k, r in v.ref.items()},
            "unavailable": {f"{s}|{a}": why for (s, a), why in v.unavailable.items()},
            "served": {f"{s}|{a}": n for (s, a), n in v.served.items()},
            "samples": {f"{s}|{a}": xs for (s, a), xs in v.samples.items()}}
        log(f"{ver}: venvs {setup_s:.0f} s, measuring {v.seconds:.0f} s")
        with open(json_path, "w") as fh:
            json.dump(raw, fh, indent=1)
        with open(md_path, "w") as fh:
            fh.write("\n".join(tables))
    log(f"done in {(time.perf_counter() - t_all) / 60:.1f} min; {md_path}, {json_path}")


if __name__ == "__main__":
    main()
