"""The C writer (refmarshal/_accel/rm_writer.c) copies every object from its live memory and
normalises only what the spec calls process-dependent; its images are byte-identical to the
reference writer's, which packs each field from the spec's tables.  Equal bytes mean the spec
describes CPython's real memory layout ([OBJ-1..9], [STR-1..4], [REL-1..3])."""

import os
import subprocess
import sys
import textwrap

import pytest

import corpus
import refmarshal
from conftest import KINDS_SOURCE
from refmarshal import ImageError, layouts
from refmarshal import format as F
from refmarshal import writer as R
from refmarshal.building import compile_module
from refmarshal.container import ModuleSource

pytestmark = pytest.mark.skipif(not refmarshal.accelerator_available(),
                                reason="accelerator not built (test_accel.py fails on that "
                                       "where REFMARSHAL_REQUIRE_ACCEL is set)")

def _native():
    from refmarshal._accel.writer import encode_image_native
    return encode_image_native


def _both(entries):
    """The same compiled code objects, as the reference writer's graphs and as live code.
    Everything is compiled before any graph is taken: in 3.11 and 3.12 compiling a module can
    intern a one-character latin-1 singleton that earlier modules' code holds, and the two
    writers must see the same interned state ([OBJ-5])."""
    ref, live = {}, {}
    for name, path in entries:
        try:
            code = compile_module(path)
        except (SyntaxError, ValueError):
            assert not corpus.compiles(path)
            continue
        st = os.stat(path)
        live[name] = ModuleSource(os.fspath(path), st.st_mtime_ns, st.st_size,
                                  os.path.basename(path).startswith("__init__."), code)
    for name, m in live.items():
        ref[name] = m._replace(code=R.code_graph(m.code))
    return ref, live


def _where(a, b):
    """Where two images first differ, named by section (and module), for the failure message."""
    if len(a) != len(b):
        return f"sizes differ: reference {len(a)}, C writer {len(b)}"
    at = next(i for i in range(len(a)) if a[i] != b[i])
    hdr = F.check_header(a[:F.HEADER_SIZE], len(a))
    for name, (off, size) in zip(F.SECTION_NAMES, hdr["sections"]):
        if off <= at < off + size:
            return (f"first difference at file offset {at} in {name} (+{at - off}): "
                    f"reference {a[at:at + 16].hex()} C writer {b[at:at + 16].hex()}")
    return f"first difference at file offset {at}, outside any section"


def _assert_same_image(entries, minimum):
    ref, live = _both(entries)
    assert len(ref) >= minimum
    lay = layouts.current()
    a = R.encode_image(lay, ref, 0)
    b = _native()(lay, live, 0)
    assert a == b, _where(a, b)


def test_stdlib_image_is_byte_identical():
    _assert_same_image(corpus.stdlib_modules(), 1000)


def test_third_party_image_is_byte_identical():
    _assert_same_image(corpus.third_party_modules(), 50)


def test_every_kind_of_object_is_byte_identical(tmp_path):
    (tmp_path / "kinds.py").write_text(KINDS_SOURCE, encoding="utf-8")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from .sub import f\n")
    (tmp_path / "pkg" / "sub.py").write_text("def f(x, *a, k=1, **kw):\n    return lambda: x\n")
    _assert_same_image([("kinds", tmp_path / "kinds.py"), ("pkg", tmp_path / "pkg" / "__init__.py"),
                        ("pkg.sub", tmp_path / "pkg" / "sub.py")], 3)


# Code that specialises while it runs: loops, attribute and global loads, calls, binary ops,
# comparisons, unpacking, and a frozenset of tuples of strings.
_RUNNING = '''\
import sys
class P:
    def __init__(self, x):
        self.x = x
    def get(self):
        return self.x
def work(n):
    total, seen = 0.5, []
    for i in range(n):
        p = P(i)
        a, b = divmod(p.get(), 3)
        total += a * b - len(seen)
        if (str(b), "k") in {("0", "k"), ("1", "k"), ("a b", "k")}:
            seen.append("caf\u00e9 \u20ac")
        elif i > 10 ** 20:
            raise ValueError("never")
    return total, sys.maxsize > 2 ** 40
'''

_DIRTY = textwrap.dedent('''\
    import codecs, sys, weakref
    from refmarshal import layouts, writer as R
    from refmarshal.building import compile_module
    from refmarshal.container import ModuleSource
    from refmarshal.graph import walk_code
    from refmarshal._accel.writer import encode_image_native
    path = sys.argv[1]
    code = compile_module(path)
    meta = ModuleSource(path, 0, 0, False, None)
    lay = layouts.current()
    expected = R.encode_image(lay, {"m": meta._replace(code=R.code_graph(code))}, 0)
    codes = list(walk_code(code))
    fresh = [c._co_code_adaptive for c in codes]
    refs = [weakref.ref(c) for c in codes]                 # co_weakreflist
    for c in codes:                                         # cached hashes, co_code caches
        c.co_code, list(c.co_positions()), list(c.co_lines())
        for k in c.co_consts + c.co_names + c.co_varnames:
            if isinstance(k, (str, bytes)):
                hash(k)
            if isinstance(k, str):
                try:
                    codecs.lookup(k)                        # caches its UTF-8 form
                except LookupError:
                    pass
    ns = {"__name__": "m"}
    def tracer(frame, event, arg):
        return tracer
    sys.settrace(tracer)                                    # instrumented code (3.12+)
    exec(code, ns)
    ns["work"](50)
    sys.settrace(None)
    for _ in range(200):                                    # warmed up and specialised
        ns["work"](50)
    assert any(c._co_code_adaptive != f for c, f in zip(codes, fresh)), "nothing specialised"
    got = encode_image_native(lay, {"m": meta._replace(code=code)}, 0)
    print("same" if got == expected else "different")
''')


def test_code_that_has_run_dumps_as_fresh(tmp_path):
    """Specialised bytecode, warm-up counters, instrumentation, cached hashes, weak reference
    lists and co_code caches are all process state: the image is the fresh object's."""
    (tmp_path / "running.py").write_text(_RUNNING)
    (tmp_path / "dirty.py").write_text(_DIRTY)
    # cwd is not the source tree: the child imports the installed package, as tox installs it
    out = subprocess.run([sys.executable, str(tmp_path / "dirty.py"), str(tmp_path / "running.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["same"]


def test_objects_the_format_cannot_hold_are_refused():
    code = compile("x = 1", "m.py", "exec").replace(co_consts=(1, [2]))
    with pytest.raises(ImageError, match="list"):
        _native()(layouts.current(), {"m": ModuleSource("m.py", 0, 0, False, code)}, 0)


def test_builds_with_directory_stamps_are_byte_identical(tmp_path):
    """[DIR-6] Both writers, in one process or several, record the same directory stamps and
    flags (building.directory_stamps fills ModuleSource for either)."""
    from refmarshal.container import directory
    src = tmp_path / "src"
    files = {"p/__init__.py": "X = 1\n", "p/q/__init__.py": "",
             **{f"p/m{i}.py": f"Y = {i}\n" for i in range(40)}}
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    entries = [(rel[:-3].replace("/__init__", "").replace("/", "."), str(src / rel))
               for rel in files]
    t = 1_700_000_000_123_456_789
    for d in [src / "p" / "q", src / "p", src]:
        os.utime(d, ns=(t, t))
    out = {}
    for impl, jobs in (("reference", 1), ("native", 1), ("native", 2)):
        img = tmp_path / f"{impl}{jobs}.img"
        refmarshal.build(img, entries, implementation=impl, jobs=jobs)
        out[impl, jobs] = img.read_bytes()
    assert out["reference", 1] == out["native", 1] == out["native", 2]
    es = {e.name: e for e in directory(tmp_path / "reference1.img").entries}
    assert all(es[f"p.m{i}"].first_in_dir and es[f"p.m{i}"].dir_mtime_ns == t
               for i in range(40))
    assert es["p.q"].first_in_dir and (es["p.q"].dir_mtime_ns, es["p.q"].pkg_mtime_ns) == (t, t)
