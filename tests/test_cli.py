"""The ``refmarshal`` command, run as a user runs it: ``python -m refmarshal`` in fresh child
processes, cwd a temp dir, on a small tree of modules (never the whole environment: too slow
for a unit test).  Module discovery (environment.py) imports nothing, so it is tested in
process."""

import os
import re
import subprocess
import sys
import textwrap
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

import refmarshal
from refmarshal import environment
from refmarshal import format as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(refmarshal.__file__)))
COMMANDS = ["build", "enable", "disable", "info", "verify", "status", "bench", "refresh"]
needs_accel = pytest.mark.skipif(not refmarshal.accelerator_available(),
                                 reason="accelerator not built (verify and enable need it)")

TREE = {
    "mod.py": "X = 10 ** 30\ndef f():\n    return 10 ** 30, 2.5\ndef g():\n    return 2.5\n",
    "pkg/__init__.py": "from . import sub\n",
    "pkg/sub.py": "from .inner import deep\nS = 'sub'\n",
    "pkg/inner/__init__.py": "",
    "pkg/inner/deep.py": "D = (1.5j, b'bytes', frozenset({'a', 'b'}))\n",
    "ns/portion.py": "P = 1\n",
    "broken.py": "def f(:\n",
    "pkg/not.a.name.py": "X = 1\n",
    "pkg/__pycache__/stray.py": "X = 1\n",
}
BUILT = ["broken", "mod", "ns.portion", "pkg", "pkg.inner", "pkg.inner.deep", "pkg.sub"]


def write_tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def child_env(pythonpath=(), **extra):
    """This process's environment without refmarshal switches; the package under test (and
    cffi's backend, which the accelerator needs) importable from any interpreter of this
    version, even a fresh venv's."""
    import _cffi_backend
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFMARSHAL")}
    roots = [str(p) for p in pythonpath] + [ROOT, os.path.dirname(_cffi_backend.__file__)]
    env["PYTHONPATH"] = os.pathsep.join(roots)
    env.update(extra)
    return env


def rm(args, cwd, *, python=sys.executable, pythonpath=(), **extra):
    """``python -m refmarshal ARGS`` in a fresh child."""
    return subprocess.run([python, "-m", "refmarshal", *map(str, args)], cwd=cwd,
                          env=child_env(pythonpath, **extra), capture_output=True, text=True,
                          timeout=300)


def one_line_error(r, code=1):
    """The command failed with ``code`` and said so in exactly one line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.match(r"refmarshal( \w+)?: error: ", lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def tree(tmp_path):
    src = write_tree(tmp_path / "src", TREE)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return src, cwd


@pytest.fixture
def built(tree):
    src, cwd = tree
    img = cwd / "out" / "tree.img"
    r = rm(["build", "--dir", src, "-o", img, "-v"], cwd)
    assert r.returncode == 0, r.stderr
    return src, cwd, img, r


# ---------------------------------------------------------------------------------------
# Discovery follows the path finder's rules.

def test_discovery_rules(tmp_path):
    first = write_tree(tmp_path / "first", {
        "a.py": "", "shadow.py": "", "pkg/__init__.py": "", "pkg/m.py": "",
        "ns/one.py": "", "both.py": "", "sys.py": "", "odd-name.py": "", "a.b.py": "",
        "not-a-package/m.py": "", "site-packages/m.py": "",
        "ext" + EXTENSION_SUFFIXES[0]: "", "ext.py": "",
        "nsplain/x.py": "", "nsplain.py": "",
    })
    second = write_tree(tmp_path / "second", {
        "shadow.py": "", "shadow/__init__.py": "", "ns/two.py": "", "ns/one.py": "",
        "both/__init__.py": "", "later.py": "", "pkg/hidden.py": "",
    })
    found = environment.discover([first, second])
    assert found == {
        "a": str(first / "a.py"),
        "both": str(first / "both.py"),          # a module earlier on the path beats a package
        "later": str(second / "later.py"),
        "odd-name": str(first / "odd-name.py"),  # import_module reaches it; a.b.py: never
        "ns.one": str(first / "ns" / "one.py"),  # namespace portions merge, in path order
        "ns.two": str(second / "ns" / "two.py"),
        "nsplain": str(first / "nsplain.py"),    # a module beats a namespace portion
        "pkg": str(first / "pkg" / "__init__.py"),
        "pkg.m": str(first / "pkg" / "m.py"),    # a regular package's __path__ is its own dir
        "shadow": str(first / "shadow.py"),
    }                                            # sys is builtin; ext is an extension module


def test_package_modules_and_exclusion(tree):
    src, _ = tree
    assert list(environment.package_modules("pkg", [src])) == [
        "pkg", "pkg.inner", "pkg.inner.deep", "pkg.sub"]
    assert list(environment.package_modules("pkg.inner", [src])) == [
        "pkg.inner", "pkg.inner.deep"]
    assert list(environment.package_modules("ns", [src])) == ["ns.portion"]
    for bad in ("nope", "mod.sub", "pkg.nope", "1x"):
        with pytest.raises(LookupError):
            environment.package_modules(bad, [src])
    assert environment.excluded("pkg.inner.deep", ["pkg.inner"])
    assert environment.excluded("a.tests.b", ["*.tests"])
    assert not environment.excluded("pkg.inner", ["pkg.inner.*"])
    assert not environment.excluded("pkg", ["pkg.inner"])


# ---------------------------------------------------------------------------------------
# build, info, verify, status

def test_build_info_verify(built):
    src, cwd, img, r = built
    assert img.exists() and not [p for p in img.parent.iterdir() if p != img]  # no temp left
    summary = r.stdout.strip().splitlines()
    m = re.search(r"^(\d+) modules, (\d+) skipped, [\d.]+ MB, (\d+) interned strings, "
                  r"[\d.]+ s$", r.stdout, re.M)
    assert m and (int(m[1]), int(m[2])) == (len(BUILT) - 1, 1), r.stdout
    assert any(line.startswith("  skipped broken (") and "SyntaxError" in line
               for line in summary)
    assert sorted(refmarshal.Image(img, implementation="reference").names()) == \
        [n for n in BUILT if n != "broken"]

    r = rm(["info", img], cwd)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^modules +6 \(2 packages\)$", r.stdout, re.M), r.stdout
    assert re.search(r"^usable here +yes$", r.stdout, re.M)
    assert re.search(rf"^strings +{int(m[3]):,} interned strings, stored once$", r.stdout, re.M)
    for name in F.SECTION_NAMES:
        assert re.search(rf"^  {name} +[\d,]+ bytes", r.stdout, re.M)
    r = rm(["info", "-v", img], cwd)
    assert str(src / "pkg" / "inner" / "deep.py") in r.stdout

    if refmarshal.accelerator_available():
        r = rm(["verify", img], cwd)
        assert r.returncode == 0, r.stderr
        assert "6 of 6 modules match their source (0 failed)" in r.stdout


def test_build_options(tree):
    src, cwd = tree
    img = cwd / "x.img"
    r = rm(["build", "--dir", src, "--exclude", "pkg.inner", "--exclude", "broken", "-o", img],
           cwd)
    assert r.returncode == 0, r.stderr
    names = refmarshal.Image(img, implementation="reference").names()
    assert sorted(names) == ["mod", "ns.portion", "pkg", "pkg.sub"]
    # --package finds through sys.path (here: PYTHONPATH) without importing the package
    (src / "pkg" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    r = rm(["build", "--package", "pkg.inner", "--package", "mod", "-o", img], cwd,
           pythonpath=[src])
    assert r.returncode == 0, r.stderr
    names = refmarshal.Image(img, implementation="reference").names()
    assert sorted(names) == ["mod", "pkg.inner", "pkg.inner.deep"]


def test_parallel_build_writes_the_same_bytes(tmp_path):
    # Enough modules for the worker pool; shared constants (a big int, a float, used by two
    # functions) are the objects pickling would duplicate if it lost their identity.
    files = {f"m{i:02}.py": textwrap.dedent(f'''\
                 BIG = {i} * 10 ** 40
                 def f():
                     return {i} * 10 ** 40, 1.25, 3.5j, ({i}, "{i}")
                 def g():
                     return 1.25, 3.5j, ({i}, "{i}"), "shared string"
                 ''') for i in range(40)}
    src = write_tree(tmp_path / "src", files)
    outs = []
    for jobs in (1, 2):
        img = tmp_path / f"j{jobs}.img"
        r = rm(["build", "--dir", src, "--jobs", jobs, "-o", img], tmp_path)
        assert r.returncode == 0, r.stderr
        assert "40 modules, 0 skipped" in r.stdout
        outs.append(img.read_bytes())
    assert outs[0] == outs[1]


@needs_accel
def test_stale_sources_and_status(built):
    src, cwd, img, _ = built
    r = rm(["status"], cwd, REFMARSHAL_IMAGE=str(img))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "current   yes" in r.stdout and f"image     {img} (from REFMARSHAL_IMAGE)" in r.stdout
    with open(src / "pkg" / "sub.py", "a") as fh:
        fh.write("T = 'tampered'\n")
    (src / "ns" / "portion.py").unlink()
    r = rm(["status"], cwd, REFMARSHAL_IMAGE=str(img))
    assert r.returncode == 1
    assert "current   no: 1 stale, 1 missing source" in r.stdout
    assert "  stale   pkg (1): pkg.sub\n" in r.stdout      # grouped by top-level package
    assert "  missing ns (1): ns.portion\n" in r.stdout
    r = rm(["status", "-v"], cwd, REFMARSHAL_IMAGE=str(img))
    assert f"  stale   pkg.sub  {src / 'pkg' / 'sub.py'}" in r.stdout
    assert f"  missing ns.portion  {src / 'ns' / 'portion.py'}" in r.stdout
    # verify cannot check what changed, and says so; the rest still matches
    r = rm(["verify", img], cwd)
    assert r.returncode == 0, r.stderr
    assert "2 not checked" in r.stdout and "4 of 4 modules match" in r.stdout


@needs_accel
def test_corrupt_images_fail_with_one_line(built):
    src, cwd, img, _ = built
    data = bytearray(img.read_bytes())
    entry = refmarshal.Image(img, implementation="reference").entry("pkg.inner.deep")
    bad = cwd / "bad.img"
    data[entry.seg_off + entry.seg_size // 2] ^= 0xFF  # inside that module's segment
    bad.write_bytes(bytes(data))
    r = rm(["verify", bad], cwd)
    line = one_line_error(r)
    assert "1 module(s) failed verification" in line
    assert re.search(r"^FAIL pkg.inner.deep: .*checksum", r.stdout, re.M), r.stdout
    bad.write_bytes(img.read_bytes()[:-100])           # truncated: cannot even be opened
    for cmd in ("verify", "info"):
        assert "truncated" in one_line_error(rm([cmd, bad], cwd))
    r = rm(["status"], cwd, REFMARSHAL_IMAGE=str(bad))
    assert r.returncode == 1 and "current   no: image" in r.stdout and "truncated" in r.stdout


def test_errors_are_one_line(tmp_path):
    (tmp_path / "junk.img").write_bytes(b"not an image at all" * 20)
    assert "not a refmarshal image" in one_line_error(rm(["info", "junk.img"], tmp_path))
    assert "No such file" in one_line_error(rm(["info", "nope.img"], tmp_path))
    assert "not a directory" in one_line_error(rm(["build", "--dir", "nope", "-o", "x.img"],
                                                   tmp_path))
    assert "no module named 'nope_nope'" in one_line_error(
        rm(["build", "--package", "nope_nope", "-o", "x.img"], tmp_path))
    one_line_error(rm(["build", "--jobs", "0"], tmp_path), 2)
    one_line_error(rm(["build", "--no-such-option"], tmp_path), 2)
    one_line_error(rm(["no-such-command"], tmp_path), 2)
    one_line_error(rm([], tmp_path), 2)
    assert not (tmp_path / "x.img").exists()


def test_help_on_every_command(tmp_path):
    for cmd in [[]] + [[c] for c in COMMANDS]:
        r = rm(cmd + ["--help"], tmp_path)
        assert r.returncode == 0 and r.stderr == ""
        assert r.stdout.startswith(f"usage: {' '.join(['refmarshal'] + cmd)} ")


def test_console_script_is_python_m(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "refmarshal")
    if not os.path.exists(script):
        pytest.skip("refmarshal is not installed here (no console script to compare)")
    r = subprocess.run([script, "--help"], cwd=tmp_path, env=child_env(), capture_output=True,
                       text=True)
    assert r.stdout == rm(["--help"], tmp_path).stdout


def test_profile_forwards_its_arguments(tmp_path):
    fake = textwrap.dedent('''\
        import sys, types
        from refmarshal import cli
        if sys.argv[1] == "present":
            mod = types.ModuleType("refmarshal.profiler.cli")
            mod.main = lambda argv: print("profiler got", argv) or 7
            sys.modules["refmarshal.profiler"] = types.ModuleType("refmarshal.profiler")
            sys.modules["refmarshal.profiler.cli"] = mod
        else:
            sys.modules["refmarshal.profiler"] = None      # import fails
        sys.exit(cli.main(["profile", "--help", "-x", "a b"]))
        ''')
    r = subprocess.run([sys.executable, "-c", fake, "present"], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (7, "profiler got ['--help', '-x', 'a b']\n")
    r = subprocess.run([sys.executable, "-c", fake, "absent"], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("refmarshal profile: error: the profiler is not available")
    assert len(r.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------
# enable / disable in a throwaway virtual environment

@pytest.fixture
def venv(tmp_path):
    d = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(d)], check=True, cwd=tmp_path, env=child_env(), timeout=300)
    python = str(d / "bin" / "python")
    out = subprocess.run(
        [python, "-c", "import sysconfig; from refmarshal import importer; "
                       "print(sysconfig.get_paths()['purelib']); "
                       "print(importer.default_image_path())"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, check=True).stdout
    site, default = out.splitlines()
    assert site.startswith(str(d)) and default.startswith(str(d))
    return python, site, default


FINDERS = ("import sys, mod\n"
           "f = [x for x in sys.meta_path if type(x).__module__ == 'refmarshal.importer']\n"
           "print(len(f), f and f[0].path, f and f[0].image.owns(mod.f.__code__))\n")


@needs_accel
def test_enable_and_disable_in_a_venv(venv, tree):
    python, site, default = venv
    src, cwd = tree
    pth = os.path.join(site, "refmarshal.pth")

    def finders(**env):
        r = subprocess.run([python, "-c", FINDERS], cwd=cwd, capture_output=True, text=True,
                           env=child_env([src], **env))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout.split()

    r = rm(["bench", "mod"], cwd, python=python)
    assert "not enabled" in one_line_error(r)
    r = rm(["build", "--dir", src], cwd, python=python)       # to the venv's default path
    assert r.returncode == 0 and os.path.exists(default), r.stderr
    assert finders() == ["0", "[]", "[]"]

    r = rm(["enable"], cwd, python=python)
    assert r.returncode == 0, r.stderr
    assert f"enabled: {pth}" in r.stdout and "building" not in r.stdout
    assert os.path.exists(pth)
    assert finders() == ["1", default, "True"]
    assert finders(REFMARSHAL="0") == ["0", "[]", "[]"]
    r = rm(["status"], cwd, python=python)
    assert r.returncode == 0, r.stdout
    assert f"enabled   yes: {pth}" in r.stdout and "active    yes" in r.stdout
    assert f"image     {default} (the one a new interpreter uses)" in r.stdout
    assert "current   yes" in r.stdout

    r = rm(["bench", "mod", "--runs", "1"], cwd, python=python, pythonpath=[src])
    assert r.returncode == 0, r.stderr
    q = r"[\d.]+ \([\d.]+-[\d.]+\)"         # median (first-third quartile)
    assert re.search(rf"^import mod +{q} +{q} +[\d.]+x +[\d.]+x", r.stdout, re.M), r.stdout
    assert "import mod: 1 of" in r.stdout and "came from the image" in r.stdout
    assert re.search(r"^(SLOWER with the image: |faster with the image for every)", r.stdout,
                     re.M), r.stdout
    assert os.path.exists(pth) and not os.path.exists(pth + ".bench-stock")   # put back

    other = cwd / "other.img"
    os.replace(default, other)
    r = rm(["enable", "--image", other], cwd, python=python)
    assert r.returncode == 0, r.stderr
    assert finders() == ["1", str(other), "True"]
    r = rm(["status"], cwd, python=python)
    assert r.returncode == 0 and f"image     {other} (the one" in r.stdout, r.stdout

    r = rm(["disable"], cwd, python=python)
    assert r.returncode == 0 and f"disabled: removed {pth}" in r.stdout
    assert not os.path.exists(pth)
    assert finders() == ["0", "[]", "[]"]
    r = rm(["disable"], cwd, python=python)
    assert r.returncode == 0 and "not enabled" in r.stdout
    r = rm(["status"], cwd, python=python)
    assert "enabled   no" in r.stdout and r.returncode == 1     # and the default image is gone


@needs_accel
def test_optimization_levels_in_a_venv(venv, tree):
    from refmarshal._startup import level_path
    python, site, default = venv
    src, cwd = tree
    opt1, opt2 = level_path(default, 1), level_path(default, 2)

    def finders(flag):
        r = subprocess.run([python, flag, "-c", FINDERS], cwd=cwd, capture_output=True,
                           text=True, env=child_env([src]))
        assert r.returncode == 0 and r.stderr == "", r.stderr      # never a word
        return r.stdout.split()

    r = rm(["build", "--dir", src, "--optimize", "1,0"], cwd, python=python)
    assert r.returncode == 0, r.stderr
    assert f"building {opt1} from 7 modules (1 job, optimization level 1)" in r.stdout
    assert os.path.exists(default) and os.path.exists(opt1) and not os.path.exists(opt2)
    r = rm(["enable", "--optimize", "1"], cwd, python=python)
    assert r.returncode == 0 and "building" not in r.stdout, r.stdout + r.stderr
    assert f"-O:      {opt1}" in r.stdout
    assert finders("-O") == ["1", opt1, "True"]        # python -O: its own image
    assert finders("-OO") == ["0", "[]", "[]"]         # no image for -OO: stock, silently
    assert finders("-B") == ["1", default, "True"]

    def levels(code=0):
        r = rm(["status"], cwd, python=python)
        assert r.returncode == code, r.stdout + r.stderr
        assert "without an image of its level imports the stock way, silently" in r.stdout
        return re.findall(r"^  (\d) (python(?: -O+)?) +(.*)  (\S+)$", r.stdout, re.M)

    assert levels() == [("0", "python", "current", default),
                        ("1", "python -O", "current", opt1),
                        ("2", "python -OO", "no image", opt2)]
    # enable builds a missing level, from the modules level 0's image holds
    r = rm(["enable", "--optimize", "0,2"], cwd, python=python)
    assert r.returncode == 0, r.stderr
    assert f"image {opt2}: missing; building it" in r.stdout
    assert f"building {opt2} from 6 modules" in r.stdout and r.stdout.count("building ") == 2
    assert refmarshal.Image(opt2, implementation="accel").header["optimize"] == 2
    assert finders("-OO") == ["1", opt2, "True"]
    with open(src / "mod.py", "a") as fh:
        fh.write("Z = 1\n")
    assert [state for _, _, state, _ in levels(1)] == ["not current: 1 module(s) changed"] * 3


def test_build_levels_beside_the_named_image(built):
    src, cwd, img, _ = built
    r = rm(["build", "--dir", src, "-o", img, "-O", "2,0"], cwd)
    assert r.returncode == 0, r.stderr
    opt2 = img.parent / "tree.opt-2.img"
    assert sorted(os.listdir(img.parent)) == ["tree.img", "tree.opt-2.img"]
    assert r.stdout.index(f"building {img} ") < r.stdout.index(f"building {opt2} ")
    for path, level in ((img, 0), (opt2, 2)):
        assert refmarshal.Image(path, implementation="reference").header["optimize"] == level
    for bad in ("3", "0,x", "", "-1"):
        line = one_line_error(rm(["build", "--dir", src, "-o", img, "-O", bad], cwd), 2)
        assert "--optimize" in line


# ---------------------------------------------------------------------------------------
# progress: plain lines when not on a terminal, one rewritten line on a terminal

MANY = {f"m{i:03}.py": f"X = {i}\n" for i in range(150)}


def test_progress_when_not_a_terminal(tree):
    src, cwd = tree
    r = rm(["build", "--dir", src, "-o", "small.img"], cwd)
    assert r.returncode == 0 and r.stderr == "" and "compiling" not in r.stdout
    many = write_tree(cwd / "many", MANY)
    r = rm(["build", "--dir", many, "-o", "many.img"], cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = re.findall(r"^compiling: (\d+)/150$", r.stdout, re.M)
    assert lines[-1] == "150" and 8 <= len(lines) <= 11, r.stdout
    assert [int(n) for n in lines] == sorted(int(n) for n in lines)


def test_progress_line_on_a_terminal(tmp_path):
    import pty
    many = write_tree(tmp_path / "many", MANY)
    # a slow module: the line is rewritten while the build goes on
    (many / "m075.py").write_text("import time\nX = 1\n" + "Y = 2\n" * 20000)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "refmarshal", "build", "--dir", many,
                                 "-o", "many.img"], cwd=tmp_path, env=child_env(),
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:          # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        os.close(master)
    assert proc.returncode == 0, stdout
    shown = b"".join(chunks).decode()
    assert "compiling:" not in stdout                       # no plain lines besides
    updates = shown.replace("\r\n", "\n").split("\r")
    assert updates[0] == "" and len(updates) >= 3, repr(shown)
    for text in updates[1:-1]:
        assert re.fullmatch(r"compiling \d+/150 \(\d+ %\), \d+ modules/s, ETA [\d:]+ s?.*",
                            text.rstrip()), repr(text)
        assert "\n" not in text and len(text) <= 79
    final = updates[-1]
    assert re.fullmatch(r"compiling 150/150 \(100 %\), \d+ modules/s, [\d.:]+ s? *\n", final), \
        repr(final)


# ---------------------------------------------------------------------------------------
# auto-refresh: a process that saw outdated modules starts one rebuild at exit

@needs_accel
def test_auto_refresh_in_a_venv(venv, tree):
    import fcntl
    import time
    python, site, default = venv
    src, cwd = tree
    log = default + ".refresh.log"

    def served():
        """[modules the image holds that went the stock way, whether pkg.sub.g's code is the
        image's (None: no g yet), whether auto-refresh's module was imported while running]"""
        code = ("import sys, pkg.sub\n"
                "f = [x for x in sys.meta_path if type(x).__name__ == 'ImageFinder'][0]\n"
                "g = getattr(pkg.sub, 'g', None)\n"
                "print(f.fallbacks, g and f.image.owns(g.__code__),\n"
                "      'refmarshal.refresh' in sys.modules)\n")
        r = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True,
                           env=child_env([src]), timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout.split()

    def settled():
        """The log once every rebuild asked for (said before the asking process exits) has
        ended."""
        deadline = time.monotonic() + 600
        while True:
            text = open(log).read() if os.path.exists(log) else ""
            ended = text.count("rebuild done") + text.count("not started")
            if text.count("rebuild requested") == ended:
                return text
            assert time.monotonic() < deadline and "error" not in text, text
            time.sleep(0.2)

    def status():   # the command itself without the hook: it imports what the image lacks
        return rm(["status"], cwd, python=python, pythonpath=[src], REFMARSHAL="0")

    r = rm(["build", "--dir", src], cwd, python=python)
    assert r.returncode == 0, r.stderr
    r = rm(["enable", "--auto-refresh", "0"], cwd, python=python)
    assert r.returncode == 0, r.stderr
    assert f"auto-refresh: on, at most one rebuild every 0 s (log: {log})" in r.stdout
    assert "refresh=0" in open(os.path.join(site, "refmarshal.pth")).read()
    settled()        # enable's check may have asked for one: it imports modules the image lacks
    r = status()
    # the image holds the tree only: the environment's other modules are new, per package
    groups = re.findall(r"^  new     (\S+) \((\d+)\): \1, \1\.\S+, \1\.\S+, \.\.\. "
                        r"\((\d+) more\)$", r.stdout, re.M)
    assert groups and all(int(n) == int(more) + 3 for _, n, more in groups), r.stdout
    assert re.search(r"^  \.\.\. and \d+ more packages \(-v lists every module\)$", r.stdout,
                     re.M), r.stdout
    assert "refresh   on: a process that imported outdated modules starts a rebuild at exit, " \
           "at most one every 0 s; log " + log in r.stdout, r.stdout
    assert served() == ["0", "None", "False"]   # all current: nothing asked for
    before = settled()

    with open(src / "pkg" / "sub.py", "a") as fh:
        fh.write("def g():\n    return 'changed'\n")
    assert "  stale   pkg (1): pkg.sub\n" in status().stdout
    assert served() == ["1", "False", "False"]  # pkg.sub the stock way; asks at exit
    text = settled()
    assert text.startswith(before)
    assert re.search(r"^[\d-]+ [\d:]+ rebuild requested by pid \d+: 1 stale \(pkg.sub\), "
                     r"0 new \(\)$", text[len(before):], re.M), text
    assert f"building {default} from " in text[len(before):]
    assert served() == ["0", "True", "False"]   # the next process: from the image again
    r = status()
    assert r.returncode == 0 and "current   yes" in r.stdout, r.stdout
    assert re.search(r"^          [\d-]+ [\d:]+ rebuild done$", r.stdout, re.M), r.stdout

    # one rebuild at a time: another one gives up while the lock is held
    with open(default + ".refresh.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mtime = os.stat(default).st_mtime_ns
        r = rm(["refresh"], cwd, python=python, pythonpath=[src], REFMARSHAL="0")
        assert r.returncode == 0 and "is running: not started" in r.stdout, r.stderr
        assert os.stat(default).st_mtime_ns == mtime
    assert one_line_error(rm(["enable", "--auto-refresh", "-1"], cwd, python=python), 2)


def _bench_samples(**walls):
    """{(statement, arm): [(wall s, CPU s), ...]} from ms lists, CPU = wall."""
    return {(s.replace("_", " "), arm): [(w / 1000, w / 1000) for w in ws]
            for (s, arm), ws in ((k.rsplit("__", 1), v) for k, v in walls.items())}


def test_bench_says_plainly_which_statements_are_slower():
    from refmarshal import bench
    arms = bench.stock_and_image("/nonexistent/refmarshal.pth")
    assert [a.label for a in arms] == ["stock", "refmarshal"] and not arms[0].hooked
    samples = _bench_samples(pass__stock=[10, 11, 12], pass__refmarshal=[12, 13, 14],
                             import_x__stock=[100, 101, 102], import_x__refmarshal=[80, 81, 82],
                             import_y__stock=[20, 21, 22], import_y__refmarshal=[21, 21.5, 23])
    statements = ["pass", "import x", "import y"]
    lines = bench.table(statements, arms, samples)
    rows = {line.split("  ")[0]: line for line in lines[1:]}
    assert "11.0 (10.5-11.5)" in rows["pass"] and "13.0 (12.5-13.5)" in rows["pass"]
    assert rows["pass"].endswith("0.85x  slower (+2.0 ms)")
    assert "1.25x" in rows["import x"] and "slower" not in rows["import x"]
    assert rows["import y"].endswith("slower, within the spread (+0.5 ms)")
    said = bench.summary(statements, arms, samples)
    assert said.startswith("SLOWER with the image: pass (+2.0 ms, 0.85x), import y (+0.5 ms")
    assert "import x" not in said
    assert bench.summary(["import x"], arms, samples) == \
        "faster with the image for every statement timed"


def test_bench_puts_the_hook_back(tmp_path):
    """The stock arm runs with refmarshal.pth moved aside; it is back afterwards, also when a
    child fails, and a file left aside by a killed run is put back first."""
    from refmarshal import bench
    pth = tmp_path / "refmarshal.pth"
    pth.write_text("import sys\n")
    parked = str(pth) + bench.PARKED_SUFFIX
    seen = tmp_path / "seen"
    arms = bench.stock_and_image(str(pth))
    check = (f"import os; open({str(seen)!r}, 'a').write("
             f"str(os.path.exists({str(pth)!r})) + ' ')")
    bench.measure(sys.executable, [check], arms, 2, pth=str(pth))
    assert pth.exists() and not os.path.exists(parked)
    # warm-up stock, refmarshal; round 1 the same; round 2 reversed
    assert seen.read_text().split() == ["False", "True", "False", "True", "True", "False"]
    with pytest.raises(bench.BenchError, match=r"failed: 3$"):
        bench.measure(sys.executable, ["raise SystemExit('3')"], arms, 1, pth=str(pth))
    assert pth.exists() and not os.path.exists(parked)
    os.replace(pth, parked)                      # as a killed run leaves it
    bench.measure(sys.executable, ["pass"], arms[1:], 1, pth=str(pth))
    assert pth.exists() and not os.path.exists(parked)
