"""Finding without PathFinder (issue 13): the specs ImageFinder.find_spec makes itself are
stock's, and every way stock import can end up elsewhere still does.

Each test runs the same script in child interpreters with stock import and with the checked
finder (test_importer's harness) and compares what they observed; `direct` counts the specs
the finder made without asking PathFinder, so a test can tell the fast path was taken.
"""

import importlib.machinery
import json
import os
import textwrap
import time

import pytest

import refmarshal
from refmarshal import container
from test_importer import (MODCODE, PRELUDE, TREE, both_modes, find_both, run,  # noqa: F401
                           tree, tree_entries, write_tree)

pytestmark = pytest.mark.skipif(not refmarshal.accelerator_available(),
                                reason="accelerator not built (the importer needs it)")

# The spec and loader as the import system made them: every attribute of their __dict__, in
# order, before the module runs (a fresh find) and after (the module's __spec__).
SPEC_DICTS = '''
    import importlib, importlib.util, re
    def bare(spec):       # the repr without the loader's address
        return re.sub(r" object at 0x[0-9a-f]+", "", repr(spec))
    def shape(obj):
        out = []
        for k, v in vars(obj).items():
            if k == "loader":
                v = [type(v).__name__, list(vars(v).items())]
            elif isinstance(v, list):
                v = ["list", list(v)]
            out.append([k, v])
        return out
    res = {}
    for name in sys.argv[3].split(","):
        spec = importlib.util.find_spec(name)
        fresh = [type(spec).__name__, shape(spec),
                 bare(spec).replace("refmarshal.importer.ImageLoader",
                                    "_frozen_importlib_external.SourceFileLoader"),
                 spec.cached, spec.parent, spec.has_location]
        m = importlib.import_module(name)
        s = m.__spec__
        res[name] = [fresh, shape(s), s.cached, s.parent, s.has_location, bare(s),
                     m.__file__, m.__cached__, getattr(m, "__path__", None), owned(m)]
    emit(dict(res=res, direct=finder and finder.direct))
'''


def test_spec_and_loader_attributes_are_stocks_in_order(tree):
    src, img, cwd = tree
    names = ["mod", "pkg", "pkg.sub", "pkg.inner", "pkg.inner.deep"]
    stock, mine = both_modes(SPEC_DICTS, img, cwd, ",".join(names), pythonpath=[src])
    assert mine["direct"] >= len(names)
    for name in names:
        s, m = stock["res"][name], mine["res"][name]
        fresh_s, fresh_m = s[0], m[0]
        # before get_code, a fresh spec's loader is an ImageLoader with the same __dict__
        # (pkg.sub and pkg.inner: pkg imports them, find_spec gives their module's spec)
        want = "ImageLoader" if name in ("mod", "pkg", "pkg.inner.deep") else "SourceFileLoader"
        assert fresh_m[1][1][1][0] == want and fresh_s[1][1][1][0] == "SourceFileLoader"
        fresh_m[1][1][1][0] = "SourceFileLoader"
        assert fresh_m == fresh_s
        assert m[:-1] == s[:-1] and m[-1] is True and s[-1] is False


def test_dot_pth_paths(tree):
    """Directories a .pth file adds: appended ones come after (the image serves), one a .pth
    line inserts first shadows."""
    src, img, cwd = tree
    other = write_tree(cwd.parent / "other", {"mod.py": MODCODE + "WHO = 'pth'\n"})
    site = cwd.parent / "site"
    site.mkdir()
    (site / "a.pth").write_text(f"{other}\n")
    stock, mine = find_both(tree, f"import site; site.addsitedir({str(site)!r})", ["mod"])
    assert stock["out"][0][1] == "tree" and mine["out"][0][2] is True and mine["direct"] == 1
    (site / "a.pth").write_text(f"import sys; sys.path.insert(0, {str(other)!r})\n")
    stock, mine = find_both(tree, f"import site; site.addsitedir({str(site)!r})", ["mod"])
    assert stock["out"][0][1] == "pth" and mine["out"][0][2] is False


def test_pythonsafepath_keeps_the_current_directory_off(tree):
    src, img, cwd = tree
    (cwd / "mod.py").write_text(MODCODE + "WHO = 'cwd'\n")
    out = {}
    for mode in ("stock", "checked"):
        r = run(["-c", PRELUDE + "import mod\nemit([mod.__file__, mod.WHO, owned(mod)])\n",
                 mode, str(img)], cwd, pythonpath=[src], env={"PYTHONSAFEPATH": "1"})
        out[mode] = json.loads(r.stdout)
    assert out["stock"] == [str(src / "mod.py"), "tree", False]
    assert out["checked"] == [str(src / "mod.py"), "tree", True]


@pytest.mark.parametrize("how", ["chdir", "removed"])
def test_current_directory_changed_or_gone_at_run_time(tree, how):
    """'' on sys.path is whatever the current directory is at each import, and nothing when
    it no longer exists."""
    src, img, cwd = tree
    here = write_tree(cwd.parent / "here", {"mod.py": MODCODE + "WHO = 'here'\n"})
    gone = str(cwd.parent / "gone")
    setup = {"chdir": f"os.chdir({str(here)!r})",
             "removed": f"os.mkdir({gone!r}); os.chdir({gone!r}); os.rmdir({gone!r})"}[how]
    stock, mine = find_both(tree, setup, ["mod", "pkg"], flags=[], pythonpath=[src])
    if how == "chdir":
        assert stock["out"][0][1] == "here" and mine["out"][0][2] is False
    else:
        assert stock["out"][0][1] == "tree" and mine["out"][0][2] is True
    assert mine["out"][1][2] is True


def test_deleted_and_renamed_after_the_build(tree):
    src, img, cwd = tree
    (src / "mod.py").rename(src / "mod2.py")
    (src / "pkg" / "inner" / "deep.py").rename(src / "pkg" / "inner" / "deeper.py")
    stock, mine = find_both(tree, "", ["mod", "mod2", "pkg.inner.deep", "pkg.inner.deeper",
                                       "gone"])
    assert [o[0] for o in stock["out"]] == [
        "ImportError", str(src / "mod2.py"), "ImportError",
        str(src / "pkg" / "inner" / "deeper.py"), str(src / "gone.py")]
    assert [mine["out"][i][2] for i in (1, 3, 4)] == [False, False, True]


def test_path_removed_at_run_time(tree):
    src, img, cwd = tree
    stock, mine = find_both(tree, f"sys.path.remove({str(src)!r})", ["mod", "pkg"])
    assert [o[0] for o in mine["out"]] == ["ImportError", "ImportError"]


def test_pkgutil_extend_path_portions(tree):
    """A package whose __init__ extends its __path__ with pkgutil.extend_path: a submodule in
    a later portion is stock's, one in its own directory the image's."""
    src, img, cwd = tree
    text = MODCODE + "from pkgutil import extend_path\n__path__ = extend_path(__path__, " \
        "__name__)\n"
    other = write_tree(cwd.parent / "other", {"pkg/__init__.py": text,
                                              "pkg/extra.py": MODCODE + "WHO = 'other'\n",
                                              "pkg/sub.py": MODCODE + "WHO = 'late'\n"})
    first = write_tree(cwd.parent / "first", {"pkg/__init__.py": text,
                                              "pkg/sub.py": MODCODE + "WHO = 'first'\n"})
    # the image's pkg comes first: its sub is the image's, other's extra a later portion
    (src / "pkg" / "__init__.py").write_text(text)
    refmarshal.build(img, [("pkg", str(src / "pkg" / "__init__.py")),
                           ("pkg.sub", str(src / "pkg" / "sub.py")),
                           ("pkg.inner", str(src / "pkg" / "inner" / "__init__.py")),
                           ("pkg.inner.helper", str(src / "pkg" / "inner" / "helper.py"))])
    stock, mine = find_both(tree, f"sys.path.append({str(other)!r})", ["pkg", "pkg.extra",
                                                                        "pkg.sub"])
    assert [o[1] for o in stock["out"][1:]] == ["other", None]
    assert [o[2] for o in mine["out"]] == [True, False, True]
    # another distribution's portion first on sys.path: its pkg and sub win
    stock, mine = find_both(tree, f"sys.path.insert(0, {str(first)!r})", ["pkg", "pkg.sub"])
    assert stock["out"][1][1] == "first" and [o[2] for o in mine["out"]] == [False, False]


META = '''
    import importlib.abc, importlib.machinery, importlib.util
    class Editable:      # like setuptools' editable finder: maps names to a source tree
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "edpkg":
                return importlib.util.spec_from_file_location(
                    name, {init!r}, submodule_search_locations=[{edir!r}])
    class Hook:          # like pytest's assertion rewriter: first on sys.meta_path
        seen = []
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            cls.seen.append(name)
            return None
    sys.meta_path.append(Editable)
    sys.meta_path.insert(0, Hook)
'''


def test_other_meta_path_finders(tree):
    src, img, cwd = tree
    ed = write_tree(cwd.parent / "ed", {"edpkg/__init__.py": MODCODE + "WHO = 'editable'\n",
                                        "edpkg/part.py": MODCODE + "WHO = 'part'\n"})
    setup = META.format(init=str(ed / "edpkg" / "__init__.py"), edir=str(ed / "edpkg"))
    stock, mine = find_both(tree, setup, ["edpkg", "edpkg.part", "mod", "pkg.sub"])
    assert [o[1] for o in stock["out"][:2]] == ["editable", "part"]
    assert [o[2] for o in mine["out"]] == [False, False, True, True]


def test_path_importer_cache_and_tools_that_read_it(tree):
    """pkgutil.iter_modules, importlib.resources and importlib.metadata over the image's
    modules, after they were found directly."""
    src, img, cwd = tree
    (src / "tool-1.0.dist-info").mkdir()
    (src / "tool-1.0.dist-info" / "METADATA").write_text("Name: tool\nVersion: 1.0\n")
    body = '''
        import importlib, importlib.metadata, importlib.resources, pkgutil
        import mod, pkg, pkg.inner.helper
        emit([sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)),
              sorted(m.name for m in pkgutil.iter_modules(pkg.inner.__path__)),
              importlib.resources.files("pkg").joinpath("data.txt").read_text(),
              importlib.metadata.version("tool"),
              sorted(n for n in (m.name for m in pkgutil.iter_modules())
                     if n in ("mod", "pkg", "gone")),
              owned(mod), owned(pkg.inner.helper)])
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert mine[:-2] == stock[:-2] and mine[-2:] == [True, True]


def test_invalidate_caches_then_a_new_module_in_the_package(tree):
    """A file created in a package directory while the process runs is found after
    importlib.invalidate_caches(), and shadows the image's module of that name."""
    src, img, cwd = tree
    setup = f'''
        import shutil     # (left by the stock run)
        shutil.rmtree(os.path.join({str(src)!r}, "pkg", "inner", "deep"), ignore_errors=True)
        import pkg.inner.helper
        os.mkdir(os.path.join({str(src)!r}, "pkg", "inner", "deep"))
        with open(os.path.join({str(src)!r}, "pkg", "inner", "deep", "__init__.py"), "w") as fh:
            fh.write({MODCODE!r} + "DEEP = 'package'\\n")
        importlib.invalidate_caches()
    '''
    stock, mine = find_both(tree, setup, ["pkg.inner.deep", "mod"])
    assert stock["out"][0][1] == "package" and [o[2] for o in mine["out"]] == [False, True]


def test_source_edited_in_place_checked_and_unchecked(tree):
    src, img, cwd = tree
    st = os.stat(src / "mod.py")
    text = (src / "mod.py").read_text().replace('"tree"', '"TREE"')
    (src / "mod.py").write_text(text)
    os.utime(src / "mod.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    body = "import mod\nemit([mod.WHO, owned(mod)])\n"
    out = {m: json.loads(run(["-c", PRELUDE + textwrap.dedent(body), m, str(img)], cwd,
                             pythonpath=[src]).stdout)
           for m in ("stock", "checked", "unchecked")}
    assert out["stock"] == out["checked"] == ["TREE", False]
    assert out["unchecked"] == ["tree", True]       # unchecked trusts the image, as documented


# ---------------------------------------------------------------------------------------
# Directory stamps ([DIR-6]): a submodule proven by its directories' mtimes, no FileFinder.

EXT = importlib.machinery.EXTENSION_SUFFIXES[0]
SUBMODULES = ["pkg.sub", "pkg.inner", "pkg.inner.helper", "pkg.inner.deep"]


def backdate(root, seconds=100):
    """Every directory under root (root too) last modified `seconds` ago, each with a
    __pycache__ (as an installed package has: the stock runs' bytecode then changes no stamped
    directory)."""
    dirs = [root] + [p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    for d in dirs:
        (d / "__pycache__").mkdir(exist_ok=True)
    t = time.time_ns() - seconds * 1_000_000_000
    for d in sorted(root.rglob("*"), reverse=True) + [root]:
        if d.is_dir():
            os.utime(d, ns=(t, t))


# test_importer's tree, and a package nothing imports
LONE = {"pkg/lone/__init__.py": MODCODE, "pkg/lone/leaf.py": MODCODE + "WHO = 'leaf'\n"}


@pytest.fixture
def stamped(tmp_path):
    """The tree of test_importer and LONE, its directories older than the build's racy
    window."""
    src = write_tree(tmp_path / "src", {**TREE, **LONE})
    backdate(src)
    img = tmp_path / "tree.img"
    res = refmarshal.build(img, tree_entries(src) + [
        ("pkg.lone", str(src / "pkg/lone/__init__.py")),
        ("pkg.lone.leaf", str(src / "pkg/lone/leaf.py"))])
    assert not res.skipped
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return src, img, cwd


def entries(img):
    return {e.name: e for e in container.directory(img).entries}


# Like test_importer's FIND, and which directories have a finder in sys.path_importer_cache.
STAMPED = '''
    import importlib, importlib.util, os
    setup = sys.argv[3]
    names = sys.argv[4].split(",")
    exec(setup)
    out = []
    for name in names:
        try:
            m = importlib.import_module(name)
        except ImportError as exc:
            out.append(["ImportError", type(exc).__name__, str(exc)])
            continue
        spec = m.__spec__
        out.append([m.__file__, getattr(m, "WHO", None), spec.origin, spec.cached,
                    spec.has_location, spec.parent,
                    spec.submodule_search_locations and list(spec.submodule_search_locations),
                    type(spec.loader).__name__, m.__cached__, getattr(m, "__path__", None),
                    owned(m)])
    ours = os.path.dirname(importlib.util.find_spec("refmarshal").origin)   # install()'s own
    cache = sorted(k for k, v in sys.path_importer_cache.items()
                   if v is not None and not k.startswith(ours))
    emit(dict(out=out, cache=cache, direct=finder and finder.direct,
              stamped=finder and finder.stamped))
'''


def stamped_both(tree_, setup, names, modes=("stock", "checked")):
    """{mode: what STAMPED observed}; everything but `owned` and the finders made equal to
    stock's, every finder the image arm has one stock has too."""
    src, img, cwd = tree_
    out = {}
    for mode in modes:
        r = run(["-c", PRELUDE + textwrap.dedent(STAMPED), mode, str(img),
                 textwrap.dedent(setup), ",".join(names)], cwd, pythonpath=[src])
        assert r.stderr == "", r.stderr
        out[mode] = json.loads(r.stdout)
    for mode in modes[1:]:
        assert [o[:-1] for o in out[mode]["out"]] == [o[:-1] for o in out["stock"]["out"]]
        assert set(out[mode]["cache"]) <= set(out["stock"]["cache"])
    return out


def test_stamps_recorded_only_for_directories_outside_the_racy_window(stamped):
    """[DIR-6] A build right after the tree was written records no stamp; one of an older tree
    records each module's directory (and a package's own) and MOD_FIRST_IN_DIR."""
    src, img, cwd = stamped
    fresh = write_tree(cwd.parent / "fresh")
    refmarshal.build(cwd.parent / "fresh.img", tree_entries(fresh))
    assert all(e.dir_mtime_ns == e.pkg_mtime_ns == 0 and not e.first_in_dir
               for e in entries(cwd.parent / "fresh.img").values())
    es = entries(img)
    inner = src / "pkg" / "inner"
    assert es["pkg.inner.helper"].first_in_dir
    assert es["pkg.inner.helper"].dir_mtime_ns == os.stat(inner).st_mtime_ns
    assert es["pkg.inner.helper"].pkg_mtime_ns == 0
    assert es["pkg.inner"].first_in_dir
    assert es["pkg.inner"].dir_mtime_ns == os.stat(src / "pkg").st_mtime_ns
    assert es["pkg.inner"].pkg_mtime_ns == os.stat(inner).st_mtime_ns
    # touched just before a build: pkg/inner and what lives in it get no stamp
    os.utime(inner)
    refmarshal.build(img, tree_entries(src))
    es = entries(img)
    for name in ("pkg.inner", "pkg.inner.helper", "pkg.inner.deep"):
        assert (es[name].dir_mtime_ns, es[name].pkg_mtime_ns, es[name].first_in_dir) == \
            (es[name].dir_mtime_ns if name == "pkg.inner" else 0, 0, False)
    assert es["pkg.sub"].first_in_dir and es["pkg.sub"].dir_mtime_ns


def test_first_in_dir_not_recorded_when_another_candidate_exists(tmp_path):
    """[DIR-6] Another file stock could take for the name (an extension module listed before
    .py, a directory of that name, an __init__ with an extension suffix) means no flag."""
    src = write_tree(tmp_path / "src", {
        "p/__init__.py": MODCODE, "p/a.py": MODCODE, "p/b.py": MODCODE, "p/c.py": MODCODE,
        "p/b" + EXT: "", "p/c/README": "", "q/__init__.py": MODCODE,
        "q/__init__" + EXT: ""})
    backdate(src)
    img = tmp_path / "t.img"
    refmarshal.build(img, [(n, str(src / f)) for n, f in [
        ("p", "p/__init__.py"), ("p.a", "p/a.py"), ("p.b", "p/b.py"), ("p.c", "p/c.py"),
        ("q", "q/__init__.py")]])
    es = entries(img)
    assert [es[n].first_in_dir for n in ("p", "p.a", "p.b", "p.c", "q")] == \
        [True, True, False, False, False]


def test_stamps_serve_submodules_without_a_filefinder(stamped):
    src, img, cwd = stamped
    out = stamped_both(stamped, "", ["mod", "pkg", *SUBMODULES],
                       modes=("stock", "checked", "unchecked"))
    for mode in ("checked", "unchecked"):
        mine = out[mode]
        assert [o[-1] for o in mine["out"]] == [True] * 6
        assert mine["stamped"] == len(SUBMODULES) and mine["direct"] == 6
        # stock made the package directories' FileFinders; the stamps needed none
        assert set(out["stock"]["cache"]) - set(mine["cache"]) == {
            str(src / "pkg"), str(src / "pkg" / "inner")}


def test_tools_that_read_the_path_importer_cache_after_stamps(stamped):
    """pkgutil and importlib.resources make the finders the stamps did not need."""
    src, img, cwd = stamped
    body = '''
        import importlib.resources, pkgutil
        import pkg.inner.helper
        emit([sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)),
              sorted(m.name for m in pkgutil.iter_modules(pkg.inner.__path__)),
              sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, "pkg.")),
              importlib.resources.files("pkg").joinpath("data.txt").read_text(),
              str(importlib.resources.files("pkg.inner")),
              type(pkgutil.get_importer(pkg.inner.__path__[0])).__name__,
              owned(pkg.inner.helper), bool(finder and finder.stamped)])
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert mine[:-2] == stock[:-2] and mine[-2:] == [True, True]


@pytest.mark.parametrize("change", ["extension", "package", "deleted", "init-extension",
                                    "other-file"])
def test_changes_after_the_build_in_a_stamped_directory(stamped, change):
    """A name added, removed or shadowed in a stamped directory changes its mtime: stock's
    answer, whatever it is (an extension module that fails to load included)."""
    src, img, cwd = stamped
    lone = src / "pkg" / "lone"
    if change == "extension":
        (lone / ("leaf" + EXT)).write_text("")
    elif change == "package":
        write_tree(lone, {"leaf/__init__.py": MODCODE + "WHO = 'package'\n"})
    elif change == "deleted":
        (lone / "leaf.py").unlink()
    elif change == "init-extension":
        (lone / ("__init__" + EXT)).write_text("")
    else:
        (lone / "other.py").write_text(MODCODE)
    out = stamped_both(stamped, "", ["pkg.sub", "pkg.lone.leaf"])
    stock, mine = out["stock"], out["checked"]
    assert mine["out"][0][-1] is True            # pkg's directory did not change
    assert mine["stamped"] == 3                  # pkg.sub, pkg.inner, pkg.inner.helper
    got = stock["out"][1]
    if change in ("extension", "init-extension"):
        assert got[0] == "ImportError" and EXT in got[2]
    elif change == "package":
        assert got[1] == "package" and mine["out"][1][-1] is False
    elif change == "deleted":
        assert got[:2] == ["ImportError", "ModuleNotFoundError"]
    else:
        assert got[1] == "leaf" and mine["out"][1][-1] is True   # proven by the listing


@pytest.mark.parametrize("change", ["none", "init-extension"])
def test_a_top_level_package_found_by_listings_and_its_stamp(stamped, change):
    """A top-level package found by the listings: its directory's stamp proves that no
    __init__ extension module comes before its __init__.py (no stat of each candidate); when
    the directory changed, the candidates are tried as stock tries them."""
    src, img, cwd = stamped
    if change == "init-extension":
        (src / "pkg" / ("__init__" + EXT)).write_text("")
    out = stamped_both(stamped, "", ["pkg"])
    stock, mine = out["stock"], out["checked"]
    got = stock["out"][0]
    if change == "none":
        assert got[0] == str(src / "pkg" / "__init__.py") and mine["out"][0][-1] is True
        assert mine["direct"] == 4          # pkg, and the three submodules its body imports
    else:
        assert got[0] == "ImportError" and EXT in got[2] and mine["out"][0] == got
        assert mine["direct"] == 0


@pytest.mark.parametrize("cached", ["default", "sources-only"])
def test_a_filefinder_already_made_for_a_stamped_directory(stamped, cached):
    """A FileFinder stock already has for the directory (pkgutil made it): with stock's default
    loaders it finds what the stamps prove, so they still serve; with other loaders (one a
    tool put there), its own listing decides."""
    src, img, cwd = stamped
    inner = str(src / "pkg" / "inner")
    names = ["pkg.inner.helper", "pkg.inner.deep"]
    if cached == "default":
        setup = f"import pkgutil; pkgutil.get_importer({inner!r})"
    else:
        setup = (f"import importlib.machinery as m\n"
                 f"sys.path_importer_cache[{inner!r}] = m.FileFinder({inner!r}, "
                 f"(m.SourceFileLoader, ['.py']))")
    plain = stamped_both(stamped, "", names)["checked"]
    mine = stamped_both(stamped, setup, names)["checked"]
    assert [o[-1] for o in mine["out"]] == [True, True]
    assert plain["stamped"] >= 3
    assert mine["stamped"] == plain["stamped"] - (0 if cached == "default" else 2)


def test_invalidate_caches_after_a_change_in_the_same_process(stamped):
    """Stamps are checked once per process, and again after importlib.invalidate_caches()."""
    src, img, cwd = stamped
    lone = src / "pkg" / "lone"
    t = entries(img)["pkg.lone"].pkg_mtime_ns
    setup = f'''
        import shutil     # (left by the stock run; the directory's mtime as recorded again)
        shutil.rmtree({str(lone / "leaf")!r}, ignore_errors=True)
        os.utime({str(lone)!r}, ns=({t}, {t}))
        import pkg.lone
        os.mkdir({str(lone / "leaf")!r})
        with open({str(lone / "leaf" / "__init__.py")!r}, "w") as fh:
            fh.write({MODCODE!r} + "WHO = 'package'\\n")
        importlib.invalidate_caches()
    '''
    out = stamped_both(stamped, setup, ["pkg.lone.leaf", "pkg.sub"])
    assert out["stock"]["out"][0][1] == "package"
    assert [o[-1] for o in out["checked"]["out"]] == [False, True]
    assert out["checked"]["stamped"] == 4        # pkg.lone before the change, pkg.sub & co


def test_source_edited_in_place_in_a_stamped_directory(stamped):
    """Editing a file leaves its directory's mtime: checked mode still stats the source."""
    src, img, cwd = stamped
    helper = src / "pkg" / "inner" / "helper.py"
    st = os.stat(helper)
    helper.write_text(helper.read_text() + "WHO = 'edited'\n")
    os.utime(helper, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    out = stamped_both(stamped, "", ["pkg.inner.helper"], modes=("stock", "checked"))
    assert out["stock"]["out"][0][1] == "edited" and out["checked"]["out"][0][-1] is False
    r = run(["-c", PRELUDE + "import pkg.inner.helper as h\nemit([getattr(h, 'WHO', None), "
             "owned(h), finder.stamped])\n", "unchecked", str(img)], cwd, pythonpath=[src])
    assert json.loads(r.stdout) == [None, True, 3]   # unchecked trusts the image


def test_path_hooks_changed_or_path_extended(stamped):
    """A path hook put before FileFinder's, or a second directory on the package's __path__:
    the stamps prove nothing, stock decides."""
    src, img, cwd = stamped
    other = write_tree(cwd.parent / "other", {"pkg/lone/leaf.py": MODCODE + "WHO = 'other'\n"})
    hook = '''
        class Hook:
            def __init__(self, path):
                raise ImportError
        sys.path_hooks.insert(0, Hook)
        sys.path_importer_cache.clear()
    '''
    plain = stamped_both(stamped, "", ["pkg.lone.leaf"])["checked"]["stamped"]
    out = stamped_both(stamped, hook, ["pkg.lone.leaf"])
    # a directory no finder was made for yet would go through the hook: not by stamps (those
    # with a default FileFinder already made, pkg's, still are)
    assert out["checked"]["stamped"] < plain and out["checked"]["out"][0][-1] is True
    extend = f'''
        import pkg.lone
        pkg.lone.__path__.insert(0, {str(other / "pkg" / "lone")!r})
    '''
    out = stamped_both(stamped, extend, ["pkg.lone.leaf"])
    assert out["stock"]["out"][0][1] == "other" and out["checked"]["out"][0][-1] is False
    assert out["checked"]["stamped"] == 4        # up to pkg.lone


# ---------------------------------------------------------------------------------------
# Where the finder stands: before stock's BuiltinImporter and FrozenImporter, leaving them
# every name they would find.

BUILTIN_AND_FROZEN = '''
    import importlib, sys
    order = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]
    out = []
    for name in sys.argv[3].split(","):
        m = importlib.import_module(name)
        out.append([name, m.__spec__.origin, type(m.__spec__.loader).__name__,
                    getattr(m, "WHO", None),
                    finder is not None and finder.image.owns(getattr(m, "MODCODE", None))])
    emit(dict(out=out, order=order, hits=finder and finder.hits))
'''

# __hello__ is frozen (and has a source in the standard library), _string built in: the image
# holds a module of each name, found first on sys.path when the frozen one is turned off.
SHADOWS = {"__hello__.py": MODCODE + "WHO = 'tree'\n", "_string.py": MODCODE + "WHO = 'tree'\n",
           "plain.py": MODCODE + "WHO = 'plain'\n"}


@pytest.fixture
def shadows(tmp_path):
    src = write_tree(tmp_path / "src", SHADOWS)
    img = tmp_path / "shadows.img"
    res = refmarshal.build(img, [(n[:-3], str(src / n)) for n in SHADOWS])
    assert not res.skipped
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return src, img, cwd


@pytest.mark.parametrize("frozen", ["on", "off"])
def test_builtin_and_frozen_names_are_left_to_their_finders(shadows, frozen):
    src, img, cwd = shadows
    names = "_string,__hello__,plain"
    out = {m: json.loads(run(["-X", f"frozen_modules={frozen}", "-c",
                              PRELUDE + textwrap.dedent(BUILTIN_AND_FROZEN), m, str(img),
                              names], cwd, pythonpath=[src]).stdout)
           for m in ("stock", "checked")}
    stock, mine = out["stock"], out["checked"]
    assert [o[:4] for o in mine["out"]] == [o[:4] for o in stock["out"]]
    hello = "frozen" if frozen == "on" else str(src / "__hello__.py")
    assert [o[1] for o in stock["out"]] == ["built-in", hello, str(src / "plain.py")]
    # the image serves only what stock finds on sys.path: plain, and __hello__ when the frozen
    # one is off
    assert [o[4] for o in mine["out"]] == [False, frozen == "off", True]
    assert mine["hits"] == (2 if frozen == "off" else 1)
    at = mine["order"].index("ImageFinder")
    assert mine["order"][at:] == ["ImageFinder", "BuiltinImporter", "FrozenImporter",
                                  "PathFinder"]
    assert mine["order"][:at] == stock["order"][:stock["order"].index("BuiltinImporter")]


FINDER_BETWEEN = '''
    import importlib, sys
    class Between:        # a finder put between FrozenImporter and PathFinder after install
        @staticmethod
        def find_spec(name, path=None, target=None):
            return None
    sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder), Between)
    import plain
    emit([plain.WHO, finder is not None and finder.image.owns(plain.MODCODE)])
'''


def test_a_finder_between_stocks_and_pathfinder_stops_serving(shadows):
    """Stock order would ask it before PathFinder: the image finder, before it, steps aside."""
    src, img, cwd = shadows
    r = run(["-c", PRELUDE + "import importlib.machinery\n" + textwrap.dedent(FINDER_BETWEEN),
             "checked", str(img)], cwd, pythonpath=[src])
    assert json.loads(r.stdout) == ["plain", False]


WAKE = '''
    import json, sys
    import refmarshal._startup
    refmarshal._startup.run()
    before = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]
    import plain, __hello__
    after = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]
    f = [f for f in sys.meta_path if type(f).__name__ == "ImageFinder"][0]
    print(json.dumps([before[-4:], after[-4:], plain.WHO, f.image.owns(plain.MODCODE),
                      __hello__.__spec__.origin, f.hits]))
'''


def test_the_start_up_hook_moves_the_finder_before_stocks_finders(shadows):
    """The PendingFinder wakes inside the import system's walk of sys.meta_path: the finder
    that replaces it goes before BuiltinImporter, and the walk goes on at PathFinder."""
    src, img, cwd = shadows
    r = run(["-c", textwrap.dedent(WAKE)], cwd, pythonpath=[src],
            env={"REFMARSHAL_IMAGE": str(img)})
    assert r.stderr == ""
    assert json.loads(r.stdout) == [
        ["BuiltinImporter", "FrozenImporter", "PendingFinder", "PathFinder"],
        ["ImageFinder", "BuiltinImporter", "FrozenImporter", "PathFinder"],
        "plain", True, "frozen", 1]


# ---------------------------------------------------------------------------------------
# Top-level extension modules the image does not hold (the standard library's lib-dynload):
# found by the same listings, else left to PathFinder.

EXTENSIONS = '''
    import importlib, importlib.util, re
    def bare(spec):
        return re.sub(r" object at 0x[0-9a-f]+", "", repr(spec))
    out = []
    for name in sys.argv[3].split(","):
        fresh = importlib.util.find_spec(name)
        m = importlib.import_module(name)
        s = m.__spec__
        out.append([bare(fresh), type(fresh.loader).__name__, sorted(vars(fresh.loader).items()),
                    list(vars(fresh)), bare(s), s.cached, s.has_location, s.parent,
                    s.submodule_search_locations, m.__file__, getattr(m, "WHO", None)])
    emit(dict(out=out, extensions=finder and finder.extensions))
'''
EXT_NAMES = "_csv,_bisect,array"


def test_extension_modules_found_as_stock_finds_them(tree):
    src, img, cwd = tree
    stock, mine = both_modes(EXTENSIONS, img, cwd, EXT_NAMES, pythonpath=[src])
    assert mine["out"] == stock["out"]
    assert all(o[1] == "ExtensionFileLoader" for o in stock["out"])
    assert mine["extensions"] == 2 * len(EXT_NAMES.split(","))   # find_spec, then the import


@pytest.mark.parametrize("shadow", ["source", "directory", "package", "not-a-file"])
def test_extension_modules_shadowed_or_not(tree, shadow):
    """Something of the name in an earlier sys.path entry: stock's answer, which is the
    extension module only when that something is a namespace portion or not a file."""
    src, img, cwd = tree
    if shadow == "source":
        write_tree(src, {"_csv.py": MODCODE + "WHO = 'source'\n"})
    elif shadow == "directory":
        (src / "_csv").mkdir()
    elif shadow == "package":
        write_tree(src, {"_csv/__init__.py": MODCODE + "WHO = 'package'\n"})
    else:
        (src / ("_csv" + EXT)).mkdir()
    stock, mine = both_modes(EXTENSIONS, img, cwd, "_csv", pythonpath=[src])
    assert mine["out"] == stock["out"]
    who = {"source": "source", "package": "package"}.get(shadow)
    assert stock["out"][0][-1] == who
    # only a directory with an extension suffix (not a file) lets the search go on to
    # lib-dynload; a bare directory (a namespace portion) is left to PathFinder
    assert mine["extensions"] == (2 if shadow == "not-a-file" else 0)


def test_extension_modules_after_a_zip_entry_are_left_to_pathfinder(tree, tmp_path):
    src, img, cwd = tree
    import zipfile
    with zipfile.ZipFile(tmp_path / "lib.zip", "w") as z:
        z.writestr("zipped.py", MODCODE)
    stock, mine = both_modes(EXTENSIONS, img, cwd, "_csv",
                             pythonpath=[str(tmp_path / "lib.zip"), src])
    assert mine["out"] == stock["out"] and mine["extensions"] == 0


def test_sys_path_deleted_is_stocks_error_not_a_crash(tree):
    """Without sys.path, stock import raises AttributeError; the finder, walking the path
    entries itself, must step aside (it once passed NULL on and crashed the process)."""
    src, img, cwd = tree
    body = '''
        del sys.path
        out = []
        for name in ("mod", "_csv"):
            try:
                __import__(name)
                out.append("imported")
            except Exception as exc:
                out.append([type(exc).__name__, str(exc)])
        emit(out)
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert mine == stock == [["AttributeError", "module 'sys' has no attribute 'path'"]] * 2


# ---------------------------------------------------------------------------------------
# Top-level names nobody provides (`try: import nt`): answered by the finder, for C import
# only, with what stock would do after PathFinder found nothing.

ABSENT = '''
    import importlib, importlib.util, traceback
    def attempt(how, name):
        try:
            if how == "statement":
                exec(f"import {name}")
            elif how == "__import__":
                __import__(name)
            else:
                importlib.import_module(name)
        except ImportError as exc:
            return [type(exc).__name__, str(exc), exc.name, exc.path, exc.args,
                    traceback.format_exception(exc)]
        return ["imported", sys.modules[name].__spec__.submodule_search_locations is not None]
    out = [attempt(how, name) for how in ("statement", "__import__", "import_module")
           for name in ("no_such_module_here", "nsdir")]
    out.append(repr(importlib.util.find_spec("no_such_module_here")))
    emit(dict(out=out, absent=finder and finder.absent))
'''


def test_names_nobody_provides_fail_as_stock(tree):
    """The exception, its attributes and its formatted traceback are stock's, for an import
    statement and __import__ (answered by the finder) and importlib.import_module (whose
    traceback keeps importlib's frames: left to PathFinder); a namespace directory is
    imported; importlib.util.find_spec gets None."""
    src, img, cwd = tree
    (src / "nsdir").mkdir()
    stock, mine = both_modes(ABSENT, img, cwd, pythonpath=[src])
    assert mine["out"] == stock["out"]
    assert stock["out"][0][:3] == ["ModuleNotFoundError", "No module named 'no_such_module_here'",
                                   "no_such_module_here"]
    assert stock["out"][1] == ["imported", True]
    assert any("_find_and_load_unlocked" in line for line in stock["out"][4][-1])
    assert mine["absent"] == 2


def test_a_module_made_after_a_failed_import_is_found_without_invalidate_caches(tree):
    """FileFinder checks its directory's mtime at every call, so stock finds a module
    created after a failed import of its name; so must the finder's answer."""
    src, img, cwd = tree
    body = '''
        name = "made_later_" + MODE           # each run makes its own
        out = []
        for attempt in range(2):
            try:
                out.append(__import__(name).X)
            except ImportError as exc:
                out.append(str(exc).replace(MODE, "MODE"))
                with open(f"{sys.argv[3]}/{name}.py", "w") as fh:
                    fh.write("X = 42\\n")
        emit(dict(out=out, absent=finder and finder.absent))
    '''
    stock, mine = both_modes(body, img, cwd, src, pythonpath=[src])
    assert stock["out"] == mine["out"] == ["No module named 'made_later_MODE'", 42]
    assert mine["absent"] == 1


def test_finders_after_pathfinder_are_asked_in_order(tree):
    """botocore's vendored six appends a finder to sys.meta_path: a name it provides is
    its, an error it raises is raised, and others still fail as stock."""
    src, img, cwd = tree
    body = '''
        import importlib.util
        asked = []
        class Late:
            def __init__(self, tag):
                self.tag = tag
            def find_spec(self, name, path=None, target=None):
                asked.append([self.tag, name, path, target])
                if name == "late_mod" and self.tag == "second":
                    return importlib.util.spec_from_loader(name, self)
                if name == "late_error":
                    raise ValueError("late finder failed")
            def create_module(self, spec):
                return None
            def exec_module(self, module):
                module.X = self.tag
        # 3.12+ skip a finder without find_spec; 3.11 asks its find_module (stock's walk)
        nameless = [object()] if sys.version_info >= (3, 12) else []
        sys.meta_path += [Late("first"), *nameless, Late("second")]
        out = []
        for name in ("late_mod", "late_error", "late_missing"):
            try:
                out.append(__import__(name).X)
            except Exception as exc:
                out.append([type(exc).__name__, str(exc)])
        emit(dict(out=out, asked=asked, absent=finder and finder.absent))
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert mine["out"] == stock["out"] == [
        "second", ["ValueError", "late finder failed"],
        ["ModuleNotFoundError", "No module named 'late_missing'"]]
    assert mine["asked"] == stock["asked"]
    assert mine["absent"] == 1


def test_a_wrapped_find_spec_leaves_names_nobody_provides_to_stock(tree):
    """A tool that wraps the import system's _find_spec (refmarshal's own profiler does)
    puts a frame of its own in the failing import's traceback: the finder leaves it to
    PathFinder, so the traceback is stock's."""
    src, img, cwd = tree
    body = '''
        import importlib._bootstrap as b, traceback
        real = b._find_spec
        def _find_spec(name, path, target=None):
            return real(name, path, target)
        b._find_spec = _find_spec
        try:
            import no_such_module_here
        except ImportError as exc:
            out = traceback.format_exception(exc)
        emit(dict(out=out, absent=finder and finder.absent))
    '''
    stock, mine = both_modes(body, img, cwd, pythonpath=[src])
    assert mine["out"] == stock["out"]
    assert mine["absent"] == 0
