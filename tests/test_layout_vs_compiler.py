"""[OBJ-6] The layout tables of the spec (refmarshal/layouts.py) agree with the C compiler's
offsetof/sizeof for the running interpreter, and the spec's rendered tables are current."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from refmarshal import layouts as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Which C struct each table describes, and how a field name is spelled inside it.
STRUCTS = {
    "code": ("PyCodeObject", {"ob_refcnt": "ob_base.ob_base.ob_refcnt",
                              "ob_type": "ob_base.ob_base.ob_type", "ob_size": "ob_base.ob_size"}),
    "str": ("PyCompactUnicodeObject", {"ob_refcnt": "_base.ob_base.ob_refcnt",
                                       "ob_type": "_base.ob_base.ob_type"}),
    "bytes": ("PyBytesObject", {"ob_refcnt": "ob_base.ob_base.ob_refcnt",
                                "ob_type": "ob_base.ob_base.ob_type", "ob_size": "ob_base.ob_size"}),
    "tuple": ("PyTupleObject", {"ob_refcnt": "ob_base.ob_base.ob_refcnt",
                                "ob_type": "ob_base.ob_base.ob_type", "ob_size": "ob_base.ob_size"}),
    "float": ("PyFloatObject", {"ob_refcnt": "ob_base.ob_refcnt", "ob_type": "ob_base.ob_type"}),
    "complex": ("PyComplexObject", {"ob_refcnt": "ob_base.ob_refcnt", "ob_type": "ob_base.ob_type"}),
}
ASCII_FIELDS = {"length", "hash", "state", "wstr"}


def _tables(lay):
    ints = L.INT_FIELDS_311 if lay.int_tag == "ob_size" else L.INT_FIELDS_312
    long_names = ({"ob_refcnt": "ob_base.ob_base.ob_refcnt", "ob_type": "ob_base.ob_base.ob_type",
                   "ob_size": "ob_base.ob_size"} if lay.int_tag == "ob_size"
                  else {"ob_refcnt": "ob_base.ob_refcnt", "ob_type": "ob_base.ob_type"})
    yield "code", lay.code_fields, STRUCTS["code"]
    yield "str", lay.str_fields, STRUCTS["str"]
    yield "int", ints, ("PyLongObject", long_names)
    for kind, fields in (("bytes", L.BYTES_FIELDS), ("tuple", L.TUPLE_FIELDS),
                         ("float", L.FLOAT_FIELDS), ("complex", L.COMPLEX_FIELDS)):
        yield kind, fields, STRUCTS[kind]


def _c_source(lay):
    lines = ["#define Py_BUILD_CORE 1", "#include <Python.h>", "#include <stddef.h>",
             '#include "internal/pycore_code.h"', '#include "internal/pycore_gc.h"',
             '#include "internal/pycore_frame.h"',
             "#define F(K, T, f) printf(\"%s %s %zu %zu\\n\", K, #f, offsetof(T, f), "
             "sizeof(((T *)0)->f));", "int main(void) {"]
    expect = {}
    for kind, fields, (struct, names) in _tables(lay):
        for f in fields:
            if f.rule == "pad" or f.offset < 0:
                continue
            cname = names.get(f.name, f.name)
            if kind == "str" and f.name in ASCII_FIELDS:
                cname = "_base." + f.name
            lines.append(f'F("{kind}", {struct}, {cname})')
            expect[(kind, cname)] = (f.offset, f.size)
    lines += ['printf("sizes %zu %zu %zu\\n", sizeof(PyGC_Head), sizeof(PyASCIIObject), '
              'sizeof(PyCompactUnicodeObject));',
              'printf("code_header %zu\\n", offsetof(PyCodeObject, co_code_adaptive));']
    if lay.frame_specials:
        lines.append('printf("frame_specials %d\\n", FRAME_SPECIALS_SIZE);')
    lines += ["return 0; }"]
    return "\n".join(lines), expect


@pytest.fixture(scope="module")
def compiler_output(tmp_path_factory):
    cc = shutil.which(sysconfig.get_config_var("CC").split()[0]) or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    lay = L.current()
    src, expect = _c_source(lay)
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(src)
    inc = sysconfig.get_paths()["include"]
    subprocess.run([cc, "-w", f"-I{inc}", f"-I{inc}/internal", str(d / "probe.c"), "-o",
                    str(d / "probe")], check=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    return lay, expect, out.splitlines()


def test_field_offsets_and_sizes(compiler_output):
    lay, expect, lines = compiler_output
    got = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] != "sizes":
            got[(parts[0], parts[1])] = (int(parts[2]), int(parts[3]))
    assert got == expect


def test_header_sizes(compiler_output):
    lay, _, lines = compiler_output
    vals = {l.split()[0]: l.split()[1:] for l in lines if not l.split()[0] in
            ("code", "str", "int", "bytes", "tuple", "float", "complex")}
    assert [int(x) for x in vals["sizes"]] == [lay.gc_head, lay.str_ascii_header,
                                                lay.str_compact_header]
    assert int(vals["code_header"][0]) == lay.code_header
    if lay.frame_specials:
        assert int(vals["frame_specials"][0]) == lay.frame_specials


def test_spec_tables_are_generated_from_layouts():
    gen = os.path.join(ROOT, "spec", "tools", "gen_layout_tables.py")
    if not os.path.exists(gen):
        pytest.skip("not running from a source checkout")
    subprocess.run([sys.executable, gen, "--check"], check=True)
