"""Golden vectors (spec/golden/): both writers, and a third written from the spec alone, rebuild
the running interpreter's vector byte for byte, both readers load it, and the committed listing
is the one the generator writes.

A vector is for one exact build (its fingerprint holds ``sys.version``).  On another build of
the same release the test compares every byte but the fingerprint's ``version`` field and the
header CRC (which covers it), and loads the rebuilt image; any other difference fails, as does a
missing vector for the running version: nothing here is skipped."""

import importlib.util
import os
import sys

import pytest

import refmarshal
from helpers import same_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "gen_golden", os.path.join(ROOT, "spec", "tools", "gen_golden.py"))
gen_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_golden)
_spec = importlib.util.spec_from_file_location(
    "independent_writer", os.path.join(ROOT, "spec", "tools", "independent_writer.py"))
independent_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(independent_writer)

WRITERS = ["reference"] + (["native"] if refmarshal.accelerator_available()
                           or os.environ.get("REFMARSHAL_REQUIRE_ACCEL") == "1" else [])


def committed():
    with open(os.path.join(gen_golden.vector_dir(), "gold.img"), "rb") as fh:
        return fh.read()


def same_build(data):
    return data[gen_golden.VERSION_FIELD[0]:gen_golden.VERSION_FIELD[1]] == \
        refmarshal.format.fingerprint()[-(gen_golden.VERSION_FIELD[1]
                                          - gen_golden.VERSION_FIELD[0]):]


@pytest.mark.parametrize("writer", WRITERS)
def test_golden_vector_is_what_each_writer_writes(writer):
    want, got = committed(), gen_golden.build_vector(writer)
    if same_build(want):
        assert got == want
    else:
        assert gen_golden.without_build_name(got) == gen_golden.without_build_name(want)


def test_independent_writer_reproduces_the_vector():
    # A writer written from spec/ alone (no refmarshal) writes the same bytes.
    want, got = committed(), independent_writer.golden_image()
    if same_build(want):
        assert got == want
    else:
        assert gen_golden.without_build_name(got) == gen_golden.without_build_name(want)


def test_golden_vector_loads_with_both_readers(tmp_path, implementation):
    data = committed()
    path = tmp_path / "gold.img"
    path.write_bytes(data if same_build(data) else gen_golden.build_vector("reference"))
    img = refmarshal.Image(path, implementation=implementation)
    assert img.names() == [n for n, _ in gen_golden.MODULES]
    for name, rel in gen_golden.MODULES:
        e = img.entry(name)
        assert (e.path, e.mtime_ns) == (rel, gen_golden.SOURCE_MTIME_NS)
        assert (e.dir_mtime_ns, e.pkg_mtime_ns, e.first_in_dir) == (0, 0, False)
        with open(os.path.join(gen_golden.SOURCE, rel), "rb") as fh:
            expected = compile(fh.read(), rel, "exec", dont_inherit=True, optimize=0)
        assert same_code(img.get_code(name), expected)


def test_golden_listing_is_up_to_date(tmp_path):
    data = committed()
    with open(os.path.join(gen_golden.vector_dir(), "gold.txt"), encoding="utf-8") as fh:
        text = fh.read()
    if same_build(data):
        assert gen_golden.listing(os.path.join(gen_golden.vector_dir(), "gold.img")) == text
    else:   # all but the first line, which names the build
        path = tmp_path / "gold.img"
        path.write_bytes(gen_golden.build_vector("reference"))
        got = gen_golden.listing(path).splitlines()
        want = text.splitlines()
        skip = {i for i, line in enumerate(want) if "version" in line or "header_crc" in line}
        assert [l for i, l in enumerate(got[1:], 1) if i not in skip] == \
            [l for i, l in enumerate(want[1:], 1) if i not in skip]


def test_golden_vectors_exist_for_every_supported_version():
    for minor in (11, 12, 13):
        d = gen_golden.vector_dir((3, minor))
        assert os.path.getsize(os.path.join(d, "gold.img")) > 4096
        assert os.path.exists(os.path.join(d, "gold.txt"))
    assert sys.version_info[:2] in {(3, 11), (3, 12), (3, 13)}
