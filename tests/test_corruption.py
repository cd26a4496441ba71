"""[ERR-1] Any malformed image raises ImageError, whatever byte is wrong and wherever it ends
(the reference reader; the accelerator's test is in test_accel.py, in a child process, and
what both do alike in test_readers.py)."""

import os
import random
import subprocess
import sys

import pytest

import refmarshal
from refmarshal import ImageError

SEED = int(os.environ.get("REFMARSHAL_TEST_SEED", random.randrange(1 << 30)))


def load_everything(path, impl="reference"):
    img = refmarshal.Image(path, implementation=impl)
    return {n: img.get_code(n) for n in img.names()}


def test_HDR_4_truncated_at_every_length_class(small_image, tmp_path):
    data = small_image.read_bytes()
    lengths = sorted(set(range(0, 600)) | set(range(600, len(data), 97)) | {len(data) - 1})
    bad = tmp_path / "bad.img"
    for n in lengths:
        bad.write_bytes(data[:n])
        with pytest.raises(ImageError):
            load_everything(bad)


def test_HDR_5_every_bit_flip_in_header_is_caught(small_image, tmp_path):
    data = bytearray(small_image.read_bytes())
    bad = tmp_path / "bad.img"
    for pos in range(256):
        for bit in (0, 5):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            bad.write_bytes(flipped)
            with pytest.raises(ImageError):
                load_everything(bad)


def test_CONV_6_random_bit_flips_anywhere_are_caught(small_image, tmp_path):
    """Every byte of an image is covered by a checksum or must be zero, so every flip fails."""
    rng = random.Random(SEED)
    data = bytearray(small_image.read_bytes())
    bad = tmp_path / "bad.img"
    for i in range(1500):
        flipped = bytearray(data)
        pos = rng.randrange(len(data))
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(flipped)
        try:
            load_everything(bad)
        except ImageError:
            continue
        pytest.fail(f"flip at byte {pos} not detected (seed {SEED}, REFMARSHAL_TEST_SEED={SEED})")


OTHERS = [v for v in ("3.11", "3.12", "3.13") if v != "%d.%d" % sys.version_info[:2]]


def _other_python(ver):
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() \
        if os.path.exists(os.path.expanduser("~/.pyenv")) else ""
    for cand in sorted((os.path.join(root, "versions", d, "bin", "python")
                        for d in (os.listdir(os.path.join(root, "versions")) if root else [])
                        if d.startswith(ver + ".")), reverse=True):
        if os.path.exists(cand):
            return cand
    return None


@pytest.mark.parametrize("ver", OTHERS)
def test_HDR_8_another_interpreters_image_is_refused(ver, tmp_path):
    python = _other_python(ver)
    if python is None:
        pytest.skip(f"no CPython {ver} on this machine")
    src = tmp_path / "m.py"
    src.write_text("x = 1\n")
    out = tmp_path / "other.img"
    pkg_root = os.path.dirname(os.path.dirname(refmarshal.__file__))
    subprocess.run([python, "-c", "import sys, refmarshal; refmarshal.build(sys.argv[1], "
                    "[('m', sys.argv[2])])", str(out), str(src)], check=True,
                   env=dict(os.environ, PYTHONPATH=pkg_root))
    with pytest.raises(ImageError, match=f"image is for cpython-{ver.replace('.', '')}"):
        refmarshal.Image(out, implementation="reference")
