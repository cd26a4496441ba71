"""The accelerator ([LOAD-1..4]): loaded in place, equal to the reference and to compile(),
runs like any code, survives corruption and relocation, and the interpreter exits cleanly."""

import os
import random
import subprocess
import sys
import textwrap

import pytest

import corpus
import refmarshal
from helpers import compiled, same_code, walk

pytestmark = pytest.mark.skipif(not refmarshal.accelerator_available(),
                                reason="accelerator not built")
STDLIB = corpus.stdlib_modules()
_images = {}


def _accel(path):
    if path not in _images:
        _images[path] = refmarshal.Image(path, implementation="accel")
    return _images[path]


def test_accelerator_is_built_where_required():
    """tox sets REFMARSHAL_REQUIRE_ACCEL: there a missing accelerator is a failure, not a skip."""
    if os.environ.get("REFMARSHAL_REQUIRE_ACCEL"):
        assert refmarshal.accelerator_available()
    assert refmarshal.Image.__module__ == "refmarshal"


def test_whole_stdlib_loads_and_matches(stdlib_image):
    img_path, result = stdlib_image
    img = refmarshal.Image(img_path, implementation="accel")
    codes = {n: img.get_code(n) for n in img.names()}
    assert len(codes) == len(result.modules)
    bad = [n for n, c in codes.items() if not same_code(c, compiled(img.entry(n).path))]
    assert bad == []


def test_LOAD_1_relocated_mapping_gives_the_same_code(small_image):
    first = refmarshal.Image(small_image, implementation="accel")
    first.get_code("kinds")
    second = refmarshal.Image(small_image, implementation="accel")   # preferred base is taken
    assert not first.relocated and second.relocated
    for n in second.names():
        a, b = first.get_code(n), second.get_code(n)
        assert a is not b and second.owns(b) and same_code(a, b)
        assert same_code(b, compiled(second.entry(n).path))


def test_OBJ_5_constants_are_the_interpreters_singletons(small_image):
    """(What else loaded code does, both readers alike: test_readers.py.)"""
    img = refmarshal.Image(small_image, implementation="accel")
    ns = {"__name__": "kinds"}
    exec(img.get_code("kinds"), ns)
    # the interpreter's one-byte singleton: a literal b"x" here is not one when this test
    # module comes from pytest's cached .pyc (marshal builds bytes afresh), so slice one out
    assert ns["NEGSMALL"] is -5 and ns["E"] is Ellipsis and ns["B1"] is b"xy"[:1]
    assert ns["T"][3] is ()


SCRIPT = textwrap.dedent('''
    import sys, dis, inspect, traceback, refmarshal
    img = refmarshal.Image(sys.argv[1], implementation="accel")
    src = sys.argv[2]
    code = img.get_code("prog")
    assert img.owns(code)
    ns = {"__name__": "prog", "__file__": src}
    exec(code, ns)
    # generators, coroutines, closures, comprehensions, exceptions with correct lines
    assert list(ns["gen"](3)) == [0, 1, 4]
    import asyncio
    assert asyncio.run(ns["coro"](2)) == 4
    assert ns["closure"]()() == 11
    try:
        ns["fails"]()
    except ZeroDivisionError:
        tb = traceback.extract_tb(sys.exc_info()[2])
        assert tb[-1].lineno == ns["FAIL_LINE"] and tb[-1].filename == src, tb
    # tracing sees the same lines as for compile()'s code
    def lines_of(fn):
        seen = []
        def tracer(frame, event, arg):
            if event == "line":
                seen.append(frame.f_lineno)
            return tracer
        sys.settrace(tracer)
        try:
            fn(5)
        finally:
            sys.settrace(None)
        return seen
    ref = {}
    exec(compile(open(src, "rb").read(), src, "exec"), ref)
    assert lines_of(ns["loop"]) == lines_of(ref["loop"]) and lines_of(ns["loop"])
    if hasattr(sys, "monitoring"):
        m = sys.monitoring
        m.use_tool_id(3, "refmarshal-test")
        events = []
        m.register_callback(3, m.events.LINE, lambda code, line: events.append(line))
        m.set_events(3, m.events.LINE)
        ns["loop"](2)
        m.set_events(3, 0)
        m.free_tool_id(3)
        assert events, "sys.monitoring saw no line events"
    assert "RETURN" in dis.Bytecode(ns["loop"]).dis()
    assert inspect.getsource(ns["loop"]).startswith("def loop")
    for name in img.names():
        img.get_code(name)
    print("ok")
''')

PROG = textwrap.dedent('''
    def gen(n):
        for i in range(n):
            yield i * i
    async def coro(x):
        return x * 2
    def closure():
        v = 10
        def inner():
            return lambda: v + 1
        return inner()
    FAIL_LINE = 14  # the source starts with an empty line
    def fails():
        return 1 / 0
    def loop(n):
        total = 0
        for i in range(n):
            total += i
        return total
''')


@pytest.mark.parametrize("env", [{}, {"PYTHONDEVMODE": "1"}, {"PYTHONMALLOC": "debug"}],
                         ids=["plain", "dev", "mallocdebug"])
def test_subprocess_behaviour_and_clean_exit(tmp_path, env):
    src = tmp_path / "prog.py"
    src.write_text(PROG)
    img = tmp_path / "p.img"
    refmarshal.build(img, [("prog", src)] + corpus.stdlib_modules()[:60])
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(img), str(src)],
                       capture_output=True, text=True, env=dict(os.environ, **env), timeout=300,
                       cwd=tmp_path)   # not the source tree: the installed package is tested
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


SEED = int(os.environ.get("REFMARSHAL_TEST_SEED", random.randrange(1 << 30)))


def test_ERR_1_corrupted_images_raise_and_never_crash(small_image, tmp_path):
    """Runs in a child process so that a crash shows as a failure with the seed, not a dead run."""
    script = textwrap.dedent('''
        import random, sys, refmarshal
        from refmarshal import ImageError
        import marshal, os, struct
        data = open(sys.argv[1], "rb").read()
        rng = random.Random(int(sys.argv[2]))
        bad = sys.argv[3]
        sections = [struct.unpack_from("<QQ", data, 48 + 16 * i) for i in range(6)]
        def in_padding(pos):      # bytes no section holds: the accelerator never reads them
            return pos >= 256 and not any(o <= pos < o + n for o, n in sections)
        cases = [(data[:n], None) for n in range(0, len(data), 131)]
        for _ in range(1200):
            b = bytearray(data)
            pos = rng.randrange(len(b))
            b[pos] ^= 1 << rng.randrange(8)
            cases.append((bytes(b), pos))
        good = refmarshal.Image(sys.argv[1], implementation="reference")
        expected = {n: marshal.dumps(good.get_code(n), 2) for n in good.names()}
        detected = 0
        for i, (c, pos) in enumerate(cases):
            # a new file each time, as build() replaces images: rewriting a mapped file in
            # place would change or truncate memory that earlier code objects live in
            if os.path.exists(bad):
                os.unlink(bad)
            open(bad, "wb").write(c)
            try:
                img = refmarshal.Image(bad, implementation="accel")
                got = {n: marshal.dumps(img.get_code(n), 2) for n in img.names()}
            except (ImageError, KeyError, UnicodeDecodeError):
                detected += 1
                continue
            if pos is None or not in_padding(pos) or got != expected:
                print("undetected", i, pos)
                sys.exit(1)
        print("ok", len(cases), detected)
    ''')
    r = subprocess.run([sys.executable, "-c", script, str(small_image), str(SEED),
                        str(tmp_path / "bad.img")], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, f"seed {SEED}: {r.stdout[-500:]} {r.stderr[-2000:]}"
    assert r.stdout.startswith("ok")


# -- how bytes are brought in (rm_loader.c "Memory", "CRC-32") --

def test_CONV_5_crc32_matches_zlib_with_and_without_carryless_multiply():
    import zlib
    from refmarshal._accel.loader import lib
    rng = random.Random(7)
    cases = [(rng.randrange(1 << 32), rng.randbytes(rng.randrange(0, 2100))) for _ in range(400)]
    cases += [(0, bytes(n)) for n in (0, 15, 16, 63, 64, 65, 127, 128, 4096)]
    assert [lib.rm_crc32(c, d, len(d)) for c, d in cases] == [zlib.crc32(d, c) for c, d in cases]
    # the table fallback, as on a CPU without PCLMULQDQ: a child where it is switched off
    script = textwrap.dedent('''
        import random, zlib
        from refmarshal._accel.loader import lib
        assert lib.rm_crc32_uses_clmul() == 0
        rng = random.Random(7)
        for _ in range(400):
            c, d = rng.randrange(1 << 32), rng.randbytes(rng.randrange(0, 2100))
            assert lib.rm_crc32(c, d, len(d)) == zlib.crc32(d, c)
        print("ok")
    ''')
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, REFMARSHAL_NO_CLMUL="1"), cwd="/")
    assert r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("mode", ["huge-pages", "small-pages", "file-mapping"])
def test_every_memory_mode_loads_the_same_code(third_party_image, mode):
    from refmarshal._accel.loader import AccelImage
    img = AccelImage(third_party_image[0], mode=mode)
    for n in img.names():
        code = img.get_code(n)
        assert img.owns(code) and same_code(code, compiled(img.entry(n).path)), n


def test_cost_grows_with_what_is_loaded_not_with_the_image(stdlib_image):
    from refmarshal._accel.loader import AccelImage
    path, result = stdlib_image
    img = AccelImage(path)
    size = os.path.getsize(path)
    assert img.bytes_read <= 64 * 1024                 # opening reads the header's chunk
    img.get_code("keyword")
    assert img.bytes_read < size / 20, (img.bytes_read, size)
    for n in img.names():
        img.get_code(n)
    assert img.bytes_read <= size


def test_LOAD_6_image_truncated_while_in_use_fails_cleanly(tmp_path):
    """[LOAD-6] is a rule for writers; if it is broken anyway, later loads fail, nothing crashes
    and code already loaded keeps working (it lives in private memory, not in the file)."""
    entries = corpus.stdlib_modules()[:80]
    path = tmp_path / "t.img"
    refmarshal.build(path, entries)
    script = textwrap.dedent('''
        import os, sys
        from refmarshal import ImageError
        from refmarshal._accel.loader import AccelImage
        img = AccelImage(sys.argv[1])
        names = img.names()
        first = img.get_code(names[0])
        os.truncate(sys.argv[1], os.path.getsize(sys.argv[1]) // 3)
        failed = 0
        for n in names[1:]:
            try:
                img.get_code(n)
            except ImageError as exc:
                failed += 1
                assert "truncated while in use" in str(exc) or "checksum" in str(exc), exc
        assert failed > 0
        exec(first, {"__name__": names[0]})
        print("ok", failed)
    ''')
    r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


def _is_interned(s):
    """Without interning anything: marshal format 3 writes 't' for an interned str, 'u'
    otherwise (format 2, which same_code uses, does not record it); FLAG_REF is masked."""
    import marshal
    return marshal.dumps(s, 3)[0] & 0x7F == ord("t")


def test_names_are_the_interned_strings(stdlib_image):
    """[LOAD-2], [OBJ-5]: every name a code object holds is interned, as compile() and marshal
    make them; in 3.11 and 3.12 that includes one-character names, whose interned object is not
    the latin-1 singleton."""
    img = _accel(stdlib_image[0])
    checked = 0
    for name in img.names()[::5]:
        for co in walk(img.get_code(name)):
            for s in co.co_names + co.co_varnames + co.co_cellvars + co.co_freevars:
                assert _is_interned(s) and sys.intern(s) is s, (name, co.co_qualname, s)
                checked += 1
    assert checked > 10000


def test_loaded_code_specialises_like_compiled_code(tmp_path):
    """[LOAD-3]: quickening state and co_version as init_code() leaves them, so the adaptive
    interpreter specialises loaded code exactly as it does freshly compiled code."""
    script = textwrap.dedent('''
        import dis, sys, refmarshal
        img = refmarshal.Image(sys.argv[1], implementation="accel")
        src = open(sys.argv[2]).read()
        def specialised(code):
            ns = {"__name__": "hot"}
            exec(code, ns)
            ns["work"](300)
            return sorted({i.opname for i in dis.get_instructions(ns["work"], adaptive=True)
                           if i.opname not in dis.opmap})
        loaded = specialised(img.get_code("hot"))
        fresh = specialised(compile(src, sys.argv[2], "exec", dont_inherit=True))
        assert loaded == fresh, (loaded, fresh)
        assert loaded, "nothing specialised"
        print("ok", loaded)
    ''')
    src = tmp_path / "hot.py"
    src.write_text(textwrap.dedent('''
        class P:
            def __init__(self, x): self.x = x
            @property
            def y(self): return self.x + 1
        def work(n):
            t = 0
            ps = [P(i) for i in range(10)]
            for i in range(n):
                for p in ps:
                    t += p.y + p.x
                t += len(str(i))
            return t
    '''))
    img = tmp_path / "hot.img"
    refmarshal.build(img, [("hot", src)])
    r = subprocess.run([sys.executable, "-c", script, str(img), str(src)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr[-2000:]


def test_LOAD_3_code_versions_are_distinct_and_continue_the_counter(stdlib_image, tmp_path):
    """[LOAD-3] every loaded code object gets its own co_version from the interpreter's
    counter, and code compiled afterwards continues it: 3.12's counter is found in memory after
    a few hundred code objects, and the numbers stay those init_code() would give."""
    script = textwrap.dedent('''
        import sys, refmarshal
        from refmarshal._accel.loader import address
        from refmarshal._accel._loader import lib
        img = refmarshal.Image(sys.argv[1], implementation="accel")
        versions = []
        def walk(c):
            versions.append(lib.rm_code_version(address(c)))
            for k in c.co_consts:
                if hasattr(k, "co_code"):
                    walk(k)
        for name in img.names()[:300]:
            walk(img.get_code(name))
        later = compile("x = 1", "later", "exec")
        print(sys.version_info[:2] >= (3, 12), lib.rm_code_counter_found(), len(versions),
              len(set(versions)), max(versions), lib.rm_code_version(address(later)))
    ''')
    r = subprocess.run([sys.executable, "-c", script, str(stdlib_image[0])],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    has_versions, found, n, distinct, top, later = r.stdout.split()
    assert int(n) > 2000
    if has_versions == "True":
        assert distinct == n and int(later) > int(top)
        if sys.version_info[:2] == (3, 12):
            assert found == "1"
    else:
        assert (found, top, later) == ("0", "0", "0")


def test_OBJ_9_a_shared_frozenset_stays_one_object(tmp_path):
    """Two code objects sharing one frozenset constant (compile() merges equal constants, and
    marshal keeps the sharing) share it after loading too, in both readers."""
    src = tmp_path / "fs.py"
    src.write_text("def f(x): return x in {1, 2, 'a'}\ndef g(x): return x in {1, 2, 'a'}\n")
    img = tmp_path / "fs.img"
    refmarshal.build(img, [("fs", src)])
    script = textwrap.dedent('''
        import sys, refmarshal
        def shared(code):
            f, g = [k for k in code.co_consts if hasattr(k, "co_code")]
            a, = [k for k in f.co_consts if type(k) is frozenset]
            b, = [k for k in g.co_consts if type(k) is frozenset]
            return a is b and a == frozenset({1, 2, "a"})
        fresh = compile(open(sys.argv[2]).read(), sys.argv[2], "exec")
        print(shared(fresh), *(shared(refmarshal.Image(sys.argv[1], implementation=i)
                                      .get_code("fs")) for i in ("reference", "accel")))
    ''')
    r = subprocess.run([sys.executable, "-c", script, str(img), str(src)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "True", "True"]
