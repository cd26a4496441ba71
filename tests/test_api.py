"""The Python API later issues and tests rely on ([API-1])."""

import subprocess
import sys

import pytest

import refmarshal


def test_public_names():
    assert {"build", "Image", "ImageError"} <= set(refmarshal.__all__)
    assert issubclass(refmarshal.ImageError, Exception)


def test_forcing_an_implementation(small_image):
    img = refmarshal.Image(small_image, implementation="reference")
    assert img.implementation == "reference"
    with pytest.raises(ValueError):
        refmarshal.Image(small_image, implementation="bogus")


def test_auto_falls_back_to_reference_without_accelerator(small_image, tmp_path):
    """With the accelerator's extension unimportable, "auto" gives the reference reader."""
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'refmarshal._accel._loader':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import refmarshal\n"
        "assert not refmarshal.accelerator_available()\n"
        "img = refmarshal.Image(sys.argv[1])\n"
        "assert img.implementation == 'reference'\n"
        "assert img.get_code('kinds').co_name == '<module>'\n"
        "try:\n"
        "    refmarshal.Image(sys.argv[1], implementation='accel')\n"
        "except ImportError:\n"
        "    print('ok')\n")
    r = subprocess.run([sys.executable, "-c", script, str(small_image)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.stdout.strip() == "ok", r.stderr


def test_build_skips_and_counts_bad_sources(tmp_path):
    (tmp_path / "ok.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("def (:\n")
    res = refmarshal.build(tmp_path / "i.img", [("ok", tmp_path / "ok.py"),
                                                ("bad", tmp_path / "bad.py"),
                                                ("gone", tmp_path / "gone.py")])
    assert res.modules == ["ok"]
    assert [s[0] for s in res.skipped] == ["bad", "gone"]
    assert "SyntaxError" in res.skipped[0][2] and "FileNotFoundError" in res.skipped[1][2]


def test_build_replaces_atomically(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    out = tmp_path / "i.img"
    out.write_bytes(b"old")
    refmarshal.build(out, [("a", tmp_path / "a.py")])
    assert out.read_bytes()[:8] == b"\x89RMI\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_module_entry_records_source(tmp_path):
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    refmarshal.build(tmp_path / "i.img", [("a", src)])
    e = refmarshal.Image(tmp_path / "i.img", implementation="reference").entry("a")
    st = src.stat()
    assert (e.path, e.mtime_ns, e.size, e.is_package) == (str(src), st.st_mtime_ns, st.st_size, False)


def test_record_layouts_match_the_spec_sizes_and_the_hand_packed_fingerprint():
    # format.py packs the fingerprint and parses the header without struct (the import hook's
    # path); the struct layouts, made on first use, must describe the same bytes
    import struct
    from _frozen_importlib_external import MAGIC_NUMBER
    from refmarshal import format as F
    assert (F.HEADER.size, F.MODULE.size, F.STRING.size, F.LOOKUP.size, F.LOOKUP_HEAD.size,
            F.SECTION.size, F.FINGERPRINT.size) == (F.HEADER_SIZE, F.MODULE_SIZE, F.STRING_SIZE,
                                                    4, 8, 16, F.FINGERPRINT_SIZE)
    assert F.FINGERPRINT_OFFSET + F.FINGERPRINT_SIZE == F.HEADER_SIZE
    assert F.fingerprint() == F.FINGERPRINT.pack(
        sys.hexversion, MAGIC_NUMBER, struct.calcsize("P"),
        ord("L") if sys.byteorder == "little" else ord("B"), F.build_flags(),
        sys.implementation.cache_tag.encode("ascii"), sys.version.encode("utf-8", "replace"))
    fields = F.HEADER.unpack(bytes(range(256)))
    assert fields[-1] == bytes(range(256))[F.FINGERPRINT_OFFSET:]
    with pytest.raises(AttributeError):
        F.NO_SUCH_LAYOUT


def test_no_import_cycles_but_the_start_up_hooks():
    """The layers import downwards only (ARCHITECTURE.md); the one cycle is the deliberate,
    lazy one between the start-up hook and the importer."""
    import ast
    import os
    root = os.path.dirname(refmarshal.__file__)
    graph = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root)[:-3].replace(os.sep, ".")
            name = "refmarshal" + ("" if rel == "__init__" else "." + rel.removesuffix(".__init__"))
            package = name if fn == "__init__.py" else name.rpartition(".")[0]
            deps = graph.setdefault(name, set())
            with open(os.path.join(dirpath, fn), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                    deps.update({target} if node.module else {f"{base}.{a.name}" for a in node.names})
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("refmarshal"):
                    deps.add(node.module)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.startswith("refmarshal"))
    graph = {n: {d for d in ds if d in graph and d != n} for n, ds in graph.items()}

    def reaches(start, goal, seen):
        for d in graph[start]:
            if d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)):
                return True
        return False

    cycles = {n for n in graph if reaches(n, n, set())}
    assert cycles <= {"refmarshal._startup", "refmarshal.importer"}, sorted(cycles)
