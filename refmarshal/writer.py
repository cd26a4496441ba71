"""The reference writer: modules' source files in, an image out, exactly per spec/.

Simple and slow on purpose.  The object graph comes from ``marshal.dumps`` of what
``compile()`` returns (see graph.py); ``co_code_adaptive`` comes from the live code objects.
"""

import marshal
import os
import struct
import sys

from . import format as F
from .errors import ImageError
from .graph import Code, FrozenSet, Str, parse_marshal, walk_code, walk_nodes
from .layouts import LAYOUTS, field, current


def compile_module(source_path, optimize=-1):
    """Compile a module's source exactly as importlib's SourceLoader does."""
    with open(source_path, "rb") as fh:
        source = fh.read()
    return compile(source, source_path, "exec", dont_inherit=True, optimize=optimize)


def code_graph(code):
    """The graph of a live code object, with each Code node's adaptive bytes filled in."""
    root = parse_marshal(marshal.dumps(code))
    live = list(walk_code(code))
    nodes = list(walk_nodes(root))
    if len(live) != len(nodes):
        raise ImageError("marshal graph and live code objects disagree")
    for node, co in zip(nodes, live):
        if node.code != co.co_code:
            raise ImageError(f"marshal graph and live code disagree for {co.co_qualname}")
        node.adaptive = co._co_code_adaptive
    return root


def _frozenset_key(item):
    # [OBJ-9] canonical item order: by the marshal (format 2) encoding of each item's value
    if type(item) is Str:
        return (1, item.value.encode("utf-8", "surrogatepass"), item.interned)
    return (0, marshal.dumps(_plain(item), 2), False)


def _plain(v):
    if type(v) is Str:
        return v.value
    if type(v) is tuple:
        return tuple(_plain(i) for i in v)
    return v


# ---------------------------------------------------------------------------------------
# Native encodings of each stored kind (spec section 6).

def str_kind(value):
    m = max(map(ord, value), default=0)
    return (1 if m < 256 else 2 if m < 65536 else 4), m < 128


def encode_str(layout, value):
    """The native bytes of a str object (spec 6.3); its ob_type holds T_STR."""
    kind, ascii = str_kind(value)
    header = layout.str_ascii_header if ascii else layout.str_compact_header
    data = value.encode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind],
                        "surrogatepass")
    state = (kind << 2) | (1 << 5) | (int(ascii) << 6) | (1 << 7 if layout.str_state_bit7 == "ready" else 0)
    buf = bytearray(F.align(header + data.__len__() + kind))
    struct.pack_into("<qQqqI", buf, 0, layout.refcnt, F.T_STR, len(value), -1, state)
    buf[header:header + len(data)] = data
    return bytes(buf)


def int_digits(v):
    digits, a = [], abs(v)
    while a:
        digits.append(a & 0x3FFFFFFF)
        a >>= 30
    return digits


class _Segment:
    """One module's objects laid out in canonical order, with its relocation records."""

    def __init__(self, layout, strings):
        self.layout = layout
        self.strings = strings       # Str.key() -> string index, filled in later
        self.placed = {}             # id(node) -> offset of the PyObject in the segment
        self.order = []              # (node, alloc offset, object offset, size)
        self.size = 0
        self.keep = []

    # -- placement: pre-order, depth first, children in field order ([OBJ-2]) --
    def place(self, v):
        if type(v) is Str or _const_id(v) is not None:
            if type(v) is Str and _const_id(v) is None:
                self.strings.setdefault(v.key(), None)
            return
        if type(v) is FrozenSet:
            v = self._frozen_tuple(v)
        if id(v) in self.placed:
            return
        size, pre = self._size(v)
        alloc = self.size
        self.placed[id(v)] = alloc + pre
        self.order.append((v, alloc, alloc + pre, size))
        self.size = F.align(alloc + size)
        self.keep.append(v)
        for child in self._children(v):
            self.place(child)

    def _frozen_tuple(self, fs):
        key = ("frozenset", id(fs))
        if key not in self.placed:
            self.placed[key] = tuple(sorted(fs.items, key=_frozenset_key))
            self.keep.append(fs)
        return self.placed[key]

    def _children(self, v):
        if type(v) is tuple:
            return v
        if type(v) is Code:
            return [getattr(v, f.name[3:]) for f in self.layout.code_fields if f.rule == "ref"]
        return ()

    def _size(self, v):
        """(bytes from the allocation start to the end of the object, bytes before the PyObject)."""
        L, t = self.layout, type(v)
        if t is tuple:
            return L.gc_head + 24 + 8 * len(v), L.gc_head
        if t is bytes:
            return 32 + len(v) + 1, 0
        if t is int:
            return 24 + 4 * max(1, len(int_digits(v))), 0
        if t is float:
            return 24, 0
        if t is complex:
            return 32, 0
        if t is Code:
            return L.code_header + len(v.adaptive), 0
        raise ImageError(f"cannot store object of type {t.__name__}")

    # -- encoding --
    def encode(self, seg_file_off, base):
        buf = bytearray(self.size)
        relocs = []
        for v, alloc, off, size in self.order:
            self._encode(v, buf, off, relocs, seg_file_off, base)
        relocs.sort(key=lambda r: (r[1], r[0]))          # [REL-3]: by kind, then slot
        return bytes(buf), relocs

    def _ref(self, v, buf, slot, relocs, seg_file_off, base):
        """Write the value of a pointer slot and record how the loader resolves it."""
        cid = _const_id(v)
        if cid is not None:
            struct.pack_into("<Q", buf, slot, cid)
            relocs.append((slot // 8, F.R_CONST))
        elif type(v) is Str:
            struct.pack_into("<Q", buf, slot, self.strings[v.key()])
            relocs.append((slot // 8, F.R_STR))
        elif type(v) is FrozenSet:
            target = self.placed[id(self._frozen_tuple(v))]
            struct.pack_into("<Q", buf, slot, base + seg_file_off + target)
            relocs.append((slot // 8, F.R_FROZENSET))
        else:
            struct.pack_into("<Q", buf, slot, base + seg_file_off + self.placed[id(v)])
            relocs.append((slot // 8, F.R_PTR))

    def _head(self, buf, off, tcode, relocs):
        struct.pack_into("<qQ", buf, off, self.layout.refcnt, tcode)
        relocs.append(((off + 8) // 8, F.R_TYPE))

    def _encode(self, v, buf, off, relocs, seg_file_off, base):
        L, t = self.layout, type(v)
        if t is tuple:
            self._head(buf, off, F.T_TUPLE, relocs)       # GC header stays zero: untracked
            struct.pack_into("<q", buf, off + 16, len(v))
            for i, item in enumerate(v):
                self._ref(item, buf, off + 24 + 8 * i, relocs, seg_file_off, base)
        elif t is bytes:
            self._head(buf, off, F.T_BYTES, relocs)
            struct.pack_into("<qq", buf, off + 16, len(v), -1)
            buf[off + 32:off + 32 + len(v)] = v
        elif t is int:
            self._head(buf, off, F.T_INT, relocs)
            digits = int_digits(v)
            if L.int_tag == "ob_size":
                struct.pack_into("<q", buf, off + 16, -len(digits) if v < 0 else len(digits))
            else:
                struct.pack_into("<Q", buf, off + 16, (len(digits) << 3) | (2 if v < 0 else 0))
            struct.pack_into(f"<{len(digits)}I", buf, off + 24, *digits)
        elif t is float:
            self._head(buf, off, F.T_FLOAT, relocs)
            struct.pack_into("<d", buf, off + 16, v)
        elif t is complex:
            self._head(buf, off, F.T_COMPLEX, relocs)
            struct.pack_into("<dd", buf, off + 16, v.real, v.imag)
        elif t is Code:
            self._encode_code(v, buf, off, relocs, seg_file_off, base)

    def _encode_code(self, c, buf, off, relocs, seg_file_off, base):
        L = self.layout
        kinds = c.localspluskinds
        values = {
            "ob_size": len(c.adaptive) // 2,
            "co_flags": c.flags, "co_argcount": c.argcount,
            "co_posonlyargcount": c.posonlyargcount, "co_kwonlyargcount": c.kwonlyargcount,
            "co_stacksize": c.stacksize, "co_firstlineno": c.firstlineno,
        }
        values.update(derived_code_fields(L, c.localsplusnames, kinds, c.stacksize, c.code))
        self._head(buf, off, F.T_CODE, relocs)
        for f in L.code_fields:
            if f.rule == "ref":
                self._ref(getattr(c, f.name[3:]), buf, off + f.offset, relocs, seg_file_off, base)
            elif f.rule in ("value", "derived"):
                struct.pack_into({2: "<h", 4: "<i", 8: "<q"}[f.size], buf, off + f.offset,
                                 values[f.name])
            elif f.rule == "reset":
                struct.pack_into({2: "<h", 4: "<i", 8: "<q"}[f.size], buf, off + f.offset,
                                 reset_value(L, f))
        buf[off + L.code_header:off + L.code_header + len(c.adaptive)] = c.adaptive


def reset_value(layout, f):
    """[OBJ-6] the value a field with rule "reset" has in a freshly created object."""
    if f.name == "co_warmup":
        return layout.warmup
    return -1 if f.fresh.startswith("-1") else 0


# Local kinds (Include/internal/pycore_code.h): the same bits in 3.11-3.13.
CO_FAST_LOCAL, CO_FAST_CELL, CO_FAST_FREE = 0x20, 0x40, 0x80


def derived_code_fields(layout, names, kinds, stacksize, co_code):
    """[OBJ-7] the code object fields CPython derives in init_code(), computed the same way."""
    from .bytecode import RESUME
    nlocals = ncells = nplain = nfree = 0
    for k in kinds:
        if k & CO_FAST_LOCAL:
            nlocals += 1
            ncells += bool(k & CO_FAST_CELL)
        elif k & CO_FAST_CELL:
            ncells += 1
            nplain += 1
        elif k & CO_FAST_FREE:
            nfree += 1
    first = 0
    while first < len(co_code) // 2 and co_code[2 * first] != RESUME:
        first += 1
    out = {"co_nlocalsplus": len(names), "co_nlocals": nlocals, "co_ncellvars": ncells,
           "co_nfreevars": nfree, "_co_firsttraceable": first}
    if layout.frame_specials:
        out["co_framesize"] = len(names) + stacksize + layout.frame_specials
    else:
        out["co_nplaincellvars"] = nplain
    return out


def _const_id(v):
    """The R_CONST id of a node, or None when it is stored ([OBJ-5]).  A one-character str the
    compiler interned is not the latin-1 singleton: in 3.11 and 3.12 interning keeps a separate
    object, so it is stored as a string and interned at load."""
    if type(v) is Str:
        if v.interned and len(v.value) == 1:
            return None
        return F.singleton_id(v.value)
    return F.singleton_id(v)


# ---------------------------------------------------------------------------------------

class BuildResult:
    def __init__(self):
        self.modules = []        # names written
        self.skipped = []        # (name, source path, reason)
        self.size = 0
        self.strings = 0

    def __repr__(self):
        return (f"BuildResult(modules={len(self.modules)}, skipped={len(self.skipped)}, "
                f"bytes={self.size}, strings={self.strings})")


def build(path, entries, *, optimize=-1, jobs=1, progress=None, implementation="reference"):
    """Write an image of ``entries`` (pairs of module name and source path) to ``path``.

    Modules whose source cannot be read or compiled are skipped and listed in the result.
    The file is written to a temporary name and renamed into place.  ``jobs`` > 1 compiles
    modules in that many processes; ``progress(done, total, name)`` is called after each module
    is compiled.  ``implementation``: "reference" (this module, the oracle), "native" (the C
    writer of the accelerator, several times faster) or "auto" (native when it is built).

    Both writers write the same bytes for the same code objects, in one process or several.
    What ``compile()`` returns can differ slightly between processes, though: which equal
    constants it shares depends on the process's state (ftplib compiled after ``import ssl``
    shares one frozenset less), so an image may differ in such sharing, never in a value.
    """
    layout = current()
    if layout is None:
        raise ImageError(f"CPython {sys.version_info[0]}.{sys.version_info[1]} is not supported")
    encode = _encoder(implementation)
    level = sys.flags.optimize if optimize == -1 else optimize
    result = BuildResult()
    modules = {}
    live = encode is not encode_image
    work = [(name, os.fspath(source_path), level, live) for name, source_path in entries]
    for done, (name, source_path, prepared) in enumerate(_prepare_all(work, jobs), 1):
        if type(prepared) is str:
            result.skipped.append((name, source_path, prepared))
        else:
            modules[name] = prepared
        if progress is not None:
            progress(done, len(work), name)
    data = encode(layout, modules, level)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    result.modules = sorted(modules)
    result.size = len(data)
    result.strings = struct.unpack_from("<I", data, 36)[0]
    return result


def _encoder(implementation):
    """encode_image, or the C writer's encode_image_native (which takes live code objects)."""
    if implementation not in ("auto", "native", "reference"):
        raise ValueError(f"unknown implementation {implementation!r}")
    if implementation == "reference":
        return encode_image
    try:
        from ._accel.writer import encode_image_native
    except ImportError as exc:
        if implementation == "native":
            raise ImageError(f"the C writer is not available ({exc})") from None
        return encode_image
    return encode_image_native


def _prepare(item):
    """One module's part of build() that needs no other module: stat, compile, and for the
    reference writer the graph.  Returns (name, source path, (path, mtime_ns, size, is_pkg,
    code or graph) or the skip reason)."""
    name, source_path, level, live = item
    try:
        st = os.stat(source_path)
        code = compile_module(source_path, level)
        node = code if live else code_graph(code)
    except (OSError, SyntaxError, ValueError, ImageError) as exc:
        return name, source_path, f"{type(exc).__name__}: {exc}"
    is_pkg = os.path.basename(source_path).rpartition(".")[0] == "__init__"
    return name, source_path, (source_path, st.st_mtime_ns, st.st_size, is_pkg, node)


def _prepare_all(work, jobs):
    """_prepare over ``work``, in order, in ``jobs`` processes when that is worth starting them."""
    if jobs <= 1 or len(work) < 2 * _CHUNK:
        yield from map(_prepare, work)
        return
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for name, source_path, packed in pool.imap(_prepare_packed, work, chunksize=_CHUNK):
            yield name, source_path, packed if type(packed) is str else _unpack(packed)


# What crosses back from a worker must give the same bytes as compiling here:
# - a live code object goes as marshal data, which keeps each object's identity (marshal refs)
#   and every string's interned state, and loads as a fresh, never-run code object;
# - a graph is pickled, but pickle loses the identity of ints and floats, which the reference
#   writer places once per object (by id), so numbers go through a side table.
_NUMBERS = (int, float, complex)


def _prepare_packed(item):
    import io
    import pickle

    class NumberPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if type(obj) in _NUMBERS:
                if id(obj) not in index:
                    index[id(obj)] = len(table)
                    table.append(obj)
                return index[id(obj)]
            return None

    name, source_path, prepared = _prepare(item)
    if type(prepared) is str:
        return name, source_path, prepared
    if item[3]:
        return name, source_path, ("code", prepared[:4], marshal.dumps(prepared[4]))
    table, index = [], {}
    buf = io.BytesIO()
    NumberPickler(buf, pickle.HIGHEST_PROTOCOL).dump(prepared)
    return name, source_path, ("graph", pickle.dumps(table, pickle.HIGHEST_PROTOCOL),
                               buf.getvalue())


def _unpack(packed):
    import io
    import pickle
    if packed[0] == "code":
        return packed[1] + (marshal.loads(packed[2]),)
    table = pickle.loads(packed[1])

    class NumberUnpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return table[pid]

    return NumberUnpickler(io.BytesIO(packed[2])).load()


_CHUNK = 16


def string_order(per_module):
    """[STR-2] The string table's keys in index order, from each module's string keys in order
    of first use (``per_module`` in directory order): the strings two or more modules use,
    then the others, each group in order of first use over all modules.  (A module's strings
    then lie together, not scattered among other modules' strings: a loader reads less.)"""
    first = {}
    shared = set()
    for keys in per_module:
        for k in keys:
            if k in first:
                shared.add(k)
            else:
                first[k] = None
    return [k for k in first if k in shared] + [k for k in first if k not in shared]


def encode_image(layout, modules, optimize):
    """The bytes of an image of ``modules``: name -> (path, mtime_ns, size, is_pkg, graph)."""
    names = sorted(modules, key=lambda n: n.encode("utf-8"))            # [DIR-2]
    segments = []
    for n in names:
        seg = _Segment(layout, {})
        seg.place(modules[n][4])
        segments.append(seg)
    keys = string_order(seg.strings for seg in segments)
    index = {k: i for i, k in enumerate(keys)}
    for seg in segments:
        seg.strings = index

    def encode_segment(i, seg_off, base):
        seg = segments[i]
        data, recs = seg.encode(seg_off, base)
        rbytes = b"".join(F.RELOC.pack((slot << 3) | kind) for slot, kind in recs)
        nonptr = sum(1 for _, kind in recs if kind != F.R_PTR)
        return data, rbytes, nonptr, seg.placed[id(modules[names[i]][4])]

    return assemble_image(names, modules, [(k[1], encode_str(layout, k[0])) for k in keys],
                          encode_segment, optimize)


def assemble_image(names, modules, string_objs, encode_segment, optimize):
    """The image file around already-encoded objects (shared with the C writer).

    ``names`` in directory order, ``modules`` name -> (path, mtime_ns, size, is_pkg, ...),
    ``string_objs`` the (interned, object bytes) of the string table in index order, and
    ``encode_segment(i, file offset, preferred base)`` -> (segment bytes, relocation record
    bytes, count of non-PTR records, root offset) for module ``names[i]``.
    """
    base = F.preferred_base(b"\0".join(
        n.encode("utf-8") + b"\0" + os.fsencode(modules[n][0]) for n in names))

    # Metadata: directory, names blob, string index.
    blob = bytearray()
    name_refs = []
    for n in names:
        nb, pb = n.encode("utf-8"), os.fsencode(modules[n][0])
        name_refs.append((len(blob), len(nb), len(blob) + len(nb), len(pb)))
        blob += nb + pb
    dir_off = F.HEADER_SIZE
    names_off = dir_off + F.MODULE.size * len(names)
    sidx_off = F.align(names_off + len(blob))
    meta_end = sidx_off + F.STRING.size * len(string_objs)

    sheap_off = F.align(meta_end, F.PAGE)
    sheap = bytearray()
    sindex = bytearray()
    for interned, obj in string_objs:
        fields = (len(sheap), len(obj), F.STR_INTERNED if interned else 0)
        sindex += F.STRING.pack(*fields, F.crc32(F.STRING.pack(*fields, 0)[:12], obj))
        sheap += obj
    mheap_off = F.align(sheap_off + len(sheap), F.PAGE)

    mheap = bytearray()
    relocs = bytearray()
    entries = []
    nrel = 0
    for i, (n, (noff, nlen, poff, plen)) in enumerate(zip(names, name_refs)):
        path, mtime, size, is_pkg = modules[n][:4]
        seg_off = mheap_off + len(mheap)
        data, rbytes, nonptr, root = encode_segment(i, seg_off, base)
        fields = (F.MOD_PACKAGE if is_pkg else 0, noff, nlen, poff, plen, mtime, size,
                  seg_off, len(data), root, nrel, len(rbytes) // 4, nonptr,
                  F.crc32(data, rbytes))
        body = F.MODULE.pack(0, *fields)
        entry_crc = F.crc32(body[4:], blob[noff:noff + nlen], blob[poff:poff + plen])
        entries.append(F.MODULE.pack(entry_crc, *fields))
        mheap += data
        mheap += bytes(F.align(len(mheap)) - len(mheap))
        relocs += rbytes
        nrel += len(rbytes) // 4
    reloc_off = F.align(mheap_off + len(mheap))
    file_size = reloc_off + len(relocs)

    sections = [(dir_off, F.MODULE.size * len(names)), (names_off, len(blob)),
                (sidx_off, len(sindex)), (sheap_off, len(sheap)),
                (mheap_off, len(mheap)), (reloc_off, len(relocs))]
    header = F.HEADER.pack(F.MAGIC, F.FORMAT_MAJOR, F.FORMAT_MINOR, F.HEADER_SIZE, file_size,
                           base, len(names), len(string_objs), 0, optimize & F.FLAG_OPTIMIZE_MASK,
                           b"".join(F.SECTION.pack(*s) for s in sections), F.fingerprint())
    header = bytearray(header)
    struct.pack_into("<I", header, 40, F.crc32(header))

    out = bytearray(file_size)
    out[0:F.HEADER_SIZE] = header
    out[dir_off:dir_off + len(entries) * F.MODULE.size] = b"".join(entries)
    out[names_off:names_off + len(blob)] = blob
    out[sidx_off:sidx_off + len(sindex)] = sindex
    out[sheap_off:sheap_off + len(sheap)] = sheap
    out[mheap_off:mheap_off + len(mheap)] = mheap
    out[reloc_off:reloc_off + len(relocs)] = relocs
    return bytes(out)
