"""The reference writer: each module's objects encoded exactly per spec/, field by field.

Simple and slow on purpose.  The object graph comes from ``marshal.dumps`` of what
``compile()`` returns (see graph.py); ``co_code_adaptive`` comes from the live code objects.
``encode_image`` turns graphs into an image's bytes; compiling sources, worker processes and
writing the file are ``building.py``'s, the file around the objects is ``container.py``'s.
"""

import marshal
import struct

from . import format as F
from .container import EncodedSegment, StoredString, assemble_image, pack_bitmap, \
    placement_order, sorted_names, split_strings, tag_word
from .errors import ImageError
from .graph import Code, FrozenSet, Str, parse_marshal, walk_code, walk_nodes
from .objects import STR_HEAD_FORMAT, derived_code_fields, int_digits, reset_value, str_kind


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

def encode_str(layout, value):
    """The native bytes of a str object (spec 6.3); its ob_type holds T_STR, untagged."""
    kind, ascii = str_kind(value)
    header = layout.str_ascii_header if ascii else layout.str_compact_header
    data = value.encode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind],
                        "surrogatepass")
    state = (kind << 2) | (1 << 5) | (int(ascii) << 6) | (1 << 7 if layout.str_state_bit7 == "ready" else 0)
    buf = bytearray(F.align(header + data.__len__() + kind))
    struct.pack_into(STR_HEAD_FORMAT, buf, 0, layout.refcnt, F.T_STR, len(value), -1, state)
    buf[header:header + len(data)] = data
    return bytes(buf)


class _Segment:
    """One module's objects laid out in canonical order ([OBJ-1], [OBJ-2])."""

    def __init__(self, layout, strings):
        self.layout = layout
        self.strings = strings       # interned Str.key() -> string index, filled in later
        self.local = {}              # interned Str.key() -> offset of its object here ([SEG-5])
        self.placed = {}             # id(node) -> offset of the PyObject in the segment
        self.order = []              # (node, offset of the PyObject), in placement order
        self.size = 0
        self.keep = []

    # -- placement: pre-order, depth first, children in field order ([OBJ-2]) --
    def place(self, v):
        if _const_id(v) is not None:
            return
        if type(v) is Str and v.interned:            # [STR-3] the string table
            self.strings.setdefault(v.key(), None)
            return
        if type(v) is FrozenSet:
            v = self.frozen_tuple(v)
        if id(v) in self.placed:
            return
        size, pre = self._size(v)
        alloc = self.size
        self.placed[id(v)] = alloc + pre
        self.order.append((v, alloc + pre))
        self.size = F.align(alloc + size)
        self.keep.append(v)
        for child in self._children(v):
            self.place(child)

    def place_local(self, keys):
        """[SEG-5] the interned strings only this module uses, after everything else."""
        for value, interned in keys:
            node = Str(value, interned)
            self.local[node.key()] = self.size
            self.order.append((node, self.size))
            self.size = F.align(self.size + self._size(node)[0])
            self.keep.append(node)

    def frozen_tuple(self, fs):
        """[OBJ-9] the tuple stored for a frozenset: its items in canonical order."""
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
        if t is Str:
            kind, ascii = str_kind(v.value)
            header = L.str_ascii_header if ascii else L.str_compact_header
            return header + (len(v.value) + 1) * kind, 0
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

    def encode(self, seg_addr):
        """The segment's bytes and its bitmap ([SEG-2]); ``seg_addr``: the segment's address
        at the preferred base."""
        enc = _Encoder(self, seg_addr)
        for v, off in self.order:
            enc.encode(v, off)
        return bytes(enc.buf), pack_bitmap(len(enc.buf), enc.tagged)


class _Encoder:
    """Encoding one placed segment: its buffer, the tagged words written so far, and the
    address its objects have at the image's preferred base ([OBJ-3])."""

    def __init__(self, segment, seg_addr):
        self.seg, self.layout, self.seg_addr = segment, segment.layout, seg_addr
        self.buf = bytearray(segment.size)
        self.tagged = []             # slot words that hold tagged words

    def tag(self, slot, value, kind):
        struct.pack_into("<Q", self.buf, slot, tag_word(value, kind))
        self.tagged.append(slot // 8)

    def ref(self, v, slot):
        """Write a pointer slot as the tagged word that tells the loader what it points to."""
        cid = _const_id(v)
        if cid is not None:
            self.tag(slot, cid, F.R_CONST)
        elif type(v) is Str and v.interned and v.key() in self.seg.local:
            self.tag(slot, self.seg_addr + self.seg.local[v.key()], F.R_LSTR)
        elif type(v) is Str and v.interned:
            self.tag(slot, self.seg.strings[v.key()], F.R_STR)
        elif type(v) is FrozenSet:
            self.tag(slot, self.seg_addr + self.seg.placed[id(self.seg.frozen_tuple(v))],
                     F.R_FROZENSET)
        else:
            self.tag(slot, self.seg_addr + self.seg.placed[id(v)], F.R_PTR)

    def head(self, off, tcode):
        struct.pack_into("<q", self.buf, off, self.layout.refcnt)
        self.tag(off + 8, tcode, F.R_TYPE)

    def encode(self, v, off):
        L, t, buf = self.layout, type(v), self.buf
        if t is Str:                        # [SEG-4], [SEG-5] a string of this segment
            data = encode_str(L, v.value)
            buf[off:off + len(data)] = data
            self.head(off, F.T_STR)
        elif t is tuple:
            self.head(off, F.T_TUPLE)       # GC header stays zero: untracked
            struct.pack_into("<q", buf, off + 16, len(v))
            for i, item in enumerate(v):
                self.ref(item, off + 24 + 8 * i)
        elif t is bytes:
            self.head(off, F.T_BYTES)
            struct.pack_into("<qq", buf, off + 16, len(v), -1)
            buf[off + 32:off + 32 + len(v)] = v
        elif t is int:
            self.head(off, F.T_INT)
            digits = int_digits(v)
            if L.int_tag == "ob_size":
                struct.pack_into("<q", buf, off + 16, -len(digits) if v < 0 else len(digits))
            else:
                struct.pack_into("<Q", buf, off + 16, (len(digits) << 3) | (2 if v < 0 else 0))
            struct.pack_into(f"<{len(digits)}I", buf, off + 24, *digits)
        elif t is float:
            self.head(off, F.T_FLOAT)
            struct.pack_into("<d", buf, off + 16, v)
        elif t is complex:
            self.head(off, F.T_COMPLEX)
            struct.pack_into("<dd", buf, off + 16, v.real, v.imag)
        elif t is Code:
            self.encode_code(v, off)

    def encode_code(self, c, off):
        L = self.layout
        values = {
            "ob_size": len(c.adaptive) // 2,
            "co_flags": c.flags, "co_argcount": c.argcount,
            "co_posonlyargcount": c.posonlyargcount, "co_kwonlyargcount": c.kwonlyargcount,
            "co_stacksize": c.stacksize, "co_firstlineno": c.firstlineno,
        }
        values.update(derived_code_fields(L, c.localsplusnames, c.localspluskinds, c.stacksize,
                                          c.code))
        self.head(off, F.T_CODE)
        for f in L.code_fields:
            if f.rule == "ref":
                self.ref(getattr(c, f.name[3:]), off + f.offset)
            elif f.rule in ("value", "derived", "reset"):
                value = reset_value(L, f) if f.rule == "reset" else values[f.name]
                struct.pack_into({2: "<h", 4: "<i", 8: "<q"}[f.size], self.buf, off + f.offset,
                                 value)
        self.buf[off + L.code_header:off + L.code_header + len(c.adaptive)] = c.adaptive


def _const_id(v):
    """The R_CONST id of a node, or None when it is stored ([OBJ-5]).  A one-character str the
    compiler interned is not the latin-1 singleton: in 3.11 and 3.12 interning keeps a separate
    object, so it is stored as a string and interned at load."""
    if type(v) is Str:
        if v.interned and len(v.value) == 1:
            return None
        return F.singleton_id(v.value)
    return F.singleton_id(v)


def encode_image(layout, modules, optimize):
    """The bytes of an image of ``modules``: name -> ``container.ModuleSource`` whose ``code``
    is the module's graph (``code_graph``)."""
    names = sorted_names(modules)
    segments = []
    for n in names:
        seg = _Segment(layout, {})
        seg.place(modules[n].code)
        segments.append(seg)
    order = placement_order(names)
    keys, local = split_strings([list(segments[i].strings) for i in order])  # [STR-2], [SEG-5]
    for i, own in zip(order, local):
        segments[i].place_local(own)
    index = {k: i for i, k in enumerate(keys)}
    for seg in segments:
        seg.strings = index

    def encode_segment(i, seg_off, base):
        seg = segments[i]
        data, bitmap = seg.encode(base + seg_off)
        return EncodedSegment(data, bitmap, seg.placed[id(modules[names[i]].code)])

    strings = [StoredString(interned, encode_str(layout, value)) for value, interned in keys]
    return assemble_image(names, modules, strings, encode_segment, optimize)
