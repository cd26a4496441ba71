"""Every way Python is run (issue 15): threads, fork and multiprocessing, interpreter flags,
``-m``, a zipapp, a byte-code cache prefix, read-only directories, coverage, pdb and
sys.monitoring, each with the image and with stock import.

Every case runs child interpreters of a real virtual environment whose site-packages holds the
``.pth`` hook (``refmarshal.pth``, naming this module's image) and a ``.pth`` that puts a source
directory on ``sys.path``, as an installed project would be.  Each command runs twice, with
``REFMARSHAL=0`` (stock import) and with the image; the two must observe the same, and with the
image the modules the image holds must really come from it (``own``: their code object lives
in the image's memory), so that no case can pass with the hook silently off.
"""

import json
import os
import re
import shutil
import sys
import sysconfig
import textwrap
import zipapp

import pytest

import corpus
import refmarshal
from refmarshal import importer
from test_importer import MODCODE, TREE, pytestmark, run, venv, write_tree  # noqa: F401

MODES = ("stock", "image")

# The probe every child imports (from the image): what a module looks like, and whether its
# code came from the image.
PROBE = MODCODE + textwrap.dedent('''\
    import json

    def finder():
        for f in _sys.meta_path:
            if type(f).__name__ == "ImageFinder":
                return f

    def owned(code):
        f = finder()
        return f is not None and f.image.owns(code)

    def code_of(m):
        """The module's own code object (the frozen test modules have no MODCODE)."""
        return getattr(m, "MODCODE", None) or m.main.__code__

    def _name(x):
        return x.__name__ if isinstance(x, type) else type(x).__name__

    def describe(g):
        """What stock import decides about a module, from its globals."""
        spec, ld = g["__spec__"], g["__loader__"]
        return dict(name=g["__name__"], file=g.get("__file__"), cached=g.get("__cached__"),
                    package=g.get("__package__"), loader=_name(ld),
                    spec=None if spec is None else [
                        spec.name, spec.origin, spec.cached, spec.parent, spec.has_location,
                        _name(spec.loader), spec.loader is ld])

    def observe(names):
        import importlib
        obs, own = {}, {}
        for n in names:
            m = importlib.import_module(n)
            obs[n], own[n] = describe(vars(m)), owned(code_of(m))
        own["ways_probe"] = owned(MODCODE)
        return dict(obs=obs, own=own)

    def emit(x):
        print(json.dumps(x, sort_keys=True), flush=True)

    def main_report(g):
        """For a module of package cli run as __main__ (-m)."""
        cli = _sys.modules["cli"]
        emit(dict(obs=dict(main=describe(g), argv=_sys.argv, cli=describe(vars(cli))),
                  own=dict(main=owned(g["MODCODE"]), cli=owned(cli.MODCODE))))
    ''')
# "python -c PROBE_C name ...": imports the named modules and reports.
PROBE_C = "import sys, ways_probe as p\np.emit(p.observe(sys.argv[1:]))\n"

# A module body for the thread races: slow enough for threads to meet on its module lock,
# and it counts its executions.
RACER = MODCODE + textwrap.dedent('''\
    import builtins
    builtins.__dict__.setdefault("RUNS", []).append(__name__)
    for _i in range(3000):
        pass
    DONE = True
    ''')

WAYS_TREE = {
    "ways_probe.py": PROBE,
    "cli/__init__.py": MODCODE,
    "cli/__main__.py": MODCODE + "import ways_probe\nways_probe.main_report(globals())\n",
    "cli/tool.py": MODCODE + "import ways_probe\nways_probe.main_report(globals())\n",
    "bp.py": MODCODE + textwrap.dedent('''\
        X = 1
        breakpoint()
        Y = X + 1
        def h(x):
            z = x * 3
            breakpoint()
            return z + 1
        '''),
    "mon.py": MODCODE + textwrap.dedent('''\
        def walk(n):
            total = 0
            for i in range(n):
                if i % 2:
                    total += i
                else:
                    total -= 1
            return total
        R = walk(3)
        '''),
    **{f"{phase}{i:02d}.py": RACER for phase in ("cold", "warm") for i in range(16)},
    "cold_same.py": RACER,
    "warm_same.py": RACER,
}

# The frozen test modules of the standard library: frozen (never from the image) unless
# -X frozen_modules=off, when stock finds them as source files.
FROZEN = [("__hello__", "__hello__.py"), ("__phello__", "__phello__/__init__.py"),
          ("__phello__.spam", "__phello__/spam.py")]


class Ways:
    """Runs the venv's interpreter in both modes."""

    def __init__(self, python, site, lib, img):
        self.python, self.site, self.lib, self.img = python, site, lib, img

    def child(self, argv, cwd, mode, *, env=None, **kw):
        """The venv's interpreter, with stock import (REFMARSHAL=0) or the image's hook."""
        env = dict(env or {}, **({"REFMARSHAL": "0"} if mode == "stock" else {}))
        return run(argv, cwd, python=self.python, env=env, **kw)

    def both(self, argv, cwd, **kw):
        """{mode: the finished child}, same command in each mode."""
        return {mode: self.child(argv, cwd, mode, **kw) for mode in MODES}

    def observe(self, argv, cwd, **kw):
        """{mode: the JSON the child printed}, each with an empty stderr (no warning)."""
        out = {}
        for mode, r in self.both(argv, cwd, **kw).items():
            assert r.stderr == "", (mode, r.stderr)
            out[mode] = json.loads(r.stdout)
        return out


@pytest.fixture(scope="module")
def ways(venv, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """The venv, its .pth hook on an image of a source tree (TREE, WAYS_TREE and the frozen
    test modules) and that tree on sys.path through another .pth; both removed afterwards."""
    python, site = venv
    root = tmp_path_factory.mktemp("ways")
    lib = write_tree(root / "lib", {**TREE, **WAYS_TREE})
    std = sysconfig.get_paths()["stdlib"]
    img = root / "ways.img"
    entries = list(corpus._modules_under(str(lib))) + [(n, os.path.join(std, p))
                                                      for n, p in FROZEN]
    res = refmarshal.build(img, entries)
    assert len(res.modules) == len(entries) and not res.skipped
    pths = {"_ways_lib.pth": f"{lib}\n", importer.PTH_NAME: importer.pth_text(img)}
    for name, text in pths.items():
        with open(os.path.join(site, name), "w") as fh:
            fh.write(text)
    try:
        yield Ways(python, site, lib, img)
    finally:
        for name in pths:
            os.unlink(os.path.join(site, name))


def same_but_own(out):
    """Stock and the image observed the same; the image served every module stock loaded from
    a source file the image holds (all of `own` here), stock none."""
    stock, image = out["stock"], out["image"]
    assert image["obs"] == stock["obs"]
    assert not any(stock["own"].values())
    assert image["own"] == dict.fromkeys(image["own"], True)
    return stock["obs"]


# ---------------------------------------------------------------------------------------
# 1. Threads importing at once.

THREADS = '''
import _thread, sys, time    # built in: the first race below makes the process's first import

def race(names):
    """Each name imported by its own thread, all released at once."""
    gate, lock = _thread.allocate_lock(), _thread.allocate_lock()
    gate.acquire()
    got, left = [], [len(names)]
    def one(name):
        with gate:
            pass
        try:
            m = __import__(name)
            r = [name, id(m), getattr(m, "DONE", "partly initialised")]
        except BaseException as exc:
            r = [name, 0, repr(exc)]
        with lock:
            got.append(r)
            left[0] -= 1
    for n in names:
        _thread.start_new_thread(one, (n,))
    gate.release()
    while left[0]:
        time.sleep(0.001)
    ids = {}
    for n, i, _ in got:
        ids.setdefault(n, set()).add(i)
    return dict(done=sorted([n, d] for n, _, d in got),
                one_object={n: len(v) == 1 for n, v in ids.items()})

sys.setswitchinterval(1e-6)
pending = any(type(f).__name__ == "PendingFinder" for f in sys.meta_path)
names = {p: [f"{p}{i:02d}" for i in range(16)] + [f"{p}_same"] * 16 for p in ("cold", "warm")}
obs = {p: race(names[p]) for p in ("cold", "warm")}
import builtins, ways_probe as p
obs["runs"] = sorted(builtins.RUNS)
own = {n: p.owned(sys.modules[n].MODCODE) for n in set(names["cold"] + names["warm"])}
p.emit(dict(obs=obs, own=own, pending=pending))
'''


def test_threads_importing_at_once(ways, tmp_path):
    """32 threads import 17 modules at once (16 threads the same one), first while the hook is
    still pending (the first import of the process wakes it), then with the image open: each
    body runs once, every thread gets the whole module, nothing is said on stderr.  Threads
    whose import meets the hook's wake-up in another thread import stock (see _startup)."""
    (tmp_path / "threads.py").write_text(THREADS)
    out = ways.observe(["threads.py"], tmp_path)
    stock, image = out["stock"], out["image"]
    assert image["obs"] == stock["obs"]
    obs = stock["obs"]
    for phase in ("cold", "warm"):
        assert all(done is True for _, done in obs[phase]["done"])
        assert len(obs[phase]["done"]) == 32 and all(obs[phase]["one_object"].values())
    assert obs["runs"] == sorted({n for phase in ("cold", "warm")
                                  for n, _ in obs[phase]["done"]})
    assert not any(stock["own"].values()) and not stock["pending"]
    assert image["pending"]                # the hook had not opened the image yet
    cold = {n: v for n, v in image["own"].items() if n.startswith("cold")}
    warm = {n: v for n, v in image["own"].items() if n.startswith("warm")}
    assert any(cold.values())              # the thread that woke the hook got the image
    assert warm == dict.fromkeys(warm, True)


# ---------------------------------------------------------------------------------------
# 2. fork and multiprocessing.

FORK = '''
import os, sys    # already loaded: nothing reaches the hook before the first fork

def in_child(names):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            import ways_probe as p
            data = p.json.dumps(p.observe(names))
        except BaseException as exc:
            data = repr(exc)
        os.write(w, data.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()

cold = in_child(["mod", "pkg.sub"])          # the child's import wakes its own hook
import json, ways_probe as p                 # the parent opens the image
warm = in_child(["pkg.inner.helper", "gone"])  # the child inherits the open image
res = {"cold": json.loads(cold), "warm": json.loads(warm)}
p.emit(dict(obs={k: v["obs"] for k, v in res.items()},
            own={f"{k} {n}": o for k, v in res.items() for n, o in v["own"].items()}))
'''

MULTIPROCESSING = '''
import multiprocessing, sys
import ways_probe as p

if __name__ == "__main__":
    res = {}
    for method in ("fork", "forkserver", "spawn"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            res[method] = pool.apply(p.observe, (["mod", "pkg.sub"],))
    p.emit(dict(obs={k: v["obs"] for k, v in res.items()},
                own={f"{k} {n}": o for k, v in res.items() for n, o in v["own"].items()}))
'''


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_child_processes_import_from_the_image(ways, tmp_path, how):
    """A forked child keeps its parent's finder and the image's memory (copy-on-write) and
    imports through them; forked before the parent's first import, it wakes its own hook.
    multiprocessing's fork, forkserver and spawn children (the last two start the venv's
    interpreter afresh, so the .pth hook runs in them) all import from the image."""
    script = {"os.fork": FORK, "multiprocessing": MULTIPROCESSING}[how]
    (tmp_path / "main.py").write_text(script)
    obs = same_but_own(ways.observe(["main.py"], tmp_path))
    children = ["cold", "warm"] if how == "os.fork" else ["fork", "forkserver", "spawn"]
    assert sorted(obs) == children
    assert obs[children[0]]["mod"]["file"] == str(ways.lib / "mod.py")


# ---------------------------------------------------------------------------------------
# 3. Interpreter flags and other ways to start.

FLAG_NAMES = ["mod", "pkg.sub", "ns.portion", "__hello__", "__phello__.spam"]
FLAGS = {
    "no flag": [],
    "-X frozen_modules=off": ["-X", "frozen_modules=off"],
    "-X dev": ["-X", "dev"],
    "-I": ["-I"],
    "-E": ["-E"],
    "-bb": ["-bb"],                                          # bytes/str comparisons raise
    "-X warn_default_encoding": ["-X", "warn_default_encoding", "-W", "error"],
    "-X tracemalloc": ["-X", "tracemalloc=5"],
}


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_interpreter_flags(ways, tmp_path, flag):
    """Same modules, same attributes, no warning (-X dev shows ResourceWarnings and runs with
    the debug memory allocator; refmarshal's own code opens no file without an encoding and
    mixes no bytes with str).  -I and -E ignore REFMARSHAL_IMAGE as they ignore
    PYTHONPATH: the .pth line's image serves.  The frozen test modules come from the image
    only with -X frozen_modules=off, when stock finds them as source files too."""
    env = {"REFMARSHAL_IMAGE": str(tmp_path / "elsewhere.img")} if flag in ("-I", "-E") else {}
    out = ways.observe([*FLAGS[flag], "-c", PROBE_C, *FLAG_NAMES], tmp_path, env=env)
    frozen = flag != "-X frozen_modules=off"
    stock, image = out["stock"], out["image"]
    assert image["obs"] == stock["obs"] and not any(stock["own"].values())
    assert image["own"] == {n: not (frozen and n.startswith("__")) for n in image["own"]}
    loader = stock["obs"]["__hello__"]["loader"]
    assert loader == ("FrozenImporter" if frozen else "SourceFileLoader")
    assert stock["obs"]["mod"]["file"] == str(ways.lib / "mod.py")


NO_RANGES = {"-X no_debug_ranges": (["-X", "no_debug_ranges"], {}),
             "PYTHONNODEBUGRANGES": ([], {"PYTHONNODEBUGRANGES": "1"})}
POSITIONS = """\
import sys, traceback, ways_probe as p, mod
res = p.observe(["mod"])
res["obs"]["finders"] = [type(f).__name__ for f in sys.meta_path
                         if type(f).__module__.startswith("refmarshal")]
res["obs"]["positions"] = list(mod.f.__code__.co_positions())
try:
    mod.boom()
except ValueError:
    res["obs"]["traceback"] = traceback.format_exc()
p.emit(res)
"""
INSTALL = "import sys\nfrom refmarshal import importer\nprint(importer.install(sys.argv[1]))\n"


@pytest.mark.parametrize("how", sorted(NO_RANGES))
def test_no_debug_ranges_steps_aside(ways, tmp_path, how):
    """Without debug ranges every code object stock makes (from a .pyc too) loses its column
    positions, so tracebacks show no carets; the image's code has them.  The start-up hook
    steps aside, silently (a user's choice, not a problem); install() declines with one
    warning."""
    flags, env = NO_RANGES[how]
    out = ways.observe([*flags, "-c", POSITIONS], tmp_path, env=env)
    assert out["image"] == out["stock"]
    obs = out["stock"]["obs"]
    assert obs["finders"] == [] and not any(out["stock"]["own"].values())
    assert all(p[2:] == [None, None] for p in obs["positions"]) and "^" not in obs["traceback"]
    r = ways.child([*flags, "-c", INSTALL, ways.img], tmp_path, "image", env=env)
    assert r.stdout == "None\n" and r.stderr.count("RefmarshalWarning") == 1
    assert "without column positions in its code" in r.stderr


IMPORT_TIME = re.compile(r"import time:\s+\d+ \|\s+\d+ \| (.*)")


def test_x_importtime_lists_stock_modules(ways, tmp_path):
    """-X importtime lists the modules stock lists, at the same depths, and no more: the hook
    loads its C module from its file, and the finder's image (``f.image``, which the probe
    asks for) loads its Python modules from theirs (_startup._load_hook_modules), without the
    import statement that -X importtime reports."""
    code = "import mod, pkg.sub, json, ways_probe as p\n" + PROBE_C
    outs = ways.both(["-X", "importtime", "-c", code, "mod", "pkg.sub"], tmp_path)
    lines = {}
    for mode, r in outs.items():
        lines[mode] = [m.group(1) if (m := IMPORT_TIME.match(x)) else x
                       for x in r.stderr.splitlines()]
        assert lines[mode][0].startswith("import time: self [us]")
    stock = set(lines["stock"])
    assert lines["image"] == lines["stock"]
    assert "    pkg.sub" in stock and "json" in stock    # imported in pkg's body; at the top
    same_but_own({mode: json.loads(r.stdout) for mode, r in outs.items()})


SITE_LATER = '''
import sys, site
before = [type(f).__name__ for f in sys.meta_path]
try:
    import mod
    first = "imported"
except ImportError as exc:
    first = type(exc).__name__
site.main()
import ways_probe as p
res = p.observe(["mod", "pkg.sub"])
res["obs"]["-S"] = [before, first]
p.emit(res)
'''


def test_no_site_then_site_main(ways, tmp_path):
    """-S: no .pth file is read, so no hook and no source directory, as stock; `import site`
    alone does not read them either (-S holds for it); site.main() reads every .pth file,
    refmarshal's among them, and from then on the image serves."""
    obs = same_but_own(ways.observe(["-S", "-c", SITE_LATER], tmp_path))
    assert obs["-S"] == [["type"] * 3, "ModuleNotFoundError"]


DASH_M = {    # command: the module run as __main__
    "-m cli": "cli.__main__",
    "-m cli.tool": "cli.tool",
    "-m cProfile -o prof -m cli.tool": "cli.tool",      # runpy.run_module(run_name="__main__")
}


@pytest.mark.parametrize("command", sorted(DASH_M))
def test_run_module_with_dash_m(ways, tmp_path, command):
    """python -m: the main module's code comes from the image, and its __loader__, __spec__
    and __cached__ are stock's (runpy gets the spec from the finder and runs its code)."""
    obs = same_but_own(ways.observe([*command.split(), "arg"], tmp_path))
    name = DASH_M[command]
    assert obs["main"]["spec"][0] == name and obs["main"]["loader"] == "SourceFileLoader"
    assert obs["main"]["name"] == "__main__" and obs["argv"][1:] == ["arg"]


BY_HAND = {
    # importlib's recipe without sys.modules: module_from_spec, then exec_module
    "module_from_spec": "spec = importlib.util.find_spec('mod')\n"
                        "m = importlib.util.module_from_spec(spec)\n"
                        "spec.loader.exec_module(m)\ng = vars(m)\n",
    "runpy.run_module": "g = runpy.run_module('pkg.inner.deep', run_name='as_main')\n",
}


@pytest.mark.parametrize("how", sorted(BY_HAND))
def test_run_by_hand(ways, tmp_path, how):
    """Module code run by hand from the finder's spec, never put in sys.modules: its loader
    is stock's, both as __loader__ and as __spec__.loader."""
    code = ("import importlib.util, runpy, sys, ways_probe as p\n" + BY_HAND[how] +
            "p.emit(dict(obs=[p.describe(g), g['__name__'] in sys.modules],"
            " own={'code': p.owned(g['MODCODE'])}))\n")
    obs = same_but_own(ways.observe(["-c", code], tmp_path))
    assert obs[0]["loader"] == "SourceFileLoader" and obs[0]["spec"][5:] == [
        "SourceFileLoader", True]
    assert obs[1] is False


ZIP_MAIN = '''
import ways_probe as p
res = p.observe(["inzip", "mod", "pkg.sub"])
res["obs"]["__main__"] = p.describe(globals())
f = p.finder()
p.emit(dict(res, fallbacks=f and f.fallbacks))
'''


def test_zipapp(ways, tmp_path):
    """python app.pyz: the archive is sys.path[0]; its modules are zipimport's (one of them
    shadows a module the image holds), modules outside come from the image."""
    app = write_tree(tmp_path / "app", {"__main__.py": ZIP_MAIN, "inzip.py": MODCODE,
                                        "mod.py": MODCODE + "WHO = 'zip'\n"})
    zipapp.create_archive(app, tmp_path / "app.pyz")
    shutil.rmtree(app)
    out = ways.observe(["app.pyz"], tmp_path)
    stock, image = out["stock"], out["image"]
    assert image["obs"] == stock["obs"]
    assert stock["obs"]["mod"]["file"] == str(tmp_path / "app.pyz" / "mod.py")
    assert stock["obs"]["mod"]["loader"] == stock["obs"]["__main__"]["loader"] == "zipimporter"
    assert not any(stock["own"].values()) and stock["fallbacks"] is None
    assert image["own"] == {"inzip": False, "mod": False, "pkg.sub": True, "ways_probe": True}
    assert image["fallbacks"] == 1           # mod: the image holds it, the archive shadows it


@pytest.mark.parametrize("how", ["PYTHONPYCACHEPREFIX", "-X pycache_prefix"])
def test_pycache_prefix(ways, tmp_path, how):
    """A byte-code cache prefix: __cached__ and __spec__.cached under it, as stock."""
    prefix = tmp_path / "pycache"
    env = {"PYTHONDONTWRITEBYTECODE": ""}
    if how == "PYTHONPYCACHEPREFIX":
        env[how], flags = str(prefix), []
    else:
        flags = ["-X", f"pycache_prefix={prefix}"]
    obs = same_but_own(ways.observe([*flags, "-c", PROBE_C, "mod", "pkg.sub"], tmp_path,
                                    env=env))
    cached = obs["mod"]["cached"]
    assert cached.startswith(str(prefix) + os.sep) and obs["mod"]["spec"][2] == cached
    assert os.path.exists(cached)            # stock wrote it there


# Root ignores file modes; a child without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (out of
# its bounding set, so also after exec) does not.  setpriv is util-linux's (Debian: essential).
WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


READ_ONLY = '''
import os, sys
try:
    open(os.path.join(sys.argv[1], "written"), "x").close()
    writable = True
except PermissionError:
    writable = False
import ways_probe as p
res = p.observe(sys.argv[2:])
res["obs"]["writable"] = writable
p.emit(res)
'''


def test_read_only_source_dir_and_site_packages(ways, tmp_path):
    """Source directory, site-packages and the image's directory read-only: stock cannot
    write byte code (and says nothing), the image still serves, __cached__ is stock's."""
    for d in list(ways.lib.rglob("__pycache__")):
        shutil.rmtree(d)
    dirs = [ways.lib.parent, ways.site, *(p for p in ways.lib.rglob("*") if p.is_dir()),
            ways.lib]
    modes = {d: os.stat(d).st_mode for d in dirs}
    for d in dirs:
        os.chmod(d, 0o555)
    kw = {"prefix": WITHOUT_DAC_OVERRIDE} if os.geteuid() == 0 else {}
    try:
        out = ways.observe(["-c", READ_ONLY, ways.lib, "mod", "pkg.sub", "pkg.inner.helper"],
                           tmp_path, env={"PYTHONDONTWRITEBYTECODE": ""}, **kw)
    finally:
        for d, mode in modes.items():
            os.chmod(d, mode)
    obs = same_but_own(out)
    assert obs["writable"] is False
    assert obs["mod"]["cached"] == str(ways.lib / "__pycache__" /
                                       f"mod.{sys.implementation.cache_tag}.pyc")
    assert not list(ways.lib.rglob("__pycache__"))


# ---------------------------------------------------------------------------------------
# 4. Coverage.

COVERED = '''
import json, sys
import ways_probe as p, mod, pkg, mon
assert mod.f(3) == 8 and pkg.g() == "gh" and mon.walk(4) == 2
try:
    mod.boom()
except ValueError:
    pass
p.emit(dict(own={m.__name__: p.owned(m.MODCODE) for m in (p, mod, pkg, pkg.sub, mon)}))
'''

# coverage's measurement cores; sysmon (sys.monitoring) exists from 3.12 on, and measures
# branches only from 3.14 on (coverage falls back to another core, with a warning).
CORES = ["ctrace", "pytrace"] + (["sysmon"] if sys.version_info >= (3, 12) else [])


def _coverage_files(path, lib):
    """The report's files but the probe, which finds the image's finder only with the image."""
    with open(path) as fh:
        files = json.load(fh)["files"]
    del files[str(lib / "ways_probe.py")]
    assert str(lib / "mod.py") in files
    return files


@pytest.mark.parametrize("core", CORES)
def test_coverage_run_reports_stock_lines(ways, tmp_path, core):
    """`coverage run` measures the same lines (and arcs) per file for code from the image."""
    (tmp_path / "covered.py").write_text(COVERED)
    branch = ["--branch"] if core != "sysmon" else []
    files, own = {}, {}
    for mode in MODES:
        data = str(tmp_path / f".coverage.{mode}")
        kw = dict(env={"COVERAGE_CORE": core})
        r = ways.child(["-m", "coverage", "run", *branch, f"--data-file={data}",
                        f"--source={ways.lib}", "covered.py"], tmp_path, mode, **kw)
        assert r.stderr == ""
        own[mode] = json.loads(r.stdout)["own"]
        report = str(tmp_path / f"{mode}.json")
        ways.child(["-m", "coverage", "json", f"--data-file={data}", "-o", report, "-q"],
                   tmp_path, mode, **kw)
        files[mode] = _coverage_files(report, ways.lib)
    same_but_own({mode: dict(obs=files[mode], own=own[mode]) for mode in MODES})
    mod = files["stock"][str(ways.lib / "mod.py")]
    assert mod["executed_lines"] == list(range(1, 12))      # K() is never made


COVERED_TEST = '''
import json, os
import ways_probe as p, mod, pkg, mon

def test_through_the_image():
    assert mod.f(3) == 8 and pkg.g() == "gh" and mon.walk(4) == 2
    with open(os.environ["WAYS_OWN"], "w") as fh:
        json.dump({m.__name__: p.owned(m.MODCODE) for m in (p, mod, pkg, pkg.sub, mon)}, fh)
'''


def test_pytest_cov_reports_stock_lines(ways, tmp_path):
    """pytest --cov (pytest-cov): the same per-file lines and arcs."""
    (tmp_path / "test_covered.py").write_text(COVERED_TEST)
    out = {}
    for mode in MODES:
        report, own = tmp_path / f"{mode}.json", tmp_path / f"{mode}.own"
        r = ways.child(["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--cov={ways.lib}",
                        "--cov-branch", f"--cov-report=json:{report}", "test_covered.py"],
                       tmp_path, mode, env={"WAYS_OWN": str(own)})
        assert "1 passed" in r.stdout and r.stderr == ""
        out[mode] = dict(obs=_coverage_files(report, ways.lib), own=json.loads(own.read_text()))
    files = same_but_own(out)
    assert files[str(ways.lib / "mon.py")]["executed_lines"] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11]


# ---------------------------------------------------------------------------------------
# 5. Debuggers: pdb, breakpoint(), sys.monitoring.

OWN_CMD = 'p ("OWNED", __import__("ways_probe").owned(MODCODE))'

DEBUG = {
    # python -m pdb: breakpoints by file and line, in a module body run at import (where
    # shows the import's frames) and in a function
    "pdb": (["-m", "pdb", "main.py"],
            "import ways_probe, mod\nprint('result', mod.f(3))\n",
            ["b mod.py:5", "b mod.py:7", "c", "w", "p WHO", OWN_CMD, "c", "p x, y", "w", "c",
             "q"]),
    # breakpoint() in a module body and in a function of a module from the image
    "breakpoint": (["main.py"], "import ways_probe, bp\nprint('result', bp.h(2))\n",
                   ["w", "p X", OWN_CMD, "n", "n", "p Y", "c", "p z", "w", "n", "c"]),
}


def _debug_session(ways, cwd, case):
    argv, main, commands = DEBUG[case]
    (cwd / "main.py").write_text(main)
    stdin = "".join(c + "\n" for c in commands)
    outs = ways.both(argv, cwd, input=stdin, env={"PYTHONBREAKPOINT": ""})
    text = {}
    for mode, r in outs.items():
        assert r.stderr == ""
        text[mode] = r.stdout
    assert "('OWNED', True)" in text["image"] and "('OWNED', False)" in text["stock"]
    assert text["image"].replace("('OWNED', True)", "('OWNED', False)") == text["stock"]
    return text["stock"]


MONITORING = '''
import sys, ways_probe as p
mon, T = sys.monitoring, sys.monitoring.DEBUGGER_ID
lib = sys.argv[1]
seen = []
def on_line(code, line):
    if not code.co_filename.startswith(lib):
        return mon.DISABLE
    seen.append(["line", code.co_name, line])
def on_branch(code, src, dest):
    if not code.co_filename.startswith(lib):
        return mon.DISABLE
    seen.append(["branch", code.co_name, src, dest])
mon.use_tool_id(T, "ways")
mon.register_callback(T, mon.events.LINE, on_line)
mon.register_callback(T, mon.events.BRANCH, on_branch)
mon.set_events(T, mon.events.LINE | mon.events.BRANCH)
import mon as m                 # every line of its body, as it runs at import
mon.set_events(T, 0)
obs = {"import": seen[:]}
del seen[:]
BP = m.walk.__code__.co_firstlineno + 4
def breakpoint_at(code, line):  # a debugger's breakpoint: one line of one function
    if line != BP:
        return mon.DISABLE
    seen.append(["stop", code.co_name, line])
mon.register_callback(T, mon.events.LINE, breakpoint_at)
mon.set_local_events(T, m.walk.__code__, mon.events.LINE)
m.walk(5)
m.walk(2)
mon.restart_events()
m.walk(3)
mon.set_local_events(T, m.walk.__code__, 0)
obs["breakpoint"] = seen
p.emit(dict(obs=obs, own={"mon": p.owned(m.MODCODE), "walk": p.owned(m.walk.__code__)}))
'''

# sys.monitoring exists from 3.12 on: on 3.11 that case does not exist.
DEBUGGERS = sorted(DEBUG) + (["sys.monitoring"] if sys.version_info >= (3, 12) else [])


@pytest.mark.parametrize("case", DEBUGGERS)
def test_debuggers_stop_at_stock_lines(ways, tmp_path, case):
    """pdb (driven through stdin), breakpoint() and sys.monitoring's line and branch events
    stop at the same lines, with the same stacks, in code from the image."""
    lib = str(ways.lib)
    if case == "sys.monitoring":
        obs = same_but_own(ways.observe(["-c", MONITORING, lib], tmp_path))
        assert ["line", "<module>", 11] in obs["import"] and any(
            e[0] == "branch" for e in obs["import"])
        assert [e[2] for e in obs["breakpoint"]] == [7] * 4
        return
    out = _debug_session(ways, tmp_path, case)
    if case == "pdb":
        assert f"> {lib}/mod.py(5)<module>()" in out and f"> {lib}/mod.py(7)f()" in out
        assert "<frozen importlib._bootstrap>" in out and "(Pdb) (3, 4)" in out
    else:
        assert f"{lib}/bp.py(" in out and "h()" in out and "result 7" in out
