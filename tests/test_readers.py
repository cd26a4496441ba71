"""What both readers must do alike, each test run once per implementation (the
``implementation`` fixture: the reference reader and the accelerator): [RT-1] every module of
the standard library and of real third-party packages gives what compile() gives; loaded code
runs; [ERR-1] a file that is not a usable image raises ImageError naming the problem."""

import os

import pytest

import corpus
import refmarshal
from conftest import open_image
from helpers import compiled, same_code, walk
from refmarshal import ImageError

STDLIB = corpus.stdlib_modules()
THIRD = corpus.third_party_modules()


def load_everything(path, implementation):
    img = refmarshal.Image(path, implementation=implementation)
    return {n: img.get_code(n) for n in img.names()}


def _check_module(img, result, name, path):
    skipped = {n: why for n, _, why in result.skipped}
    if name in skipped:
        # build() skips exactly the modules that do not compile, and says why
        assert not corpus.compiles(path), skipped[name]
        return
    code = img.get_code(name)
    expected = compiled(path)
    assert same_code(code, expected)
    for a, b in zip(walk(code), walk(expected)):
        assert a._co_code_adaptive == b._co_code_adaptive
        assert a.co_filename == path
    # the accelerator's code lives in the image, once; the reference reader's on the heap
    in_place = img.implementation == "accel"
    assert (img.get_code(name) is code) is in_place
    for co in walk(code):
        assert img.owns(co) is in_place
        assert not in_place or img.owns(co.co_consts) or co.co_consts is ()
    assert not img.owns(expected)


@pytest.mark.parametrize("name,path", STDLIB, ids=[n for n, _ in STDLIB])
def test_stdlib_module(stdlib_image, implementation, name, path):
    _check_module(open_image(stdlib_image[0], implementation), stdlib_image[1], name, path)


@pytest.mark.parametrize("name,path", THIRD, ids=[n for n, _ in THIRD])
def test_third_party_module(third_party_image, implementation, name, path):
    _check_module(open_image(third_party_image[0], implementation), third_party_image[1],
                  name, path)


def test_loaded_code_runs(small_image, implementation):
    codes = load_everything(small_image, implementation)
    assert set(codes) == {"kinds", "pkg", "pkg.sub"}
    ns = {"__name__": "kinds"}
    exec(codes["kinds"], ns)
    assert ns["BIG"] == 2 ** 100 and ns["NEG"] == -(2 ** 70) and ns["C"] == 2.5j
    assert ns["S1"] == "\u20ac\u00e9\U0001f600 mixed kinds" and ns["S3"] == "\ud800 lone surrogate"
    assert len(ns["S4"]) == 34 and ns["S4"][:2] == "\ud800\udc00"
    assert ns["g"]("p", 2, 3, 0, c=4) == [6] and ns["g"]("z", c=1) == ("z", 2)
    assert ns["K"]().m() is ns["K"]
    assert ns["T"] == (1, "two", (3.0, None, True, False), ()) and ns["T"][3] is ()
    assert ns["NEGSMALL"] == -5 and ns["E"] is Ellipsis and ns["B1"] == b"x"
    assert ns["g"].__defaults__ == ((1, 2),)
    assert ns["g"].__kwdefaults__["d"] == frozenset({"x", 1, 2.5})


def test_ERR_1_files_that_are_not_images(tmp_path, implementation):
    bad = tmp_path / "bad.img"
    for content in (b"", b"\x89RMI\r\n\x1a\n", os.urandom(5000), b"\0" * 8192):
        bad.write_bytes(content)
        with pytest.raises(ImageError):
            load_everything(bad, implementation)
    with pytest.raises(ImageError, match="cannot (read|open)"):
        refmarshal.Image(tmp_path / "missing.img", implementation=implementation)
    (tmp_path / "short.img").write_bytes(b"\x89RMI\r\n\x1a\n")
    with pytest.raises(ImageError, match="truncated"):
        refmarshal.Image(tmp_path / "short.img", implementation=implementation)
    (tmp_path / "other.img").write_bytes(bytes(range(256)) * 20)   # not an image at all
    with pytest.raises(ImageError, match="not a refmarshal image"):
        refmarshal.Image(tmp_path / "other.img", implementation=implementation)


def test_HDR_1_bad_magic_is_named(small_image, tmp_path, implementation):
    data = bytearray(small_image.read_bytes())
    data[0] = 0
    bad = tmp_path / "bad.img"
    bad.write_bytes(data)
    with pytest.raises(ImageError, match="bad magic"):
        refmarshal.Image(bad, implementation=implementation)


def test_unchanged_copy_still_loads(small_image, tmp_path, implementation):
    copy = tmp_path / "copy.img"
    copy.write_bytes(small_image.read_bytes())
    a, b = load_everything(small_image, implementation), load_everything(copy, implementation)
    assert all(same_code(a[n], b[n]) for n in a)
