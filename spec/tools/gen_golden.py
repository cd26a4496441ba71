"""Golden vectors: spec/golden/cpython-3XX/gold.img and gold.txt for the running interpreter.

    python spec/tools/gen_golden.py          # write this interpreter's vector
    python spec/tools/gen_golden.py --check  # fail unless both writers give the committed bytes

The source tree is spec/golden/src/ (package ``gold``: ``gold``, ``gold.shapes``,
``gold.test_shapes``).  It is copied to a temporary directory, every file's mtime set to
SOURCE_MTIME_NS, and built from there with *relative* paths (``gold/shapes.py``), optimization
level 0: so the image records the same paths and mtimes wherever it is built, and no directory
stamps ([DIR-6]: a writer records none for a relative path).  What remains build-specific is
the fingerprint (2.2), which names the exact interpreter build, and everything that depends on
the bytecode that build's compiler produces.

``gold.txt`` lists every section of the image: header fields, section table, directory entries,
names, lookup table, string index, the string heap and each module's block word by word, each
tagged word decoded (spec 5.3).  tests/test_golden.py rebuilds the vector with both writers and
loads it with both readers.
"""

import argparse
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.dirname(HERE)
GOLDEN = os.path.join(SPEC, "golden")
SOURCE = os.path.join(GOLDEN, "src")
try:                     # the installed package (with its accelerator) when there is one
    import refmarshal  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(SPEC))

from refmarshal import format as F  # noqa: E402

SOURCE_MTIME_NS = 1_750_000_000_123_456_789
MODULES = (("gold", "gold/__init__.py"), ("gold.shapes", "gold/shapes.py"),
           ("gold.test_shapes", "gold/test_shapes.py"))
# The fingerprint's ``version`` field (sys.version): the only bytes that differ between two
# builds of one release that compile the same bytecode.
VERSION_FIELD = (F.FINGERPRINT_OFFSET + F.FINGERPRINT_RECORD.offset("version"),
                 F.FINGERPRINT_OFFSET + F.FINGERPRINT_SIZE)
HEADER_CRC_FIELD = (F.HEADER_RECORD.offset("header_crc"), F.HEADER_RECORD.offset("header_crc") + 4)


def vector_dir(version=None):
    major, minor = version or sys.version_info[:2]
    return os.path.join(GOLDEN, f"cpython-{major}{minor}")


def build_vector(implementation):
    """The golden image's bytes, built by ``implementation`` ("reference" or "native")."""
    import refmarshal
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "src")
        shutil.copytree(SOURCE, root, ignore=shutil.ignore_patterns("__pycache__"))
        for _, rel in MODULES:
            os.utime(os.path.join(root, rel), ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            out = os.path.join(tmp, "gold.img")
            result = refmarshal.build(out, list(MODULES), optimize=0,
                                      implementation=implementation)
            if result.skipped:
                raise SystemExit(f"modules skipped: {result.skipped}")
            with open(out, "rb") as fh:
                return fh.read()
        finally:
            os.chdir(cwd)


def without_build_name(data):
    """``data`` with the fingerprint's ``version`` field and the header CRC zeroed."""
    out = bytearray(data)
    for start, end in (VERSION_FIELD, HEADER_CRC_FIELD):
        out[start:end] = bytes(end - start)
    return bytes(out)


# ---------------------------------------------------------------------------------------
# The listing.

def _word(data, at):
    return struct.unpack_from("<Q", data, at)[0]


def _tagged(word, base, seg_off):
    kind = word & F.TAG_MASK
    name = F.RELOC_KIND_NAMES[kind] if kind < F.R_KINDS else f"tag {kind}"
    if kind in F.ADDRESS_TAGS:
        addr = word & ~F.TAG_MASK
        return f"{name} -> file {addr - base:#x} (segment +{addr - base - seg_off:#x})"
    operand = word >> F.TAG_BITS
    if kind == F.R_TYPE:
        return f"{name} {F.TYPE_NAMES.get(operand, operand)}"
    if kind == F.R_CONST:
        try:
            return f"{name} {operand:#x} = {F.singleton(operand)!r}"
        except KeyError:
            return f"{name} {operand:#x} (unknown)"
    return f"{name} index {operand}"


def _describe(node):
    from refmarshal.graph import Code, Str
    if type(node) is Code:
        return f"code {node.qualname.value!r}"
    if type(node) is Str:
        return f"str {node.value!r}"
    if type(node) is tuple:
        return f"tuple of {len(node)}"
    return f"{type(node).__name__} {node!r}"


def listing(path):
    """The annotated listing of the image at ``path`` (this interpreter's)."""
    from refmarshal.container import bitmap_slots, placement_order
    from refmarshal.reader import ReferenceImage, _ModuleParser
    img = ReferenceImage(path)
    data, h, L = img._data, img.header, img.layout
    base = h["base"]
    out = [f"# {os.path.basename(path)}: {len(data)} bytes, "
           f"for {F.describe_fingerprint(h['fingerprint'])}",
           "# (generated by spec/tools/gen_golden.py; offsets are hexadecimal file offsets)", "",
           "== header (2.1)"]
    for field, _ in F.HEADER_RECORD.fields:
        if field in ("sections", "fingerprint"):
            continue
        v = h[field]
        shown = (v.hex(" ") if isinstance(v, bytes)
                 else hex(v) if field.endswith(("crc", "base")) else v)
        out.append(f"{F.HEADER_RECORD.offset(field):#06x}  {field:<16} {shown}")
    out.append("== fingerprint (2.2)")
    fp = F.FINGERPRINT_RECORD.read_all(h["fingerprint"])
    for field, _ in F.FINGERPRINT_RECORD.fields:
        v = fp[field]
        at = F.FINGERPRINT_OFFSET + F.FINGERPRINT_RECORD.offset(field)
        if isinstance(v, bytes):
            shown = repr(v.rstrip(b"\0")) + f" NUL-padded to {len(v)}"
            if field == "pyc_magic":
                shown = v.hex(" ")
        else:
            shown = hex(v)
        out.append(f"{at:#06x}  {field:<16} {shown}")
    out.append("== section table (2.3)")
    for i, (off, size) in enumerate(h["sections"]):
        out.append(f"{F.SECTION_TABLE_OFFSET + 16 * i:#06x}  {i} {F.SECTION_NAMES[i]:<13} "
                   f"offset {off:#x} size {size:#x}")
    secs = h["sections"]
    out.append(f"== module directory (3.1) at {secs[F.SEC_DIRECTORY][0]:#x}")
    for i, e in enumerate(img._entries):
        at = secs[F.SEC_DIRECTORY][0] + i * F.MODULE_SIZE
        raw = F.MODULE_RECORD.read_all(data, at)
        out.append(f"entry {i} at {at:#x}: {e.name}")
        for field, _ in F.MODULE_RECORD.fields:
            v = raw[field]
            shown = v.hex(" ") if isinstance(v, bytes) else (
                hex(v) if field.endswith(("crc", "offset")) else v)
            out.append(f"  +{F.MODULE_RECORD.offset(field):<3} {field:<16} {shown}")
    noff, nsize = secs[F.SEC_NAMES]
    out.append(f"== names (3.2) at {noff:#x}")
    for e in img._entries:
        out.append(f"  {e.name!r} {e.path!r}")
    loff, lsize = secs[F.SEC_LOOKUP]
    slots, groups = struct.unpack_from("<II", data, loff)
    out.append(f"== lookup table (3.3) at {loff:#x}: slots {slots}, groups {groups}")
    for g in range(groups):
        out.append(f"  group {g} crc {struct.unpack_from('<I', data, loff + 8 + 4 * g)[0]:#010x}")
    at = loff + 8 + 4 * groups
    names = img.names()
    for s in range(slots):
        v = struct.unpack_from("<I", data, at + 4 * s)[0]
        out.append(f"  slot {s}: {v}" + (f" (entry {v - 1}, {names[v - 1]})" if v else ""))
    ioff = secs[F.SEC_STRING_INDEX][0]
    hoff = secs[F.SEC_STRING_HEAP][0]
    out.append(f"== string index (4.1) at {ioff:#x}, heap at {hoff:#x}")
    for i in range(h["strings"]):
        e = F.STRING_RECORD.read_all(data, ioff + i * F.STRING_SIZE)
        out.append(f"  string {i}: offset {e['offset']:#x} size {e['size']} flags {e['flags']} "
                   f"crc {e['crc']:#010x} {img.string(i).value!r}")
    out.append(f"== string heap (4) at {hoff:#x}")
    for i in range(h["strings"]):
        e = F.STRING_RECORD.read_all(data, ioff + i * F.STRING_SIZE)
        out.append(f"  string {i} {img.string(i).value!r}")
        for w in range(e["offset"], e["offset"] + e["size"], 8):
            out.append(f"    {hoff + w:#07x}  {data[hoff + w:hoff + w + 8].hex(' ')}")
    out.append(f"== module heap (5) at {secs[F.SEC_MODULE_HEAP][0]:#x}, in placement order")
    for i in placement_order(names):
        e = img._entries[i]
        p = _ModuleParser(img, e)
        p.parse()
        marked = set(bitmap_slots(data[e.seg_off + e.seg_size:e.seg_off + e.block_size]))
        starts = {}
        for off, node in p.memo.items():
            if isinstance(off, int):
                starts[off - (L.gc_head if type(node) is tuple else 0)] = (off, node)
        out.append(f"block of {e.name} at {e.seg_off:#x}: segment {e.seg_size} bytes, root "
                   f"+{e.root:#x}, bitmap {e.block_size - e.seg_size} bytes")
        for w in range(0, e.seg_size, 8):
            if w in starts:
                off, node = starts[w]
                out.append(f"  +{off:#x} {_describe(node)}")
            word = _word(data, e.seg_off + w)
            note = _tagged(word, base, e.seg_off) if w // 8 in marked else ""
            raw = data[e.seg_off + w:e.seg_off + w + 8].hex(" ")
            out.append(f"    {e.seg_off + w:#07x} +{w:<5x} {raw}" + (f"  {note}" if note else ""))
        out.append(f"  bitmap at {e.seg_off + e.seg_size:#x}: "
                   f"{data[e.seg_off + e.seg_size:e.seg_off + e.block_size].hex(' ')}")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="fail unless both writers give the committed vector")
    args = ap.parse_args(argv)
    d = vector_dir()
    img, txt = os.path.join(d, "gold.img"), os.path.join(d, "gold.txt")
    ref, native = build_vector("reference"), build_vector("native")
    if ref != native:
        raise SystemExit("the reference and the C writer disagree on the golden image")
    if args.check:
        with open(img, "rb") as fh:
            committed = fh.read()
        if committed != ref:
            raise SystemExit(f"{img} is not what this interpreter's writers produce")
        with open(txt, encoding="utf-8") as fh:
            if fh.read() != listing(img):
                raise SystemExit(f"{txt} is out of date")
        print(f"{img}: ok")
        return
    os.makedirs(d, exist_ok=True)
    with open(img, "wb") as fh:
        fh.write(ref)
    with open(txt, "w", encoding="utf-8") as fh:
        fh.write(listing(img))
    print(f"wrote {img} ({len(ref)} bytes) and {txt}")


if __name__ == "__main__":
    main()
