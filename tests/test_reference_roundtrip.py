"""The reference writer's images: what build() counts, [DIR-2] lists and [STR-2] shares; [RT-2]
writing is deterministic.  (The [RT-1] round trip of every module, through both readers, is in
test_readers.py.)"""

import os
import subprocess
import sys

import pytest

import corpus
import refmarshal

STDLIB = corpus.stdlib_modules()
THIRD = corpus.third_party_modules()


_images = {}


def _open(path):
    if path not in _images:
        _images[path] = refmarshal.Image(path, implementation="reference")
    return _images[path]


def test_corpus_is_real():
    assert len(STDLIB) > 1000
    assert {"os", "json", "asyncio.base_events", "email.mime.text"} <= {n for n, _ in STDLIB}
    assert {"attr", "idna", "packaging.version"} <= {n for n, _ in THIRD}


def test_build_counts_what_it_skips(stdlib_image):
    _, result = stdlib_image
    names = {n for n, _ in STDLIB}
    assert len(result.modules) + len(result.skipped) == len(names)
    assert all(not corpus.compiles(p) for _, p, _ in result.skipped)
    assert result.size == os.path.getsize(stdlib_image[0])
    assert 0 < result.strings


def test_DIR_2_modules_all_listed(stdlib_image):
    img = _open(stdlib_image[0])
    assert img.names() == sorted(stdlib_image[1].modules, key=lambda n: n.encode())
    assert img.entry("json").is_package and not img.entry("os").is_package
    with pytest.raises(KeyError):
        img.get_code("no.such.module")


def _build_in_fresh_process(out, entries):
    script = ("import sys, refmarshal; "
              "refmarshal.build(sys.argv[1], [a.split('=', 1) for a in sys.argv[2:]])")
    env = dict(os.environ, PYTHONHASHSEED=str(abs(hash(out)) % 4000))
    subprocess.run([sys.executable, "-c", script, out, *(f"{n}={p}" for n, p in entries)],
                   check=True, env=env, cwd=os.path.dirname(out))
    with open(out, "rb") as fh:
        return fh.read()


def test_writing_is_deterministic(tmp_path):
    """Same inputs, two fresh processes with different hash seeds: identical bytes."""
    entries = STDLIB[::12] + THIRD[::4]
    a = _build_in_fresh_process(str(tmp_path / "a.img"), entries)
    b = _build_in_fresh_process(str(tmp_path / "b.img"), entries)
    assert len(a) > 100_000
    assert a == b


def test_STR_2_interned_strings_are_stored_once_across_modules(tmp_path):
    """Interned strings (names) are in the string table once; a string that is not interned
    lives in the segment of each module that uses it ([SEG-4]), so one read brings a module."""
    (tmp_path / "m1.py").write_text("X = 'a shared constant string'\ndef shared_name(): pass\n")
    (tmp_path / "m2.py").write_text("Y = 'a shared constant string'\ndef shared_name(): pass\n")
    path = tmp_path / "s.img"
    refmarshal.build(path, [("m1", tmp_path / "m1.py"), ("m2", tmp_path / "m2.py")])
    data = path.read_bytes()
    assert data.count(b"shared_name") == 1
    assert data.count("a shared constant string".encode()) == 2
    from refmarshal import format as F
    hdr = F.check_header(data[:256], len(data))
    moff, msize = hdr["sections"][F.SEC_MODULE_HEAP]
    assert data[moff:moff + msize].count("a shared constant string".encode()) == 2
    img = refmarshal.Image(path, implementation="reference")
    assert img.get_code("m1").co_consts[0] == img.get_code("m2").co_consts[0]


@pytest.mark.parametrize("implementation", ["reference", "native"])
def test_STR_2_string_table_puts_shared_strings_first(tmp_path, implementation):
    if implementation == "native" and not refmarshal.accelerator_available():
        pytest.skip("accelerator not built (test_accel.py fails on that where "
                    "REFMARSHAL_REQUIRE_ACCEL is set)")
    (tmp_path / "m1.py").write_text("A = 'only_in_m1'\nB = 'in_m1_and_m3'\n")
    (tmp_path / "m2.py").write_text("A = 'only_in_m2'\nB = 'in_m2_and_m3'\n")
    (tmp_path / "m3.py").write_text("A = 'in_m2_and_m3'\nB = 'in_m1_and_m3'\nC = 'only_in_m3'\n")
    path = tmp_path / "s.img"
    refmarshal.build(path, [(m, tmp_path / f"{m}.py") for m in ("m1", "m2", "m3")],
                     implementation=implementation)
    data = path.read_bytes()
    where = [data.index(s.encode()) for s in
             ("in_m1_and_m3", "in_m2_and_m3", "only_in_m1", "only_in_m2", "only_in_m3")]
    assert where == sorted(where)
    for m in ("m1", "m2", "m3"):     # and the order changes nothing a module sees
        assert refmarshal.Image(path, implementation="reference").get_code(m).co_consts == \
            compile((tmp_path / f"{m}.py").read_text(), str(tmp_path / f"{m}.py"), "exec").co_consts
