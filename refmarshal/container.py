"""The image file around the stored objects (spec sections 2-5), for every implementation.

Both writers hand ``assemble_image`` their encoded strings and segments; the reference reader
and the CLI read the header, the directory, the lookup table and the modules' blocks through
the functions below.  Nothing here knows how an object is encoded (that is ``writer.py``,
``reader.py`` and the accelerator's C); constants and record layouts come from ``format.py``.  Not on the import
hook's path (the accelerator's Python side reads its header with ``format.check_header``).
"""

import mmap
import os
from typing import NamedTuple

from . import format as F
from .errors import ImageError
from .format import ModuleEntry


# ---------------------------------------------------------------------------------------
# Records that cross from the build to the writers and from the writers to assembly.

class ModuleSource(NamedTuple):
    """One module as a writer takes it: what the directory records of its source, and its code:
    a live code object (the C writer) or its graph (the reference writer, graph.py); then its
    directory stamps and whether stock finds its file first there ([DIR-6]: 0, 0, False when
    not recorded; ``building.directory_stamps``)."""
    path: str
    mtime_ns: int
    size: int
    is_package: bool
    code: object
    dir_mtime_ns: int = 0
    pkg_mtime_ns: int = 0
    first_in_dir: bool = False


class StoredString(NamedTuple):
    """One entry of the string table, in index order: the interned flag ([STR-4]) and the str
    object's bytes, padded to 8 ([STR-3], spec 6.3)."""
    interned: bool
    data: bytes


class EncodedSegment(NamedTuple):
    """One module's objects encoded at their file offset ([OBJ-*], [SEG-*])."""
    data: bytes      # the segment
    bitmap: bytes    # its tagged-word bitmap ([SEG-2])
    root: int        # offset in the segment of the module's code object


# ---------------------------------------------------------------------------------------
# Writing.

HOT_STRING_USERS = 8      # [STR-2] strings this many modules use come first in the table


def split_strings(per_module):
    """[STR-2], [SEG-5] From each module's interned-string keys in order of first use
    (``per_module``, a list in placement order): (the string table's keys in index order: the
    strings two or more modules use, those HOT_STRING_USERS or more modules use first, each
    group in order of first use over all modules; for each module, the keys only it uses, in
    its order of first use: they go at the end of its segment)."""
    users = {}
    for keys in per_module:
        for k in keys:
            users[k] = users.get(k, 0) + 1
    shared = [k for k, n in users.items() if n > 1]           # dicts keep first-use order
    return ([k for k in shared if users[k] >= HOT_STRING_USERS]
            + [k for k in shared if users[k] < HOT_STRING_USERS],
            [[k for k in keys if users[k] == 1] for keys in per_module])


def sorted_names(modules):
    """[DIR-2] module names in directory order: by their UTF-8 bytes."""
    return sorted(modules, key=lambda n: n.encode("utf-8"))


def is_test_module(name):
    """[DIR-4] A test module: a name component after the first is ``test`` or ``tests`` or
    starts with ``test_``."""
    return any(part in ("test", "tests") or part.startswith("test_")
               for part in name.split(".")[1:])


def placement_order(names):
    """[DIR-4] The directory indices of ``names`` (in directory order) in the order their
    blocks lie in the module heap: every module that is not a test module, then the test
    modules, each group in directory order, so that a package's modules lie together, not
    interleaved with its tests."""
    return sorted(range(len(names)), key=lambda i: is_test_module(names[i]))


def tag_word(value, kind):
    """[SEG-3] A tagged word: ``value`` (an address for PTR and FROZENSET, else an id or index)
    with the tag ``kind`` in its low bits."""
    return value | kind if kind in F.ADDRESS_TAGS else (value << F.TAG_BITS) | kind


def pack_bitmap(seg_size, slots):
    """[SEG-2] The bitmap of a segment of ``seg_size`` bytes whose tagged words are ``slots``
    (word indices): bit i of the little-endian bit string is word i."""
    bits = 0
    for slot in slots:
        bits |= 1 << slot
    return bits.to_bytes(F.bitmap_size(seg_size), "little")


def bitmap_slots(bitmap):
    """The word indices a bitmap marks, ascending."""
    bits = int.from_bytes(bitmap, "little")
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


def lookup_hash(name_bytes):
    """[LKP-2] where a name's search starts: the CRC-32 of its UTF-8 bytes."""
    return F.crc32(name_bytes)


def lookup_section(names):
    """[LKP-1] The lookup section's bytes: its head (the number of slots and of groups), the
    CRC-32 of each group of LOOKUP_GROUP slots, then the slots of ``lookup_table``."""
    table = lookup_table(names)
    slots = b"".join(F.LOOKUP.pack(v) for v in table)
    step = F.LOOKUP_GROUP * F.LOOKUP_RECORD.size
    crcs = b"".join(F.crc32(slots[at:at + step]).to_bytes(4, "little")
                    for at in range(0, len(slots), step))
    return F.LOOKUP_HEAD.pack(len(table), len(crcs) // 4) + crcs + slots


def lookup_table(names):
    """[LKP-2] The lookup table's slots for module names in directory order: each entry, in
    directory order, goes into the first free slot from lookup_hash(name) mod slots on."""
    n = F.lookup_slots(len(names))
    slots = [0] * n
    for i, name in enumerate(names):
        at = lookup_hash(name.encode("utf-8")) & (n - 1)
        while slots[at]:
            at = (at + 1) & (n - 1)
        slots[at] = i + 1
    return slots


def assemble_image(names, modules, strings, encode_segment, optimize):
    """The image file around already-encoded objects, for either writer.

    ``names`` in directory order, ``modules`` name -> ``ModuleSource``, ``strings`` the
    ``StoredString`` of the string table in index order, and ``encode_segment(i, file offset,
    preferred base)`` -> the ``EncodedSegment`` of module ``names[i]``.
    """
    base = F.preferred_base(b"\0".join(
        n.encode("utf-8") + b"\0" + os.fsencode(modules[n].path) for n in names))

    # Metadata: directory, names blob, lookup table, string index ([SEC-1]).
    blob = bytearray()
    name_refs = []
    for n in names:
        nb, pb = n.encode("utf-8"), os.fsencode(modules[n].path)
        name_refs.append((len(blob), len(nb), len(blob) + len(nb), len(pb)))
        blob += nb + pb
    lookup = lookup_section(names)
    dir_off = F.HEADER_SIZE
    names_off = dir_off + F.MODULE_SIZE * len(names)
    lookup_off = F.align(names_off + len(blob))
    sidx_off = F.align(lookup_off + len(lookup))
    meta_end = sidx_off + F.STRING_SIZE * len(strings)

    sheap_off = F.align(meta_end, F.PAGE)
    sheap = bytearray()
    sindex = bytearray()
    crc_at = F.STRING_RECORD.offset("crc")
    for s in strings:
        fields = dict(offset=len(sheap), size=len(s.data),
                      flags=F.STR_INTERNED if s.interned else 0)
        crc = F.crc32(F.STRING_RECORD.pack(**fields, crc=0)[:crc_at], s.data)
        sindex += F.STRING_RECORD.pack(**fields, crc=crc)
        sheap += s.data
    mheap_off = F.align(sheap_off + len(sheap), F.PAGE)

    # The module heap: each module's block, its segment then its bitmap ([SEG-1]), in
    # placement order ([DIR-4]); the directory stays in name order.
    mheap = bytearray()
    entries = [None] * len(names)
    for i in placement_order(names):
        n, (noff, nlen, poff, plen) = names[i], name_refs[i]
        m = modules[n]
        seg_off = mheap_off + len(mheap)
        seg = encode_segment(i, seg_off, base)
        flags = ((F.MOD_PACKAGE if m.is_package else 0)
                 | (F.MOD_FIRST_IN_DIR if m.first_in_dir else 0))
        fields = dict(flags=flags, name_offset=noff,
                      name_length=nlen, path_offset=poff, path_length=plen,
                      source_mtime_ns=m.mtime_ns, source_size=m.size, segment_offset=seg_off,
                      segment_size=len(seg.data), root_offset=seg.root,
                      data_crc=F.crc32(seg.data, seg.bitmap), dir_mtime_ns=m.dir_mtime_ns,
                      pkg_mtime_ns=m.pkg_mtime_ns)
        body = F.MODULE_RECORD.pack(entry_crc=0, **fields)
        entry_crc = F.crc32(body[F.MODULE_RECORD.offset("flags"):], blob[noff:noff + nlen],
                            blob[poff:poff + plen])
        entries[i] = F.MODULE_RECORD.pack(entry_crc=entry_crc, **fields)
        mheap += seg.data
        mheap += seg.bitmap
    file_size = mheap_off + len(mheap)

    sections = [(dir_off, F.MODULE_SIZE * len(names)), (names_off, len(blob)),
                (lookup_off, len(lookup)), (sidx_off, len(sindex)), (sheap_off, len(sheap)),
                (mheap_off, len(mheap))]
    header = bytearray(F.HEADER_RECORD.pack(
        magic=F.MAGIC, format_major=F.FORMAT_MAJOR, format_minor=F.FORMAT_MINOR,
        header_size=F.HEADER_SIZE, file_size=file_size, preferred_base=base,
        module_count=len(names), string_count=len(strings), header_crc=0,
        flags=optimize & F.FLAG_OPTIMIZE_MASK,
        sections=b"".join(F.SECTION_RECORD.pack(offset=o, size=n) for o, n in sections),
        fingerprint=F.fingerprint()))
    crc_at = F.HEADER_RECORD.offset("header_crc")
    header[crc_at:crc_at + 4] = F.crc32(header).to_bytes(4, "little")

    out = bytearray(file_size)
    out[0:F.HEADER_SIZE] = header
    out[dir_off:dir_off + len(entries) * F.MODULE_SIZE] = b"".join(entries)
    out[names_off:names_off + len(blob)] = blob
    out[lookup_off:lookup_off + len(lookup)] = lookup
    out[sidx_off:sidx_off + len(sindex)] = sindex
    out[sheap_off:sheap_off + len(sheap)] = sheap
    out[mheap_off:mheap_off + len(mheap)] = mheap
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Reading: every check a reader makes of the container ([HDR-*], [SEC-*], [DIR-*], [NAM-1],
# [LKP-*], [SEG-*]).

def check(cond, what):
    """Raise ImageError(what) unless cond."""
    if not cond:
        raise ImageError(what)


def read_header(data):
    """Validate the header and section table of a whole image in memory ([HDR-*], [SEC-*]);
    returns the header fields of ``format.check_header``."""
    check(len(data) >= F.HEADER_SIZE, f"truncated: {len(data)} bytes is shorter than the header")
    fields = F.check_header(bytes(data[:F.HEADER_SIZE]), len(data))
    fsize, sections = len(data), fields["sections"]
    prev_end = F.HEADER_SIZE
    for i, (name, (off, size)) in enumerate(zip(F.SECTION_NAMES, sections)):
        need = F.PAGE if i in (F.SEC_STRING_HEAP, F.SEC_MODULE_HEAP) else F.ALIGN
        check(off % need == 0, f"section {name} at {off} is not {need}-aligned")
        check(off >= prev_end and off + size <= fsize,
              f"section {name} ({off}+{size}) overlaps another or runs past the end")
        check(not any(data[prev_end:off]), f"padding before section {name} is not zero")
        prev_end = off + size
    check(prev_end == fsize, "data after the last section")
    for i in (F.SEC_STRING_HEAP, F.SEC_MODULE_HEAP):
        check(sections[i][1] % F.ALIGN == 0, f"section {F.SECTION_NAMES[i]}: size not a multiple "
              f"of {F.ALIGN}")
    return fields


def read_entry(mem, sections, i):
    """Directory entry i, its checksum, reserved fields and stamps checked ([DIR-1], [DIR-6]):
    (the ``ModuleEntry``, the offsets of its name and of its path in the names section)."""
    doff = sections[F.SEC_DIRECTORY][0]
    noff, nsize = sections[F.SEC_NAMES]
    raw = bytes(mem[doff + i * F.MODULE_SIZE:doff + (i + 1) * F.MODULE_SIZE])
    R = F.MODULE_RECORD
    e = R.read_all(raw)
    n_off, n_len, p_off, p_len = (e["name_offset"], e["name_length"], e["path_offset"],
                                  e["path_length"])
    where = f"directory entry {i}"
    check(n_off + n_len <= nsize and p_off + p_len <= nsize,
          f"{where}: name or path outside the names section")
    name_b = bytes(mem[noff + n_off:noff + n_off + n_len])
    path_b = bytes(mem[noff + p_off:noff + p_off + p_len])
    check(F.crc32(raw[R.offset("flags"):], name_b, path_b) == e["entry_crc"],
          f"{where}: checksum mismatch")
    check(e["reserved"] == bytes(R.width("reserved")), f"{where}: reserved bytes are not zero")
    flags = e["flags"]
    check(flags & ~F.MOD_FLAGS == 0, f"{where}: reserved flags set")
    package, first = bool(flags & F.MOD_PACKAGE), bool(flags & F.MOD_FIRST_IN_DIR)
    dir_ns, pkg_ns = e["dir_mtime_ns"], e["pkg_mtime_ns"]
    check(package or not pkg_ns, f"{where}: a package stamp for a module that is not a package")
    check(not first or (dir_ns and (pkg_ns or not package)),
          f"{where}: first-in-directory flag without the directory stamps ([DIR-6])")
    return ModuleEntry(
        name=name_b.decode("utf-8"), path=os.fsdecode(path_b), mtime_ns=e["source_mtime_ns"],
        size=e["source_size"], is_package=package,
        seg_off=e["segment_offset"], seg_size=e["segment_size"], root=e["root_offset"],
        data_crc=e["data_crc"], dir_mtime_ns=dir_ns, pkg_mtime_ns=pkg_ns,
        first_in_dir=first), n_off, p_off


def read_directory(mem, header):
    """Every directory entry, each checked ([DIR-1]) and all together: names unique and sorted
    ([DIR-2]), blocks back to back owning the module heap ([DIR-4]), packages named so
    ([DIR-5]), and the lookup table exactly as [LKP-2] builds it."""
    sections = header["sections"]
    moff, msize = sections[F.SEC_MODULE_HEAP]
    entries, prev = [], None
    next_name = 0
    for i in range(header["modules"]):
        e, n_off, p_off = read_entry(mem, sections, i)
        name_b = e.name.encode("utf-8")
        where = f"directory entry {i}"
        check(e.name and (prev is None or name_b > prev),
              f"{where}: names are not unique and sorted")
        prev = name_b
        check(n_off == next_name and p_off == n_off + len(name_b),
              f"{where}: name and path are not next in the names section ([NAM-1])")
        next_name = p_off + len(os.fsencode(e.path))
        check(e.seg_size % F.ALIGN == 0 and e.seg_off + e.block_size <= moff + msize,
              f"{where}: segment outside the module heap")
        check(e.root % F.ALIGN == 0 and e.root < e.seg_size,
              f"{where}: root outside its segment")
        stem = os.path.basename(e.path).partition(".")[0]
        check(e.is_package == (stem == "__init__"), f"{where}: package flag does not match "
              "the source file's name")
        entries.append(e)
    next_block = moff
    for i in placement_order([e.name for e in entries]):
        check(entries[i].seg_off == next_block, f"directory entry {i}: block is not where "
              "placement order puts it ([DIR-4])")
        next_block += entries[i].block_size
    check(next_block == moff + msize, "module heap bytes not owned by a module")
    check(next_name == sections[F.SEC_NAMES][1], "names section bytes not owned by a module")
    loff, lsize = sections[F.SEC_LOOKUP]
    want = lookup_section([e.name for e in entries])
    check(bytes(mem[loff:loff + lsize]) == want, "lookup table is not the one the directory "
          "gives ([LKP-1], [LKP-2])")
    return entries


def block_bytes(mem, entry):
    """A module's segment and its bitmap as bytes, their checksum checked ([DIR-3])."""
    seg = bytes(mem[entry.seg_off:entry.seg_off + entry.seg_size])
    end = entry.seg_off + entry.block_size
    bitmap = bytes(mem[entry.seg_off + entry.seg_size:end])
    check(F.crc32(seg, bitmap) == entry.data_crc, "segment checksum mismatch")
    return seg, bitmap


def read_tagged_words(seg, bitmap):
    """A module's tagged words as {slot word: (kind, value)} ([SEG-2], [SEG-3]): no bit beyond
    the segment, known tags; ``value`` is the address for PTR and FROZENSET, else the id or
    index."""
    words = {}
    nwords = len(seg) // 8
    for slot in bitmap_slots(bitmap):
        check(slot < nwords, f"bitmap bit {slot} is beyond the segment")
        w = int.from_bytes(seg[slot * 8:slot * 8 + 8], "little")
        kind = w & F.TAG_MASK
        check(kind < F.R_KINDS, f"word {slot}: unknown tag {kind}")
        words[slot] = (kind, w & ~F.TAG_MASK if kind in F.ADDRESS_TAGS else w >> F.TAG_BITS)
    return words


# ---------------------------------------------------------------------------------------
# Inspecting an image file without loading it (refmarshal info, status).

def peek_header(path):
    """(the header's fields, unchecked, as ``format.parse_header`` gives them; the file's size)
    of any image file, this interpreter's or not.  OSError when it cannot be read, ImageError
    when it is not an image at all."""
    with open(path, "rb") as fh:
        hdr = fh.read(F.HEADER_SIZE)
        size = os.fstat(fh.fileno()).st_size
    if len(hdr) < F.HEADER_SIZE or hdr[:len(F.MAGIC)] != F.MAGIC:
        raise ImageError("not a refmarshal image")
    return F.parse_header(hdr), size


def check_file(path):
    """The checked header fields of the image file at ``path`` (``format.check_header``): what
    its header alone can show.  OSError or ImageError."""
    with open(path, "rb") as fh:
        return F.check_header(fh.read(F.HEADER_SIZE), os.fstat(fh.fileno()).st_size)


class Directory(NamedTuple):
    """What ``directory`` reads of an image: its checked header fields, its directory entries
    (each checked, [DIR-1]) and how many tagged words its modules hold."""
    header: dict
    entries: list
    tagged_words: int


def directory(path):
    """The ``Directory`` of this interpreter's image at ``path``, read without loading any
    module (the file is mapped, so only the pages read are touched: the bitmaps, not the
    segments).  ImageError, OSError."""
    with open(path, "rb") as fh:
        mem = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = F.check_header(mem[:F.HEADER_SIZE], len(mem))
        sections = header["sections"]
        entries = [read_entry(mem, sections, i)[0] for i in range(header["modules"])]
        tagged = 0
        for e in entries:
            start = e.seg_off + e.seg_size
            if start + (e.block_size - e.seg_size) <= len(mem):
                tagged += int.from_bytes(mem[start:e.seg_off + e.block_size], "little").bit_count()
    finally:
        mem.close()
    return Directory(header, entries, tagged)
