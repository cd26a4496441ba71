"""The C code's format constants (refmarshal/_accel/rm_format.h) are generated from format.py:
the committed header is current, it names every constant format.py defines, and compiled by a
C compiler every name has the Python value."""

import os
import shutil
import subprocess
import sysconfig

import pytest

from refmarshal import format as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "refmarshal", "_accel", "rm_format.h")


def _generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "gen_c_header", os.path.join(ROOT, "spec", "tools", "gen_c_header.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_header_is_current():
    with open(HEADER, encoding="utf-8") as fh:
        assert fh.read() == _generator().render(), \
            "rm_format.h is out of date: run spec/tools/gen_c_header.py"


def test_header_names_every_constant_of_format_py():
    gen = _generator()
    exported = {name for _, names in gen.GROUPS for name in names}
    constants = {n for n, v in vars(F).items()
                 if n.isupper() and not n.startswith("_") and type(v) is int}
    assert constants - exported == set()


def test_header_names_what_the_loader_reads_by_offset():
    """Every field rm_loader.c reads by a raw offset today has a name (the lead switches it)."""
    names = dict(_generator().all_names())
    assert [names[f"RM_HDR_{f}_OFF"] for f in ("FILE_SIZE", "PREFERRED_BASE", "MODULE_COUNT",
                                                 "STRING_COUNT", "SECTIONS")] == [16, 24, 32, 36, 48]
    assert (names["RM_SECT_OFFSET_OFF"], names["RM_SECT_SIZE_OFF"], names["RM_SECT_BYTES"]) == \
        (0, 8, 16)
    assert [names[f"RM_DIR_{f}_OFF"] for f in (
        "ENTRY_CRC", "FLAGS", "NAME_OFFSET", "NAME_LENGTH", "PATH_OFFSET", "PATH_LENGTH",
        "SOURCE_MTIME_NS", "SOURCE_SIZE", "SEGMENT_OFFSET", "SEGMENT_SIZE", "ROOT_OFFSET",
        "DATA_CRC", "RESERVED", "DIR_MTIME_NS", "PKG_MTIME_NS")] == [
            0, 4, 8, 12, 16, 20, 24, 32, 40, 48, 52, 56, 60, 64, 72]
    assert (names["RM_DIR_BYTES"], names["RM_LOOKUPHEAD_BYTES"], names["RM_LOOKUP_BYTES"]) == \
        (80, 8, 4)
    assert [names[f"RM_STRIDX_{f}_OFF"] for f in ("OFFSET", "SIZE", "FLAGS", "CRC")] == \
        [0, 4, 8, 12]


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        if os.environ.get("REFMARSHAL_REQUIRE_ACCEL"):
            pytest.fail(f"no C compiler ({cc[0]}) where the accelerator is required")
        pytest.skip(f"no C compiler ({cc[0]})")
    return cc


def test_compiled_header_has_the_python_values(tmp_path):
    """Compiled (its _Static_asserts included), each name prints the value format.py has."""
    names = _generator().all_names()
    prog = ['#include <stdio.h>', '#include <string.h>', '#include "rm_format.h"',
            "int main(void) {"]
    prog += [f'    printf("%s %lld\\n", "{n}", (long long)({n}));' for n, _ in names]
    magic = "".join(f'"\\x{b:02x}"' for b in F.MAGIC)     # one literal per byte
    prog += [f'    printf("RM_MAGIC %d\\n", memcmp(RM_MAGIC, {magic}, RM_MAGIC_LEN) == 0);',
             "    return 0;", "}"]
    src = tmp_path / "values.c"
    src.write_text("\n".join(prog) + "\n")
    exe = tmp_path / "values"
    subprocess.run([*_compiler(), "-std=c11", "-Wall", "-Werror", "-I", os.path.dirname(HEADER),
                    str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    got = dict(line.rsplit(" ", 1) for line in out.splitlines())
    assert {n: int(v) for n, v in got.items() if n != "RM_MAGIC"} == dict(names)
    assert got["RM_MAGIC"] == "1"
    assert dict(names)["HEADER_SIZE"] == F.HEADER_SIZE and dict(names)["R_PTR"] == F.R_PTR
