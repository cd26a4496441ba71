"""The image format's constants and record layouts (spec sections 2-5): the one source of truth.

Writers, readers and the CLI import them from here, and the C code includes
``_accel/rm_format.h``, which spec/tools/gen_c_header.py generates from this module (a test
checks it is current): the implementations can disagree about the format only through code,
never through a copied number.  Per-version object layouts live in ``layouts.py``; how the
file is put together and taken apart, in ``container.py``.

The import hook's path (the accelerator checking a header) imports this module at a process's
first import, so it does not import ``struct``: the record layouts below are ``struct.Struct``
objects made on first use, and the header is parsed with ``int.from_bytes``.
"""

import sys

from .errors import ImageError

MAGIC = b"\x89RMI\r\n\x1a\n"     # [HDR-1]
FORMAT_MAJOR = 2                 # [HDR-2] a reader rejects any other major version
FORMAT_MINOR = 0                 # [HDR-2] a reader accepts any minor version
PAGE = 4096                      # [SEC-3] heaps start on this boundary
ALIGN = 8                        # [OBJ-1] every object (or its GC header) starts 8-aligned


class Record:
    """A fixed-size little-endian record of the format: its fields in order, each a name and a
    ``struct`` code (``"I"``, ``"Q"``, ``"8s"``; ``"8x"`` for reserved bytes, which ``struct``
    skips).  ``offset(name)`` and ``width(name)`` say where a field lies, ``size`` is the
    record's bytes, ``struct_format()`` its ``struct`` format.  The C header rm_format.h is
    generated from these (spec/tools/gen_c_header.py): C and Python read the same offsets."""

    __slots__ = ("name", "title", "fields", "size", "_at", "_struct")

    def __init__(self, name, title, fields):
        self.name, self.title, self.fields = name, title, fields
        self._struct = None
        at = self._at = {}           # field -> (start, end, struct code letter)
        pos = 0
        for field, code in fields:
            end = pos + (int(code[:-1]) if len(code) > 1 else _CODE_BYTES[code])
            at[field] = (pos, end, code[-1])
            pos = end
        self.size = pos

    def offset(self, field):
        return self._at[field][0]

    def width(self, field):
        start, end, _ = self._at[field]
        return end - start

    def struct_format(self):
        return "<" + "".join(code for _, code in self.fields)

    def struct(self):
        """The record as a ``struct.Struct``, made on first use (``struct`` is not imported on
        the import hook's path)."""
        if self._struct is None:
            import struct
            self._struct = struct.Struct(self.struct_format())
        return self._struct

    def pack(self, **values):
        """The record's bytes from its fields by name (reserved ``x`` fields are zero)."""
        return self.struct().pack(
            *(values[field] for field, code in self.fields if not code.endswith("x")))

    def read(self, data, field, at=0):
        """One field of the record at ``at`` in ``data``: bytes for ``s``/``x`` fields, else an
        int (without ``struct``: this module is on the import hook's path)."""
        start, end, kind = self._at[field]
        raw = data[at + start:at + end]
        if kind in "sx":
            return bytes(raw)
        return int.from_bytes(raw, "little", signed=kind == "q")

    def read_all(self, data, at=0):
        """Every field of the record at ``at`` in ``data``, as a dict by field name."""
        return {field: self.read(data, field, at) for field, _ in self.fields}


_CODE_BYTES = {"B": 1, "H": 2, "I": 4, "Q": 8, "q": 8}

SECTION_NAMES = ("directory", "names", "lookup", "string_index", "string_heap", "module_heap")
SECTION_COUNT = len(SECTION_NAMES)
# Indices into the section table ([SEC-1]).
SEC_DIRECTORY, SEC_NAMES, SEC_LOOKUP, SEC_STRING_INDEX, SEC_STRING_HEAP, SEC_MODULE_HEAP = \
    range(SECTION_COUNT)

SECTION_RECORD = Record("SECT", "an entry of the section table (spec 2.3)", (
    ("offset", "Q"), ("size", "Q")))
FINGERPRINT_RECORD = Record("FP", "the interpreter build an image is for (spec 2.2)", (
    ("hexversion", "I"), ("pyc_magic", "4s"), ("ptr_size", "B"), ("byte_order", "B"),
    ("build_flags", "H"), ("cache_tag", "16s"), ("version", "84s")))
HEADER_RECORD = Record("HDR", "the header (spec 2.1)", (
    ("magic", f"{len(MAGIC)}s"), ("format_major", "H"), ("format_minor", "H"),
    ("header_size", "I"), ("file_size", "Q"), ("preferred_base", "Q"), ("module_count", "I"),
    ("string_count", "I"), ("header_crc", "I"), ("flags", "I"),
    ("sections", f"{SECTION_COUNT * SECTION_RECORD.size}s"),
    ("fingerprint", f"{FINGERPRINT_RECORD.size}s")))
MODULE_RECORD = Record("DIR", "a module directory entry (spec 3.1)", (
    ("entry_crc", "I"), ("flags", "I"), ("name_offset", "I"), ("name_length", "I"),
    ("path_offset", "I"), ("path_length", "I"), ("source_mtime_ns", "q"), ("source_size", "Q"),
    ("segment_offset", "Q"), ("segment_size", "I"), ("root_offset", "I"), ("data_crc", "I"),
    ("reserved", "4x"), ("dir_mtime_ns", "q"), ("pkg_mtime_ns", "q")))
STRING_RECORD = Record("STRIDX", "a string index entry (spec 4.1)", (
    ("offset", "I"), ("size", "I"), ("flags", "I"), ("crc", "I")))
LOOKUP_HEAD_RECORD = Record("LOOKUPHEAD", "the head of the lookup table (spec 3.3)", (
    ("slots", "I"), ("groups", "I")))
LOOKUP_GROUP = 1024              # [LKP-1] slots one CRC covers
LOOKUP_RECORD = Record("LOOKUP", "a lookup table slot: directory index + 1, 0 when empty "
                       "(spec 3.3)", (("slot", "I"),))
# A tagged word (spec 5.3): its low TAG_BITS bits say how the loader resolves it.
TAG_BITS = 3
TAG_MASK = (1 << TAG_BITS) - 1

RECORDS = (HEADER_RECORD, SECTION_RECORD, FINGERPRINT_RECORD, MODULE_RECORD, STRING_RECORD,
           LOOKUP_HEAD_RECORD, LOOKUP_RECORD)

HEADER_SIZE = HEADER_RECORD.size                               # [HDR-3] 256
MODULE_SIZE = MODULE_RECORD.size                               # [SEC-2] 80 bytes an entry
STRING_SIZE = STRING_RECORD.size                               # [SEC-2] 16 bytes an entry
FINGERPRINT_OFFSET = HEADER_RECORD.offset("fingerprint")       # [HDR-7] spec 2.2
FINGERPRINT_SIZE = FINGERPRINT_RECORD.size
SECTION_TABLE_OFFSET = HEADER_RECORD.offset("sections")        # [SEC-1]

# The records as ``struct.Struct`` objects (``HEADER`` etc.), made on first use by the module
# __getattr__ below: ``struct`` is not imported on the import hook's path.
_STRUCTS = {"HEADER": HEADER_RECORD, "SECTION": SECTION_RECORD, "FINGERPRINT": FINGERPRINT_RECORD,
            "MODULE": MODULE_RECORD, "STRING": STRING_RECORD, "LOOKUP": LOOKUP_RECORD,
            "LOOKUP_HEAD": LOOKUP_HEAD_RECORD}


def __getattr__(name):
    record = _STRUCTS.get(name)
    if record is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = record.struct()
    return value


# Header flags ([HDR-9]).
FLAG_OPTIMIZE_MASK = 0x3         # bits 0-1: the optimization level the code was compiled at

MOD_PACKAGE = 0x1                # directory entry flags (spec 3.1)
MOD_FIRST_IN_DIR = 0x2           # [DIR-6] stock finds the recorded file first in its directory
MOD_FLAGS = MOD_PACKAGE | MOD_FIRST_IN_DIR
STR_INTERNED = 0x1               # string index entry flags (spec 4.1)

# Tags of tagged words: spec 5.3.  PTR is 0, so a pointer word holds the plain address.
RELOC_KIND_NAMES = ("PTR", "TYPE", "CONST", "STR", "FROZENSET", "LSTR")
R_PTR, R_TYPE, R_CONST, R_STR, R_FROZENSET, R_LSTR = range(len(RELOC_KIND_NAMES))
ADDRESS_TAGS = (R_PTR, R_FROZENSET, R_LSTR)     # tags whose word keeps an address
R_KINDS = len(RELOC_KIND_NAMES)
BITMAP_COVER = 64 * ALIGN        # [SEG-2] segment bytes one 8-byte bitmap word covers


def bitmap_size(segment_size):
    """[SEG-2] bytes of the bitmap that follows a segment of ``segment_size`` bytes."""
    return (segment_size + BITMAP_COVER - 1) // BITMAP_COVER * ALIGN


def lookup_slots(module_count):
    """[LKP-1] slots of the lookup table: the smallest power of two >= 2 * module_count."""
    n = 1
    while n < 2 * module_count:
        n *= 2
    return n


def lookup_groups(module_count):
    """[LKP-1] groups of LOOKUP_GROUP slots (the last may be shorter), one CRC each."""
    return (lookup_slots(module_count) + LOOKUP_GROUP - 1) // LOOKUP_GROUP


def lookup_size(module_count):
    """[LKP-1] bytes of the lookup section: its head, the groups' CRCs, then the slots."""
    return (LOOKUP_HEAD_RECORD.size + 4 * lookup_groups(module_count)
            + lookup_slots(module_count) * LOOKUP_RECORD.size)

# Type codes written in ob_type: spec 5.2.
T_STR, T_BYTES, T_TUPLE, T_INT, T_FLOAT, T_COMPLEX, T_CODE = range(1, 8)
TYPE_NAMES = {T_STR: "str", T_BYTES: "bytes", T_TUPLE: "tuple", T_INT: "int",
              T_FLOAT: "float", T_COMPLEX: "complex", T_CODE: "code"}

# Singleton ids for R_CONST: spec 5.4.
C_NONE, C_TRUE, C_FALSE, C_ELLIPSIS, C_EMPTY_TUPLE, C_EMPTY_BYTES, C_EMPTY_STR = range(7)
C_FIXED_END = 7                  # ids below this are the fixed singletons above
C_SMALL_INT = 0x100              # + (n + 5) for -5 <= n <= 256
C_LATIN1 = 0x300                 # + code point, 0..255
C_BYTE = 0x400                   # + byte value, for bytes of length 1
C_END = C_BYTE + 256             # one past the largest id
SMALL_INT_MIN, SMALL_INT_MAX = -5, 256


def singleton_id(obj):
    """The R_CONST id of obj, or None when obj is not one of the interpreter's singletons."""
    if obj is None:
        return C_NONE
    if obj is True:
        return C_TRUE
    if obj is False:
        return C_FALSE
    if obj is Ellipsis:
        return C_ELLIPSIS
    t = type(obj)
    if t is int and SMALL_INT_MIN <= obj <= SMALL_INT_MAX:
        return C_SMALL_INT + obj - SMALL_INT_MIN
    if t is tuple and not obj:
        return C_EMPTY_TUPLE
    if t is bytes and len(obj) <= 1:
        return C_BYTE + obj[0] if obj else C_EMPTY_BYTES
    if t is str and len(obj) <= 1:
        return C_LATIN1 + ord(obj) if obj and ord(obj) < 256 else (C_EMPTY_STR if not obj else None)
    return None


def singleton(cid):
    """The object a R_CONST id names; raises KeyError for an id the spec does not define."""
    fixed = (None, True, False, Ellipsis, (), b"", "")       # C_NONE .. C_EMPTY_STR
    if cid < C_FIXED_END:
        return fixed[cid]
    if C_SMALL_INT <= cid <= C_SMALL_INT + SMALL_INT_MAX - SMALL_INT_MIN:
        return cid - C_SMALL_INT + SMALL_INT_MIN
    if C_LATIN1 <= cid < C_LATIN1 + 256:
        return chr(cid - C_LATIN1)
    if C_BYTE <= cid < C_BYTE + 256:
        return bytes((cid - C_BYTE,))
    raise KeyError(cid)


_zlib_crc32 = None


def crc32(*chunks):
    global _zlib_crc32
    if _zlib_crc32 is None:   # zlib on first use: the import hook checks headers with the
        from zlib import crc32 as _zlib_crc32     # accelerator's CRC and never imports it
    c = 0
    for chunk in chunks:
        c = _zlib_crc32(chunk, c)
    return c


def build_flags():
    """[HDR-7] bit 0 Py_DEBUG, bit 1 Py_TRACE_REFS, bit 2 Py_GIL_DISABLED (free-threaded)."""
    return ((1 if hasattr(sys, "gettotalrefcount") else 0)
            | (2 if hasattr(sys, "getobjects") else 0)
            | (4 if "t" in getattr(sys, "abiflags", "") else 0))


def fingerprint():
    """The 112-byte fingerprint of the running interpreter build: spec 2.2 (the layout of
    ``FINGERPRINT``, packed by hand: see the module docstring)."""
    # the bootstrap module is always loaded; importlib.util would cost milliseconds at start-up
    from _frozen_importlib_external import MAGIC_NUMBER
    ptr_size = (sys.maxsize.bit_length() + 1) // 8
    return (sys.hexversion.to_bytes(4, "little") + MAGIC_NUMBER
            + bytes((ptr_size, ord("L") if sys.byteorder == "little" else ord("B")))
            + build_flags().to_bytes(2, "little")
            + sys.implementation.cache_tag.encode("ascii")[:16].ljust(16, b"\0")
            + sys.version.encode("utf-8", "replace")[:84].ljust(84, b"\0"))


def describe_fingerprint(fp):
    """A short human description of a fingerprint, for error messages and ``info``."""
    f = FINGERPRINT_RECORD.read_all(fp)
    tag = f["cache_tag"].rstrip(b"\0").decode("ascii", "replace")
    version = f["version"].rstrip(b"\0").decode("utf-8", "replace").split("\n")[0]
    order = "little" if f["byte_order"] == ord("L") else "big"
    return f"{tag} ({version}), {f['ptr_size'] * 8}-bit {order}-endian"


def align(n, a=ALIGN):
    return (n + a - 1) & ~(a - 1)


def preferred_base(key):
    """[HDR-6] A 1 GiB-aligned address in [16 TiB, 80 TiB) chosen from key (the module list)."""
    return 0x1000_0000_0000 + (crc32(key) % 0x10000) * 0x4000_0000


def parse_header(hdr):
    """Every field of the 256 header bytes by its spec name (``HEADER_RECORD``), unchecked, with
    ``sections`` as a list of (offset, size), indexed by ``SEC_*``: for any image, this
    interpreter's or not."""
    fields = HEADER_RECORD.read_all(hdr)
    read, at = SECTION_RECORD.read, SECTION_TABLE_OFFSET
    fields["sections"] = [
        (read(hdr, "offset", at + i * SECTION_RECORD.size), read(hdr, "size", at + i * SECTION_RECORD.size))
        for i in range(SECTION_COUNT)]
    return fields


def check_header(hdr, file_size, crc=crc32):
    """Check what the 256 header bytes alone can show ([HDR-1..9], [SEC-2]); returns its fields
    (``base``, ``modules``, ``strings``, ``optimize``, ``fingerprint``, ``sections``) and the
    raw ones of ``parse_header``.  ``crc``: a function like ``crc32`` (the accelerator passes
    its own).  Used by the reference reader, the accelerator's Python side and the CLI."""
    h = parse_header(hdr)
    major, minor = h["format_major"], h["format_minor"]
    if h["magic"] != MAGIC:
        raise ImageError("not a refmarshal image (bad magic)")
    if major != FORMAT_MAJOR:
        raise ImageError(f"format version {major}.{minor} is not supported "
                         f"(this reader reads {FORMAT_MAJOR}.x)")
    if h["header_size"] != HEADER_SIZE:
        raise ImageError(f"header size {h['header_size']} is not {HEADER_SIZE}")
    if h["file_size"] != file_size:
        raise ImageError(f"truncated or extended: header says {h['file_size']} bytes, "
                         f"file has {file_size}")
    crc_at = HEADER_RECORD.offset("header_crc")
    if crc(hdr[:crc_at], bytes(4), hdr[crc_at + 4:]) != h["header_crc"]:
        raise ImageError("header checksum mismatch")
    fp, here = h["fingerprint"], fingerprint()
    if fp != here:
        raise ImageError(f"image is for {describe_fingerprint(fp)}; "
                         f"this interpreter is {describe_fingerprint(here)}")
    flags, base = h["flags"], h["preferred_base"]
    if flags & ~FLAG_OPTIMIZE_MASK:
        raise ImageError(f"reserved header flags set: {flags:#x}")
    if not (base % 0x4000_0000 == 0 and 0 < base < 1 << 47):
        raise ImageError(f"bad preferred base {base:#x}")
    sections = h["sections"]
    if sections[SEC_DIRECTORY][1] != h["module_count"] * MODULE_SIZE:
        raise ImageError("directory size does not match module count")
    if sections[SEC_STRING_INDEX][1] != h["string_count"] * STRING_SIZE:
        raise ImageError("string index size does not match string count")
    if sections[SEC_LOOKUP][1] != lookup_size(h["module_count"]):
        raise ImageError("lookup table size does not match module count")
    h.update(base=base, modules=h["module_count"], strings=h["string_count"],
             optimize=flags & FLAG_OPTIMIZE_MASK)
    return h


class ModuleEntry:
    """One directory entry ([DIR-1]), as both readers return it; ``dir_mtime_ns``,
    ``pkg_mtime_ns`` and ``first_in_dir`` are its directory stamps and MOD_FIRST_IN_DIR
    ([DIR-6])."""
    __slots__ = ("name", "path", "mtime_ns", "size", "is_package", "seg_off", "seg_size",
                 "root", "data_crc", "dir_mtime_ns", "pkg_mtime_ns", "first_in_dir")

    def __init__(self, name, path, mtime_ns, size, is_package, seg_off, seg_size, root,
                 data_crc, dir_mtime_ns=0, pkg_mtime_ns=0, first_in_dir=False):
        # plain assignments: the importer builds one of these for every module it serves
        self.name, self.path, self.mtime_ns, self.size = name, path, mtime_ns, size
        self.is_package, self.seg_off, self.seg_size, self.root = is_package, seg_off, seg_size, root
        self.data_crc = data_crc
        self.dir_mtime_ns, self.pkg_mtime_ns = dir_mtime_ns, pkg_mtime_ns
        self.first_in_dir = first_in_dir

    @property
    def block_size(self):
        """Bytes of the module's block: its segment and the bitmap after it ([SEG-1])."""
        return self.seg_size + bitmap_size(self.seg_size)
