"""A process's first import through the image (issue 14, "never slower"): what it imports and
checks.  The import hook reaches the accelerator through its C module ``_hook`` (rm_hook.c),
never through cffi; the header check is C's there (format.check_header for the CLI and the
messages); the ``.pth`` line loads ``_startup`` from its file when ordinary import would find
that very file.  Timings: benchmarks/startup.py."""

import json
import os
import textwrap

import pytest

import refmarshal
from refmarshal import format as F
from refmarshal import importer
from test_importer import hook_enabled, pytestmark, run, tree, venv, write_tree  # noqa: F401


def _hook():
    from refmarshal._accel import loader
    return loader._hook


def _c_passes(hdr, size):
    return _hook().check_header(bytes(hdr), size) is None


def _python_passes(hdr, size):
    try:
        F.check_header(bytes(hdr), size)
    except refmarshal.ImageError:
        return False
    return True


def _with_crc(hdr):
    at = F.HEADER_RECORD.offset("header_crc")
    hdr[at:at + 4] = bytes(4)
    hdr[at:at + 4] = F.crc32(bytes(hdr)).to_bytes(4, "little")
    return hdr


def test_fingerprint_in_c_is_formats():
    assert _hook().fingerprint() == F.fingerprint()


def test_c_header_check_agrees_with_format_check_header(small_image):
    """Every byte of a good header changed, with its checksum left as it was and made right
    again (so that the checks after the checksum's see the change), and a wrong file size:
    C's check passes exactly the headers format.check_header passes."""
    data = small_image.read_bytes()
    good, size = bytearray(data[:F.HEADER_SIZE]), len(data)
    assert _c_passes(good, size) and _python_passes(good, size)
    assert not _c_passes(good, size + 1) and not _python_passes(good, size + 1)
    crc_at = F.HEADER_RECORD.offset("header_crc")
    tried = 0
    for i in range(F.HEADER_SIZE):
        for flip in (0x01, 0x80, 0xFF):
            for fix_crc in (False, True):
                if fix_crc and crc_at <= i < crc_at + 4:
                    continue
                bad = bytearray(good)
                bad[i] ^= flip
                if fix_crc:
                    _with_crc(bad)
                assert _c_passes(bad, size) == _python_passes(bad, size), (i, flip, fix_crc)
                tried += 1
    # values that pass the checksum but not the rest: base, flags, counts
    for field, value in (("preferred_base", 0), ("preferred_base", 1 << 47),
                         ("preferred_base", 0x4000_0000 + 4096), ("flags", 4),
                         ("flags", 2), ("module_count", 0), ("string_count", 7),
                         ("format_minor", 9), ("format_major", 2), ("header_size", 255)):
        bad = bytearray(good)
        at, width = F.HEADER_RECORD.offset(field), F.HEADER_RECORD.width(field)
        bad[at:at + width] = value.to_bytes(width, "little")
        _with_crc(bad)
        assert _c_passes(bad, size) == _python_passes(bad, size), (field, value)
    assert tried > 1000


def test_refused_header_says_what_format_says(small_image, tmp_path):
    """The accelerator refuses a header in C; the message is format.check_header's."""
    data = bytearray(small_image.read_bytes())
    at = F.HEADER_RECORD.offset("flags")
    data[at] |= 0x10
    data[:F.HEADER_SIZE] = _with_crc(data[:F.HEADER_SIZE])
    bad = tmp_path / "flags.img"
    bad.write_bytes(bytes(data))
    from refmarshal._accel.loader import AccelImage
    with pytest.raises(refmarshal.ImageError, match=r"flags\.img: reserved header flags set"):
        AccelImage(bad)
    with pytest.raises(refmarshal.ImageError, match="reserved header flags set"):
        refmarshal.Image(bad, implementation="reference")


def test_image_api_without_cffi_in_the_process(small_image, tmp_path):
    """What the import hook uses of an AccelImage works without cffi's module; the rest of
    the API loads it at its first use."""
    code = textwrap.dedent('''
        import sys
        from refmarshal._accel.loader import AccelImage
        img = AccelImage(sys.argv[1])
        before = [m for m in ("_cffi_backend", "refmarshal._accel._loader", "refmarshal.format")
                  if m in sys.modules]
        code = img.get_code("kinds")
        print(before, img.owns(code), img.optimize, img.bytes_read > 0,
              "_cffi_backend" in sys.modules)
        print(img.entry("pkg.sub").name, img.names(), img.header["modules"],
              "_cffi_backend" in sys.modules)
    ''')
    r = run(["-c", code, str(small_image)], tmp_path, env={"REFMARSHAL": "0"})
    assert r.stdout.splitlines() == ["[] True 0 True False",
                                     "pkg.sub ['kinds', 'pkg', 'pkg.sub'] 3 True"]


NAMES = ("refmarshal", "refmarshal._startup", "refmarshal.importer", "refmarshal.errors",
         "refmarshal.format", "refmarshal._accel", "refmarshal._accel._hook",
         "refmarshal._accel.loader", "refmarshal._accel._loader", "_cffi_backend")
PROBE = textwrap.dedent(f'''
    import sys
    names = {NAMES!r}
    seen = [[n for n in names if n in sys.modules]]
    import mod
    seen.append([n for n in names if n in sys.modules])
    f = [f for f in sys.meta_path if type(f).__name__ == "ImageFinder"]
    import refmarshal, json
    import refmarshal._accel
    attached = (refmarshal._startup is sys.modules["refmarshal._startup"]
                and refmarshal._accel._hook is sys.modules["refmarshal._accel._hook"])
    print(json.dumps(seen + [bool(f) and f[0].image.owns(mod.MODCODE), attached]))
''')


def test_pth_hook_imports_one_module_at_start_and_no_cffi_at_the_first_import(venv, tree):
    """At start the .pth line loads _startup alone (not even its package); the first import
    adds the accelerator's C module alone, which makes the finder: none of refmarshal's Python
    modules, never cffi's module, its backend or format.py.  The package, imported later, has
    both as attributes."""
    python, site = venv
    src, img, cwd = tree
    with hook_enabled(site, img):
        r = run(["-c", PROBE], cwd, python=python, pythonpath=[src])
    start, first, owned, attached = json.loads(r.stdout)
    assert r.stderr == ""
    assert start == ["refmarshal._startup"]
    assert first == ["refmarshal._startup", "refmarshal._accel._hook"]
    assert owned and attached


def test_hook_works_without_cffi(tree):
    """The import hook needs only the accelerator's C module: with cffi's backend not
    importable it still serves modules; the API (names, entry) says cffi is missing."""
    src, img, cwd = tree
    code = textwrap.dedent('''
        import sys
        sys.modules["_cffi_backend"] = None
        import refmarshal, refmarshal._startup as s
        s.run()
        import mod
        f = [f for f in sys.meta_path if type(f).__name__ == "ImageFinder"][0]
        try:
            f.image.names()
        except ImportError:
            names = "ImportError"
        print(f.image.owns(mod.MODCODE), f.hits, names, refmarshal.accelerator_available())
    ''')
    r = run(["-c", code], cwd, pythonpath=[src], env={"REFMARSHAL_IMAGE": str(img)})
    assert (r.stdout, r.stderr) == ("True 1 ImportError False\n", "")


SHADOW_STARTUP = '''
import sys
def run(*args, **kwargs):
    sys.stderr.write("shadow " + __file__ + "\\n")
'''


def test_pth_line_imports_as_ordinary_import_would(venv, tree, tmp_path):
    """The line loads this installation's _startup from its file, which hands over to
    ordinary import where that would find another file: a refmarshal in a sys.path entry
    before it (here PYTHONPATH) is the one that runs, as before."""
    python, site = venv
    src, img, cwd = tree
    shadow = write_tree(tmp_path / "shadow", {"refmarshal/__init__.py": "",
                                              "refmarshal/_startup.py": SHADOW_STARTUP})
    with hook_enabled(site, img):
        r = run(["-c", "import sys; print(sys.modules['refmarshal._startup'].__file__)"], cwd,
                python=python, pythonpath=[shadow])
    want = str(shadow / "refmarshal" / "_startup.py")
    # (site may read a venv's site-packages twice: run() copes with that)
    assert r.stdout == want + "\n" and set(r.stderr.splitlines()) == {f"shadow {want}"}


def test_pth_line_names_this_installation():
    line = importer.pth_text()
    startup = os.path.join(os.path.dirname(importer.__file__), "_startup.py")
    assert repr(startup) in line and line.count("\n") == 1 and os.path.isfile(startup)


def test_debug_ranges_probe(tmp_path):
    """importer._debug_ranges asks a code object made with code.replace() (not compile(),
    which makes the ast classes first: milliseconds): it sees the option and the variable."""
    code = "from refmarshal import importer\nprint(importer._debug_ranges())\n"
    outs = [run([*flags, "-c", code], tmp_path, env=env).stdout
            for flags, env in (([], {}), (["-X", "no_debug_ranges"], {}),
                               ([], {"PYTHONNODEBUGRANGES": "1"}))]
    assert outs == ["True\n", "False\n", "False\n"]


def test_open_finder_refuses_what_install_declines(small_image, tmp_path):
    """The first import's C path (_hook.open_finder) refuses an interpreter without column
    positions and another optimization level, as importer.install declines them (the slow way
    then says why); it makes a working finder otherwise."""
    code = textwrap.dedent('''
        import sys
        from refmarshal._startup import load_hook_module
        hook = load_hook_module()
        try:
            f = hook.open_finder(sys.argv[1], True, print)
        except ValueError:
            print("refused")
        else:
            print(type(f).__module__, type(f).__name__, f.checked, f.hits, f.path == sys.argv[1],
                  f.image.owns(f.image.get_code("kinds")))
    ''')
    outs = [run([*flags, "-c", code, str(small_image)], tmp_path, env=env).stdout.strip()
            for flags, env in (([], {}), (["-X", "no_debug_ranges"], {}),
                               ([], {"PYTHONNODEBUGRANGES": "1"}), (["-O"], {}))]
    assert outs == ["refmarshal.importer ImageFinder True 0 True True"] + ["refused"] * 3


def test_finder_and_loader_types_as_stock_code_sees_them():
    """ImageFinder is made by install, not by calling it; an ImageLoader copies and pickles
    as the stock SourceFileLoader (the image stays in this process)."""
    import copy
    import pickle
    from importlib.machinery import SourceFileLoader
    with pytest.raises(TypeError):
        importer.ImageFinder()
    loader = importer.ImageLoader("m", "/nowhere/m.py")
    assert isinstance(loader, SourceFileLoader) and importer.ImageLoader.__slots__ == (
        "_hook", "_spec")
    for clone in (copy.copy(loader), pickle.loads(pickle.dumps(loader))):
        assert type(clone) is SourceFileLoader and (clone.name, clone.path) == (
            "m", "/nowhere/m.py")
    assert importer.ImageLoader.__module__ == "refmarshal.importer"
