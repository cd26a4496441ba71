"""The import hook (refmarshal.importer, refmarshal._startup): imports through an image behave
exactly as stock imports, only the code comes from the image.

Every test runs child interpreters (cwd a temp dir) and, where it can, runs the same script
once with stock import and once with the finder installed, and compares what they observed;
each module's body keeps its own code object (MODCODE) so the child can tell whether it came
from the image.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import corpus
import refmarshal
from refmarshal import format as F
from refmarshal import importer

pytestmark = pytest.mark.skipif(not refmarshal.accelerator_available(),
                                reason="accelerator not built (the importer needs it)")

MODCODE = "import sys as _sys\nMODCODE = _sys._getframe().f_code\n"
TREE = {
    "mod.py": MODCODE + textwrap.dedent('''\
        """A plain module."""
        WHO = "tree"
        def f(x):
            y = x + 1
            return y * 2
        def boom():
            raise ValueError("boom")
        class K:
            def __init__(self, x):
                self.x = x
        '''),
    "pkg/__init__.py": MODCODE + "from . import sub\nfrom .sub import g\n",
    "pkg/sub.py": MODCODE + "from .inner import helper as _h\ndef g():\n    return 'g' + _h.H\n",
    "pkg/inner/__init__.py": MODCODE,
    "pkg/inner/helper.py": MODCODE + "H = 'h'\n",
    "pkg/inner/deep.py": MODCODE + textwrap.dedent('''\
        DEEP = "tree"
        if __name__ == "__main__":
            fs = [f for f in _sys.meta_path if type(f).__name__ == "ImageFinder"]
            print("main", __spec__.name, bool(fs) and fs[0].image.owns(MODCODE))
        '''),
    "pkg/data.txt": "resource text\n",
    "ns/portion.py": MODCODE + "P = 1\n",
    "gone.py": MODCODE + "X = 1\n",
}
TREE_MODULES = ["mod", "pkg", "pkg.sub", "pkg.inner", "pkg.inner.helper", "pkg.inner.deep",
                "ns.portion", "gone"]

PRELUDE = textwrap.dedent('''\
    import json, sys
    MODE, IMG = sys.argv[1], sys.argv[2]
    finder = None
    if MODE in ("checked", "unchecked"):
        from refmarshal import importer
        finder = importer.install(IMG, checked=MODE == "checked")
        assert finder is not None
    def owned(m):
        """True when module m's own code object lives in the image."""
        return finder is not None and finder.image.owns(m.MODCODE)
    def emit(x):
        print(json.dumps(x, sort_keys=True))
    ''')


def write_tree(root, files=TREE):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def tree_entries(src):
    out = []
    for name in TREE_MODULES:
        rel = name.replace(".", "/")
        p = src / (rel + "/__init__.py") if (src / rel).is_dir() else src / (rel + ".py")
        out.append((name, str(p)))
    return out


@pytest.fixture
def tree(tmp_path):
    """(src dir, image of it, an empty cwd for the child)."""
    src = write_tree(tmp_path / "src")
    img = tmp_path / "tree.img"
    res = refmarshal.build(img, tree_entries(src))
    assert res.modules == sorted(TREE_MODULES) and not res.skipped
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return src, img, cwd


def child_env(pythonpath=(), **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFMARSHAL")}
    parts = [str(p) for p in pythonpath] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env.pop("PYTHONPATH", None)
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env.update(extra)
    return env


def run(argv, cwd, *, python=sys.executable, pythonpath=(), env=None, prefix=(), **kw):
    """A child interpreter that must exit 0 (prefix: a command that runs it, such as setpriv;
    kw: more subprocess.run arguments)."""
    r = subprocess.run([*prefix, python, *argv], cwd=cwd,
                       env=child_env(pythonpath, **(env or {})),
                       capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, r.stderr
    return r


def script(body, mode, img, cwd, *args, flags=(), pythonpath=()):
    """Run PRELUDE + body in a child; mode "stock", "checked" or "unchecked"."""
    argv = [*flags, "-c", PRELUDE + textwrap.dedent(body), mode, str(img), *map(str, args)]
    return run(argv, cwd, pythonpath=pythonpath)


def observe(body, img, cwd, *args, modes=("stock", "checked"), **kw):
    """{mode: the JSON the body emitted}, each run with an empty stderr (no warning)."""
    out = {}
    for mode in modes:
        r = script(body, mode, img, cwd, *args, **kw)
        assert r.stderr == "", r.stderr
        out[mode] = json.loads(r.stdout)
    return out


# ---------------------------------------------------------------------------------------
# Module attributes and behaviour: exactly stock.

ATTRIBUTES = '''
    import copy, importlib, importlib.machinery, importlib.resources, inspect, linecache, pickle
    import traceback
    names = sys.argv[3].split(",")
    obs, own = {}, {}
    for name in names:
        m = importlib.import_module(name)
        spec, ld = m.__spec__, m.__loader__
        o = dict(file=m.__file__, cached=m.__cached__, origin=spec.origin, spec_cached=spec.cached,
                 parent=spec.parent, has_location=spec.has_location, package=m.__package__,
                 smsl=None if spec.submodule_search_locations is None
                 else list(spec.submodule_search_locations),
                 path=list(m.__path__) if hasattr(m, "__path__") else None,
                 source_loader=isinstance(ld, importlib.machinery.SourceFileLoader),
                 same_loader=spec.loader is ld, name=ld.name, ld_path=ld.path,
                 filename=ld.get_filename(name), is_package=ld.is_package(name),
                 source=ld.get_source(name), data=ld.get_data(ld.path).decode(),
                 code_filename=m.MODCODE.co_filename, code_name=m.MODCODE.co_name,
                 spec_pickled=repr(pickle.loads(pickle.dumps(spec)).loader.get_filename(name)),
                 spec_copied=copy.deepcopy(spec).origin)
        obs[name], own[name] = o, owned(m)
    import mod, pkg, ns.portion
    obs["ns"] = [ns.__spec__.origin, list(ns.__path__), type(ns.__spec__.loader).__name__]
    obs["getsource"] = inspect.getsource(mod.f)
    obs["getsourcefile"] = inspect.getsourcefile(mod.K)
    obs["linecache"] = linecache.getline(mod.__file__, 5)
    try:
        mod.boom()
    except ValueError:
        obs["traceback"] = traceback.format_exc().splitlines()[-3:]
    obs["pickle"] = pickle.loads(pickle.dumps(mod.K(3))).x
    lines = []
    def tracer(frame, event, arg):
        if frame.f_code is mod.f.__code__:
            lines.append((event, frame.f_lineno))
        return tracer
    sys.settrace(tracer)
    mod.f(1)
    sys.settrace(None)
    obs["trace"] = lines
    obs["resource"] = importlib.resources.files("pkg").joinpath("data.txt").read_text()
    obs["reader"] = type(pkg.__loader__.get_resource_reader("pkg")).__name__
    obs["relative"] = pkg.g()
    emit(dict(obs=obs, own=own, hits=finder and finder.hits,
              loaders=sorted({type(sys.modules[n].__loader__).__name__ for n in names})))
'''


def test_module_attributes_and_tools_as_stock(tree):
    src, img, cwd = tree
    names = [n for n in TREE_MODULES if n != "gone"]
    out = observe(ATTRIBUTES, img, cwd, ",".join(names), pythonpath=[src])
    stock, mine = out["stock"], out["checked"]
    assert mine["obs"] == stock["obs"]
    assert stock["obs"]["traceback"][-1] == "ValueError: boom"
    assert stock["obs"]["resource"] == "resource text\n" and stock["obs"]["relative"] == "gh"
    assert stock["obs"]["pkg"]["smsl"] == [str(src / "pkg")]
    assert stock["obs"]["ns"][0] is None and not any(stock["own"].values())
    assert mine["own"] == {n: True for n in names}
    # every module came from the image, and its loader is then exactly stock's type
    assert mine["hits"] == len(names) and mine["loaders"] == stock["loaders"] == ["SourceFileLoader"]


def test_namespace_package_falls_through_and_portion_loads(tree):
    src, img, cwd = tree
    body = '''
        import ns.portion
        emit([ns.__spec__.origin, ns.__file__ if hasattr(ns, "__file__") else None,
              list(ns.__path__), owned(ns.portion), ns.portion.__file__])
    '''
    out = observe(body, img, cwd, pythonpath=[src])
    assert out["checked"][:3] == out["stock"][:3] and out["checked"][4] == out["stock"][4]
    assert out["checked"][3] is True and out["stock"][3] is False


def test_modules_the_image_does_not_hold_are_stock(tree):
    src, img, cwd = tree
    (src / "extra.py").write_text(MODCODE + "E = 1\n")
    (src / "pkg" / "extra2.py").write_text(MODCODE + "E = 2\n")
    body = '''
        import extra, pkg.extra2, json
        emit([extra.E, pkg.extra2.E, owned(extra), owned(pkg.extra2), json.__file__,
              type(extra.__loader__).__name__, finder and finder.fallbacks])
    '''
    out = observe(body, img, cwd, pythonpath=[src])
    assert out["checked"] == [1, 2, False, False, out["stock"][4], "SourceFileLoader", 0]


# ---------------------------------------------------------------------------------------
# Shadowing: an earlier path entry wins, as stock.

WHICH = '''
    import importlib
    name = sys.argv[3]
    try:
        m = importlib.import_module(name)
    except ImportError as exc:
        emit(["ImportError", type(exc).__name__])
    else:
        emit([m.__file__, getattr(m, "WHO", None), owned(m)])
'''


def both_modes(body, img, cwd, *args, **kw):
    """(what stock import observed, what the checked finder observed)."""
    out = observe(body, img, cwd, *args, **kw)
    return out["stock"], out["checked"]


def test_current_directory_shadows_for_dash_c(tree):
    src, img, cwd = tree
    (cwd / "mod.py").write_text(MODCODE + "WHO = 'cwd'\n")
    stock, mine = both_modes(WHICH, img, cwd, "mod", pythonpath=[src])
    assert stock == mine == [str(cwd / "mod.py"), "cwd", False]
    (cwd / "mod.py").unlink()          # and without it, the image serves the recorded file
    stock, mine = both_modes(WHICH, img, cwd, "mod", pythonpath=[src])
    assert stock[:2] == mine[:2] == [str(src / "mod.py"), "tree"] and mine[2] is True


def test_script_directory_shadows(tree):
    src, img, cwd = tree
    sdir = cwd / "scripts"
    write_tree(sdir, {"mod.py": MODCODE + "WHO = 'script dir'\n",
                      "run.py": PRELUDE + "import mod\nemit([mod.__file__, mod.WHO, owned(mod)])\n"})
    res = {m: json.loads(run([str(sdir / "run.py"), m, str(img)], cwd, pythonpath=[src]).stdout)
           for m in ("stock", "checked")}
    assert res["stock"] == res["checked"] == [str(sdir / "mod.py"), "script dir", False]


def test_sys_path_changes_at_run_time(tree):
    src, img, cwd = tree
    other = write_tree(cwd.parent / "other", {"mod.py": MODCODE + "WHO = 'other'\n"})
    body = '''
        import importlib
        sys.path.insert(0, sys.argv[3])
        import mod
        first = [mod.__file__, mod.WHO, owned(mod)]
        del sys.modules["mod"]
        sys.path.remove(sys.argv[3])
        import mod
        second = [mod.__file__, mod.WHO, owned(mod)]
        del sys.modules["mod"]
        sys.path.remove(sys.argv[4])
        try:
            import mod
            third = mod.__file__
        except ImportError:
            third = "ImportError"
        emit([first, second, third])
    '''
    stock, mine = both_modes(body, img, cwd, other, src, pythonpath=[src])
    assert stock[0] == mine[0] == [str(other / "mod.py"), "other", False]
    assert stock[1][:2] == mine[1][:2] == [str(src / "mod.py"), "tree"] and mine[1][2]
    assert stock[2] == mine[2] == "ImportError"


def test_submodule_search_follows_parent_path(tree):
    src, img, cwd = tree
    other = write_tree(cwd.parent / "other", {"deep.py": MODCODE + "DEEP = 'other'\n"})
    body = '''
        import pkg.inner
        pkg.inner.__path__.insert(0, sys.argv[3])
        import pkg.inner.deep as d
        emit([d.__file__, d.DEEP, owned(d), owned(pkg.inner)])
    '''
    stock, mine = both_modes(body, img, cwd, other, pythonpath=[src])
    assert stock[:3] == mine[:3] == [str(other / "deep.py"), "other", False]
    assert mine[3] is True


def test_package_beside_recorded_module_wins(tree):
    src, img, cwd = tree
    write_tree(src, {"mod/__init__.py": MODCODE + "WHO = 'package'\n"})
    stock, mine = both_modes(WHICH, img, cwd, "mod", pythonpath=[src])
    assert stock == mine == [str(src / "mod" / "__init__.py"), "package", False]


def test_recorded_entry_not_on_path(tree):
    src, img, cwd = tree
    copy = cwd.parent / "copy"
    shutil.copytree(src, copy)
    stock, mine = both_modes(WHICH, img, cwd, "mod", pythonpath=[copy])
    assert stock == mine == [str(copy / "mod.py"), "tree", False]
    stock, mine = both_modes(WHICH, img, cwd, "mod")
    assert stock == mine == ["ImportError", "ModuleNotFoundError"]


def test_finder_inserted_before_path_finder_keeps_precedence(tree):
    src, img, cwd = tree
    body = '''
        import importlib.machinery, importlib.util
        class Other:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name == "mod":
                    return importlib.util.spec_from_loader(name, Loader())
        class Loader:
            def create_module(self, spec):
                return None
            def exec_module(self, module):
                module.WHO = "other finder"
        sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder), Other)
        import mod, pkg
        emit([mod.WHO, owned(pkg)])
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert stock == ["other finder", False] and mine == ["other finder", False]


# ---------------------------------------------------------------------------------------
# Staleness, reload, invalidate_caches.

def test_changed_and_deleted_sources(tree):
    src, img, cwd = tree
    (src / "mod.py").write_text(MODCODE + "WHO = 'edited'\n")
    (src / "gone.py").unlink()
    body = '''
        import mod
        try:
            import gone
            g = "imported"
        except ModuleNotFoundError:
            g = "ModuleNotFoundError"
        emit([mod.WHO, owned(mod), g])
    '''
    out = observe(body, img, cwd, modes=("stock", "checked", "unchecked"), pythonpath=[src])
    assert out["stock"] == out["checked"] == ["edited", False, "ModuleNotFoundError"]
    # unchecked trusts the image for an edited source; a deleted one is still not found
    assert out["unchecked"] == ["tree", True, "ModuleNotFoundError"]


def test_same_size_edit_is_seen_through_mtime(tree):
    src, img, cwd = tree
    p = src / "pkg" / "inner" / "helper.py"
    p.write_text(p.read_text().replace("'h'", "'H'"))
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    body = "import pkg\nemit([pkg.g(), owned(pkg), owned(pkg.sub._h)])\n"
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert stock == ["gH", False, False] and mine == ["gH", True, False]


def test_reload_and_invalidate_caches(tree):
    src, img, cwd = tree
    body = '''
        import importlib, os
        import mod
        a = [mod.WHO, owned(mod)]
        mod = importlib.reload(mod)
        b = [mod.WHO, owned(mod)]
        path = mod.__file__
        with open(path, "w") as fh:
            fh.write("import sys as _sys\\nMODCODE = _sys._getframe().f_code\\nWHO = 'reloaded'\\n")
        os.utime(path, ns=(0, 10 ** 9))
        with open(os.path.join(os.path.dirname(path), "fresh.py"), "w") as fh:
            fh.write("F = 1\\n")
        importlib.invalidate_caches()
        mod2 = importlib.reload(mod)
        import fresh
        emit([a, b, [mod2 is mod, mod2.WHO, owned(mod2)], fresh.F])
    '''
    for mode in ("stock", "checked"):      # each run edits the tree: a fresh one per mode
        write_tree(src)
        refmarshal.build(img, tree_entries(src))
        (src / "fresh.py").unlink(missing_ok=True)
        r = script(body, mode, img, cwd, pythonpath=[src])
        assert r.stderr == ""
        a, b, c, fresh = json.loads(r.stdout)
        assert [a[0], b[0], c[:2], fresh] == ["tree", "tree", [True, "reloaded"], 1]
        assert [a[1], b[1], c[2]] == ([False] * 3 if mode == "stock" else [True, True, False])


# ---------------------------------------------------------------------------------------
# Problems: one warning, then stock.

def _foreign(img):
    data = bytearray(img.read_bytes())
    fp = 144                                       # the fingerprint in the header (spec 2.1)
    data[fp:fp + 4] = (0x030900F0).to_bytes(4, "little")
    data[fp + 12:fp + 28] = b"cpython-39".ljust(16, b"\0")
    data[40:44] = F.crc32(bytes(data[:40]), bytes(4), bytes(data[44:256])).to_bytes(4, "little")
    img.write_bytes(bytes(data))
    return "image is for cpython-39"


def _spoil(img, kind):
    """Spoil the image at img; returns a phrase the warning must contain."""
    if kind == "foreign":
        return _foreign(img)
    data = img.read_bytes()
    img.unlink()
    if kind == "directory":
        img.mkdir()
        return "truncated"
    if kind != "missing":
        img.write_bytes({"garbage": b"\x00garbage" * 512, "empty": b"",
                         "truncated": data[:-4096], "bad magic": b"X" + data[1:]}[kind])
    return {"missing": "no image here", "garbage": "not a refmarshal image", "empty": "truncated",
            "truncated": "truncated", "bad magic": "bad magic"}[kind]


BAD_IMAGES = ["missing", "garbage", "empty", "truncated", "bad magic", "foreign", "directory"]

PROBLEM = '''
    import warnings
    from refmarshal import importer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = importer.install(IMG)
    import mod, pkg
    emit([f is None, [(w.category.__name__, str(w.message)) for w in caught], mod.WHO,
          pkg.g(), any(isinstance(x, importer.ImageFinder) for x in sys.meta_path)])
'''


def test_an_image_out_of_the_page_cache_loads_the_same(tree):
    """A cold start (the image's pages evicted): the first load of a top-level package asks
    the kernel to read its modules ahead; what is imported is the same."""
    src, img, cwd = tree
    fd = os.open(img, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    body = '''
        import pkg.sub, pkg.inner.deep
        emit([pkg.g(), pkg.inner.deep.DEEP, owned(pkg), owned(pkg.sub), owned(pkg.inner.deep)])
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert mine[:2] == stock[:2] == ["gh", "tree"] and mine[2:] == [True, True, True]


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_unusable_image_one_warning_then_stock(tree, kind):
    src, img, cwd = tree
    reason = _spoil(img, kind)
    r = script(PROBLEM, "stock", img, cwd, pythonpath=[src])
    declined, caught, who, g, installed = json.loads(r.stdout)
    assert declined and not installed and (who, g) == ("tree", "gh")
    assert len(caught) == 1 and caught[0][0] == "RefmarshalWarning"
    msg = caught[0][1]
    assert msg.startswith(f"refmarshal: {img}: ") and msg.endswith("; imports go on as stock")
    assert reason in msg


def test_other_optimization_level_is_declined(tree):
    src, img, cwd = tree
    refmarshal.build(img, tree_entries(src), optimize=1)
    r = script(PROBLEM, "stock", img, cwd, pythonpath=[src])
    declined, caught, *_ = json.loads(r.stdout)
    assert declined and len(caught) == 1 and "optimization level 1" in caught[0][1]
    r = script("import mod\nemit([owned(mod), mod.__cached__])\n", "checked", img, cwd,
               flags=["-O"], pythonpath=[src])
    assert r.stderr == "" and json.loads(r.stdout) == [True, str(
        src / "__pycache__" / f"mod.{sys.implementation.cache_tag}.opt-1.pyc")]


BROKEN_ACCEL = {
    # the import hook's way into the accelerator is its C module _hook (rm_hook.c)
    "not built": 'sys.modules["refmarshal._accel._hook"] = None\n',
    # a module that imports but is not the accelerator: not an ImportError, still declined
    "broken": 'import types\nbad = types.ModuleType("refmarshal._accel._hook")\n'
              'sys.modules[bad.__name__] = bad\n',
}


@pytest.mark.parametrize("how", sorted(BROKEN_ACCEL))
def test_accelerator_unavailable_is_declined(tree, how):
    src, img, cwd = tree
    body = BROKEN_ACCEL[how] + textwrap.dedent(PROBLEM)
    declined, caught, who, *_ = json.loads(script(body, "stock", img, cwd, pythonpath=[src]).stdout)
    assert declined and who == "tree"
    assert len(caught) == 1 and "the accelerator is unavailable" in caught[0][1]


def test_bad_module_alone_goes_stock(tree):
    src, img, cwd = tree
    e = refmarshal.Image(img, implementation="reference").entry("mod")
    data = bytearray(img.read_bytes())
    data[e.seg_off + e.seg_size // 2] ^= 0x55
    img.write_bytes(bytes(data))
    body = '''
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import mod, pkg
            import importlib; importlib.reload(mod)
        emit([mod.WHO, owned(mod), pkg.g(), owned(pkg), [str(w.message) for w in caught],
              finder.fallbacks, finder.hits])
    '''
    who, own_mod, g, own_pkg, msgs, fallbacks, hits = json.loads(
        script(body, "checked", img, cwd, pythonpath=[src]).stdout)
    assert (who, own_mod, g, own_pkg) == ("tree", False, "gh", True)
    assert len(msgs) == 1 and msgs[0].startswith(f"refmarshal: {img}: module mod: ")
    assert fallbacks == 2 and hits == 4     # the reload goes to stock without a second warning
    # -W error: the import still works as stock, and the message is one line on stderr
    r = script("import mod\nemit([mod.WHO, owned(mod)])\n", "checked", img, cwd,
               flags=["-W", "error"], pythonpath=[src])
    assert json.loads(r.stdout) == ["tree", False]
    assert r.stderr.startswith(f"refmarshal: {img}: module mod: ") and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------
# install / uninstall, and the start-up hook.

def test_install_is_idempotent_and_placed_before_stocks_finders(tree):
    src, img, cwd = tree
    body = '''
        import importlib.machinery as m
        from refmarshal import importer
        f2 = importer.install(IMG, checked=False)
        mp = sys.meta_path
        i = mp.index(finder)
        a = [f2 is finder, finder.checked, sum(isinstance(x, importer.ImageFinder) for x in mp),
             mp[i + 1:] == [m.BuiltinImporter, m.FrozenImporter, m.PathFinder],
             finder.path == IMG]
        importer.uninstall()
        import mod
        emit(a + [owned(mod), any(isinstance(x, importer.ImageFinder) for x in sys.meta_path)])
    '''
    r = script(body, "checked", img, cwd, pythonpath=[src])
    assert json.loads(r.stdout) == [True, False, 1, True, True, False, False]


def test_default_image_path_and_pth_text():
    assert importer.default_image_path() == os.path.join(
        sys.prefix, "share", "refmarshal", sys.implementation.cache_tag + ".img")
    assert importer.PTH_NAME == "refmarshal.pth"
    line = importer.pth_text()
    assert line.startswith("import ") and line.count("\n") == 1 and line.endswith("\n")


STARTUP = '''
    import json, sys
    import refmarshal._startup
    refmarshal._startup.run()
    before = [type(f).__name__ for f in sys.meta_path if "refmarshal" in type(f).__module__]
    import mod
    from refmarshal import importer
    fs = [f for f in sys.meta_path if isinstance(f, importer.ImageFinder)]
    print(json.dumps([before, [(f.path, f.checked) for f in fs], mod.WHO,
                      any(f.image.owns(mod.MODCODE) for f in fs)]))
'''


def test_startup_environment_switches(tree):
    src, img, cwd = tree

    def start(flags=(), **env):
        r = run([*flags, "-c", textwrap.dedent(STARTUP)], cwd, pythonpath=[src], env=env)
        return json.loads(r.stdout), r.stderr

    # the image is opened at the first import, in place of the PendingFinder
    pending = ["PendingFinder"]
    assert start(REFMARSHAL_IMAGE=str(img)) == ([pending, [[str(img), True]], "tree", True], "")
    assert start(REFMARSHAL_IMAGE=str(img), REFMARSHAL_UNCHECKED="1") == \
        ([pending, [[str(img), False]], "tree", True], "")
    assert start(REFMARSHAL_IMAGE=str(img), REFMARSHAL="0") == ([[], [], "tree", False], "")
    assert start(REFMARSHAL="0") == ([[], [], "tree", False], "")
    # the default image (not built here): one warning at start, stock imports
    out, err = start()
    assert out == [[], [], "tree", False]
    assert err.count("RefmarshalWarning") == 1 and importer.default_image_path() in err
    # -W error turns the warning into an exception: run() still returns, and says it once
    out, err = start(flags=["-W", "error"], REFMARSHAL_IMAGE=str(cwd / "nope.img"))
    assert out == [[], [], "tree", False] and "Traceback" not in err
    assert err.strip().splitlines() == [f"refmarshal: {cwd / 'nope.img'}: no image here "
                                        "(build one with `refmarshal build`); imports go on "
                                        "as stock"]
    # a bad image is found out at the first import: one warning (or line), then stock
    bad = cwd.parent / "bad.img"
    bad.write_bytes(b"\x00" * 4096)
    out, err = start(REFMARSHAL_IMAGE=str(bad))
    assert out == [pending, [], "tree", False] and err.count("RefmarshalWarning") == 1
    out, err = start(flags=["-W", "error"], REFMARSHAL_IMAGE=str(bad))
    assert out == [pending, [], "tree", False] and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"refmarshal: {bad}: ")


def test_startup_imports_only_the_package_and_the_hook(tree):
    # what every interpreter start pays for: refmarshal's own modules imported by the hook;
    # and the first import through the image opens it without importing zlib or struct
    src, img, cwd = tree
    body = ("import sys, refmarshal._startup\nrefmarshal._startup.run()\n"
            "print(sorted(m for m in sys.modules if m.startswith('refmarshal')))\n"
            "before = [m in sys.modules for m in ('zlib', 'struct')]\nimport mod\n"
            "print(before, [m in sys.modules for m in ('zlib', 'struct')], "
            "[f.hits for f in sys.meta_path if type(f).__name__ == 'ImageFinder'])")
    r = run(["-c", body], cwd, pythonpath=[src], env={"REFMARSHAL_IMAGE": str(img)})
    assert r.stdout.split("\n")[:2] == ["['refmarshal', 'refmarshal._startup']",
                                        "[False, False] [False, False] [1]"]
    assert r.stderr == ""


def test_ignore_environment_keeps_the_image_choice_out(tree):
    """-E / -I ignore PYTHONPATH; REFMARSHAL_IMAGE and REFMARSHAL_UNCHECKED choose code too."""
    src, img, cwd = tree
    body = ("import os, sys\nsys.path[:0] = sys.argv[1:]\nimport refmarshal._startup\n"
            "refmarshal._startup.run()\n"
            "print([type(f).__name__ for f in sys.meta_path if 'refmarshal' in type(f).__module__])")
    paths = [str(src), os.path.dirname(os.path.dirname(refmarshal.__file__))]
    for flag in ("-E", "-I"):
        r = run([flag, "-c", body, *paths], cwd, env={"REFMARSHAL_IMAGE": str(img),
                                                    "REFMARSHAL_UNCHECKED": "1"})
        assert r.stdout == "[]\n" and r.stderr.count("RefmarshalWarning") == 1
        assert importer.default_image_path() in r.stderr and str(img) not in r.stderr
        r = run([flag, "-c", body, *paths], cwd, env={"REFMARSHAL": "0"})
        assert (r.stdout, r.stderr) == ("[]\n", "")


FIRST = '''
    import sys
    import refmarshal._startup
    refmarshal._startup.run()
    first = __import__(sys.argv[1], fromlist=["x"])   # the first import the hook sees
    import importlib, importlib.util, struct, mod
    import refmarshal.format as F, refmarshal._accel.loader as L
    from refmarshal import importer
    f = [x for x in sys.meta_path if isinstance(x, importer.ImageFinder)]
    ld = first.__spec__.loader
    print(first is sys.modules[sys.argv[1]], getattr(ld, "__name__", type(ld).__name__),
          first.__spec__.name, hasattr(importlib, "util"), sys.modules["struct"] is struct,
          type(f[0].image) is L.AccelImage, f[0].image.owns(mod.MODCODE))
'''


@pytest.mark.parametrize("first", ["importlib.util", "struct", "_cffi_backend", "refmarshal",
                                   "refmarshal._accel.loader", "refmarshal.format", "mod"])
def test_modules_the_hook_imports_are_imported_once(tree, first):
    """The first import wakes the PendingFinder, which imports the accelerator: when that
    imports the very module being looked for (_cffi_backend or refmarshal.format, say), the
    import system gets that module object, not a second execution of it."""
    src, img, cwd = tree
    r = run(["-c", textwrap.dedent(FIRST), first], cwd, pythonpath=[src],
            env={"REFMARSHAL_IMAGE": str(img)})
    assert r.stderr == ""
    same, loader, name, *rest = r.stdout.split()
    assert same == "True" and name == first and rest == ["True"] * 4
    if first == "_cffi_backend":
        assert loader == "ExtensionFileLoader"
    else:
        assert loader in ("SourceFileLoader", "ImageLoader", "FrozenImporter")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A real virtual environment (no pip) whose site-packages can import refmarshal and cffi's
    backend (from where this interpreter imports them)."""
    d = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True,
                   env=child_env(), cwd=d.parent, timeout=300)
    python = str(d / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, env=child_env(), cwd=d.parent
    ).stdout.strip()
    import _cffi_backend
    roots = {os.path.dirname(os.path.dirname(refmarshal.__file__)),
             os.path.dirname(_cffi_backend.__file__)}
    with open(os.path.join(site, "_refmarshal_for_tests.pth"), "w") as fh:
        fh.write("".join(r + "\n" for r in sorted(roots)))
    return python, site


@contextlib.contextmanager
def hook_enabled(site, img):
    """The start-up hook in the venv's site-packages, for the image img, while the block runs."""
    pth = os.path.join(site, importer.PTH_NAME)
    with open(pth, "w") as fh:
        fh.write(importer.pth_text(img))
    try:
        yield pth
    finally:
        os.unlink(pth)


def test_pth_hook_in_a_virtual_environment(venv, tree):
    python, site = venv
    src, img, cwd = tree
    default = json.loads(run(["-c", "import json; from refmarshal import importer; "
                              "print(json.dumps(importer.default_image_path()))"],
                             cwd, python=python).stdout)
    assert default.startswith(os.path.dirname(os.path.dirname(python)) + os.sep)
    os.makedirs(os.path.dirname(default), exist_ok=True)
    shutil.copy(img, default)
    pth = os.path.join(site, importer.PTH_NAME)
    with open(pth, "w") as fh:
        fh.write(importer.pth_text())
    probe = ("import sys, mod, pkg.sub\n"
             "f = [x for x in sys.meta_path if type(x).__name__ == 'ImageFinder']\n"
             "print(len(f), f and f[0].image.owns(mod.MODCODE), f and f[0].hits, mod.WHO)\n")
    try:
        # the imports of every start (site's, linecache for -c on 3.13) leave the image closed
        finders = "import sys\nprint([getattr(f, '__name__', type(f).__name__) " \
                  "for f in sys.meta_path])\n"
        (cwd / "finders.py").write_text(finders)
        for argv in (["finders.py"], ["-c", finders]):
            r = run(argv, cwd, python=python)
            assert "'PendingFinder', 'PathFinder'" in r.stdout and r.stderr == ""
        (cwd / "finders.py").unlink()
        r = run(["-c", probe], cwd, python=python, pythonpath=[src])
        assert (r.stdout, r.stderr) == ("1 True 5 tree\n", "")
        # -m: the main module's code comes from the image; the current directory shadows
        r = run(["-m", "pkg.inner.deep"], cwd, python=python, pythonpath=[src])
        assert (r.stdout, r.stderr) == ("main pkg.inner.deep True\n", "")
        r = run(["-m", "pkg.inner.deep"], cwd, python=python, pythonpath=[src],
                env={"REFMARSHAL": "0"})
        assert (r.stdout, r.stderr) == ("main pkg.inner.deep False\n", "")
        (cwd / "mod.py").write_text(MODCODE + "WHO = 'cwd'\n")
        (cwd / "runme.py").write_text("import mod\nprint(mod.WHO, mod.__file__)\n")
        r = run(["-m", "runme"], cwd, python=python, pythonpath=[src])
        assert r.stdout == f"cwd {cwd / 'mod.py'}\n"
        r = run(["-c", probe], cwd, python=python, pythonpath=[src])
        assert r.stdout == "1 False 4 cwd\n" and r.stderr == ""
        (cwd / "mod.py").unlink()
        # switches
        r = run(["-c", probe], cwd, python=python, pythonpath=[src], env={"REFMARSHAL": "0"})
        assert r.stdout == "0 [] [] tree\n" and r.stderr == ""
        os.unlink(default)
        r = run(["-c", probe], cwd, python=python, pythonpath=[src])
        assert r.stdout == "0 [] [] tree\n"
        assert r.stderr.count("RefmarshalWarning") == 1 and default in r.stderr
        # an image named in the .pth line (enable --image); REFMARSHAL_IMAGE still wins
        with open(pth, "w") as fh:
            fh.write(importer.pth_text(img))
        r = run(["-c", probe], cwd, python=python, pythonpath=[src])
        assert (r.stdout, r.stderr) == ("1 True 5 tree\n", "")
        other = cwd.parent / "other.img"
        r = run(["-c", probe], cwd, python=python, pythonpath=[src],
                env={"REFMARSHAL_IMAGE": str(other)})
        assert r.stdout == "0 [] [] tree\n" and str(other) in r.stderr
        # refmarshal uninstalled but the .pth left behind: a silent start
        os.rename(os.path.join(site, "_refmarshal_for_tests.pth"), os.path.join(site, "off"))
        try:
            r = subprocess.run([python, "-c", "print('ok')"], cwd=cwd, capture_output=True,
                               text=True, env={k: v for k, v in child_env().items()
                                               if k != "PYTHONPATH"})
            assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")
        finally:
            os.rename(os.path.join(site, "off"),
                      os.path.join(site, "_refmarshal_for_tests.pth"))
    finally:
        os.unlink(pth)


def test_threads_loading_at_once_each_get_their_module(tmp_path, stdlib_image):
    """Threads loading at once (as threads importing at once do) each get their own module,
    through Image.get_code and through imports.  The standard library's image makes loads long
    enough for threads to meet."""
    src = tmp_path / "src"
    names = [f"m{i:03d}" for i in range(240)]
    write_tree(src, {f"{n}.py": MODCODE + f"NAME = {n!r}\n" + "def f():\n    return NAME\n" * 20
                     for n in names})
    img = tmp_path / "many.img"
    refmarshal.build(img, [(n, src / f"{n}.py") for n in names])
    body = '''
        import importlib, threading
        from refmarshal._accel.loader import AccelImage
        names = sys.argv[3].split(",")
        big = AccelImage(sys.argv[4])
        wrong = []
        def run_threads(fn, items):
            ts = [threading.Thread(target=fn, args=(items[i::8],)) for i in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        def load(chunk):
            for n in chunk:
                if big.get_code(n).co_filename != big.entry(n).path:
                    wrong.append(n)
        def imp(chunk):
            for n in chunk:
                m = importlib.import_module(n)
                if m.NAME != n or m.MODCODE.co_filename != m.__file__ or not owned(m):
                    wrong.append(n)
        sys.setswitchinterval(1e-6)
        run_threads(load, big.names()[:600])
        run_threads(imp, names)
        emit([wrong, finder.hits])
    '''
    r = script(body, "checked", img, tmp_path, ",".join(names), stdlib_image[0],
               pythonpath=[src])
    assert r.stderr == "" and json.loads(r.stdout) == [[], len(names)]


# ---------------------------------------------------------------------------------------
# Real installed packages through the image.

REAL = '''
    import attr, attrs, idna, packaging.version, packaging.specifiers, packaging.requirements
    from packaging.version import Version
    @attrs.define
    class P:
        x: int
        y: str = "d"
    req = packaging.requirements.Requirement('name[extra]>=1.0,<2; python_version>"3"')
    obs = [str(sorted([Version("1.10"), Version("1.2"), Version("1.2rc1")])),
           Version("2.0.post1") in packaging.specifiers.SpecifierSet(">=1.0,!=2.0"),
           str(req), sorted(req.extras), str(req.marker),
           idna.encode("ドメイン.テスト").decode(), idna.decode("xn--eckwd4c7c.xn--zckzah"),
           repr(P(1)), attr.asdict(P(2, "z")), attr.__file__, packaging.__file__]
    fns = [Version.__init__, packaging.specifiers.SpecifierSet.contains, idna.encode,
           attrs.define, attr.asdict, packaging.requirements.Requirement.__init__]
    own = [finder is not None and finder.image.owns(f.__code__) for f in fns]
    emit([obs, own, finder and finder.fallbacks])
'''


def test_real_installed_packages_through_the_image(tmp_path):
    entries = [(n, p) for n, p in corpus.third_party_modules()
               if n.split(".")[0] in ("attr", "attrs", "idna", "packaging")]
    assert len(entries) > 30
    img = tmp_path / "real.img"
    refmarshal.build(img, entries)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = observe(REAL, img, cwd)
    assert out["checked"][0] == out["stock"][0]
    assert out["stock"][0][:2] == ["[<Version('1.2rc1')>, <Version('1.2')>, <Version('1.10')>]",
                                   True]
    assert out["checked"][1] == [True] * 6 and out["checked"][2] == 0


# ---------------------------------------------------------------------------------------
# Frames: while an import runs, the stack holds stock's frames and no others (issue: CPython's
# own test_warnings, test_re, test_trace).  The finder's find_spec and the loader's get_code are
# C methods; exec_module is the stock one.

FRAMES_TREE = {
    "warner.py": MODCODE + "import warnings\n"
                 "warnings.warn('warner is old', DeprecationWarning, stacklevel=2)\n",
    "raiser.py": MODCODE + "X = 1\nraise ValueError('raised at import')\n",
    "looker.py": MODCODE + textwrap.dedent('''\
        import inspect
        STACK = [(f.filename, f.function) for f in inspect.stack()]
        FRAMES = []
        _f = _sys._getframe()
        while _f is not None:
            FRAMES.append((_f.f_code.co_filename, _f.f_code.co_name))
            _f = _f.f_back
        '''),
    "traced_a.py": MODCODE + "def g():\n    return 1\nY = g()\n",
    "traced_b.py": MODCODE + "def g():\n    return 2\nY = g()\n",
    "traced_c.py": MODCODE + "def g():\n    return 3\nY = g()\n",
}


@pytest.fixture
def frames_tree(tmp_path):
    src = write_tree(tmp_path / "src", FRAMES_TREE)
    img = tmp_path / "frames.img"
    names = sorted(n[:-3] for n in FRAMES_TREE)
    refmarshal.build(img, [(n, src / f"{n}.py") for n in names])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return src, img, cwd


FRAMES = '''
    import traceback, warnings
    obs = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import warner
    obs["warning"] = [(w.filename, w.lineno, str(w.message)) for w in caught]
    try:
        import raiser
    except ValueError:
        obs["traceback"] = traceback.format_exc()
    import looker
    obs["stack"], obs["frames"] = looker.STACK, looker.FRAMES
    calls = set()
    def tracer(frame, event, arg):
        calls.add(frame.f_code.co_filename)
    sys.settrace(tracer)
    import traced_a
    sys.settrace(None)
    obs["settrace"] = sorted(calls)
    if hasattr(sys, "monitoring"):
        mon, started = sys.monitoring, set()
        mon.use_tool_id(3, "probe")
        mon.register_callback(3, mon.events.PY_START,
                              lambda code, offset: started.add(code.co_filename))
        mon.set_events(3, mon.events.PY_START)
        import traced_b
        mon.set_events(3, 0)
        mon.free_tool_id(3)
        obs["monitoring"] = sorted(started)
    import trace
    tracer = trace.Trace(count=1, trace=0, ignoredirs=[sys.base_prefix, sys.base_exec_prefix])
    tracer.runctx("import traced_c", {}, {})
    obs["trace_counts"] = sorted({f for f, _ in tracer.results().counts})
    traced_c = sys.modules["traced_c"]
    emit(dict(obs=obs, own=[owned(m) for m in (warner, looker, traced_a, traced_c)]))
'''


def test_import_shows_stock_frames_only(frames_tree):
    """warnings with stacklevel, the traceback of an error raised at import, inspect.stack()
    and sys._getframe() in a module body, sys.settrace, sys.monitoring and the trace module
    see exactly what they see with stock import."""
    src, img, cwd = frames_tree
    out = observe(FRAMES, img, cwd, pythonpath=[src])
    stock, mine = out["stock"], out["checked"]
    assert mine["own"] == [True] * 4 and not any(stock["own"])
    assert mine["obs"] == stock["obs"]
    obs = stock["obs"]
    # what stock shows, so that the comparison above means something
    line = (PRELUDE + textwrap.dedent(FRAMES)).splitlines().index("    import warner") + 1
    assert obs["warning"] == [["<string>", line, "warner is old"]]   # the importing line
    assert obs["traceback"].count("\n  File ") == 2       # the import line, then raiser's
    assert obs["frames"][0] == [str(src / "looker.py"), "<module>"]
    assert ["<string>", "<module>"] in obs["frames"]
    seen = obs["settrace"] + obs.get("monitoring", []) + obs["trace_counts"]
    assert not any("refmarshal" in f for f in seen)
    assert str(src / "traced_a.py") in obs["settrace"]
    assert str(src / "traced_c.py") in obs["trace_counts"]


@pytest.mark.parametrize("case", ["warning", "error"])
def test_import_time_messages_as_stock(frames_tree, case):
    """What a user sees on stderr: a DeprecationWarning raised at import with stacklevel=2 is
    shown by the default filters only when attributed to __main__; an uncaught error at import
    prints stock's two-frame traceback."""
    src, img, cwd = frames_tree
    module = {"warning": "warner", "error": "raiser"}[case]
    results = []
    for env in ({"REFMARSHAL_IMAGE": str(img)}, {"REFMARSHAL": "0"}):
        body = f"import refmarshal._startup as s\ns.run()\nimport {module}\n"
        r = subprocess.run([sys.executable, "-c", body], cwd=cwd, capture_output=True,
                           text=True, env=child_env([src], **env), timeout=300)
        results.append((r.returncode, r.stderr))
    assert results[0] == results[1]
    code, err = results[1]
    if case == "warning":
        assert code == 0 and err.startswith("<string>:3: DeprecationWarning: warner is old")
    else:
        assert code == 1 and err.count('  File "') == 2 and "ValueError" in err


def test_loader_types_while_and_after_the_body_runs(tree):
    """The body already sees stock's loader type (distlib's resource finders look loaders up by
    type); a spec found but not yet loaded carries the ImageLoader."""
    src, img, cwd = tree
    write_tree(src, {"who.py": MODCODE + "L = (type(__loader__).__name__, "
                                         "__spec__.loader is __loader__)\n"})
    refmarshal.build(img, tree_entries(src) + [("who", src / "who.py")])
    body = '''
        import importlib.util
        spec = importlib.util.find_spec("who")
        import who
        emit([type(spec.loader).__name__, who.L, type(who.__loader__).__name__, owned(who)])
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert stock == ["SourceFileLoader", ["SourceFileLoader", True], "SourceFileLoader", False]
    assert mine == ["ImageLoader", ["SourceFileLoader", True], "SourceFileLoader", True]


# ---------------------------------------------------------------------------------------
# Several interpreters in one process (issue: crashes and hangs in CPython's test_import,
# test_importlib, test_threading).  3.12+: a subinterpreter, legacy or with its own GIL, imports
# the stock way, silently; 3.11's subinterpreters share everything and use the image.

SUB_CODE = '''
import json, os, sys, mod, pkg.sub
fs = [f for f in sys.meta_path if type(f).__module__.startswith("refmarshal")]
os.write(FD, (json.dumps([json.dumps([1]), mod.WHO, pkg.g(), [type(f).__name__ for f in fs],
                          any(f.image.owns(mod.MODCODE) for f in fs if hasattr(f, "image"))])
              + "\\n").encode())
'''

SUBINTERPRETERS = '''
import json, os, sys, importlib
order, kinds = sys.argv[1], sys.argv[2].split(",")
r, w = os.pipe()
code = "FD = %d\\n" % w + SUB_CODE
def main_imports():
    import mod, pkg.sub
    fs = [f for f in sys.meta_path if type(f).__name__ == "ImageFinder"]
    return [mod.WHO, pkg.g(), len(fs), fs[0].image.owns(mod.MODCODE)]
def in_sub(kind):
    if kind == "capi":             # Py_NewInterpreter, as mod_wsgi does
        import _testcapi
        assert _testcapi.run_in_subinterp(code) == 0
        return
    try:
        import _interpreters as I  # 3.13
        interp = I.create("legacy" if kind == "legacy" else "isolated")
    except ImportError:
        import _xxsubinterpreters as I  # 3.12
        interp = I.create(isolated=kind == "isolated")
    I.run_string(interp, code)
    I.destroy(interp)
out = {}
if order == "main-first":
    out["main-before"] = main_imports()
subs = []
for kind in kinds:
    in_sub(kind)
    subs.append(json.loads(os.read(r, 65536)))
out["subs"] = subs
for m in ("mod", "pkg", "pkg.sub", "pkg.inner", "pkg.inner.helper"):
    sys.modules.pop(m, None)
out["main-after"] = main_imports()
print(json.dumps(out))
'''


def _sub_kinds():
    return ["capi"] + (["legacy", "isolated"] if sys.version_info >= (3, 12) else [])


@pytest.mark.parametrize("order", ["main-first", "sub-first"])
def test_subinterpreters_never_crash_and_main_keeps_the_image(venv, tree, order):
    python, site = venv
    src, img, cwd = tree
    with hook_enabled(site, img):
        body = f"SUB_CODE = {SUB_CODE!r}\n" + SUBINTERPRETERS
        r = run(["-c", body, order, ",".join(_sub_kinds())], cwd, python=python,
                pythonpath=[src])
    assert r.stderr == ""                  # no warning, in any interpreter
    out = json.loads(r.stdout)
    assert out["main-after"] == ["tree", "gh", 1, True]
    if order == "main-first":
        assert out["main-before"] == ["tree", "gh", 1, True]
    for kind, sub in zip(_sub_kinds(), out["subs"]):
        assert sub[:3] == ["[1]", "tree", "gh"], kind
        if sys.version_info >= (3, 12):    # stepped aside: no finder at all
            assert sub[3:] == [[], False], kind
        else:                              # 3.11: its own finder, on its own copy
            assert sub[3:] == [["ImageFinder"], True], kind


EMBED_C = r'''
#include <Python.h>
#include <stdio.h>

/* Like mod_wsgi: one process, the main interpreter and several subinterpreters alive at once,
   each importing the same packages; on 3.12+ also subinterpreters with their own GIL. */
static int run(PyThreadState *ts, const char *code) {
    PyThreadState *prev = PyThreadState_Swap(ts);
    int rc = PyRun_SimpleString(code);
    PyThreadState_Swap(prev);
    return rc;
}

int main(int argc, char **argv) {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    PyStatus st = PyConfig_SetBytesString(&config, &config.program_name, argv[1]);
    if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) { fprintf(stderr, "cannot start\n"); return 2; }
    const char *code = argv[2];
    PyThreadState *main_ts = PyThreadState_Get();
    int bad = run(main_ts, code) != 0;
    PyThreadState *subs[4];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        subs[n++] = Py_NewInterpreter();
        PyThreadState_Swap(main_ts);
    }
#if PY_VERSION_HEX >= 0x030c0000
    PyInterpreterConfig own = _PyInterpreterConfig_INIT;
    PyThreadState *ts = NULL;
    st = Py_NewInterpreterFromConfig(&ts, &own);
    if (PyStatus_Exception(st)) { fprintf(stderr, "no own-GIL interpreter\n"); return 2; }
    subs[n++] = ts;
    PyThreadState_Swap(main_ts);
#endif
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < n; i++) bad |= run(subs[i], code) != 0;
    bad |= run(main_ts, code) != 0;
    for (int i = 0; i < n; i++) {
        PyThreadState_Swap(subs[i]);
        Py_EndInterpreter(subs[i]);
        PyThreadState_Swap(main_ts);
    }
    bad |= run(main_ts, code) != 0;
    if (Py_FinalizeEx() < 0) return 3;
    return bad;
}
'''


def test_embedded_like_mod_wsgi(venv, tree, tmp_path):
    """A C program embeds the interpreter as mod_wsgi does; every interpreter imports the same
    modules, each prints what it imported and through what."""
    import sysconfig
    python, site = venv
    src, img, cwd = tree
    exe = tmp_path / "embed"
    (tmp_path / "embed.c").write_text(EMBED_C)
    libdir = sysconfig.get_config_var("LIBDIR")
    subprocess.run(["cc", "-o", str(exe), str(tmp_path / "embed.c"),
                    "-I" + sysconfig.get_paths()["include"], "-L" + libdir,
                    f"-Wl,-rpath,{libdir}", "-lpython" + sysconfig.get_config_var("LDVERSION")],
                   check=True, timeout=300)
    code = ("import sys, importlib\n"
            "for m in ('mod', 'pkg', 'pkg.sub', 'pkg.inner', 'pkg.inner.helper'):\n"
            "    sys.modules.pop(m, None)\n"
            "import json, mod, pkg.sub\n"
            "fs = [f for f in sys.meta_path if type(f).__name__ == 'ImageFinder']\n"
            "print(json.dumps([mod.WHO, pkg.g(), bool(fs) and fs[0].image.owns(mod.MODCODE)]),"
            " flush=True)\n")
    with hook_enabled(site, img):
        r = subprocess.run([str(exe), python, code], cwd=cwd, capture_output=True, text=True,
                           env=child_env([src]), timeout=300)
    assert (r.returncode, r.stderr) == (0, "")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    subs = 4 if sys.version_info >= (3, 12) else 3
    assert len(lines) == 2 + 2 * subs + 1
    main = [lines[0], lines[-2], lines[-1]]
    assert main == [["tree", "gh", True]] * 3
    through_image = sys.version_info < (3, 12)    # 3.12+: subinterpreters step aside
    assert lines[1:-2] == [["tree", "gh", through_image]] * (2 * subs)


# ---------------------------------------------------------------------------------------
# Finding without PathFinder (rm_import.c: find_directly): the spec is built directly when
# FileFinder's own listings prove stock would find the recorded file; otherwise PathFinder
# decides.  Each case runs stock and checked and compares; `direct` says which way it went.

FIND = '''
    import importlib, importlib.util, pkgutil, os
    setup = sys.argv[3]
    names = sys.argv[4].split(",")
    exec(setup)
    out = []
    for name in names:
        try:
            m = importlib.import_module(name)
        except ImportError as exc:
            out.append(["ImportError", str(exc)])
            continue
        spec = m.__spec__
        out.append([m.__file__, getattr(m, "WHO", getattr(m, "DEEP", getattr(m, "H", None))),
                    owned(m), spec.origin, spec.cached, spec.has_location, spec.parent,
                    spec.submodule_search_locations and list(spec.submodule_search_locations),
                    type(spec.loader).__name__, m.__cached__])
    ours = os.path.dirname(importlib.util.find_spec("refmarshal").origin)   # install()'s own
    cache = sorted(k for k, v in sys.path_importer_cache.items()
                   if v is not None and type(v).__name__ == "FileFinder"
                   and not k.startswith(ours))
    emit(dict(out=out, cache=cache, direct=finder and finder.direct,
              hits=finder and finder.hits))
'''


def find_both(tree_, setup, names, *, flags=(), pythonpath=None, cwd=None):
    src, img, default_cwd = tree_
    out = {}
    for mode in ("stock", "checked"):
        r = script(FIND, mode, img, cwd or default_cwd, textwrap.dedent(setup), ",".join(names),
                   flags=flags, pythonpath=[src] if pythonpath is None else pythonpath)
        assert r.stderr == "", r.stderr
        out[mode] = json.loads(r.stdout)
    stock, mine = out["stock"], out["checked"]
    assert [o[:2] + o[3:] for o in mine["out"]] == [o[:2] + o[3:] for o in stock["out"]]
    assert mine["cache"] == stock["cache"]        # sys.path_importer_cache as stock leaves it
    return stock, mine


ALL = ["mod", "pkg", "pkg.sub", "pkg.inner", "pkg.inner.helper", "pkg.inner.deep", "ns.portion"]


def test_FIND_plain_imports_are_found_directly(tree):
    stock, mine = find_both(tree, "", ALL)
    assert [o[2] for o in mine["out"]] == [True] * len(ALL)
    assert mine["direct"] == mine["hits"] == len(ALL)


@pytest.mark.parametrize("how", ["insert", "pythonpath", "cwd", "append-after", "reorder"])
def test_FIND_earlier_directories_shadow(tree, how):
    """A module of the same name in a directory searched first wins, however the directory got
    there; one searched later does not."""
    src, img, cwd = tree
    other = write_tree(cwd.parent / "other", {"mod.py": MODCODE + "WHO = 'other'\n",
                                              "pkg/__init__.py": MODCODE + "WHO = 'other'\n"})
    setup = {"insert": f"sys.path.insert(0, {str(other)!r})",
             "pythonpath": "", "cwd": "", "append-after": f"sys.path.append({str(other)!r})",
             "reorder": f"sys.path.remove({str(src)!r}); sys.path.append({str(src)!r}); "
                        f"sys.path.insert(0, {str(other)!r})"}[how]
    kw = {}
    if how == "pythonpath":
        kw["pythonpath"] = [other, src]
    if how == "cwd":
        kw["cwd"] = other
    stock, mine = find_both(tree, setup, ["mod", "pkg", "pkg.sub"], **kw)
    if how == "append-after":
        assert [o[1] for o in stock["out"]] == ["tree", None, None]
        assert mine["direct"] == mine["hits"] == 5 and [o[2] for o in mine["out"]] == [True] * 3
    else:       # other's pkg has no sub.py
        assert [o[1] for o in stock["out"][:2]] == ["other", "other"]
        assert stock["out"][2][0] == "ImportError"
        assert [o[2] for o in mine["out"][:2]] == [False, False] and mine["direct"] == 0


def test_FIND_created_after_the_build_and_after_invalidate_caches(tree):
    """A module created in an earlier directory after the build shadows it; one created while
    the process runs is seen after importlib.invalidate_caches(), as stock documents."""
    src, img, cwd = tree
    early = cwd.parent / "early"
    early.mkdir()
    (early / "pkg").mkdir()
    setup = f'''
        sys.path.insert(0, {str(early)!r})
        import pkg.inner.helper
        with open(os.path.join({str(early)!r}, "mod.py"), "w") as fh:
            fh.write({MODCODE!r} + "WHO = 'new'\\n")
        with open(os.path.join({str(src)!r}, "pkg", "inner", "deep.py"), "w") as fh:
            fh.write({MODCODE!r} + "DEEP = 'edited'\\n")
        importlib.invalidate_caches()
    '''
    stock, mine = find_both(tree, setup, ["mod", "pkg.inner.deep", "pkg.inner"])
    assert [o[1] for o in stock["out"]] == ["new", "edited", None]
    assert [o[2] for o in mine["out"]] == [False, False, True]


def test_FIND_namespace_portions_and_extend_path(tree):
    src, img, cwd = tree
    plug = write_tree(cwd.parent / "plug", {"pkg/inner/extra.py": MODCODE + "WHO = 'plug'\n",
                                            "pkg/inner/deep.py": MODCODE + "DEEP = 'plug'\n",
                                            "ns/other.py": MODCODE + "WHO = 'ns'\n"})
    setup = f'''
        import pkg.inner
        pkg.inner.__path__.insert(0, {str(plug / "pkg" / "inner")!r})   # a plugin directory
        sys.path.append({str(plug)!r})
    '''
    stock, mine = find_both(tree, setup, ["pkg.inner.extra", "pkg.inner.deep", "ns.portion",
                                          "ns.other"])
    assert [o[1] for o in stock["out"]] == ["plug", "plug", None, "ns"]
    assert [o[2] for o in mine["out"]] == [False, False, True, False]


def test_FIND_zip_entries_and_path_hooks(tree):
    """An earlier zip entry or another path hook's finder: PathFinder decides."""
    src, img, cwd = tree
    import zipfile
    z = cwd.parent / "early.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("mod.py", MODCODE + "WHO = 'zip'\n")
    stock, mine = find_both(tree, f"sys.path.insert(0, {str(z)!r})", ["mod", "pkg"])
    assert [o[1] for o in stock["out"]] == ["zip", None] and mine["out"][1][2] is True
    hook = '''
        import importlib.machinery as M
        class Hook(M.FileFinder):
            pass
        sys.path_hooks.insert(0, lambda p: Hook(p, (M.SourceFileLoader, [".py"])))
        sys.path_importer_cache.clear()
    '''
    stock, mine = find_both(tree, hook, ["mod", "pkg.sub"])
    assert mine["direct"] == 0 and [o[2] for o in mine["out"]] == [True, True]


@pytest.mark.parametrize("flag", ["-P", "-I"])
def test_FIND_safe_path_flags(tree, flag):
    """-P / -I keep the current directory off sys.path: a mod.py there does not shadow."""
    src, img, cwd = tree
    (cwd / "mod.py").write_text(MODCODE + "WHO = 'cwd'\n")
    setup = f"sys.path.insert(0, {str(src)!r})" if flag == "-I" else ""
    stock, mine = find_both(tree, setup, ["mod"], flags=[flag])
    assert stock["out"][0][1] == "tree" and mine["out"][0][2] is True


# ---------------------------------------------------------------------------------------
# Optimization levels: -O and -OO use an image of their own, as .pyc files have opt-1/opt-2.

def test_optimization_levels_use_their_own_image_or_step_aside_silently(venv, tree):
    from refmarshal import _startup
    python, site = venv
    src, img, cwd = tree
    probe = ("import sys, mod\n"
             "f = [x for x in sys.meta_path if type(x).__name__ == 'ImageFinder']\n"
             "print(sys.flags.optimize, len(f), bool(f) and f[0].image.owns(mod.MODCODE), "
             "mod.__cached__.rsplit('.', 2)[-2])\n")
    with hook_enabled(site, img):
        # no image for the level: stock imports, not a word
        for flag, tag in (("-O", "opt-1"), ("-OO", "opt-2")):
            r = run([flag, "-c", probe], cwd, python=python, pythonpath=[src])
            assert (r.stdout.split(), r.stderr) == ([str(len(flag) - 1), "0", "False", tag], "")
        # an image built for -O serves -O, and only -O
        opt1 = _startup.level_path(str(img), 1)
        assert opt1 == str(img)[:-4] + ".opt-1.img"
        refmarshal.build(opt1, tree_entries(src), optimize=1)
        r = run(["-O", "-c", probe], cwd, python=python, pythonpath=[src])
        assert (r.stdout.split(), r.stderr) == (["1", "1", "True", "opt-1"], "")
        r = run(["-OO", "-c", probe], cwd, python=python, pythonpath=[src])
        assert (r.stdout.split(), r.stderr) == (["2", "0", "False", "opt-2"], "")
        r = run(["-c", probe], cwd, python=python, pythonpath=[src])
        assert r.stdout.split()[:3] == ["0", "1", "True"] and r.stderr == ""
        # an image named by hand is used as named: a level mismatch is said, once
        r = run(["-O", "-c", probe], cwd, python=python, pythonpath=[src],
                env={"REFMARSHAL_IMAGE": str(img)})
        assert r.stdout.split()[:2] == ["1", "0"]
        assert r.stderr.count("RefmarshalWarning") == 1 and "optimization level 0" in r.stderr


def test_default_image_path_per_level():
    from refmarshal import _startup
    base = _startup.default_image_path(0)
    assert base.endswith(os.sep + sys.implementation.cache_tag + ".img")
    assert _startup.default_image_path(2) == base[:-4] + ".opt-2.img"
    assert _startup.default_image_path() == _startup.level_path(base, sys.flags.optimize)
