"""The reference reader: parses an image exactly per spec/ and validates every field it reads.

It is the oracle the accelerator and the tests are checked against, so it is written to be
obviously right, not fast: it turns a module's native objects back into the graph of graph.py,
then into a marshal stream, and lets ``marshal.loads`` build the code object.  Every malformed
input raises ImageError; no other exception escapes.
"""

import marshal
import os
import struct

from . import format as F
from .bytecode import deoptimize
from .container import block_bytes, check as _check, read_directory, read_header, \
    read_tagged_words
from .errors import ImageError
from .graph import Code, FrozenSet, Str, emit_marshal, walk_code, walk_nodes
from .layouts import current
from .objects import STR_HEAD_FORMAT, derived_code_fields, reset_value, str_kind


class ReferenceImage:
    """An image read and checked by the pure-Python reference reader."""

    implementation = "reference"

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ImageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self.layout = current()
        if self.layout is None:
            raise ImageError("this interpreter version is not supported")
        self._data = data
        try:
            self.header = read_header(data)
            self.sections = self.header["sections"]
            self._entries = read_directory(data, self.header)
        except ImageError as exc:
            raise ImageError(f"{self.path}: {exc}") from None
        except Exception as exc:   # a bug or a case the checks above missed: still an ImageError
            raise ImageError(f"{self.path}: malformed image ({type(exc).__name__}: {exc})") from None
        self._by_name = {e.name: e for e in self._entries}
        self._strings = {}

    # -- public API --
    def names(self):
        return [e.name for e in self._entries]

    def entry(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(name) from None

    def owns(self, obj):
        return False                  # the reference reader builds ordinary heap objects

    def get_code(self, name):
        e = self.entry(name)
        try:
            graph = _ModuleParser(self, e).parse()
            stream = emit_marshal(graph)
            code = marshal.loads(stream)
            _check_adaptive(code, graph)
            return code
        except ImageError as exc:
            raise ImageError(f"{self.path}: module {name}: {exc}") from None
        except Exception as exc:
            raise ImageError(f"{self.path}: module {name}: malformed "
                             f"({type(exc).__name__}: {exc})") from None

    # -- strings ([STR-*]) --
    def string(self, index):
        if index in self._strings:
            return self._strings[index]
        _check(index < self.header["strings"], f"string index {index} out of range")
        data = self._data
        ioff = self.sections[F.SEC_STRING_INDEX][0] + index * F.STRING_SIZE
        e = F.STRING_RECORD.read_all(data, ioff)
        off, size, flags, crc = e["offset"], e["size"], e["flags"], e["crc"]
        hoff, hsize = self.sections[F.SEC_STRING_HEAP]
        where = f"string {index}"
        _check(off % F.ALIGN == 0 and size % F.ALIGN == 0 and off + size <= hsize,
               f"{where}: outside the string heap")
        _check(flags == F.STR_INTERNED, f"{where}: flags are not exactly the interned flag")
        raw = data[hoff + off:hoff + off + size]
        crc_at = F.STRING_RECORD.offset("crc")
        _check(F.crc32(data[ioff:ioff + crc_at], raw) == crc, f"{where}: checksum mismatch")
        _check(size >= 16 and struct.unpack_from("<Q", raw, 8)[0] == F.T_STR,
               f"{where}: ob_type is not the str type code")
        value = decode_str(self.layout, raw, where)     # its size is the object's, checked
        _check(F.singleton_id(value) is None or len(value) == 1,
               f"{where}: a singleton stored as a string")          # [OBJ-5]
        s = Str(value, True)
        self._strings[index] = s
        return s


def str_size(L, raw):
    """The bytes a str object at the start of ``raw`` occupies with its padding (6.3), from
    its header; 0 when the header is too short to say."""
    if len(raw) < 36:
        return 0
    length, state = struct.unpack_from("<q", raw, 16)[0], struct.unpack_from("<I", raw, 32)[0]
    kind, ascii = (state >> 2) & 7, (state >> 6) & 1
    header = L.str_ascii_header if ascii else L.str_compact_header
    return F.align(header + (length + 1) * kind) if length > 0 and kind in (1, 2, 4) else 0


def decode_str(L, raw, where):
    """The value of the str object whose bytes (with their padding) are ``raw``, every field
    but ``ob_type`` checked (spec 6.3)."""
    _check(len(raw) >= L.str_ascii_header + F.ALIGN, f"{where}: too small")
    refcnt, _, length, h, state = struct.unpack_from(STR_HEAD_FORMAT, raw, 0)
    _check(refcnt == L.refcnt and h == -1, f"{where}: bad header")
    kind, compact, ascii = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    bit7 = 1 if L.str_state_bit7 == "ready" else 0
    _check(state & 3 == 0 and compact == 1 and kind in (1, 2, 4)
           and (state >> 7) == bit7, f"{where}: bad state {state:#x}")
    header = L.str_ascii_header if ascii else L.str_compact_header
    _check(raw[36:header] == bytes(header - 36), f"{where}: reset fields are not zero")
    _check(0 < length and F.align(header + (length + 1) * kind) == len(raw),
           f"{where}: length {length} does not match size {len(raw)}")
    body = raw[header:header + length * kind]
    # code units one by one: a UTF-16 decoder would merge adjacent lone surrogates
    value = "".join(map(chr, struct.unpack(f"<{length}{' BHxI'[kind]}", body)))
    _check(str_kind(value) == (kind, bool(ascii)), f"{where}: kind does not fit its characters")
    _check(raw[header + length * kind:] == bytes(len(raw) - header - length * kind),
           f"{where}: terminator or padding not zero")
    return value


class _ModuleParser:
    """Parses one module segment into a graph, checking every object and tagged word."""

    def __init__(self, image, entry):
        self.img, self.e, self.L = image, entry, image.layout
        _check(entry.seg_off + entry.block_size <= len(image._data), "block outside the file")
        self.seg, bitmap = block_bytes(image._data, entry)
        self.words = read_tagged_words(self.seg, bitmap)   # slot word -> (kind, value)
        self.used = set()
        self.memo = {}
        self.reached_as = {}     # offset -> reached by LSTR words (True) or others (False)
        self.base = image.header["base"]

    def parse(self):
        root = self.obj(self.e.root, depth=0)
        _check(type(root) is Code, "root object is not a code object")
        _check(len(self.used) == len(self.words), "tagged words that no object uses ([SEG-3])")
        return root

    def tagged(self, off, kinds):
        """(kind, value) of the tagged word at ``off``, which must be one of ``kinds``."""
        _check(off % 8 == 0, f"unaligned slot at {off}")
        kind, value = self.words.get(off // 8, (None, None))
        _check(kind in kinds, f"slot at {off}: expected a {'/'.join(F.RELOC_KIND_NAMES[k] for k in kinds)}"
               f" word, found {F.RELOC_KIND_NAMES[kind] if kind is not None else 'an untagged one'}")
        self.used.add(off // 8)
        return kind, value

    def ref(self, off, depth):
        """The node a pointer slot refers to."""
        kind, value = self.tagged(off, (F.R_CONST, F.R_STR, F.R_PTR, F.R_FROZENSET, F.R_LSTR))
        if kind == F.R_CONST:
            try:
                return _const_node(F.singleton(value))
            except KeyError:
                raise ImageError(f"slot at {off}: unknown singleton id {value:#x}") from None
        if kind == F.R_STR:
            return self.img.string(value)
        target = value - self.base - self.e.seg_off
        _check(0 <= target < self.e.seg_size, f"slot at {off}: pointer {value:#x} outside the segment")
        node = self.obj(target, depth + 1)
        # [SEG-5] an object is reached either as an interned string (LSTR) or as an ordinary
        # object (PTR, FROZENSET), never both
        how = self.reached_as.setdefault(target, kind == F.R_LSTR)
        _check(how == (kind == F.R_LSTR), f"slot at {off}: object at {target} is reached both "
               "as an interned string and otherwise")
        if type(node) is Str and kind != F.R_LSTR:      # [OBJ-5]
            _check(F.singleton_id(node.value) is None,
                   f"str at {target}: a singleton stored as an object")
        if kind == F.R_LSTR:
            _check(type(node) is Str, f"slot at {off}: LSTR word does not point at a string")
            _check(F.singleton_id(node.value) is None or len(node.value) == 1,
                   f"str at {target}: a singleton stored as an object")
            key = ("lstr", target)
            if key not in self.memo:
                self.memo[key] = Str(node.value, True)
            return self.memo[key]
        if kind == F.R_FROZENSET:
            _check(type(node) is tuple, f"slot at {off}: frozenset source is not a tuple")
            key = ("frozenset", target)
            if key not in self.memo:
                self.memo[key] = FrozenSet(node)
            return self.memo[key]
        return node

    def obj(self, off, depth):
        if off in self.memo:
            _check(self.memo[off] is not None, f"object at {off} contains itself")
            return self.memo[off]
        _check(depth < 2000, "objects nested too deeply")
        _check(off % F.ALIGN == 0 and off + 16 <= len(self.seg), f"object at {off} out of bounds")
        self.memo[off] = None                                   # in progress: catches cycles
        _, tcode = self.tagged(off + 8, (F.R_TYPE,))
        refcnt = struct.unpack_from("<q", self.seg, off)[0]
        _check(refcnt == self.L.refcnt, f"object at {off}: refcount {refcnt} is not {self.L.refcnt}")
        parse = {F.T_STR: self.parse_str, F.T_TUPLE: self.parse_tuple, F.T_BYTES: self.parse_bytes,
                 F.T_INT: self.parse_int, F.T_FLOAT: self.parse_float,
                 F.T_COMPLEX: self.parse_complex, F.T_CODE: self.parse_code}.get(tcode)
        _check(parse is not None, f"object at {off}: type code {tcode} is not stored in a segment")
        node = parse(off, depth)
        self.memo[off] = node
        return node

    def need(self, off, size, what):
        _check(off + size <= len(self.seg), f"{what} at {off} runs past its segment")

    def parse_str(self, off, depth):
        """[SEG-4] a string of this segment: never interned, never a singleton."""
        size = str_size(self.L, self.seg[off:off + 40])
        _check(size > 0, f"str at {off}: bad length or kind")
        self.need(off, size, "str")
        return Str(decode_str(self.L, self.seg[off:off + size], f"str at {off}"), False)

    def parse_tuple(self, off, depth):
        _check(off >= self.L.gc_head and self.seg[off - 16:off] == bytes(16),
               f"tuple at {off}: GC header is not zero")
        n = struct.unpack_from("<q", self.seg, off + 16)[0]
        _check(0 <= n, f"tuple at {off}: negative size")
        self.need(off, 24 + 8 * n, "tuple")
        return tuple(self.ref(off + 24 + 8 * i, depth) for i in range(n))

    def parse_bytes(self, off, depth):
        n, h = struct.unpack_from("<qq", self.seg, off + 16)
        _check(n >= 0 and h == -1, f"bytes at {off}: bad size or hash")
        self.need(off, 33 + n, "bytes")
        _check(self.seg[off + 32 + n] == 0, f"bytes at {off}: missing terminator")
        v = bytes(self.seg[off + 32:off + 32 + n])
        _check(F.singleton_id(v) is None, f"bytes at {off}: a singleton stored as an object")
        return v

    def parse_int(self, off, depth):
        tag = struct.unpack_from("<q", self.seg, off + 16)[0]
        if self.L.int_tag == "ob_size":
            ndigits, neg = abs(tag), tag < 0
        else:
            _check(tag & 7 in (0, 2), f"int at {off}: bad sign bits")
            ndigits, neg = tag >> 3, bool(tag & 2)
        _check(ndigits > 0, f"int at {off}: zero digits")
        self.need(off, 24 + 4 * ndigits, "int")
        digits = struct.unpack_from(f"<{ndigits}I", self.seg, off + 24)
        _check(all(d < 1 << 30 for d in digits) and digits[-1] != 0,
               f"int at {off}: digits not normalised")
        v = sum(d << (30 * i) for i, d in enumerate(digits))
        v = -v if neg else v
        _check(F.singleton_id(v) is None, f"int at {off}: a small int stored as an object")
        return v

    def parse_float(self, off, depth):
        self.need(off, 24, "float")
        return struct.unpack_from("<d", self.seg, off + 16)[0]

    def parse_complex(self, off, depth):
        self.need(off, 32, "complex")
        return complex(*struct.unpack_from("<dd", self.seg, off + 16))

    def parse_code(self, off, depth):
        L = self.L
        self.need(off, L.code_header, "code")
        c = Code()
        raw = {}
        for f in L.code_fields:
            if f.rule == "ref":
                setattr(c, f.name[3:], self.ref(off + f.offset, depth))
            elif f.rule in ("value", "derived", "reset", "loader", "pad"):
                fmt = {2: "<h", 4: "<i", 8: "<q"}[f.size]
                raw[f.name] = struct.unpack_from(fmt, self.seg, off + f.offset)[0]
                if f.rule == "reset":
                    _check(raw[f.name] == reset_value(L, f), f"code at {off}: {f.name} is not fresh")
                elif f.rule in ("loader", "pad"):
                    _check(raw[f.name] == 0, f"code at {off}: {f.name} is not zero")
        n = raw["ob_size"]
        _check(n > 0, f"code at {off}: empty bytecode")
        self.need(off, L.code_header + 2 * n, "code")
        c.adaptive = bytes(self.seg[off + L.code_header:off + L.code_header + 2 * n])
        c.code = deoptimize(c.adaptive)
        for name in ("argcount", "posonlyargcount", "kwonlyargcount", "stacksize", "flags",
                     "firstlineno"):
            setattr(c, name, raw["co_" + name])
        _check(type(c.consts) is tuple and type(c.names) is tuple
               and type(c.localsplusnames) is tuple, f"code at {off}: a tuple field is not a tuple")
        _check(all(type(s) is Str for s in c.names + c.localsplusnames),
               f"code at {off}: a name is not a str")
        for name in ("localspluskinds", "linetable", "exceptiontable"):
            _check(type(getattr(c, name)) is bytes, f"code at {off}: co_{name} is not bytes")
        for name in ("filename", "name", "qualname"):
            _check(type(getattr(c, name)) is Str, f"code at {off}: co_{name} is not a str")
        _check(len(c.localspluskinds) == len(c.localsplusnames),
               f"code at {off}: co_localspluskinds and co_localsplusnames differ in length")
        derived = derived_code_fields(L, c.localsplusnames, c.localspluskinds, c.stacksize, c.code)
        for name, v in derived.items():
            _check(raw[name] == v, f"code at {off}: {name} is {raw[name]}, expected {v}")
        return c


def _const_node(v):
    """Singletons as graph nodes: strings are wrapped like every other string."""
    return Str(v, False) if type(v) is str else v


def _check_adaptive(code, graph):
    """[OBJ-8] the stored co_code_adaptive must be what this interpreter creates for the code."""
    for co, node in zip(walk_code(code), walk_nodes(graph)):
        _check(co._co_code_adaptive == node.adaptive,
               f"co_code_adaptive of {co.co_qualname} is not what this interpreter creates")
