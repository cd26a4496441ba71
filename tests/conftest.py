import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import corpus  # noqa: E402

import refmarshal  # noqa: E402


def pytest_report_header(config):
    return [f"refmarshal from {os.path.dirname(refmarshal.__file__)}",
            f"accelerator available: {refmarshal.accelerator_available()}"]


IMPLEMENTATIONS = ("reference", "accel")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    """Each reader in turn, for what both must do alike: "reference" (reader.py) and "accel"
    (the accelerator; skipped when it is not built, except where tox requires it:
    test_accel.py fails there)."""
    if request.param == "accel" and not refmarshal.accelerator_available():
        pytest.skip("accelerator not built")
    return request.param


_opened = {}


def open_image(path, implementation):
    """refmarshal.Image(path, implementation), opened once per session and implementation."""
    key = (os.fspath(path), implementation)
    if key not in _opened:
        _opened[key] = refmarshal.Image(path, implementation=implementation)
    return _opened[key]


@pytest.fixture(scope="session")
def stdlib_image(tmp_path_factory):
    """An image of the whole standard library, built once per session by the reference writer."""
    path = tmp_path_factory.mktemp("img") / "stdlib.img"
    result = refmarshal.build(path, corpus.stdlib_modules())
    return path, result


@pytest.fixture(scope="session")
def third_party_image(tmp_path_factory):
    entries = corpus.third_party_modules()
    assert len(entries) > 50, "the third-party packages tox installs are missing"
    path = tmp_path_factory.mktemp("img") / "third.img"
    return path, refmarshal.build(path, entries)


@pytest.fixture(scope="session")
def small_image(tmp_path_factory):
    """A few modules with every stored kind: used by the corruption tests."""
    src = tmp_path_factory.mktemp("src")
    (src / "kinds.py").write_text(KINDS_SOURCE, encoding="utf-8")
    (src / "pkg").mkdir()
    (src / "pkg" / "__init__.py").write_text("from .sub import f\n")
    (src / "pkg" / "sub.py").write_text("def f(x, *a, k=1, **kw):\n    return lambda: x\n")
    path = src / "small.img"
    refmarshal.build(path, [("kinds", src / "kinds.py"), ("pkg", src / "pkg" / "__init__.py"),
                            ("pkg.sub", src / "pkg" / "sub.py")])
    return path


KINDS_SOURCE = '''\
"""Every kind of constant compiled code can hold."""
import sys
BIG = 2 ** 100
NEG = -(2 ** 70)
MID = 123456789
NEGSMALL = -5
F = 3.25
C = 2.5j
B = b"bytes \\x00\\xff"
B1 = b"x"
S1 = "\\u20ac\\u00e9\\U0001f600 mixed kinds"
S2 = "caf\\u00e9"
S3 = "\\ud800 lone surrogate"
S4 = "\\ud800\\udc00 two lone surrogates, not a pair"
E = ...
T = (1, "two", (3.0, None, True, False), ())
def g(a, b=(1, 2), *args, c, d=frozenset({"x", 1, 2.5}), **kw):
    nonlocal_ = 1
    def inner():
        nonlocal nonlocal_
        nonlocal_ += 1
        return a, nonlocal_
    if a in {"p", "q", "r", "s", "t", "u"}:
        return [x * 2 for x in args if x]
    try:
        return inner()
    except (ValueError, TypeError) as exc:
        raise RuntimeError("x") from exc
    finally:
        pass
class K:
    attr: int = 1
    def m(self):
        return __class__
    async def am(self):
        async with self as s:
            yield s
'''
