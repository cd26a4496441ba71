"""One test per rule of spec/format.rst that no other test is named after ([KIND-n] is checked by
``test_KIND_n_...``; spec/tools/check_rule_coverage.py lists the rules without one).

A writer's rule is checked on what both writers produce from the golden source tree
(spec/golden/src).  A reader's rule is checked by making exactly that one violation in the
golden image (the checksums that cover the changed bytes recomputed, tests/imageedit.py) and
requiring the reference reader to reject it, naming the problem; header rules are checked with
both readers.  (The accelerator checks less, by design: spec 7; crafted images with valid
checksums are out of its scope, [LOAD-5].)"""

import importlib.util
import os
import struct
import sys
import time

import pytest

import refmarshal
from imageedit import Edit
from refmarshal import ImageError
from refmarshal import format as F
from refmarshal.layouts import current
from refmarshal.reader import ReferenceImage, _ModuleParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "gen_golden", os.path.join(ROOT, "spec", "tools", "gen_golden.py"))
gen_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_golden)

L = current()
_images = {}


@pytest.fixture(params=["reference", "native"])
def writer(request):
    """Each writer in turn (the C writer fails the test where tox requires the accelerator)."""
    if request.param == "native" and not refmarshal.accelerator_available():
        if os.environ.get("REFMARSHAL_REQUIRE_ACCEL") == "1":
            pytest.fail("the accelerator is required but not built")
        pytest.skip("accelerator not built")
    return request.param


def gold(writer="reference"):
    if writer not in _images:
        _images[writer] = gen_golden.build_vector(writer)
    return _images[writer]


def load_all(path, implementation="reference"):
    img = (ReferenceImage(path) if implementation == "reference"
           else refmarshal.Image(path, implementation=implementation))
    return {n: img.get_code(n) for n in img.names()}


def rejects(edit, tmp_path, match, implementation="reference"):
    path = edit.write(tmp_path / "bad.img")
    with pytest.raises(ImageError, match=match):
        load_all(path, implementation)


def field(name):
    return next(f for f in L.code_fields if f.name == name)


def parsed(data, tmp_path, name):
    """(the reference reader, its parser of module ``name``, {segment offset: graph node})."""
    path = tmp_path / "img.img"
    path.write_bytes(data)
    img = ReferenceImage(path)
    p = _ModuleParser(img, img.entry(name))
    p.parse()
    return img, p, {off: node for off, node in p.memo.items() if isinstance(off, int)}


# ---------------------------------------------------------------------------------------
# 1. Conventions

def test_CONV_1_header_integers_are_little_endian(writer, tmp_path):
    data = gold(writer)
    assert int.from_bytes(data[16:24], "little") == len(data)
    assert int.from_bytes(data[32:36], "little") == 3
    e = Edit(data)
    e.put(16, int.from_bytes(len(data).to_bytes(8, "little"), "big"))    # byte-swapped
    e.fix_header()
    rejects(e, tmp_path, "truncated or extended")


def test_CONV_2_source_mtime_is_a_signed_i64(writer, tmp_path):
    src = tmp_path / "old.py"
    src.write_text("x = 1\n")
    os.utime(src, ns=(-1_234_567_891, -1_234_567_891))
    out = tmp_path / "old.img"
    refmarshal.build(out, [("old", src)], implementation=writer)
    e = Edit(out.read_bytes())
    at = e.entry_at(0) + F.MODULE_RECORD.offset("source_mtime_ns")
    assert bytes(e.b[at:at + 8]) == (-1_234_567_891).to_bytes(8, "little", signed=True)
    assert ReferenceImage(out).entry("old").mtime_ns == -1_234_567_891


def test_CONV_3_offsets_are_from_the_start_of_the_file(writer):
    e = Edit(gold(writer))
    assert e.sections[F.SEC_DIRECTORY][0] == F.HEADER_SIZE
    first = e.entry(e.index_of("gold"))
    assert first["segment_offset"] == e.sections[F.SEC_MODULE_HEAP][0]   # a file offset
    assert first["name_offset"] == 0                      # the names section's own offsets
    assert bytes(e.b[e.sections[F.SEC_NAMES][0]:][:4]) == b"gold"


def test_CONV_4_words_are_8_bytes_and_only_64_bit_builds_are_read(writer, tmp_path):
    data = gold(writer)
    e = Edit(data)
    assert data[F.FINGERPRINT_OFFSET + F.FINGERPRINT_RECORD.offset("ptr_size")] == 8
    for i in range(3):
        off, size = e.segment(i)
        assert off % 8 == 0 and size % 8 == 0
    e.b[F.FINGERPRINT_OFFSET + F.FINGERPRINT_RECORD.offset("ptr_size")] = 4
    e.fix_header()
    rejects(e, tmp_path, "image is for .*32-bit")


# ---------------------------------------------------------------------------------------
# 2. Header

def test_HDR_2_other_major_rejected_other_minor_accepted(tmp_path, implementation):
    e = Edit(gold())
    e.header_field("format_major", 3)
    e.fix_header()
    rejects(e, tmp_path, r"format version 3\.0 is not supported", implementation)
    e = Edit(gold())
    e.header_field("format_minor", 7)
    e.fix_header()
    path = e.write(tmp_path / "minor.img")
    assert set(load_all(path, implementation)) == {"gold", "gold.shapes", "gold.test_shapes"}


def test_HDR_3_header_size_is_256(tmp_path, implementation):
    assert F.HEADER_RECORD.read(gold(), "header_size") == 256
    e = Edit(gold())
    e.header_field("header_size", 512)
    e.fix_header()
    rejects(e, tmp_path, "header size 512", implementation)


def test_HDR_6_preferred_base_formula_and_range(writer, tmp_path):
    e = Edit(gold(writer))
    key = b"\0".join(n.encode() + b"\0" + p.encode() for n, p in gen_golden.MODULES)
    import zlib
    assert e.h["preferred_base"] == 0x1000_0000_0000 + (zlib.crc32(key) % 0x10000) * 2 ** 30
    for bad in (e.h["preferred_base"] + 4096, 1 << 47, 0):
        e.header_field("preferred_base", bad)
        e.fix_header()
        rejects(e, tmp_path, "bad preferred base")


def test_HDR_7_fingerprint_fields(writer):
    import importlib.util as iu
    fp = F.FINGERPRINT_RECORD.read_all(Edit(gold(writer)).h["fingerprint"])
    assert fp["hexversion"] == sys.hexversion and fp["pyc_magic"] == iu.MAGIC_NUMBER
    assert (fp["ptr_size"], fp["byte_order"], fp["build_flags"]) == (8, ord("L"), 0)
    assert fp["cache_tag"] == sys.implementation.cache_tag.encode().ljust(16, b"\0")
    assert fp["version"] == sys.version.encode()[:84].ljust(84, b"\0")


def test_HDR_9_flags_hold_the_optimization_level(writer, tmp_path):
    src = tmp_path / "m.py"
    src.write_text("assert False\n")
    out = tmp_path / "o2.img"
    refmarshal.build(out, [("m", src)], optimize=2, implementation=writer)
    assert F.HEADER_RECORD.read(out.read_bytes(), "flags") == 2
    e = Edit(gold(writer))
    e.header_field("flags", 0x10)
    e.fix_header()
    rejects(e, tmp_path, "reserved header flags")


# ---------------------------------------------------------------------------------------
# 2.3 Section table

def test_SEC_1_six_sections_in_the_table_at_offset_48(writer, tmp_path):
    e = Edit(gold(writer))
    table = [struct.unpack_from("<QQ", e.b, 48 + 16 * i) for i in range(6)]
    assert table == e.sections and table[0][0] == 256
    assert table[-1][0] + table[-1][1] == len(e.b)
    e.section(F.SEC_NAMES, offset=e.sections[F.SEC_NAMES][0] + 8)
    e.fix_header()
    rejects(e, tmp_path, "section names")


def test_SEC_2_sizes_match_the_counts(tmp_path):
    for sec, delta, match in ((F.SEC_DIRECTORY, -80, "directory size"),
                              (F.SEC_STRING_INDEX, -16, "string index size"),
                              (F.SEC_LOOKUP, 4, "lookup table size")):
        e = Edit(gold())
        e.section(sec, size=e.sections[sec][1] + delta)
        e.fix_header()
        rejects(e, tmp_path, match)


def test_SEC_3_heap_sizes_are_multiples_of_8(tmp_path):
    e = Edit(gold())
    off, size = e.sections[F.SEC_STRING_HEAP]
    assert size % 8 == 0 and e.b[off + size - 1] == 0
    e.section(F.SEC_STRING_HEAP, size=size - 1)       # the byte left out is zero padding
    e.fix_header()
    rejects(e, tmp_path, "size not a multiple of 8")


def test_SEC_4_sections_in_order_and_the_last_ends_the_file(tmp_path):
    e = Edit(gold() + bytes(8))
    e.header_field("file_size", len(e.b))
    e.fix_header()
    rejects(e, tmp_path, "data after the last section")
    e = Edit(gold())
    e.section(F.SEC_NAMES, offset=e.sections[F.SEC_DIRECTORY][0])
    e.fix_header()
    rejects(e, tmp_path, "overlaps")


def test_SEC_5_gaps_between_sections_are_zero(tmp_path):
    e = Edit(gold())
    gap = e.sections[F.SEC_STRING_HEAP][0] - 1
    assert e.b[gap] == 0
    e.b[gap] = 1
    rejects(e, tmp_path, "padding before section string_heap is not zero")


def test_SEC_6_sections_are_packed_as_tightly_as_alignment_allows(writer):
    e = Edit(gold(writer))
    end = F.HEADER_SIZE
    for i, (off, size) in enumerate(e.sections):
        assert off == F.align(end, 4096 if i >= F.SEC_STRING_HEAP else 8)
        end = off + size


# ---------------------------------------------------------------------------------------
# 3. Directory, names, lookup table

def test_DIR_1_entry_crc_covers_the_entry_its_name_and_its_path(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold.shapes")
    ent = e.entry(i)
    e.b[e.sections[F.SEC_NAMES][0] + ent["path_offset"] + 5] ^= 0x20   # one path byte
    rejects(e, tmp_path, f"directory entry {i}: checksum mismatch")
    e = Edit(gold())
    e.set_field(F.MODULE_RECORD, e.entry_at(i), "source_size", 1)
    rejects(e, tmp_path, f"directory entry {i}: checksum mismatch")


def test_DIR_3_data_crc_covers_the_segment_and_the_bitmap(tmp_path):
    for where in ("segment", "bitmap"):
        e = Edit(gold())
        i = e.index_of("gold.shapes")
        at = e.segment(i)[0] + 8 * 40 if where == "segment" else e.bitmap_at(i)[0] + 15
        e.b[at] ^= 0x40
        rejects(e, tmp_path, "segment checksum mismatch")


def test_DIR_4_test_modules_are_placed_after_the_others(writer, tmp_path):
    pkg = tmp_path / "a"
    pkg.mkdir()
    for rel in ("__init__.py", "tests.py", "test_b.py", "z.py"):
        (pkg / rel).write_text(f"X = {rel!r}\n")
    names = [("a", pkg / "__init__.py"), ("a.test_b", pkg / "test_b.py"),
             ("a.tests", pkg / "tests.py"), ("a.z", pkg / "z.py")]
    out = tmp_path / "a.img"
    refmarshal.build(out, names, implementation=writer)
    e = Edit(out.read_bytes())
    order = sorted(range(4), key=lambda i: e.entry(i)["segment_offset"])
    assert [names[i][0] for i in order] == ["a", "a.z", "a.test_b", "a.tests"]
    at = e.sections[F.SEC_MODULE_HEAP][0]
    for i in order:                            # back to back, from the module heap's start
        off, size = e.segment(i)
        assert off == at
        at = off + size + F.bitmap_size(size)
    assert at == len(e.b)


def test_DIR_5_package_flag_matches_the_source_file_name(tmp_path):
    e = Edit(gold())
    at = e.entry_at(e.index_of("gold"))
    assert e.field(F.MODULE_RECORD, at, "flags") == F.MOD_PACKAGE
    e.set_field(F.MODULE_RECORD, at, "flags", 0)
    e.fix()
    rejects(e, tmp_path, "package flag does not match")


def test_DIR_6_directory_stamps_only_for_settled_directories(writer, tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (tmp_path / "m.py").write_text("")
    (tmp_path / "n.py").write_text("")
    (tmp_path / "n").mkdir()                 # a directory named like module n: no flag
    old = time.time_ns() - 60 * 10 ** 9
    for d in (tmp_path, pkg):
        os.utime(d, ns=(old, old))
    entries = [("m", tmp_path / "m.py"), ("n", tmp_path / "n.py"),
               ("p", pkg / "__init__.py")]
    out = tmp_path / "s.img"
    refmarshal.build(out, entries, implementation=writer)
    img = ReferenceImage(out)
    assert (img.entry("m").dir_mtime_ns, img.entry("m").pkg_mtime_ns,
            img.entry("m").first_in_dir) == (old, 0, True)
    assert (img.entry("p").dir_mtime_ns, img.entry("p").pkg_mtime_ns,
            img.entry("p").first_in_dir) == (old, old, True)
    assert (img.entry("n").dir_mtime_ns, img.entry("n").first_in_dir) == (0, False)
    os.utime(tmp_path, ns=(time.time_ns(), time.time_ns()))   # modified within 2 s
    refmarshal.build(out, entries, implementation=writer)
    m = ReferenceImage(out).entry("m")
    assert (m.dir_mtime_ns, m.pkg_mtime_ns, m.first_in_dir) == (0, 0, False)
    # a reader rejects the flag without its stamps
    e = Edit(out.read_bytes())
    e.set_field(F.MODULE_RECORD, e.entry_at(0), "flags", F.MOD_FIRST_IN_DIR)
    e.fix()
    rejects(e, tmp_path, r"first-in-directory flag without the directory stamps")


def test_NAM_1_names_and_paths_back_to_back_in_directory_order(writer, tmp_path):
    e = Edit(gold(writer))
    off, size = e.sections[F.SEC_NAMES]
    want = b"".join(n.encode() + p.encode() for n, p in gen_golden.MODULES)
    assert bytes(e.b[off:off + size]) == want
    at = 0
    for i in range(3):
        ent = e.entry(i)
        assert ent["name_offset"] == at and ent["path_offset"] == at + ent["name_length"]
        at = ent["path_offset"] + ent["path_length"]
    # entry 1's name one byte shorter: its path no longer starts right after it
    e.set_field(F.MODULE_RECORD, e.entry_at(1), "name_length", e.entry(1)["name_length"] - 1)
    e.fix()
    rejects(e, tmp_path, r"\[NAM-1\]")


def _slots(e):
    loff = e.sections[F.SEC_LOOKUP][0]
    n, groups = struct.unpack_from("<II", e.b, loff)
    return loff, n, groups, list(struct.unpack_from(f"<{n}I", e.b, loff + 8 + 4 * groups))


def test_LKP_1_head_group_crcs_then_slots(writer, tmp_path):
    e = Edit(gold(writer))
    loff, n, groups, slots = _slots(e)
    assert (n, groups) == (8, 1)                 # 3 modules: the smallest power of 2 >= 6
    assert e.sections[F.SEC_LOOKUP][1] == 8 + 4 * groups + 4 * n
    import zlib
    assert e.u(loff + 8, 4) == zlib.crc32(bytes(e.b[loff + 12:loff + 12 + 4 * n]))
    empty = slots.index(0)
    e.put(loff + 12 + 4 * empty, 1, 4)           # a slot changed, its group CRC not
    e.fix_header()
    rejects(e, tmp_path, r"lookup table")


def test_LKP_2_slots_are_linear_probing_from_the_names_crc(writer, tmp_path):
    import zlib
    e = Edit(gold(writer))
    loff, n, groups, slots = _slots(e)
    want = [0] * n
    for i, (name, _) in enumerate(gen_golden.MODULES):
        h = zlib.crc32(name.encode()) % n
        while want[h]:
            h = (h + 1) % n
        want[h] = i + 1
    assert slots == want
    full, empty = next(i for i, v in enumerate(slots) if v), slots.index(0)
    slots[full], slots[empty] = 0, slots[full]   # an entry moved to another slot
    for k, v in enumerate(slots):
        e.put(loff + 8 + 4 * groups + 4 * k, v, 4)
    e.fix()
    rejects(e, tmp_path, r"lookup table is not the one the directory gives")


# ---------------------------------------------------------------------------------------
# 4. String table

def test_STR_1_string_crc_covers_the_entry_and_the_object(tmp_path):
    e = Edit(gold())
    e.b[e.string_at(0) + 40] ^= 1                # a character of string 0 ('area')
    rejects(e, tmp_path, "string 0: checksum mismatch")
    e = Edit(gold())
    e.b[e.string_entry_at(0) + F.STRING_RECORD.offset("flags")] = 3
    rejects(e, tmp_path, "string 0: (checksum mismatch|flags)")


def test_STR_3_string_heap_objects_hold_type_code_1(writer, tmp_path):
    e = Edit(gold(writer))
    for k in range(e.h["string_count"]):
        assert e.u(e.string_at(k) + 8) == F.T_STR
    e.put(e.string_at(0) + 8, F.T_BYTES)
    e.fix()
    rejects(e, tmp_path, "ob_type is not the str type code")


def test_STR_4_interned_state_is_stored_as_zero(writer, tmp_path):
    e = Edit(gold(writer))
    state_at = e.string_at(0) + 32
    assert e.b[state_at] & 3 == 0
    e.b[state_at] |= 1
    e.fix()
    rejects(e, tmp_path, "bad state")


# ---------------------------------------------------------------------------------------
# 5. Module blocks

def test_SEG_1_a_block_is_its_segment_then_its_bitmap(writer):
    e = Edit(gold(writer))
    blocks = sorted(e.segment(i) for i in range(3))
    for (off, size), (nxt, _) in zip(blocks, blocks[1:] + [(len(e.b), 0)]):
        assert nxt == off + size + F.bitmap_size(size)
        assert F.bitmap_size(size) == 8 * -(-size // 512)


def test_SEG_2_no_bit_beyond_the_segment(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    nwords = e.segment(i)[1] // 8
    assert nwords % 64 and max(e.marked(i)) < nwords
    e.set_bit(i, nwords)                         # the first bit after the segment's words
    e.fix()
    rejects(e, tmp_path, f"bitmap bit {nwords} is beyond the segment")


def test_SEG_3_every_marked_word_is_a_used_tagged_word(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    marked = set(e.marked(i))
    zero = next(w for w in range(e.segment(i)[1] // 8)
                if w not in marked and e.seg_word(i, w) == 0)   # e.g. a tuple's GC header
    e.set_bit(i, zero)
    e.fix()
    rejects(e, tmp_path, "tagged words that no object uses")


def test_SEG_4_strings_that_are_not_interned_are_in_each_segment(writer, tmp_path):
    doc = "A docstring two modules share, never interned."
    for m in ("one", "two"):
        (tmp_path / f"{m}.py").write_text(f'"""{doc}"""\n')
    out = tmp_path / "doc.img"
    refmarshal.build(out, [("one", tmp_path / "one.py"), ("two", tmp_path / "two.py")],
                     implementation=writer)
    e = Edit(out.read_bytes())
    for i in range(2):
        off, size = e.segment(i)
        assert bytes(e.b[off:off + size]).count(doc.encode()) == 1
    hoff, hsize = e.sections[F.SEC_STRING_HEAP]
    assert doc.encode() not in bytes(e.b[hoff:hoff + hsize])


def test_SEG_5_strings_one_module_interns_end_its_segment(writer, tmp_path):
    e = Edit(gold(writer))
    i = e.index_of("gold.shapes")
    seg_off, size = e.segment(i)
    words = {w: e.seg_word(i, w) for w in e.marked(i)}
    lstr = {v & ~7 for v in words.values() if v & 7 == F.R_LSTR}
    ptr = {v & ~7 for v in words.values() if v & 7 in (F.R_PTR, F.R_FROZENSET)}
    assert lstr and min(lstr) > max(ptr)         # after every other object
    texts = [bytes(e.b[a - e.base:a - e.base + 64]) for a in lstr]
    assert any(b"perimeter" in t for t in texts)
    hoff, hsize = e.sections[F.SEC_STRING_HEAP]
    assert b"perimeter" not in bytes(e.b[hoff:hoff + hsize])


def test_OBJ_1_objects_8_aligned_and_padding_zero(writer, tmp_path):
    e = Edit(gold(writer))
    for i in range(3):
        for w in e.marked(i):
            v = e.seg_word(i, w)
            if v & 7 in F.ADDRESS_TAGS:
                assert (v & ~7) % 8 == 0
    obj = e.string_at(0)                         # 'area': header, 4 bytes, NUL, padding
    size = F.STRING_RECORD.read(e.b, "size", e.string_entry_at(0))
    assert e.b[obj + size - 1] == 0
    e.b[obj + size - 1] = 0x41
    e.fix()
    rejects(e, tmp_path, "terminator or padding not zero")


def test_OBJ_2_canonical_order_root_first_and_sharing_kept(writer, tmp_path):
    data = gold(writer)
    e = Edit(data)
    for i in range(3):
        assert e.entry(i)["root_offset"] == 0            # pre-order: the root comes first
    img, p, objs = parsed(data, tmp_path, "gold.shapes")
    from refmarshal.graph import Code
    codes = sorted(off for off, node in objs.items() if type(node) is Code)
    assert len(codes) == 3                                # <module>, area, perimeter
    filename = field("co_filename").offset
    seg = img.entry("gold.shapes").seg_off
    words = {e.u(seg + off + filename) for off in codes}
    assert len(words) == 1                                # one co_filename object, shared
    assert data == gold("reference")                      # and both writers agree


def _root_word(e, i, name):
    return field(name).offset // 8


def test_OBJ_3_pointers_stay_inside_their_segment(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    w = _root_word(e, i, "co_consts")
    assert e.seg_word(i, w) & 7 == F.R_PTR
    e.set_seg_word(i, w, e.base + e.segment(e.index_of("gold.shapes"))[0])
    e.fix()
    rejects(e, tmp_path, "outside the segment")


def test_OBJ_4_type_words_hold_a_type_code(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    assert e.seg_word(i, 1) == (F.T_CODE << 3) | F.R_TYPE
    e.set_seg_word(i, 1, (9 << 3) | F.R_TYPE)
    e.fix()
    rejects(e, tmp_path, "type code 9 is not stored")


def test_OBJ_6_refcount_is_the_layouts_constant(writer, tmp_path):
    e = Edit(gold(writer))
    i = e.index_of("gold")
    assert struct.unpack_from("<q", e.b, e.segment(i)[0])[0] == L.refcnt
    e.set_seg_word(i, 0, 1)
    e.fix()
    rejects(e, tmp_path, "refcount 1 is not")


def test_OBJ_7_derived_code_fields_are_checked(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    at = e.segment(i)[0] + field("co_nlocalsplus").offset
    assert e.u(at, 4) == 0
    e.put(at, 5, 4)
    e.fix()
    rejects(e, tmp_path, "co_nlocalsplus is 5, expected 0")


def test_OBJ_8_adaptive_code_is_what_this_build_creates(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    start = e.segment(i)[0] + L.code_header
    n = e.u(e.segment(i)[0] + 16)
    units = bytes(e.b[start:start + 2 * n])
    import dis
    cache = dis.opmap["CACHE"]
    at = next(k for k in range(1, n) if units[2 * k] == cache)   # an inline cache entry
    e.b[start + 2 * at + 1] ^= 0x5A
    e.fix()
    rejects(e, tmp_path, "co_code_adaptive of <module> is not what this interpreter creates")


def test_OBJ_9_frozensets_are_tuples_sorted_strings_last(writer, tmp_path):
    data = gold(writer)
    e = Edit(data)
    i = e.index_of("gold.shapes")
    seg_off, _ = e.segment(i)
    fs = [e.seg_word(i, w) & ~7 for w in e.marked(i) if e.seg_word(i, w) & 7 == F.R_FROZENSET]
    assert len(fs) == 1
    img, p, objs = parsed(data, tmp_path, "gold.shapes")
    items = objs[fs[0] - e.base - seg_off]
    assert [getattr(x, "value", x) for x in items] == [7, "circle", "square"]


# ---------------------------------------------------------------------------------------
# 5.3 Tagged words

def test_REL_1_every_pointer_field_is_marked(tmp_path):
    e = Edit(gold())
    i = e.index_of("gold")
    w = _root_word(e, i, "co_names")
    assert w in e.marked(i)
    e.set_bit(i, w, on=False)
    e.fix()
    rejects(e, tmp_path, "found an untagged one")


def test_REL_2_tags_6_and_7_are_reserved(tmp_path):
    for tag in (6, 7):
        e = Edit(gold())
        i = e.index_of("gold")
        w = _root_word(e, i, "co_exceptiontable")
        assert e.seg_word(i, w) & 7 == F.R_CONST
        e.set_seg_word(i, w, (e.seg_word(i, w) & ~7) | tag)
        e.fix()
        rejects(e, tmp_path, f"unknown tag {tag}")


# ---------------------------------------------------------------------------------------
# 8. Loading

def test_LOAD_2_names_are_the_interpreters_interned_strings(tmp_path, implementation):
    path = tmp_path / "gold.img"
    path.write_bytes(gold())
    codes = load_all(path, implementation)
    from helpers import walk
    for code in codes.values():
        for co in walk(code):
            for name in co.co_names + co.co_varnames:        # identifiers: interned
                assert name is sys.intern(name)


def test_LOAD_4_loaded_objects_are_never_freed(tmp_path):
    if not refmarshal.accelerator_available():
        if os.environ.get("REFMARSHAL_REQUIRE_ACCEL") == "1":
            pytest.fail("the accelerator is required but not built")
        pytest.skip("accelerator not built")
    path = tmp_path / "gold.img"
    path.write_bytes(gold())
    img = refmarshal.Image(path, implementation="accel")
    code = img.get_code("gold.shapes")
    assert img.owns(code)
    assert sys.getrefcount(code) >= 999_999_999
    assert sys.getrefcount(code.co_names[0]) >= 999_999_999   # interned by the loader


def test_LOAD_5_damage_is_caught_by_the_checksum_before_any_word_is_used(tmp_path,
                                                                         implementation):
    e = Edit(gold())
    i = e.index_of("gold")
    w = _root_word(e, i, "co_consts")             # a PTR word, damaged: CRC not fixed
    e.set_seg_word(i, w, e.seg_word(i, w) + 8)
    rejects(e, tmp_path, "checksum", implementation)
