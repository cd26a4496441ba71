"""The second writer: every object's bytes are copied from the live object's memory in C
(rm_writer.c), then normalised where the spec says a field is process-dependent.

It must give exactly the bytes of the reference writer (refmarshal/writer.py), which packs
each field from the spec's tables: equal images show the spec describes CPython's real
memory layout.  C places each module's objects (which also orders the string table) and
encodes all of them; Python assembles the file with the same code as the reference writer
(container.assemble_image).

Objects cross between Python and C through one bound list, ``_box`` (cffi has no PyObject*
arguments or results).  Its contents before and after each call are listed in one place,
rm_writer.h; the functions below are the only ones that fill or read it.

Code objects may have run: ``co_code_adaptive`` is rebuilt from CPython's de-specialised
bytecode.  What a running program can change and no writer can undo: a constant string
interned at run time (``setattr(o, "a b", v)``) is stored as interned ([STR-4]).
"""

import marshal
import sys
import threading

from .. import container as C
from ..errors import ImageError
from ._loader import ffi, lib

if lib.rm_python_version() >> 16 != sys.hexversion >> 16:
    raise ImportError("refmarshal accelerator was built for another Python version")

# Objects travel to and from C through this list (cffi has no PyObject* arguments); one
# image is encoded at a time, so two threads never fill it at once.
_box = []
_box_lock = threading.Lock()
if lib.rm_writer_bind(__name__.encode(), b"_box") != 0:
    raise ImportError("refmarshal accelerator: cannot bind the writer's list")

_ERRLEN = 256


def encode_image_native(layout, modules, optimize):
    """The bytes of an image of ``modules``: name -> ``container.ModuleSource`` whose ``code``
    is a live code object (it may have run).  Mirrors ``refmarshal.writer.encode_image``,
    which takes the module's graph instead."""
    with _box_lock:
        return _encode_image(layout, modules, optimize)


def _encode_image(layout, modules, optimize):
    if layout.version != sys.version_info[:2]:
        raise ImageError("the C writer writes only the running interpreter's layout")
    names = C.sorted_names(modules)
    err = ffi.new("char[]", _ERRLEN)
    found = {}       # (str, interned) -> a live str with that value
    used = []        # per module, its string keys in order of first use
    plans = []
    try:
        for n in names:
            plan, own = _plan_module(modules[n].code, err, n)
            plans.append(plan)
            for k, v in own.items():
                found.setdefault(k, v)
            used.append(own)
        order = C.placement_order(names)
        keys, local = C.split_strings([list(used[i]) for i in order])   # [STR-2], [SEG-5]
        for i, own in zip(order, local):
            _add_local(plans[i], [found[k] for k in own], err, names[i])
        index = {k: i for i, k in enumerate(keys)}
        strings = _encode_strings([found[k] for k in keys], err)

        def encode_segment(i, seg_off, base):
            return _encode_module(plans[i], base + seg_off, index, err, names[i])

        return C.assemble_image(names, modules,
                                [C.StoredString(k[1], s) for k, s in zip(keys, strings)],
                                encode_segment, optimize)
    finally:
        _box.clear()
        for plan in plans:
            lib.rm_plan_free(plan)


def _c_error(err):
    return ffi.string(err).decode(errors="replace")


# One function per C entry point: each fills _box as rm_writer.h says, calls, and reads it.

def _plan_module(code, err, name):
    """rm_plan_module: (the plan, the module's strings as {(str, interned): str} in order of
    first use)."""
    strings = {}
    _box[:] = [code, strings, _frozenset_tuple]
    plan = lib.rm_plan_module(err, _ERRLEN)
    if plan == ffi.NULL:
        raise ImageError(f"module {name}: {_c_error(err)}")
    return plan, strings


def _add_local(plan, strs, err, name):
    """rm_plan_add_strings: the interned strings only this module uses, placed at the end of
    its segment ([SEG-5])."""
    _box[:] = [strs]
    if lib.rm_plan_add_strings(plan, err, _ERRLEN) != 0:
        raise ImageError(f"module {name}: {_c_error(err)}")


def _encode_module(plan, seg_addr, index, err, name):
    """rm_encode_module: the module's ``EncodedSegment`` at address ``seg_addr``, its strings
    numbered by ``index`` ({(str, interned): string index})."""
    _box[:] = [index]
    if lib.rm_encode_module(plan, seg_addr, err, _ERRLEN) != 0:
        raise ImageError(f"module {name}: {_c_error(err)}")
    return C.EncodedSegment(*_box)


def _encode_strings(objs, err):
    """rm_encode_strings: each str object's bytes, padded (memoryviews of one heap)."""
    sizes = ffi.new("unsigned int[]", max(1, len(objs)))
    _box[:] = [objs]
    if lib.rm_encode_strings(sizes, err, _ERRLEN) != 0:
        raise ImageError(_c_error(err))
    heap = memoryview(_box[0])
    out, pos = [], 0
    for i in range(len(objs)):
        out.append(heap[pos:pos + sizes[i]])
        pos += sizes[i]
    return out


def _frozenset_tuple(fs):
    """[OBJ-9] a frozenset's items in canonical order, as the tuple stored for it."""
    return tuple(sorted(fs, key=_frozenset_key))


def _frozenset_key(item):
    # The reference writer's key (writer._frozenset_key) for a live item.  A set holds no two
    # equal strings, so the interned flag never decides and is left out; marshal format 2
    # writes no interned state either, so live strings the compiler interned sort as values.
    if type(item) is str:
        return (1, item.encode("utf-8", "surrogatepass"))
    return (0, marshal.dumps(item, 2))
