"""A second writer of refmarshal images, written from ``spec/format.rst`` alone.

It builds the golden vector of ``spec/golden/`` for the running interpreter, following the
recipe of ``spec/golden/README.md``, and never imports ``refmarshal``: standard library only.
Rule ids in comments ([SEG-4] ...) are those of ``spec/format.rst``; "6.2" means the
per-version tables of ``spec/layouts/``.

    python3.1X spec/tools/independent_writer.py --check   # compare with the committed vector
    python3.1X spec/tools/independent_writer.py -o FILE   # write the image

Where the writer needs what a code object holds, it reads it from the compiled object through
``marshal`` (which records the object graph and its sharing, [OBJ-2], 6.5 *Sharing*, and holds
``co_localsplusnames``/``co_localspluskinds`` and which strings are interned) and from the
code object's attributes (``_co_code_adaptive`` for [OBJ-8]).
"""

import argparse
import dis
import importlib.util
import marshal
import os
import shutil
import struct
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "golden")

# Golden build recipe (spec/golden/README.md).
GOLDEN_MTIME_NS = 1_750_000_000_123_456_789
GOLDEN_OPTIMIZE = 0

VERSION = sys.version_info[:2]
WORD = 8  # [CONV-4]
PAGE = 4096  # [SEC-3]
HEADER_SIZE = 256  # [HDR-3]


def crc32(*parts):
    """[CONV-5] CRC-32 (zlib's), initial value 0, of the concatenation of the parts."""
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def align(n, a):
    return (n + a - 1) // a * a


def pad8(data):
    """[OBJ-1] zero padding up to the next 8-byte boundary."""
    return bytes(data) + bytes(align(len(data), WORD) - len(data))


# ---------------------------------------------------------------------------------------------
# The compiled object graph, read back from marshal (6.5 *Sharing*: one object in the image
# exactly when one object in what compile() returned, as marshal format 4 records it).
# ---------------------------------------------------------------------------------------------


class Obj:
    """One object of the compiled graph.  Identity of Obj instances is identity of objects."""

    __slots__ = ("kind", "value", "interned", "fields", "items", "sorted_tuple")

    def __init__(self, kind, value=None, interned=False):
        self.kind = kind  # 'none', 'true', 'false', 'ellipsis', 'str', 'bytes', 'int',
        #                   'float', 'complex', 'tuple', 'frozenset', 'code'
        self.value = value
        self.interned = interned
        self.fields = None  # code: dict of fields
        self.items = None  # tuple, frozenset: list of Obj
        self.sorted_tuple = None  # frozenset: the tuple of [OBJ-9], made once

    def __repr__(self):
        return "Obj(%s, %r)" % (self.kind, self.value)


class MarshalReader:
    """Reads marshal format 4 as CPython 3.11-3.13 write it (Python/marshal.c)."""

    FLAG_REF = 0x80

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.refs = []

    def take(self, n):
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("truncated marshal data")
        self.pos += n
        return b

    def i32(self):
        return struct.unpack("<i", self.take(4))[0]

    def read(self):
        code = self.take(1)[0]
        flag = code & self.FLAG_REF
        t = chr(code & ~self.FLAG_REF)
        if t == "r":
            return self.refs[struct.unpack("<I", self.take(4))[0]]
        ref_index = None
        if flag:  # references are numbered in pre-order, when the object begins
            ref_index = len(self.refs)
            self.refs.append(None)
        obj = self.read_body(t)
        if flag:
            self.refs[ref_index] = obj
        return obj

    def read_str(self, n, encoding, interned):
        return Obj("str", self.take(n).decode(encoding, "surrogatepass"), interned)

    def read_body(self, t):
        if t == "N":
            return Obj("none", None)
        if t == "T":
            return Obj("true", True)
        if t == "F":
            return Obj("false", False)
        if t == ".":
            return Obj("ellipsis", ...)
        if t == "i":
            return Obj("int", self.i32())
        if t == "l":
            n = self.i32()
            value = 0
            for k in range(abs(n)):
                value |= struct.unpack("<H", self.take(2))[0] << (15 * k)
            return Obj("int", -value if n < 0 else value)
        if t == "g":
            return Obj("float", struct.unpack("<d", self.take(8))[0])
        if t == "y":
            return Obj("complex", complex(*struct.unpack("<dd", self.take(16))))
        if t == "s":
            return Obj("bytes", self.take(self.i32()))
        if t in "ut":
            return self.read_str(self.i32(), "utf-8", t == "t")
        if t in "aA":
            return self.read_str(self.i32(), "latin-1", t == "A")
        if t in "zZ":
            return self.read_str(self.take(1)[0], "latin-1", t == "Z")
        if t in "()<>":
            n = self.take(1)[0] if t == ")" else self.i32()
            obj = Obj("frozenset" if t == ">" else "tuple")
            if t == "<":
                raise ValueError("a set constant cannot be stored")
            obj.items = [self.read() for _ in range(n)]
            return obj
        if t == "c":
            obj = Obj("code")
            f = obj.fields = {}
            for name in ("argcount", "posonlyargcount", "kwonlyargcount", "stacksize", "flags"):
                f[name] = self.i32()
            f["code"] = self.read()
            for name in ("consts", "names", "localsplusnames", "localspluskinds", "filename",
                         "name", "qualname"):
                f[name] = self.read()
            f["firstlineno"] = self.i32()
            f["linetable"] = self.read()
            f["exceptiontable"] = self.read()
            return obj
        raise ValueError("marshal type %r cannot be stored (6.5 *Stored types*)" % t)


def object_graph(code):
    """The compiled module's graph: the root code object as an Obj, with the live code objects
    in the same pre-order (for ``_co_code_adaptive``, [OBJ-8])."""
    root = MarshalReader(marshal.dumps(code, 4)).read()
    live = []

    def collect(c):
        live.append(c)
        for k in c.co_consts:
            if isinstance(k, type(c)):
                collect(k)

    collect(code)
    stored = []

    def collect_obj(o):
        stored.append(o)
        for k in o.fields["consts"].items:
            if k.kind == "code":
                collect_obj(k)

    collect_obj(root)
    for o, c in zip(stored, live):
        o.fields["adaptive"] = c._co_code_adaptive
    return root


# ---------------------------------------------------------------------------------------------
# 5.4 Singleton ids, 5.2 type codes
# ---------------------------------------------------------------------------------------------

TYPE_CODES = {"str": 1, "bytes": 2, "tuple": 3, "int": 4, "float": 5, "complex": 6, "code": 7}


def singleton_id(o):
    """[OBJ-5] The singleton id of o, or None when o is stored."""
    if o.kind == "none":
        return 0
    if o.kind == "true":
        return 1
    if o.kind == "false":
        return 2
    if o.kind == "ellipsis":
        return 3
    if o.kind == "tuple" and not o.items:
        return 4
    if o.kind == "bytes":
        if len(o.value) == 0:
            return 5
        if len(o.value) == 1:
            return 0x400 + o.value[0]
    if o.kind == "str":
        if o.value == "":
            return 6
        # An interned one-character str is in the string table (5.4, note).
        if len(o.value) == 1 and ord(o.value) <= 255 and not o.interned:
            return 0x300 + ord(o.value)
    if o.kind == "int" and -5 <= o.value <= 256:
        return 0x100 + o.value + 5
    return None


def is_table_string(o):
    """Section 4: interned strings (not singletons) are referred to by STR or LSTR words."""
    return o.kind == "str" and o.interned and singleton_id(o) is None


def children(o):
    """[OBJ-2] The children of an object in canonical order; a frozenset is walked as its
    item tuple ([STR-2], [OBJ-9])."""
    if o.kind == "code":
        f = o.fields
        return [f[k] for k in CODE_POINTER_FIELDS]
    if o.kind == "tuple":
        return o.items
    if o.kind == "frozenset":
        return [frozenset_tuple(o)]
    return []


# Pointer fields of a code object in offset order ([OBJ-2]; the same in all three tables).
CODE_POINTER_FIELDS = ("consts", "names", "exceptiontable", "localsplusnames",
                       "localspluskinds", "filename", "name", "qualname", "linetable")


def frozenset_tuple(o):
    """[OBJ-9] The tuple a FROZENSET word points to: the items sorted, strings last, each group
    by the marshal format-2 encoding of the item, strings by UTF-8.  One tuple per frozenset."""
    if o.sorted_tuple is None:
        def key(item):
            if item.kind == "str":
                return (1, item.value.encode("utf-8", "surrogatepass"))
            return (0, marshal.dumps(python_value(item), 2))

        o.sorted_tuple = Obj("tuple")
        o.sorted_tuple.items = sorted(o.items, key=key)
    return o.sorted_tuple


def python_value(o):
    if o.kind in ("tuple", "frozenset"):
        items = tuple(python_value(i) for i in o.items)
        return items if o.kind == "tuple" else frozenset(items)
    if o.kind == "code":
        raise ValueError("a code object in a frozenset")
    return o.value


# ---------------------------------------------------------------------------------------------
# 6. Object layouts: per-version constants of the tables in 6.2
# ---------------------------------------------------------------------------------------------

if VERSION == (3, 11):
    REFCNT = 999_999_999  # [OBJ-6]
    ASCII_HEADER, COMPACT_HEADER = 48, 72
    STATE_BIT7 = 1 << 7  # ``ready`` = 1 (6.3)
    CODE_HEADER = 184
elif VERSION in ((3, 12), (3, 13)):
    REFCNT = 0xFFFFFFFF  # _Py_IMMORTAL_REFCNT
    ASCII_HEADER, COMPACT_HEADER = 40, 56
    STATE_BIT7 = 0  # ``statically_allocated`` = 0
    CODE_HEADER = 192 if VERSION == (3, 12) else 200
else:
    CODE_HEADER = None
FRAME_SPECIALS_SIZE = 9  # 6.2, 3.12 and 3.13
GC_HEADER = 16  # 6.1


def object_size(o):
    """6.5 *Sizes*: bytes from the object's start (its GC header for a tuple) to its padded
    end."""
    if o.kind == "str":
        kind, ascii_ = str_kind(o.value)
        header = ASCII_HEADER if ascii_ else COMPACT_HEADER
        return align(header + (len(o.value) + 1) * kind, WORD)
    if o.kind == "bytes":
        return align(32 + len(o.value) + 1, WORD)
    if o.kind == "tuple":
        return GC_HEADER + 24 + WORD * len(o.items)
    if o.kind == "int":
        return align(24 + 4 * len(int_digits(o.value)), WORD)
    if o.kind == "float":
        return 24
    if o.kind == "complex":
        return 32
    if o.kind == "code":
        return align(CODE_HEADER + len(o.fields["adaptive"]), WORD)
    raise ValueError(o.kind)


def str_kind(s):
    """6.3: (bytes per character, ascii)."""
    m = max(map(ord, s))
    if m < 128:
        return 1, True
    if m < 256:
        return 1, False
    if m < 65536:
        return 2, False
    return 4, False


def int_digits(n):
    """6.5 *Sizes*: 30-bit digits of |n|, least significant first."""
    n = abs(n)
    digits = []
    while n:
        digits.append(n & (2**30 - 1))
        n >>= 30
    return digits


# ---------------------------------------------------------------------------------------------
# 5.3 Tagged words
# ---------------------------------------------------------------------------------------------

TAG_PTR, TAG_TYPE, TAG_CONST, TAG_STR, TAG_FROZENSET, TAG_LSTR = range(6)


class Segment:
    """A module's segment being laid out ([SEG-1]) and then written."""

    def __init__(self, name):
        self.name = name
        self.offsets = {}  # id(Obj) -> offset in segment of the object (not its GC header)
        self.placed = []  # Obj in placement order, [SEG-5] strings last
        self.size = 0
        self.first_use = []  # interned strings in the module's order of first use ([STR-2])
        self.lstr_offsets = {}  # value -> offset of a [SEG-5] string
        self.file_offset = None  # of the block

    def place(self, o):
        start = self.size
        self.size += object_size(o)
        self.offsets[id(o)] = start + (GC_HEADER if o.kind == "tuple" else 0)
        self.placed.append(o)


def walk(seg, root):
    """[OBJ-2] Place the objects depth-first in pre-order from the root; record the interned
    strings in the order the walk reaches them ([STR-2])."""
    used = set()

    def visit(o):
        if singleton_id(o) is not None:
            return
        if is_table_string(o):
            if o.value not in used:
                used.add(o.value)
                seg.first_use.append(o)
            return
        if id(o) in seg.offsets:
            return
        if o.kind == "frozenset":
            visit(frozenset_tuple(o))
            return
        seg.place(o)
        for c in children(o):
            visit(c)

    visit(root)


class Image:
    def __init__(self):
        self.base = None
        self.string_index = {}  # value -> index ([STR-2])


def tagged(image, seg, o):
    """[SEG-3] The tagged word that refers to o from seg."""
    sid = singleton_id(o)
    if sid is not None:
        return sid << 3 | TAG_CONST
    if is_table_string(o):
        if o.value in image.string_index:
            return image.string_index[o.value] << 3 | TAG_STR
        return (image.base + seg.file_offset + seg.lstr_offsets[o.value]) | TAG_LSTR
    if o.kind == "frozenset":
        t = frozenset_tuple(o)
        return (image.base + seg.file_offset + seg.offsets[id(t)]) | TAG_FROZENSET
    return image.base + seg.file_offset + seg.offsets[id(o)] | TAG_PTR


def type_word(o):
    """[OBJ-4] TYPE word: type code << 3 | 1."""
    return TYPE_CODES[o.kind] << 3 | TAG_TYPE


# ---------------------------------------------------------------------------------------------
# 6.3 str, and the other object layouts of 6.2
# ---------------------------------------------------------------------------------------------


def str_bytes(s, ob_type):
    """6.3: a str object; ob_type is a TYPE word in a segment, the bare code 1 in the string
    heap ([STR-3])."""
    kind, ascii_ = str_kind(s)
    # [STR-4] interned 0; kind bits 2-4, compact bit 5, ascii bit 6, bit 7 per version.
    state = kind << 2 | 1 << 5 | (1 << 6 if ascii_ else 0) | STATE_BIT7
    head = struct.pack("<qQqqI4x", REFCNT, ob_type, len(s), -1, state)
    if VERSION == (3, 11):
        head += struct.pack("<Q", 0)  # wstr
        if not ascii_:
            head += struct.pack("<qQq", 0, 0, 0)  # utf8_length, utf8, wstr_length
    elif not ascii_:
        head += struct.pack("<qQ", 0, 0)  # utf8_length, utf8
    enc = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    data = s.encode(enc, "surrogatepass") + bytes(kind)  # NUL of the same width
    return pad8(head + data)


def code_bytes(image, seg, o):
    """The code object of 6.2's tables, with 6.4's derived fields.  Returns (bytes, offsets of
    its tagged words)."""
    f = o.fields
    kinds = f["localspluskinds"].value
    nlocalsplus = len(f["localsplusnames"].items)
    nlocals = ncellvars = nfreevars = nplaincellvars = 0
    for k in kinds:  # [OBJ-7] as get_localsplus_counts()
        if k & 0x20:
            nlocals += 1
            if k & 0x40:
                ncellvars += 1
        elif k & 0x40:
            ncellvars += 1
            nplaincellvars += 1
        elif k & 0x80:
            nfreevars += 1
    adaptive = f["adaptive"]
    ob_size = len(adaptive) // 2
    code = f["code"].value
    resume = dis.opmap["RESUME"]
    first = next((i for i in range(len(code) // 2) if code[2 * i] == resume), len(code) // 2)
    ptr = {k: tagged(image, seg, f[k]) for k in CODE_POINTER_FIELDS}
    if VERSION == (3, 11):
        head = struct.pack("<qQq3Q", REFCNT, type_word(o), ob_size, ptr["consts"],
                           ptr["names"], ptr["exceptiontable"])
        head += struct.pack("<ihh", f["flags"], -8, 0)  # co_warmup, _co_linearray_entry_size
        head += struct.pack("<10i", f["argcount"], f["posonlyargcount"], f["kwonlyargcount"],
                            f["stacksize"], f["firstlineno"], nlocalsplus, nlocals,
                            nplaincellvars, ncellvars, nfreevars)
    else:
        framesize = nlocalsplus + f["stacksize"] + FRAME_SPECIALS_SIZE
        head = struct.pack("<qQq3Q", REFCNT, type_word(o), ob_size, ptr["consts"],
                           ptr["names"], ptr["exceptiontable"])
        head += struct.pack("<11iI", f["flags"], f["argcount"], f["posonlyargcount"],
                            f["kwonlyargcount"], f["stacksize"], f["firstlineno"],
                            nlocalsplus, framesize, nlocals, ncellvars, nfreevars, 0)
    head += struct.pack("<6Q", *(ptr[k] for k in CODE_POINTER_FIELDS[3:]))
    assert len(head) == 144
    if VERSION == (3, 11):
        head += struct.pack("<3Qi4xQ", 0, 0, 0, first, 0)
    elif VERSION == (3, 12):
        head += struct.pack("<4Qi4xQ", 0, 0, 0, 0, first, 0)
    else:
        head += struct.pack("<5Qi4xQ", 0, 0, 0, 0, 0, first, 0)
    assert len(head) == CODE_HEADER
    words = [8, 24, 32, 40] + list(range(96, 144, 8))
    return pad8(head + adaptive), words


def object_bytes(image, seg, o):
    """One stored object, padded ([OBJ-1], [OBJ-6]); returns (bytes, tagged word offsets
    relative to the start of the bytes)."""
    tw = type_word(o)
    if o.kind == "str":
        return str_bytes(o.value, tw), [8]
    if o.kind == "bytes":
        return pad8(struct.pack("<qQqq", REFCNT, tw, len(o.value), -1) + o.value + b"\0"), [8]
    if o.kind == "tuple":
        items = [tagged(image, seg, i) for i in o.items]
        data = bytes(GC_HEADER) + struct.pack("<qQq", REFCNT, tw, len(items))
        data += struct.pack("<%dQ" % len(items), *items)
        return data, [GC_HEADER + 8] + [GC_HEADER + 24 + 8 * i for i in range(len(items))]
    if o.kind == "int":
        digits = int_digits(o.value)
        if VERSION == (3, 11):
            size = struct.pack("<q", -len(digits) if o.value < 0 else len(digits))
        else:
            size = struct.pack("<Q", len(digits) << 3 | (2 if o.value < 0 else 0))
        data = struct.pack("<qQ", REFCNT, tw) + size
        return pad8(data + struct.pack("<%dI" % len(digits), *digits)), [8]
    if o.kind == "float":
        return struct.pack("<qQd", REFCNT, tw, o.value), [8]
    if o.kind == "complex":
        return struct.pack("<qQdd", REFCNT, tw, o.value.real, o.value.imag), [8]
    if o.kind == "code":
        return code_bytes(image, seg, o)
    raise ValueError(o.kind)


# ---------------------------------------------------------------------------------------------
# 5.1 Block, segment and bitmap
# ---------------------------------------------------------------------------------------------


def block_bytes(image, seg):
    """[SEG-1] the segment, then [SEG-2] its bitmap."""
    out = bytearray()
    marks = []
    for o in seg.placed:
        start = len(out)
        data, words = object_bytes(image, seg, o)
        out += data
        marks += [(start + w) // WORD for w in words]
    assert len(out) == seg.size and len(out) % WORD == 0
    bitmap = bytearray(8 * ((seg.size + 511) // 512))
    for i in marks:
        bitmap[i // 8] |= 1 << (i % 8)
    return bytes(out), bytes(bitmap)


# ---------------------------------------------------------------------------------------------
# 2. Header, 3. Directory, names, lookup table, 4. String table
# ---------------------------------------------------------------------------------------------


def fingerprint():
    """2.2 and 6.5 *Fingerprint bytes*."""
    flags = ((1 if hasattr(sys, "gettotalrefcount") else 0)
             | (2 if hasattr(sys, "getobjects") else 0)
             | (4 if "t" in getattr(sys, "abiflags", "") else 0))
    tag = sys.implementation.cache_tag.encode("ascii")[:16]
    version = sys.version.encode("utf-8", "replace")[:84]
    fp = struct.pack("<I4sBcH16s84s", sys.hexversion, importlib.util.MAGIC_NUMBER, 8,
                     b"L" if sys.byteorder == "little" else b"B", flags, tag, version)
    assert len(fp) == 112
    return fp


def preferred_base(modules):
    """[HDR-6], 6.5 *Preferred base*."""
    key = b"\0".join(m["name_b"] + b"\0" + m["path_b"] for m in modules)
    return 2**44 + (crc32(key) % 65536) * 2**30


def names_section(modules):
    """[NAM-1] name then path of each entry, back to back."""
    out = bytearray()
    for m in modules:
        m["name_offset"] = len(out)
        out += m["name_b"]
        m["path_offset"] = len(out)
        out += m["path_b"]
    return bytes(out)


def lookup_table(modules):
    """[LKP-1], [LKP-2]."""
    n = len(modules)
    slots = 1
    while slots < 2 * n:
        slots *= 2
    groups = -(-slots // 1024)
    table = [0] * slots
    for i, m in enumerate(modules):
        h = crc32(m["name_b"])
        k = h % slots
        while table[k]:
            k = (k + 1) % slots
        table[k] = i + 1
    slot_bytes = struct.pack("<%dI" % slots, *table)
    group_crcs = [crc32(slot_bytes[4096 * g:4096 * (g + 1)]) for g in range(groups)]
    return struct.pack("<II%dI" % groups, slots, groups, *group_crcs) + slot_bytes


def directory_entry(m):
    """3.1 Module entry (80 bytes), [DIR-1] its CRC."""
    body = struct.pack("<IIIIIqQQIII4xqq", m["flags"], m["name_offset"], len(m["name_b"]),
                       m["path_offset"], len(m["path_b"]), m["mtime_ns"], m["size"],
                       m["seg"].file_offset, m["seg"].size, 0, m["data_crc"], 0, 0)
    assert len(body) == 76
    return struct.pack("<I", crc32(body, m["name_b"], m["path_b"])) + body


def string_table(image, modules_placed):
    """[STR-2] the interned strings two or more modules use: those 8 or more modules use first,
    then the others, each group in order of first use; [STR-1], [STR-3] the index and heap."""
    users = {}
    order = []
    for m in modules_placed:
        for o in m["seg"].first_use:
            if o.value not in users:
                users[o.value] = 0
                order.append(o.value)
            users[o.value] += 1
    shared = [s for s in order if users[s] >= 8] + [s for s in order if 2 <= users[s] < 8]
    image.string_index = {s: i for i, s in enumerate(shared)}
    heap = bytearray()
    index = bytearray()
    for s in shared:
        obj = str_bytes(s, 1)  # [STR-3] bare type code 1
        entry = struct.pack("<III", len(heap), len(obj), 1)
        index += entry + struct.pack("<I", crc32(entry, obj))
        heap += obj
    return bytes(index), bytes(heap)


# ---------------------------------------------------------------------------------------------
# The golden build (spec/golden/README.md) and the whole image
# ---------------------------------------------------------------------------------------------


def is_test_module(name):
    """[DIR-4] a name component after the first is test, tests or starts with test_."""
    return any(p in ("test", "tests") or p.startswith("test_") for p in name.split(".")[1:])


def collect_modules(root):
    """The modules of the tree under root, as relative paths ([DIR-5])."""
    mods = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root)
            parts = rel[:-3].split(os.sep)
            package = parts[-1] == "__init__"
            if package:
                parts = parts[:-1]
            mods.append({"name": ".".join(parts), "path": rel, "package": package})
    return mods


def build(src_root, optimize=GOLDEN_OPTIMIZE):
    """The image of the tree under src_root, built as spec/golden/README.md says."""
    if CODE_HEADER is None or sys.int_info.bits_per_digit != 30 or sys.maxsize != 2**63 - 1:
        raise SystemExit("unsupported build (6.5 *Supported builds*)")
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        shutil.copytree(src_root, tree)
        for dirpath, _, filenames in os.walk(tree):
            for fn in filenames:
                os.utime(os.path.join(dirpath, fn), ns=(GOLDEN_MTIME_NS, GOLDEN_MTIME_NS))
        modules = collect_modules(tree)
        for m in modules:
            full = os.path.join(tree, m["path"])
            with open(full, "rb") as fh:
                source = fh.read()
            st = os.stat(full)
            m["mtime_ns"], m["size"] = st.st_mtime_ns, st.st_size
            code = compile(source, m["path"], "exec", dont_inherit=True, optimize=optimize)
            m["root"] = object_graph(code)
    return assemble(modules, optimize)


def golden_image():
    """The bytes of the running version's golden vector, built from spec/golden/src."""
    return build(os.path.join(GOLDEN, "src"))[0]


def assemble(modules, optimize):
    for m in modules:
        m["name_b"] = m["name"].encode("utf-8")
        m["path_b"] = os.fsencode(m["path"])
        # Relative paths: no directory stamps ([DIR-6]).
        m["flags"] = 1 if m["package"] else 0  # MOD_PACKAGE ([DIR-5])
    modules.sort(key=lambda m: m["name_b"])  # [DIR-2]
    placed = ([m for m in modules if not is_test_module(m["name"])]
              + [m for m in modules if is_test_module(m["name"])])  # [DIR-4]
    image = Image()
    image.base = preferred_base(modules)
    for m in placed:
        seg = m["seg"] = Segment(m["name"])
        walk(seg, m["root"])
    index, heap = string_table(image, placed)
    for m in placed:  # [SEG-5] strings only this module uses, after every other object
        seg = m["seg"]
        for o in seg.first_use:
            if o.value not in image.string_index:
                seg.lstr_offsets[o.value] = seg.size
                seg.place(o)
    # Sections ([SEC-6]): each at the first offset after the previous with its alignment.
    names = names_section(modules)
    lookup = lookup_table(modules)
    sizes = [80 * len(modules), len(names), len(lookup), len(index), len(heap), None]
    aligns = [8, 8, 8, 8, PAGE, PAGE]
    offsets = []
    pos = HEADER_SIZE
    for i in range(6):
        pos = align(pos, aligns[i])
        offsets.append(pos)
        if sizes[i] is not None:
            pos += sizes[i]
    pos = offsets[5]
    for m in placed:  # [DIR-4] blocks tile the module heap in placement order
        seg = m["seg"]
        seg.file_offset = pos
        pos += seg.size + 8 * ((seg.size + 511) // 512)
    sizes[5] = pos - offsets[5]
    blocks = bytearray()
    for m in placed:
        segment, bitmap = block_bytes(image, m["seg"])
        m["data_crc"] = crc32(segment, bitmap)  # [DIR-3]
        blocks += segment + bitmap
    directory = b"".join(directory_entry(m) for m in modules)
    body = [directory, names, lookup, index, heap, bytes(blocks)]
    file_size = offsets[5] + sizes[5]
    out = bytearray(file_size)
    for off, data in zip(offsets, body):
        out[off:off + len(data)] = data
    sections = b"".join(struct.pack("<QQ", o, s) for o, s in zip(offsets, sizes))
    header = struct.pack("<8sHHIQQIIII", b"\x89RMI\r\n\x1a\n", 2, 0, HEADER_SIZE, file_size,
                         image.base, len(modules), len(index) // 16, 0, optimize & 3)
    header += sections + fingerprint()
    assert len(header) == HEADER_SIZE
    header = header[:40] + struct.pack("<I", crc32(header)) + header[44:]  # [HDR-5]
    out[:HEADER_SIZE] = header
    return bytes(out), describe(offsets, sizes, placed, image)


HEADER_FIELDS = [(0, 8, "magic"), (8, 2, "format_major"), (10, 2, "format_minor"),
                 (12, 4, "header_size"), (16, 8, "file_size"), (24, 8, "preferred_base"),
                 (32, 4, "module_count"), (36, 4, "string_count"), (40, 4, "header_crc"),
                 (44, 4, "flags")]
HEADER_FIELDS += [(48 + 16 * i, 16, "section table entry %d" % i) for i in range(6)]
HEADER_FIELDS += [(144, 4, "fingerprint hexversion"), (148, 4, "fingerprint pyc_magic"),
                  (152, 1, "fingerprint ptr_size"), (153, 1, "fingerprint byte_order"),
                  (154, 2, "fingerprint build_flags"), (156, 16, "fingerprint cache_tag"),
                  (172, 84, "fingerprint version")]
ENTRY_FIELDS = [(0, 4, "entry_crc"), (4, 4, "flags"), (8, 4, "name_offset"),
                (12, 4, "name_length"), (16, 4, "path_offset"), (20, 4, "path_length"),
                (24, 8, "source_mtime_ns"), (32, 8, "source_size"), (40, 8, "segment_offset"),
                (48, 4, "segment_size"), (52, 4, "root_offset"), (56, 4, "data_crc"),
                (60, 4, "reserved"), (64, 8, "dir_mtime_ns"), (72, 8, "pkg_mtime_ns")]
SECTION_NAMES = ["module directory", "names", "lookup table", "string index", "string heap",
                 "module heap"]


def describe(offsets, sizes, placed, image):
    """Regions of the image, (start, end, label), for --check's report of differences."""
    regions = [(0, HEADER_SIZE, "header")]
    regions += [(o, o + n, f) for o, n, f in HEADER_FIELDS]
    regions += [(o, o + n, name) for o, n, name in zip(offsets, sizes, SECTION_NAMES)]
    for i in range(sizes[0] // 80):
        base = offsets[0] + 80 * i
        regions += [(base + o, base + o + n, "entry %d %s" % (i, f)) for o, n, f in ENTRY_FIELDS]
    for i, value in enumerate(image.string_index):
        base = offsets[3] + 16 * i
        regions.append((base, base + 16, "string %d %r index entry" % (i, value)))
    heap = offsets[4]
    for value in image.string_index:
        size = len(str_bytes(value, 1))
        regions.append((heap, heap + size, "string %r" % value))
        heap += size
    for m in placed:
        seg = m["seg"]
        start = seg.file_offset
        regions.append((start, start + seg.size, "segment of " + m["name"]))
        pos = start
        for o in seg.placed:
            size = object_size(o)
            label = o.kind if o.kind != "str" else "str %r" % o.value[:20]
            if o.kind == "code":
                label = "code %s" % o.fields["qualname"].value
            regions.append((pos, pos + size, "%s at segment +%d" % (label, pos - start)))
            pos += size
        end = start + seg.size + 8 * ((seg.size + 511) // 512)
        regions.append((start + seg.size, end, "bitmap of " + m["name"]))
    return regions


def where(regions, off):
    """The labels of the regions holding off, outermost first, with off's place in the
    innermost."""
    hits = [(a, b, n) for a, b, n in regions if a <= off < b]
    if not hits:
        return "padding between sections"
    a, _, n = min(hits, key=lambda h: h[1] - h[0])
    return "; ".join([h[2] for h in hits if h[2] != n] + ["%s +%d" % (n, off - a)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("-o", dest="output")
    args = ap.parse_args(argv)
    data, regions = build(os.path.join(GOLDEN, "src"))
    if args.output:
        with open(args.output, "wb") as fh:
            fh.write(data)
    if args.check:
        vector = "cpython-%d%d" % VERSION
        with open(os.path.join(GOLDEN, vector, "gold.img"), "rb") as fh:
            gold = fh.read()
        diffs = [i for i in range(max(len(data), len(gold)))
                 if i >= len(data) or i >= len(gold) or data[i] != gold[i]]
        if not same_build():
            diffs = [i for i in diffs if not (172 <= i < 256 or 40 <= i < 44)]
        if not diffs:
            print("%s: %d bytes, identical" % (vector, len(data)))
            return 0
        print("%s: %d differing bytes (ours %d, gold %d bytes)" % (vector, len(diffs),
                                                                     len(data), len(gold)))
        for i in diffs[:20]:
            a = data[i] if i < len(data) else None
            b = gold[i] if i < len(gold) else None
            print("  %6d: ours %s gold %s  (%s)" % (i, a, b, where(regions, i)))
        return 1
    return 0


def same_build():
    with open(os.path.join(GOLDEN, "README.md"), encoding="utf-8") as fh:
        return "`%s`" % sys.version in fh.read()


if __name__ == "__main__":
    sys.exit(main())
