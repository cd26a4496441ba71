"""Editing an image's bytes for the rule tests: read its parts, change fields, then recompute
the checksums that cover them, so that a reader sees exactly the one violation a test makes."""

import struct

from refmarshal import format as F
from refmarshal.container import bitmap_slots


class Edit:
    def __init__(self, data):
        self.b = bytearray(data)
        h = F.parse_header(bytes(self.b[:F.HEADER_SIZE]))
        self.h = h
        self.sections = h["sections"]
        self.base = h["preferred_base"]

    # -- fields --
    def u(self, off, size=8):
        return int.from_bytes(self.b[off:off + size], "little")

    def put(self, off, value, size=8, signed=False):
        self.b[off:off + size] = value.to_bytes(size, "little", signed=signed)

    def field(self, record, at, name):
        return record.read(self.b, name, at)

    def set_field(self, record, at, name, value):
        start, width = at + record.offset(name), record.width(name)
        self.b[start:start + width] = value.to_bytes(width, "little",
                                                     signed=name.endswith("mtime_ns"))

    def header_field(self, name, value):
        self.set_field(F.HEADER_RECORD, 0, name, value)

    def section(self, i, offset=None, size=None):
        at = F.SECTION_TABLE_OFFSET + 16 * i
        if offset is not None:
            self.put(at, offset)
        if size is not None:
            self.put(at + 8, size)

    # -- directory --
    def entry_at(self, i):
        return self.sections[F.SEC_DIRECTORY][0] + i * F.MODULE_SIZE

    def entry(self, i):
        return F.MODULE_RECORD.read_all(self.b, self.entry_at(i))

    def index_of(self, name):
        for i in range(self.h["module_count"]):
            e = self.entry(i)
            noff = self.sections[F.SEC_NAMES][0] + e["name_offset"]
            if bytes(self.b[noff:noff + e["name_length"]]) == name.encode():
                return i
        raise KeyError(name)

    def segment(self, i):
        """(file offset, size) of entry i's segment."""
        e = self.entry(i)
        return e["segment_offset"], e["segment_size"]

    def bitmap_at(self, i):
        off, size = self.segment(i)
        return off + size, F.bitmap_size(size)

    def marked(self, i):
        """Word indices entry i's bitmap marks."""
        at, n = self.bitmap_at(i)
        return bitmap_slots(bytes(self.b[at:at + n]))

    def set_bit(self, i, word, on=True):
        at, _ = self.bitmap_at(i)
        if on:
            self.b[at + word // 8] |= 1 << (word % 8)
        else:
            self.b[at + word // 8] &= ~(1 << (word % 8)) & 0xFF

    def seg_word(self, i, word):
        off, _ = self.segment(i)
        return self.u(off + 8 * word)

    def set_seg_word(self, i, word, value):
        off, _ = self.segment(i)
        self.put(off + 8 * word, value)

    # -- strings --
    def string_entry_at(self, k):
        return self.sections[F.SEC_STRING_INDEX][0] + k * F.STRING_SIZE

    def string_at(self, k):
        """File offset of string k's object."""
        return (self.sections[F.SEC_STRING_HEAP][0]
                + F.STRING_RECORD.read(self.b, "offset", self.string_entry_at(k)))

    # -- checksums --
    def fix(self):
        """Recompute every checksum from the current bytes: blocks, entries, strings, lookup
        groups, header (in that order: each covers fields the ones before it change)."""
        self.h = F.parse_header(bytes(self.b[:F.HEADER_SIZE]))
        self.sections = self.h["sections"]
        R = F.MODULE_RECORD
        names_off = self.sections[F.SEC_NAMES][0]
        for i in range(self.h["module_count"]):
            at = self.entry_at(i)
            e = R.read_all(self.b, at)
            off, size = e["segment_offset"], e["segment_size"]
            end = off + size + F.bitmap_size(size)
            if end <= len(self.b):
                self.set_field(R, at, "data_crc", F.crc32(bytes(self.b[off:end])))
            e = R.read_all(self.b, at)
            name = self.b[names_off + e["name_offset"]:names_off + e["name_offset"]
                          + e["name_length"]]
            path = self.b[names_off + e["path_offset"]:names_off + e["path_offset"]
                          + e["path_length"]]
            self.set_field(R, at, "entry_crc", F.crc32(bytes(self.b[at + 4:at + R.size]),
                                                       bytes(name), bytes(path)))
        crc_at = F.STRING_RECORD.offset("crc")
        for k in range(self.h["string_count"]):
            at = self.string_entry_at(k)
            e = F.STRING_RECORD.read_all(self.b, at)
            obj = self.sections[F.SEC_STRING_HEAP][0] + e["offset"]
            self.put(at + crc_at, F.crc32(bytes(self.b[at:at + crc_at]),
                                          bytes(self.b[obj:obj + e["size"]])), 4)
        loff = self.sections[F.SEC_LOOKUP][0]
        slots, groups = struct.unpack_from("<II", self.b, loff)
        first = loff + 8 + 4 * groups
        for g in range(groups):
            lo = first + 4 * F.LOOKUP_GROUP * g
            hi = min(first + 4 * slots, lo + 4 * F.LOOKUP_GROUP)
            self.put(loff + 8 + 4 * g, F.crc32(bytes(self.b[lo:hi])), 4)
        self.fix_header()
        return self

    def fix_header(self):
        crc_at = F.HEADER_RECORD.offset("header_crc")
        self.put(crc_at, 0, 4)
        self.put(crc_at, F.crc32(bytes(self.b[:F.HEADER_SIZE])), 4)
        return self

    def write(self, path):
        path.write_bytes(bytes(self.b))
        return path
