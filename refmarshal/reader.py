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
from .errors import ImageError
from .format import ModuleEntry
from .graph import Code, FrozenSet, Str, emit_marshal, walk_code, walk_nodes
from .layouts import current
from .writer import derived_code_fields, reset_value, str_kind


def read_entry(mem, sections, i):
    """Directory entry i, its checksum and reserved fields checked ([DIR-1]); shared by the
    reference reader and the accelerator.  Returns (name bytes, ModuleEntry)."""
    doff, _ = sections[0]
    noff, nsize = sections[1]
    raw = bytes(mem[doff + i * F.MODULE.size:doff + (i + 1) * F.MODULE.size])
    (crc, flags, n_off, n_len, p_off, p_len, mtime, size, seg_off, seg_size, root,
     r_index, r_count, r_nonptr, dcrc) = F.MODULE.unpack(raw)
    where = f"directory entry {i}"
    _check(n_off + n_len <= nsize and p_off + p_len <= nsize,
           f"{where}: name or path outside the names section")
    name_b = bytes(mem[noff + n_off:noff + n_off + n_len])
    path_b = bytes(mem[noff + p_off:noff + p_off + p_len])
    _check(F.crc32(raw[4:], name_b, path_b) == crc, f"{where}: checksum mismatch")
    _check(raw[72:80] == bytes(8), f"{where}: reserved bytes are not zero")
    _check(flags & ~F.MOD_PACKAGE == 0, f"{where}: reserved flags set")
    return name_b, ModuleEntry(
        name=name_b.decode("utf-8"), path=os.fsdecode(path_b), mtime_ns=mtime, size=size,
        is_package=bool(flags & F.MOD_PACKAGE), seg_off=seg_off, seg_size=seg_size,
        root=root, reloc_index=r_index, reloc_count=r_count, reloc_nonptr=r_nonptr,
        data_crc=dcrc)


def read_entry_name(mem, sections, i):
    """Only the name bytes of directory entry i (for binary search: checked by read_entry)."""
    doff, _ = sections[0]
    noff, nsize = sections[1]
    n_off, n_len = struct.unpack_from("<II", mem, doff + i * F.MODULE.size + 8)
    _check(n_off + n_len <= nsize, f"directory entry {i}: name outside the names section")
    return bytes(mem[noff + n_off:noff + n_off + n_len])


def _check(cond, what):
    if not cond:
        raise ImageError(what)


def read_header(data, layout=None):
    """Validate the header and section table ([HDR-*], [SEC-*]); returns (fields, sections)."""
    _check(len(data) >= F.HEADER_SIZE, f"truncated: {len(data)} bytes is shorter than the header")
    fields = F.check_header(bytes(data[:F.HEADER_SIZE]), len(data))
    fsize, sections = len(data), fields["sections"]
    prev_end = F.HEADER_SIZE
    for name, (off, size) in zip(F.SECTION_NAMES, sections):
        need = F.PAGE if name in ("string_heap", "module_heap") else F.ALIGN
        _check(off % need == 0, f"section {name} at {off} is not {need}-aligned")
        _check(off >= prev_end and off + size <= fsize,
               f"section {name} ({off}+{size}) overlaps another or runs past the end")
        _check(not any(data[prev_end:off]), f"padding before section {name} is not zero")
        prev_end = off + size
    _check(prev_end == fsize, "data after the last section")
    _check(sections[5][1] % F.RELOC.size == 0, "relocation section size is not a multiple of 4")
    return fields, sections


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
            self.header, self.sections = read_header(data)
            self._entries = self._read_directory()
        except ImageError as exc:
            raise ImageError(f"{self.path}: {exc}") from None
        except Exception as exc:   # a bug or a case the checks above missed: still an ImageError
            raise ImageError(f"{self.path}: malformed image ({type(exc).__name__}: {exc})") from None
        self._by_name = {e.name: e for e in self._entries}
        self._strings = {}

    # -- directory ([DIR-*]) --
    def _read_directory(self):
        data = self._data
        moff, msize = self.sections[4]
        roff, rsize = self.sections[5]
        entries, prev = [], None
        next_reloc, next_seg = 0, moff
        for i in range(self.header["modules"]):
            name_b, e = read_entry(data, self.sections, i)
            where = f"directory entry {i}"
            _check(e.name and (prev is None or name_b > prev),
                   f"{where}: names are not unique and sorted")
            prev = name_b
            _check(e.seg_off % F.ALIGN == 0 and moff <= e.seg_off
                   and e.seg_off + e.seg_size <= moff + msize,
                   f"{where}: segment outside the module heap")
            _check(e.root % F.ALIGN == 0 and e.root < e.seg_size,
                   f"{where}: root outside its segment")
            _check(e.reloc_nonptr <= e.reloc_count and e.reloc_index == next_reloc,
                   f"{where}: relocation records do not follow the previous module's")
            _check(e.seg_off == next_seg, f"{where}: segment does not follow the previous one")
            next_reloc, next_seg = e.reloc_index + e.reloc_count, e.seg_off + e.seg_size
            entries.append(e)
        _check(next_reloc * F.RELOC.size == rsize, "relocation records not owned by a module")
        _check(next_seg == moff + msize, "module heap bytes not owned by a module")
        return entries

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
        data, L = self._data, self.layout
        ioff = self.sections[2][0] + index * F.STRING.size
        off, size, flags, crc = F.STRING.unpack_from(data, ioff)
        hoff, hsize = self.sections[3]
        where = f"string {index}"
        _check(off % F.ALIGN == 0 and size % F.ALIGN == 0 and off + size <= hsize,
               f"{where}: outside the string heap")
        _check(flags & ~F.STR_INTERNED == 0, f"{where}: reserved flags set")
        raw = data[hoff + off:hoff + off + size]
        _check(F.crc32(data[ioff:ioff + 12], raw) == crc, f"{where}: checksum mismatch")
        _check(size >= L.str_ascii_header + F.ALIGN, f"{where}: too small")
        refcnt, tcode, length, h, state = struct.unpack_from("<qQqqI", raw, 0)
        _check(refcnt == L.refcnt and tcode == F.T_STR and h == -1, f"{where}: bad header")
        kind, compact, ascii = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        bit7 = 1 if L.str_state_bit7 == "ready" else 0
        _check(state & 3 == 0 and compact == 1 and kind in (1, 2, 4)
               and (state >> 7) == bit7, f"{where}: bad state {state:#x}")
        header = L.str_ascii_header if ascii else L.str_compact_header
        _check(raw[36:header] == bytes(header - 36), f"{where}: reset fields are not zero")
        _check(0 < length and F.align(header + (length + 1) * kind) == size,
               f"{where}: length {length} does not match size {size}")
        body = raw[header:header + length * kind]
        # code units one by one: a UTF-16 decoder would merge adjacent lone surrogates
        value = "".join(map(chr, struct.unpack(f"<{length}{' BHxI'[kind]}", body)))
        _check(str_kind(value) == (kind, bool(ascii)), f"{where}: kind does not fit its characters")
        _check(raw[header + length * kind:] == bytes(size - header - length * kind),
               f"{where}: terminator or padding not zero")
        _check(F.singleton_id(value) is None or (flags & F.STR_INTERNED and len(value) == 1),
               f"{where}: a singleton stored as a string")          # [OBJ-5]
        s = Str(value, flags & F.STR_INTERNED)
        self._strings[index] = s
        return s


class _ModuleParser:
    """Parses one module segment into a graph, checking every object and relocation."""

    def __init__(self, image, entry):
        self.img, self.e, self.L = image, entry, image.layout
        data = image._data
        self.seg = data[entry.seg_off:entry.seg_off + entry.seg_size]
        r0 = image.sections[5][0] + entry.reloc_index * F.RELOC.size
        rbytes = data[r0:r0 + entry.reloc_count * F.RELOC.size]
        _check(F.crc32(self.seg, rbytes) == entry.data_crc, "segment checksum mismatch")
        self.relocs = {}
        prev = None
        for i, (rec,) in enumerate(F.RELOC.iter_unpack(rbytes)):
            slot, kind = rec >> 3, rec & 7
            _check(kind <= F.R_PTR, f"relocation {i}: unknown kind {kind}")
            _check(slot * 8 + 8 <= entry.seg_size, f"relocation {i}: slot outside the segment")
            _check(prev is None or (kind, slot) > prev, "relocations are not sorted and unique")
            _check((kind != F.R_PTR) == (i < entry.reloc_nonptr), "non-pointer count is wrong")
            prev = (kind, slot)
            self.relocs[slot] = kind
        self.used = set()
        self.memo = {}
        self.base = image.header["base"]

    def parse(self):
        root = self.obj(self.e.root, depth=0)
        _check(type(root) is Code, "root object is not a code object")
        _check(len(self.used) == len(self.relocs), "relocation records that no object uses")
        return root

    def word(self, off):
        return struct.unpack_from("<Q", self.seg, off)[0]

    def reloc(self, off, kinds):
        _check(off % 8 == 0, f"unaligned slot at {off}")
        kind = self.relocs.get(off // 8)
        _check(kind in kinds, f"slot at {off}: expected {'/'.join(F.RELOC_KIND_NAMES[k] for k in kinds)}"
               f" relocation, found {F.RELOC_KIND_NAMES[kind] if kind is not None else 'none'}")
        self.used.add(off // 8)
        return kind

    def ref(self, off, depth):
        """The node a pointer slot refers to."""
        kind = self.reloc(off, (F.R_CONST, F.R_STR, F.R_PTR, F.R_FROZENSET))
        value = self.word(off)
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
        self.reloc(off + 8, (F.R_TYPE,))
        refcnt, tcode = struct.unpack_from("<qQ", self.seg, off)
        _check(refcnt == self.L.refcnt, f"object at {off}: refcount {refcnt} is not {self.L.refcnt}")
        parse = {F.T_TUPLE: self.tuple, F.T_BYTES: self.bytes, F.T_INT: self.int,
                 F.T_FLOAT: self.float, F.T_COMPLEX: self.complex, F.T_CODE: self.code}.get(tcode)
        _check(parse is not None, f"object at {off}: type code {tcode} is not stored in a segment")
        node = parse(off, depth)
        self.memo[off] = node
        return node

    def need(self, off, size, what):
        _check(off + size <= len(self.seg), f"{what} at {off} runs past its segment")

    def tuple(self, off, depth):
        _check(off >= self.L.gc_head and self.seg[off - 16:off] == bytes(16),
               f"tuple at {off}: GC header is not zero")
        n = struct.unpack_from("<q", self.seg, off + 16)[0]
        _check(0 <= n, f"tuple at {off}: negative size")
        self.need(off, 24 + 8 * n, "tuple")
        return tuple(self.ref(off + 24 + 8 * i, depth) for i in range(n))

    def bytes(self, off, depth):
        n, h = struct.unpack_from("<qq", self.seg, off + 16)
        _check(n >= 0 and h == -1, f"bytes at {off}: bad size or hash")
        self.need(off, 33 + n, "bytes")
        _check(self.seg[off + 32 + n] == 0, f"bytes at {off}: missing terminator")
        v = bytes(self.seg[off + 32:off + 32 + n])
        _check(F.singleton_id(v) is None, f"bytes at {off}: a singleton stored as an object")
        return v

    def int(self, off, depth):
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

    def float(self, off, depth):
        self.need(off, 24, "float")
        return struct.unpack_from("<d", self.seg, off + 16)[0]

    def complex(self, off, depth):
        self.need(off, 32, "complex")
        return complex(*struct.unpack_from("<dd", self.seg, off + 16))

    def code(self, off, depth):
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
