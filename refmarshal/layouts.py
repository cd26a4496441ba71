"""Native object layouts of each supported CPython build: THE place where Python-side layout
differences between versions live.

Every number here is normative (spec section 6 is generated from these tables by
``spec/tools/gen_layout_tables.py``) and is checked against the C compiler's ``offsetof`` /
``sizeof`` by the conformance suite.  A field's *rule* says where its stored value comes from:

``type``     the object's type code (spec 5.2); the loader writes the running interpreter's type
``refcnt``   the layout's ``refcnt`` constant
``ref``      a pointer to another object: a tagged word says what it points to
``value``    a value taken from the object as the compiler created it
``derived``  a value CPython computes when it creates the object; stored as computed
``reset``    the value a freshly created object has (named by ``fresh``); stored as that
``loader``   stored as zero; the loader fills it in from the running interpreter
``pad``      padding; always zero
"""

import sys
from typing import NamedTuple


class Field(NamedTuple):
    name: str
    offset: int
    size: int
    ctype: str
    rule: str
    fresh: str = ""  # for rule "reset": the fresh value, as written in the spec


class Layout(NamedTuple):
    version: tuple           # (major, minor)
    refcnt: int              # value stored in every ob_refcnt
    gc_head: int             # bytes of PyGC_Head before a GC object (tuples)
    str_ascii_header: int    # sizeof(PyASCIIObject)
    str_compact_header: int  # sizeof(PyCompactUnicodeObject)
    str_state_bit7: str      # meaning of state bit 7: "ready" (3.11) or "statically_allocated"
    str_fields: tuple
    code_fields: tuple
    code_header: int         # offsetof(PyCodeObject, co_code_adaptive) == tp_basicsize
    frame_specials: int      # FRAME_SPECIALS_SIZE, used for co_framesize (0: no such field)
    int_tag: str             # "ob_size" (3.11: signed digit count) or "lv_tag" (3.12+)
    warmup: int              # 3.11 QUICKENING_INITIAL_WARMUP_VALUE (unused elsewhere)


def _f(*rows):
    return tuple(Field(*r) for r in rows)


_HEAD = (
    ("ob_refcnt", 0, 8, "Py_ssize_t", "refcnt"),
    ("ob_type", 8, 8, "PyTypeObject *", "type"),
)
_VARHEAD = _HEAD + (("ob_size", 16, 8, "Py_ssize_t", "value"),)

_CODE_TOP = _VARHEAD + (
    ("co_consts", 24, 8, "PyObject *", "ref"),
    ("co_names", 32, 8, "PyObject *", "ref"),
    ("co_exceptiontable", 40, 8, "PyObject *", "ref"),
    ("co_flags", 48, 4, "int", "value"),
)
_CODE_NAMES = (
    ("co_localsplusnames", 96, 8, "PyObject *", "ref"),
    ("co_localspluskinds", 104, 8, "PyObject *", "ref"),
    ("co_filename", 112, 8, "PyObject *", "ref"),
    ("co_name", 120, 8, "PyObject *", "ref"),
    ("co_qualname", 128, 8, "PyObject *", "ref"),
    ("co_linetable", 136, 8, "PyObject *", "ref"),
    ("co_weakreflist", 144, 8, "PyObject *", "reset", "NULL"),
)

CODE_311 = _f(*_CODE_TOP, *(
    ("co_warmup", 52, 2, "short", "reset", "-8 (QUICKENING_INITIAL_WARMUP_VALUE)"),
    ("_co_linearray_entry_size", 54, 2, "short", "reset", "0"),
    ("co_argcount", 56, 4, "int", "value"),
    ("co_posonlyargcount", 60, 4, "int", "value"),
    ("co_kwonlyargcount", 64, 4, "int", "value"),
    ("co_stacksize", 68, 4, "int", "value"),
    ("co_firstlineno", 72, 4, "int", "value"),
    ("co_nlocalsplus", 76, 4, "int", "derived"),
    ("co_nlocals", 80, 4, "int", "derived"),
    ("co_nplaincellvars", 84, 4, "int", "derived"),
    ("co_ncellvars", 88, 4, "int", "derived"),
    ("co_nfreevars", 92, 4, "int", "derived"),
), *_CODE_NAMES, *(
    ("_co_code", 152, 8, "PyObject *", "reset", "NULL"),
    ("_co_linearray", 160, 8, "char *", "reset", "NULL"),
    ("_co_firsttraceable", 168, 4, "int", "derived"),
    ("(padding)", 172, 4, "", "pad"),
    ("co_extra", 176, 8, "void *", "reset", "NULL"),
))

_CODE_312_MID = (
    ("co_argcount", 52, 4, "int", "value"),
    ("co_posonlyargcount", 56, 4, "int", "value"),
    ("co_kwonlyargcount", 60, 4, "int", "value"),
    ("co_stacksize", 64, 4, "int", "value"),
    ("co_firstlineno", 68, 4, "int", "value"),
    ("co_nlocalsplus", 72, 4, "int", "derived"),
    ("co_framesize", 76, 4, "int", "derived"),
    ("co_nlocals", 80, 4, "int", "derived"),
    ("co_ncellvars", 84, 4, "int", "derived"),
    ("co_nfreevars", 88, 4, "int", "derived"),
    ("co_version", 92, 4, "uint32_t", "loader"),
)

CODE_312 = _f(*_CODE_TOP, *_CODE_312_MID, *_CODE_NAMES, *(
    ("_co_cached", 152, 8, "_PyCoCached *", "reset", "NULL"),
    ("_co_instrumentation_version", 160, 8, "uint64_t", "reset", "0"),
    ("_co_monitoring", 168, 8, "_PyCoMonitoringData *", "reset", "NULL"),
    ("_co_firsttraceable", 176, 4, "int", "derived"),
    ("(padding)", 180, 4, "", "pad"),
    ("co_extra", 184, 8, "void *", "reset", "NULL"),
))

CODE_313 = _f(*_CODE_TOP, *_CODE_312_MID, *_CODE_NAMES, *(
    ("co_executors", 152, 8, "_PyExecutorArray *", "reset", "NULL"),
    ("_co_cached", 160, 8, "_PyCoCached *", "reset", "NULL"),
    ("_co_instrumentation_version", 168, 8, "uintptr_t", "reset", "0"),
    ("_co_monitoring", 176, 8, "_PyCoMonitoringData *", "reset", "NULL"),
    ("_co_firsttraceable", 184, 4, "int", "derived"),
    ("(padding)", 188, 4, "", "pad"),
    ("co_extra", 192, 8, "void *", "reset", "NULL"),
))

STR_311 = _f(*_HEAD, *(
    ("length", 16, 8, "Py_ssize_t", "value"),
    ("hash", 24, 8, "Py_hash_t", "reset", "-1"),
    ("state", 32, 4, "bit field", "derived"),
    ("(padding)", 36, 4, "", "pad"),
    ("wstr", 40, 8, "wchar_t *", "reset", "NULL"),
    ("utf8_length", 48, 8, "Py_ssize_t", "reset", "0 (compact only)"),
    ("utf8", 56, 8, "char *", "reset", "NULL (compact only)"),
    ("wstr_length", 64, 8, "Py_ssize_t", "reset", "0 (compact only)"),
))

STR_312 = _f(*_HEAD, *(
    ("length", 16, 8, "Py_ssize_t", "value"),
    ("hash", 24, 8, "Py_hash_t", "reset", "-1"),
    ("state", 32, 4, "bit field", "derived"),
    ("(padding)", 36, 4, "", "pad"),
    ("utf8_length", 40, 8, "Py_ssize_t", "reset", "0 (compact only)"),
    ("utf8", 48, 8, "char *", "reset", "NULL (compact only)"),
))

LAYOUTS = {
    (3, 11): Layout((3, 11), refcnt=999999999, gc_head=16, str_ascii_header=48,
                    str_compact_header=72, str_state_bit7="ready", str_fields=STR_311,
                    code_fields=CODE_311, code_header=184, frame_specials=0,
                    int_tag="ob_size", warmup=-8),
    (3, 12): Layout((3, 12), refcnt=0xFFFFFFFF, gc_head=16, str_ascii_header=40,
                    str_compact_header=56, str_state_bit7="statically_allocated",
                    str_fields=STR_312, code_fields=CODE_312, code_header=192,
                    frame_specials=9, int_tag="lv_tag", warmup=0),
    (3, 13): Layout((3, 13), refcnt=0xFFFFFFFF, gc_head=16, str_ascii_header=40,
                    str_compact_header=56, str_state_bit7="statically_allocated",
                    str_fields=STR_312, code_fields=CODE_313, code_header=200,
                    frame_specials=9, int_tag="lv_tag", warmup=0),
}

# Layouts of the other stored kinds are the same in every supported version (spec 6.1).
BYTES_FIELDS = _f(*_VARHEAD, ("ob_shash", 24, 8, "Py_hash_t", "reset", "-1"),
                  ("ob_sval", 32, 1, "char[]", "value"))
TUPLE_FIELDS = _f(("_gc_next", -16, 8, "uintptr_t", "reset", "0 (untracked)"),
                  ("_gc_prev", -8, 8, "uintptr_t", "reset", "0"),
                  *_VARHEAD, ("ob_item", 24, 8, "PyObject *[]", "ref"))
FLOAT_FIELDS = _f(*_HEAD, ("ob_fval", 16, 8, "double", "value"))
COMPLEX_FIELDS = _f(*_HEAD, ("cval.real", 16, 8, "double", "value"),
                    ("cval.imag", 24, 8, "double", "value"))
INT_FIELDS_311 = _f(*_VARHEAD, ("ob_digit", 24, 4, "uint32_t[]", "value"))
INT_FIELDS_312 = _f(*_HEAD, ("long_value.lv_tag", 16, 8, "uintptr_t", "value"),
                    ("long_value.ob_digit", 24, 4, "uint32_t[]", "value"))


def current():
    """The layout of the running interpreter, or None when this build is not supported: the
    tables describe 64-bit little-endian release builds (fingerprint ``build_flags`` 0) with
    30-bit int digits (spec 6.5); writers and the reference reader refuse other builds."""
    from .format import build_flags
    if (build_flags() or sys.int_info.bits_per_digit != 30 or sys.maxsize != 2 ** 63 - 1
            or sys.byteorder != "little"):
        return None
    return LAYOUTS.get(sys.version_info[:2])
