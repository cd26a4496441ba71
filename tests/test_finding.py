"""Finding without PathFinder (issue 13): the specs ImageFinder.find_spec makes itself are
stock's, and every way stock import can end up elsewhere still does.

Each test runs the same script in child interpreters with stock import and with the checked
finder (test_importer's harness) and compares what they observed; `direct` counts the specs
the finder made without asking PathFinder, so a test can tell the fast path was taken.
"""

import json
import os
import textwrap

import pytest

import refmarshal
from test_importer import (MODCODE, PRELUDE, both_modes, find_both, run, tree,  # noqa: F401
                           write_tree)

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
