"""The image container: every constant and record layout of spec sections 2-5, in one place.

Reader and writer both import from here, so the two can only disagree about the format through
code, never through a copied number.  Per-version object layouts live in ``layouts.py``.

The import hook's path (the accelerator checking a header) imports this module at a process's
first import, so it does not import ``struct``: the record layouts below are ``struct.Struct``
objects made on first use, and the header is parsed with ``int.from_bytes``.
"""

import sys

from .errors import ImageError

MAGIC = b"\x89RMI\r\n\x1a\n"     # [HDR-1]
FORMAT_MAJOR = 1                 # [HDR-2] a reader rejects any other major version
FORMAT_MINOR = 0                 # [HDR-2] a reader accepts any minor version
HEADER_SIZE = 256
PAGE = 4096                      # [SEC-3] heaps start on this boundary
ALIGN = 8                        # [OBJ-1] every object (or its GC header) starts 8-aligned
MODULE_SIZE = 80                 # [SEC-2] bytes per directory entry (spec 3.1)
STRING_SIZE = 16                 # [SEC-2] bytes per string index entry (spec 4.1)
FINGERPRINT_OFFSET, FINGERPRINT_SIZE = 144, 112     # [HDR-7] spec 2.2

# Record layouts (little-endian), as struct formats; ``HEADER`` etc. are ``struct.Struct``
# objects made from these on first use (module __getattr__ below).
LAYOUTS = {
    "HEADER": "<8sHHIQQIIII96s112s",     # spec 2.1
    "SECTION": "<QQ",                    # spec 2.3
    "FINGERPRINT": "<I4sBBH16s84s",      # spec 2.2
    "MODULE": "<IIIIIIqQQIIIIII8x",      # spec 3.1
    "STRING": "<IIII",                   # spec 4.1
    "RELOC": "<I",                       # spec 5.3: (slot_word << 3) | kind
}
SECTION_NAMES = ("directory", "names", "string_index", "string_heap", "module_heap", "relocations")


def __getattr__(name):
    fmt = LAYOUTS.get(name)
    if fmt is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import struct
    value = globals()[name] = struct.Struct(fmt)
    return value


def layout(name):
    """``HEADER``, ``MODULE``... from inside this module (where __getattr__ does not apply)."""
    return globals().get(name) or __getattr__(name)


# Header flags ([HDR-9]).
FLAG_OPTIMIZE_MASK = 0x3         # bits 0-1: the optimization level the code was compiled at

MOD_PACKAGE = 0x1                # directory entry flags (spec 3.1)
STR_INTERNED = 0x1               # string index entry flags (spec 4.1)

# Relocation kinds: spec 5.3.
R_TYPE, R_CONST, R_STR, R_FROZENSET, R_PTR = range(5)
RELOC_KIND_NAMES = ("TYPE", "CONST", "STR", "FROZENSET", "PTR")

# Type codes written in ob_type: spec 5.2.
T_STR, T_BYTES, T_TUPLE, T_INT, T_FLOAT, T_COMPLEX, T_CODE = range(1, 8)
TYPE_NAMES = {T_STR: "str", T_BYTES: "bytes", T_TUPLE: "tuple", T_INT: "int",
              T_FLOAT: "float", T_COMPLEX: "complex", T_CODE: "code"}

# Singleton ids for R_CONST: spec 5.4.
C_NONE, C_TRUE, C_FALSE, C_ELLIPSIS, C_EMPTY_TUPLE, C_EMPTY_BYTES, C_EMPTY_STR = range(7)
C_SMALL_INT = 0x100              # + (n + 5) for -5 <= n <= 256
C_LATIN1 = 0x300                 # + code point, 0..255
C_BYTE = 0x400                   # + byte value, for bytes of length 1
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
    fixed = (None, True, False, Ellipsis, (), b"", "")
    if cid < len(fixed):
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
    hexversion, magic, psize, order, flags, tag, version = layout("FINGERPRINT").unpack(fp)
    tag = tag.rstrip(b"\0").decode("ascii", "replace")
    version = version.rstrip(b"\0").decode("utf-8", "replace").split("\n")[0]
    return f"{tag} ({version}), {psize * 8}-bit {'little' if order == ord('L') else 'big'}-endian"


def align(n, a=ALIGN):
    return (n + a - 1) & ~(a - 1)


def preferred_base(key):
    """[HDR-6] A 1 GiB-aligned address in [16 TiB, 80 TiB) chosen from key (the module list)."""
    return 0x1000_0000_0000 + (crc32(key) % 0x10000) * 0x4000_0000


def check_header(hdr, file_size, crc=crc32):
    """Check what the 256 header bytes alone can show ([HDR-1..9], [SEC-2]); returns its fields
    and the section table.  ``crc``: a function like ``crc32`` (the accelerator passes its own).
    Shared by the reference reader and the accelerator's Python side.  Fields are read at the
    offsets of spec 2.1 (the layout ``HEADER`` packs), without ``struct``."""
    def u(off, size):
        return int.from_bytes(hdr[off:off + size], "little")
    magic, major, minor, hsize, fsize = hdr[0:8], u(8, 2), u(10, 2), u(12, 4), u(16, 8)
    base, nmod, nstr, hcrc, flags = u(24, 8), u(32, 4), u(36, 4), u(40, 4), u(44, 4)
    fp = bytes(hdr[FINGERPRINT_OFFSET:FINGERPRINT_OFFSET + FINGERPRINT_SIZE])
    if magic != MAGIC:
        raise ImageError("not a refmarshal image (bad magic)")
    if major != FORMAT_MAJOR:
        raise ImageError(f"format version {major}.{minor} is not supported "
                         f"(this reader reads {FORMAT_MAJOR}.x)")
    if hsize != HEADER_SIZE:
        raise ImageError(f"header size {hsize} is not {HEADER_SIZE}")
    if fsize != file_size:
        raise ImageError(f"truncated or extended: header says {fsize} bytes, file has {file_size}")
    if crc(hdr[:40], bytes(4), hdr[44:]) != hcrc:
        raise ImageError("header checksum mismatch")
    here = fingerprint()
    if fp != here:
        raise ImageError(f"image is for {describe_fingerprint(fp)}; "
                         f"this interpreter is {describe_fingerprint(here)}")
    if flags & ~FLAG_OPTIMIZE_MASK:
        raise ImageError(f"reserved header flags set: {flags:#x}")
    if not (base % 0x4000_0000 == 0 and 0 < base < 1 << 47):
        raise ImageError(f"bad preferred base {base:#x}")
    sections = [(u(48 + 16 * i, 8), u(56 + 16 * i, 8)) for i in range(len(SECTION_NAMES))]
    if sections[0][1] != nmod * MODULE_SIZE:
        raise ImageError("directory size does not match module count")
    if sections[2][1] != nstr * STRING_SIZE:
        raise ImageError("string index size does not match string count")
    return dict(base=base, modules=nmod, strings=nstr, optimize=flags & FLAG_OPTIMIZE_MASK,
                fingerprint=fp, sections=sections)


class ModuleEntry:
    """One directory entry ([DIR-1]), as both readers return it."""
    __slots__ = ("name", "path", "mtime_ns", "size", "is_package", "seg_off", "seg_size",
                 "root", "reloc_index", "reloc_count", "reloc_nonptr", "data_crc")

    def __init__(self, name, path, mtime_ns, size, is_package, seg_off, seg_size, root,
                 reloc_index, reloc_count, reloc_nonptr, data_crc):
        # plain assignments: the importer builds one of these for every module it serves
        self.name, self.path, self.mtime_ns, self.size = name, path, mtime_ns, size
        self.is_package, self.seg_off, self.seg_size, self.root = is_package, seg_off, seg_size, root
        self.reloc_index, self.reloc_count = reloc_index, reloc_count
        self.reloc_nonptr, self.data_crc = reloc_nonptr, data_crc
