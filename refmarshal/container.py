"""The image file around the stored objects (spec sections 2-5), for every implementation.

Both writers hand ``assemble_image`` their encoded strings and segments; the reference reader
and the CLI read the header, the directory and the relocation records through the functions
below.  Nothing here knows how an object is encoded (that is ``writer.py``, ``reader.py`` and
the accelerator's C); constants and record layouts come from ``format.py``.  Not on the import
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
    a live code object (the C writer) or its graph (the reference writer, graph.py)."""
    path: str
    mtime_ns: int
    size: int
    is_package: bool
    code: object


class StoredString(NamedTuple):
    """One entry of the string table, in index order: the interned flag ([STR-4]) and the str
    object's bytes, padded to 8 ([STR-3], spec 6.3)."""
    interned: bool
    data: bytes


class EncodedSegment(NamedTuple):
    """One module's objects encoded at their file offset ([OBJ-*], [REL-*])."""
    data: bytes      # the segment
    relocs: bytes    # its relocation records, packed, sorted by (kind, slot) ([REL-3])
    nonptr: int      # how many records, at the start, are not PTR
    root: int        # offset in the segment of the module's code object


# ---------------------------------------------------------------------------------------
# Writing.

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


def sorted_names(modules):
    """[DIR-2] module names in directory order: by their UTF-8 bytes."""
    return sorted(modules, key=lambda n: n.encode("utf-8"))


def pack_relocation(slot, kind):
    """[REL-1] One relocation record, as an int: (slot word << RELOC_KIND_BITS) | kind."""
    return (slot << F.RELOC_KIND_BITS) | kind


def assemble_image(names, modules, strings, encode_segment, optimize):
    """The image file around already-encoded objects, for either writer.

    ``names`` in directory order, ``modules`` name -> ``ModuleSource``, ``strings`` the
    ``StoredString`` of the string table in index order, and ``encode_segment(i, file offset,
    preferred base)`` -> the ``EncodedSegment`` of module ``names[i]``.
    """
    base = F.preferred_base(b"\0".join(
        n.encode("utf-8") + b"\0" + os.fsencode(modules[n].path) for n in names))

    # Metadata: directory, names blob, string index.
    blob = bytearray()
    name_refs = []
    for n in names:
        nb, pb = n.encode("utf-8"), os.fsencode(modules[n].path)
        name_refs.append((len(blob), len(nb), len(blob) + len(nb), len(pb)))
        blob += nb + pb
    dir_off = F.HEADER_SIZE
    names_off = dir_off + F.MODULE_SIZE * len(names)
    sidx_off = F.align(names_off + len(blob))
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

    mheap = bytearray()
    relocs = bytearray()
    entries = []
    nrel = 0
    for i, (n, (noff, nlen, poff, plen)) in enumerate(zip(names, name_refs)):
        m = modules[n]
        seg_off = mheap_off + len(mheap)
        seg = encode_segment(i, seg_off, base)
        count = len(seg.relocs) // F.RELOC_RECORD.size
        fields = dict(flags=F.MOD_PACKAGE if m.is_package else 0, name_offset=noff,
                      name_length=nlen, path_offset=poff, path_length=plen,
                      source_mtime_ns=m.mtime_ns, source_size=m.size, segment_offset=seg_off,
                      segment_size=len(seg.data), root_offset=seg.root, reloc_index=nrel,
                      reloc_count=count, reloc_nonptr=seg.nonptr,
                      data_crc=F.crc32(seg.data, seg.relocs))
        body = F.MODULE_RECORD.pack(entry_crc=0, **fields)
        entry_crc = F.crc32(body[F.MODULE_RECORD.offset("flags"):], blob[noff:noff + nlen],
                            blob[poff:poff + plen])
        entries.append(F.MODULE_RECORD.pack(entry_crc=entry_crc, **fields))
        mheap += seg.data
        mheap += bytes(F.align(len(mheap)) - len(mheap))
        relocs += seg.relocs
        nrel += count
    reloc_off = F.align(mheap_off + len(mheap))
    file_size = reloc_off + len(relocs)

    sections = [(dir_off, F.MODULE_SIZE * len(names)), (names_off, len(blob)),
                (sidx_off, len(sindex)), (sheap_off, len(sheap)),
                (mheap_off, len(mheap)), (reloc_off, len(relocs))]
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
    out[sidx_off:sidx_off + len(sindex)] = sindex
    out[sheap_off:sheap_off + len(sheap)] = sheap
    out[mheap_off:mheap_off + len(mheap)] = mheap
    out[reloc_off:reloc_off + len(relocs)] = relocs
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Reading: every check a reader makes of the container ([HDR-*], [SEC-*], [DIR-*], [REL-*]).

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
    check(sections[F.SEC_RELOCATIONS][1] % F.RELOC_RECORD.size == 0,
          "relocation section size is not a multiple of 4")
    return fields


def read_entry(mem, sections, i):
    """Directory entry i, its checksum and reserved fields checked ([DIR-1])."""
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
    check(e["flags"] & ~F.MOD_PACKAGE == 0, f"{where}: reserved flags set")
    return ModuleEntry(
        name=name_b.decode("utf-8"), path=os.fsdecode(path_b), mtime_ns=e["source_mtime_ns"],
        size=e["source_size"], is_package=bool(e["flags"] & F.MOD_PACKAGE),
        seg_off=e["segment_offset"], seg_size=e["segment_size"], root=e["root_offset"],
        reloc_index=e["reloc_index"], reloc_count=e["reloc_count"],
        reloc_nonptr=e["reloc_nonptr"], data_crc=e["data_crc"])


def read_directory(mem, header):
    """Every directory entry, each checked ([DIR-1]) and all together: names unique and sorted
    ([DIR-2]), segments and relocation records back to back and owning their sections."""
    sections = header["sections"]
    moff, msize = sections[F.SEC_MODULE_HEAP]
    rsize = sections[F.SEC_RELOCATIONS][1]
    entries, prev = [], None
    next_reloc, next_seg = 0, moff
    for i in range(header["modules"]):
        e = read_entry(mem, sections, i)
        name_b = e.name.encode("utf-8")
        where = f"directory entry {i}"
        check(e.name and (prev is None or name_b > prev),
              f"{where}: names are not unique and sorted")
        prev = name_b
        check(e.seg_off % F.ALIGN == 0 and moff <= e.seg_off
              and e.seg_off + e.seg_size <= moff + msize,
              f"{where}: segment outside the module heap")
        check(e.root % F.ALIGN == 0 and e.root < e.seg_size,
              f"{where}: root outside its segment")
        check(e.reloc_nonptr <= e.reloc_count and e.reloc_index == next_reloc,
              f"{where}: relocation records do not follow the previous module's")
        check(e.seg_off == next_seg, f"{where}: segment does not follow the previous one")
        next_reloc, next_seg = e.reloc_index + e.reloc_count, e.seg_off + e.seg_size
        entries.append(e)
    check(next_reloc * F.RELOC_RECORD.size == rsize, "relocation records not owned by a module")
    check(next_seg == moff + msize, "module heap bytes not owned by a module")
    return entries


def segment_bytes(mem, sections, entry):
    """A module's segment and its relocation records as bytes, their checksum checked
    ([DIR-3])."""
    seg = bytes(mem[entry.seg_off:entry.seg_off + entry.seg_size])
    r0 = sections[F.SEC_RELOCATIONS][0] + entry.reloc_index * F.RELOC_RECORD.size
    rbytes = bytes(mem[r0:r0 + entry.reloc_count * F.RELOC_RECORD.size])
    check(F.crc32(seg, rbytes) == entry.data_crc, "segment checksum mismatch")
    return seg, rbytes


def read_relocations(rbytes, entry):
    """A module's relocation records as {slot word: kind}, checked ([REL-1..3]): known kinds,
    slots inside the segment, sorted by (kind, slot) and unique, the non-PTR count right."""
    relocs = {}
    prev = None
    for i, (rec,) in enumerate(F.RELOC.iter_unpack(rbytes)):
        slot, kind = rec >> F.RELOC_KIND_BITS, rec & F.RELOC_KIND_MASK
        check(kind <= F.R_PTR, f"relocation {i}: unknown kind {kind}")
        check(slot * 8 + 8 <= entry.seg_size, f"relocation {i}: slot outside the segment")
        check(prev is None or (kind, slot) > prev, "relocations are not sorted and unique")
        check((kind != F.R_PTR) == (i < entry.reloc_nonptr), "non-pointer count is wrong")
        prev = (kind, slot)
        relocs[slot] = kind
    return relocs


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
    (each checked, [DIR-1]) and how many relocation records of each kind it holds."""
    header: dict
    entries: list
    reloc_counts: list       # indexed by relocation kind (format.R_*)


def directory(path):
    """The ``Directory`` of this interpreter's image at ``path``, read without loading any
    module (the file is mapped, so only the pages read are touched).  ImageError, OSError."""
    with open(path, "rb") as fh:
        mem = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = F.check_header(mem[:F.HEADER_SIZE], len(mem))
        sections = header["sections"]
        entries = [read_entry(mem, sections, i) for i in range(header["modules"])]
        roff, rsize = sections[F.SEC_RELOCATIONS]
        counts = [0] * F.R_KINDS
        for rec in memoryview(mem[roff:roff + rsize]).cast("I"):
            kind = rec & F.RELOC_KIND_MASK
            if kind < F.R_KINDS:
                counts[kind] += 1
    finally:
        mem.close()
    return Directory(header, entries, counts)
