"""The ``refmarshal`` command (also ``python -m refmarshal``).

Every failure ends in one line on stderr and a non-zero exit status: 1 when the command ran and
found a problem (or could not do its job), 2 for a usage error.  Modules are imported lazily so
``--help`` stays quick.
"""

import argparse
import os
import sys
import time
import warnings


class CliError(Exception):
    """A problem to report in one line, ``prog: error: message``; exit status ``code``."""

    def __init__(self, message, code=1, prog="refmarshal"):
        super().__init__(message)
        self.code = code
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints usage plus the error; one line with a pointer to --help is clearer
        raise CliError(f"{message} (see {self.prog} --help)", 2, self.prog)


# ------------------------------------------------------------------------------ helpers

def _say(*parts):
    print(*parts, flush=True)


def _mb(n):
    return f"{n / 1e6:.1f} MB"


def _default_image():
    from . import importer
    return importer.default_image_path()


def _image_arg(path):
    return os.path.abspath(path) if path else _default_image()


def site_dir():
    """The site-packages directory of this environment, where the .pth hook goes (the one pip
    installs into: the venv's when in a venv)."""
    import sysconfig
    return sysconfig.get_paths()["purelib"]


def pth_path():
    from . import importer
    return os.path.join(site_dir(), importer.PTH_NAME)


def finder_image(env=None):
    """The image a new interpreter of this environment imports through ('' when it has no
    refmarshal finder on sys.meta_path), and that interpreter's stderr.  Runs outside any
    source tree."""
    import subprocess
    import tempfile
    from .hookstate import probe_code
    code = probe_code("f.path if f else ''", wake=True)
    with tempfile.TemporaryDirectory(prefix="refmarshal-") as cwd:
        proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                              capture_output=True, text=True)
    return proc.stdout.strip(), proc.stderr.strip()


def _duration(seconds):
    """``42 s`` or ``3:07`` (minutes and seconds)."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60}:{seconds % 60:02}"


class Progress:
    """On a terminal, one line on stderr, rewritten in place (carriage return): count, rate and
    time left, then the count, rate and time taken when done.  Otherwise a plain line on
    stdout at every tenth of the work (none for small jobs, which are over before anyone would
    read them)."""

    PLAIN_MINIMUM = 100
    WIDTH = 79           # of the terminal line, the module's name cut to fit
    INTERVAL = 0.1       # seconds between rewrites of the line

    def __init__(self, what, unit="modules"):
        self.what = what
        self.unit = unit
        self.tty = sys.stderr.isatty()
        self.next_line = 0.1
        self.start = self.shown = time.perf_counter()
        self.last = 0        # length of the line shown

    def __call__(self, done, total, name=""):
        if self.tty:
            self._line(done, total, name)
        elif total >= self.PLAIN_MINIMUM and done / total >= self.next_line:
            while self.next_line <= done / total:
                self.next_line += 0.1
            _say(f"{self.what}: {done}/{total}")

    def _line(self, done, total, name):
        now = time.perf_counter()
        final = done >= total
        if not final and done > 1 and now - self.shown < self.INTERVAL:
            return
        self.shown = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.what} {done}/{total} ({100 * done // max(total, 1)} %), " \
               f"{rate:.0f} {self.unit}/s, "
        if final:
            text += f"{_duration(elapsed)}"
        else:
            text += f"ETA {_duration((total - done) / rate) if rate else '?'}"
            room = self.WIDTH - len(text) - 2
            if name and room > 3:
                text += "  " + (name if len(name) <= room else name[:room - 3] + "...")
        sys.stderr.write("\r" + text.ljust(self.last) + ("\n" if final else ""))
        sys.stderr.flush()
        self.last = len(text)


# ------------------------------------------------------------------------------ build

def _selection(args):
    """(module name -> source path) the build options ask for."""
    from . import environment
    for d in args.dir:
        if not os.path.isdir(d):
            raise CliError(f"--dir {d}: not a directory")
    if args.dir or args.package:
        modules = environment.discover(args.dir) if args.dir else {}
        for name in args.package:
            try:
                for mod, path in environment.package_modules(name).items():
                    modules.setdefault(mod, path)
            except LookupError as exc:
                raise CliError(f"--package {name}: {exc}") from None
    else:
        modules = environment.discover()
    return {n: p for n, p in sorted(modules.items())
            if not environment.excluded(n, args.exclude)}


def build_image(output, modules, jobs, verbose=False, optimize=0):
    """Write the image for optimization level ``optimize`` and print the summary; returns the
    BuildResult."""
    from .building import build
    if not modules:
        raise CliError("nothing to build: no Python modules found")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    level = f", optimization level {optimize}" if optimize else ""
    _say(f"building {output} from {len(modules)} modules ({jobs} job{'s' * (jobs > 1)}{level})")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # what compiling a source says (invalid escapes, "is" with a literal) is for its
        # authors, shown when they run it; compileall -q is as quiet
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        result = build(output, modules.items(), optimize=optimize, jobs=jobs,
                       progress=Progress("compiling"), implementation="auto")
    seconds = time.perf_counter() - start
    _say(f"{len(result.modules)} modules, {len(result.skipped)} skipped, {_mb(result.size)}, "
         f"{result.strings} interned strings, {seconds:.1f} s")
    if result.skipped and verbose:
        for name, path, reason in result.skipped:
            _say(f"  skipped {name} ({path}): {reason}")
    elif result.skipped:
        _say("  (-v lists the skipped modules)")
    return result


def _level_image(path, level):
    """The image for optimization level ``level``: beside ``path`` (the level-0 one, as named
    by -o or --image), else at the environment's default path for that level."""
    from ._startup import default_image_path, level_path
    return level_path(os.path.abspath(path), level) if path else default_image_path(level)


def _levels(text):
    """--optimize: a comma list of optimization levels, e.g. ``0,1,2``."""
    try:
        levels = sorted({int(part) for part in text.split(",")})
    except ValueError:
        levels = []
    if not levels or not set(levels) <= {0, 1, 2}:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of levels 0, 1 and 2")
    return levels


def cmd_build(args):
    modules = _selection(args)
    for level in args.optimize:
        build_image(_level_image(args.output, level), modules, args.jobs, args.verbose, level)
    return 0


# ------------------------------------------------------------------------------ enable / disable

def _usable(path, level=None):
    """None when ``path`` is an image this interpreter can open (built for optimization level
    ``level``, when given), else why not."""
    from .container import check_file
    from .errors import ImageError
    try:
        fields = check_file(path)
    except FileNotFoundError:
        return "missing"
    except (OSError, ImageError) as exc:
        return str(exc)
    if level is not None and fields["optimize"] != level:
        return f"built at optimization level {fields['optimize']}, not {level}"
    return None


def _write_atomically(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _modules_like(image, rebuilding):
    """What enable (and refresh) build: the environment's modules, or when ``image`` (level
    0's) is kept, the modules it holds, so the other levels' images hold the same ones (a
    selection made with ``refmarshal build --dir``, ``--exclude``... carries over)."""
    if rebuilding or _usable(image, 0):
        from . import environment
        return environment.discover()
    return {e.name: e.path for e in _directory(image).entries if os.path.exists(e.path)}


def cmd_enable(args):
    from . import accelerator_available, importer
    if not accelerator_available():
        raise CliError("the accelerator is not built for this interpreter, so the hook could "
                       "only warn at every start; reinstall refmarshal with a C compiler")
    image = _level_image(args.image, 0)
    modules = None
    for level in sorted({0, *args.optimize}):
        path = _level_image(args.image, level)
        problem = _usable(path, level)
        if args.build or problem:
            if problem and not args.build:
                _say(f"image {path}: {problem}; building it")
            if modules is None:
                modules = _modules_like(image, args.build or level == 0)
            build_image(path, modules, args.jobs, optimize=level)
    pth = pth_path()
    try:
        os.makedirs(os.path.dirname(pth), exist_ok=True)
        _write_atomically(pth, importer.pth_text(None if args.image is None else image,
                                                 args.auto_refresh))
    except OSError as exc:
        raise CliError(f"cannot write {pth}: {exc.strerror or exc}") from None
    env = dict(os.environ)
    env.pop("REFMARSHAL", None)
    active, err = finder_image(env)
    if not active:
        os.unlink(pth)
        raise CliError(f"a new interpreter does not pick up the hook, so it was removed again"
                       f"{': ' + err.splitlines()[-1] if err else ''}")
    _say(f"enabled: {pth}")
    _say(f"image:   {image}")
    for level in sorted(set(args.optimize) - {0}):
        _say(f"{'-' + 'O' * level + ':':<9}{_level_image(args.image, level)}")
    if args.auto_refresh is not None:
        from .refresh import log_path
        _say(f"auto-refresh: on, at most one rebuild every {args.auto_refresh} s "
             f"(log: {log_path(image)})")
    if os.environ.get("REFMARSHAL") == "0":
        _say("note: REFMARSHAL=0 is set in this shell, which turns the hook off here")
    if args.bench:
        return _run_bench(None, args.runs)
    return 0


def cmd_disable(args):
    pth = pth_path()
    try:
        os.unlink(pth)
    except FileNotFoundError:
        _say(f"not enabled (no {pth})")
        return 0
    except OSError as exc:
        raise CliError(f"cannot remove {pth}: {exc.strerror or exc}") from None
    _say(f"disabled: removed {pth} (the image is kept: {_default_image()})")
    return 0


# ------------------------------------------------------------------------------ info

def _directory(path):
    """container.directory(path), its failures as CliError."""
    from .container import directory
    from .errors import ImageError
    try:
        return directory(path)
    except (OSError, ImageError) as exc:
        raise CliError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None


def cmd_info(args):
    from . import format as F
    from .container import peek_header
    from .errors import ImageError
    path = _image_arg(args.path)
    try:
        fields, size = peek_header(path)       # any image, this interpreter's or not
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    except ImageError as exc:
        raise CliError(f"{path}: {exc}") from None
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.stat(path).st_mtime))
    _say(f"image        {path}")
    _say(f"size         {size:,} bytes ({_mb(size)}); written {built} (file time)")
    _say(f"format       {fields['format_major']}.{fields['format_minor']}")
    _say(f"interpreter  {F.describe_fingerprint(fields['fingerprint'])}")
    problem = _usable(path)
    _say(f"usable here  {'yes' if problem is None else 'no: ' + problem}")
    _say(f"optimize     {fields['flags'] & F.FLAG_OPTIMIZE_MASK}")
    if problem is not None:
        raise CliError(f"{path}: {problem}")
    header, entries, tagged = _directory(path)
    packages = sum(e.is_package for e in entries)
    _say(f"modules      {header['modules']} ({packages} packages)")
    _say(f"strings      {header['strings']:,} interned strings, stored once")
    _say(f"fix-ups      {tagged:,} tagged words (pointers, type words, singletons, strings)")
    _say("sections")
    for name, (off, length) in zip(F.SECTION_NAMES, header["sections"]):
        _say(f"  {name:<14}{length:>14,} bytes  at {off:#x}")
    if args.verbose:
        _say("modules (segment bytes, source)")
        for e in entries:
            _say(f"  {e.name:<50}{e.seg_size:>10,}  {e.path}")
    return 0


# ------------------------------------------------------------------------------ verify

def cmd_verify(args):
    import marshal
    from . import Image, accelerator_available
    from .errors import ImageError
    from .building import compile_module
    path = _image_arg(args.path)
    if not accelerator_available():
        raise CliError("the accelerator is not built for this interpreter; nothing to verify "
                       "it with")
    try:
        img = Image(path, implementation="accel")
        names = img.names()
        optimize = img.header["optimize"]
    except (OSError, ImageError) as exc:
        raise CliError(f"{exc}" if path in str(exc) else f"{path}: {exc}") from None
    progress = Progress("verifying")
    failed, unchecked = [], []
    for done, name in enumerate(names, 1):
        progress(done, len(names), name)
        try:
            entry = img.entry(name)
            if _source_state(entry) != "current":
                unchecked.append((name, _source_state(entry)))
                continue
            code = img.get_code(name)
        except ImageError as exc:
            failed.append((name, str(exc)))
            continue
        try:
            expected = compile_module(entry.path, optimize)
        except (OSError, SyntaxError, ValueError) as exc:
            failed.append((name, f"source no longer compiles: {exc}"))
            continue
        if marshal.dumps(code, 2) != marshal.dumps(expected, 2):
            failed.append((name, "code differs from compiling its source"))
    for name, why in failed:
        _say(f"FAIL {name}: {why}")
    if unchecked:
        _say(f"{len(unchecked)} not checked: the source changed since the build "
             f"(refmarshal status lists them)")
    checked = len(names) - len(unchecked)
    _say(f"{checked - len(failed)} of {checked} modules match their source "
         f"({len(failed)} failed)")
    if failed:
        raise CliError(f"{path}: {len(failed)} module(s) failed verification")
    return 0


# ------------------------------------------------------------------------------ status

def _source_state(entry):
    """'current', 'stale' (mtime or size differ) or 'missing' for an image's module: 'current'
    exactly when the import hook serves it from the image (importer.source_unchanged decides)."""
    from .importer import source_unchanged
    if source_unchanged(entry):
        return "current"
    return "stale" if os.path.exists(entry.path) else "missing"


def cmd_status(args):
    from . import importer
    pth = pth_path()
    enabled = os.path.exists(pth)
    _say(f"enabled   {'yes: ' + pth if enabled else 'no (no ' + pth + ')'}")
    image = os.environ.get("REFMARSHAL_IMAGE") or importer.default_image_path()
    source = " (from REFMARSHAL_IMAGE)" if os.environ.get("REFMARSHAL_IMAGE") else ""
    if enabled:
        active, err = finder_image()
        why = ""
        if not active:
            why = (": REFMARSHAL=0 is set" if os.environ.get("REFMARSHAL") == "0"
                   else ": " + err.splitlines()[-1] if err else "")
        _say(f"active    {'yes' if active else 'no' + why} (in a new interpreter)")
        if active:
            image, source = active, source or " (the one a new interpreter uses)"
    _say(f"image     {image}{source}")
    named = bool(os.environ.get("REFMARSHAL_IMAGE"))
    problem = _usable(image)
    if problem:
        _say(f"current   no: image {problem}")
        if enabled:
            _refresh_status(pth, image)
        _levels_status(image, named)
        return 1
    entries = _directory(image).entries
    states = [(e, _source_state(e)) for e in entries]
    bad = [(e, s) for e, s in states if s != "current"]
    stale = sum(s == "stale" for _, s in bad)
    _say(f"modules   {len(entries)}")
    if not bad:
        _say("current   yes: every module matches its source")
    else:
        _say(f"current   no: {stale} stale, {len(bad) - stale} missing source "
             f"(stock import is used for these; refmarshal build refreshes the image)")
        for kind in ("stale", "missing"):
            _list_modules(kind, [(e.name, e.path) for e, s in bad if s == kind], args.verbose)
    if image == importer.default_image_path():
        from . import environment
        held = {e.name for e in entries}
        new = [(n, p) for n, p in environment.discover().items() if n not in held]
        if new:
            _say(f"new       {len(new)} module(s) of this environment are not in the image "
                 f"(stock import is used for these)")
            _list_modules("new", new, args.verbose)
    if enabled:
        _refresh_status(pth, image)
    _levels_status(image, named)
    return 1 if bad else 0


_GROUPS_SHOWN = 20


def _list_modules(kind, modules, verbose):
    """``modules`` (name, source path) of one kind: every one with its source when
    ``verbose``, else grouped by top-level package."""
    if verbose:
        for name, path in modules:
            _say(f"  {kind:<8}{name}  {path}")
        return
    groups = {}
    for name, _ in modules:
        groups.setdefault(name.partition(".")[0], []).append(name)
    for top in sorted(groups)[:_GROUPS_SHOWN]:
        names = sorted(groups[top])
        more = f", ... ({len(names) - 3} more)" if len(names) > 3 else ""
        _say(f"  {kind:<8}{top} ({len(names)}): {', '.join(names[:3])}{more}")
    if len(groups) > _GROUPS_SHOWN:
        _say(f"  ... and {len(groups) - _GROUPS_SHOWN} more packages (-v lists every module)")


def _refresh_status(pth, image):
    """Whether auto-refresh is on (the .pth line says so), and the end of its log."""
    import re
    from .refresh import base_image, log_path
    try:
        with open(pth, encoding="utf-8") as fh:
            on = re.search(r"refresh=(\d+)", fh.read())
    except OSError:
        on = None
    if not on:
        _say("refresh   off (refmarshal enable --auto-refresh turns it on)")
        return
    log = log_path(base_image(image))
    _say(f"refresh   on: a process that imported outdated modules starts a rebuild at exit, at "
         f"most one every {on.group(1)} s; log {log}")
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            last = [line.rstrip() for line in fh
                    if line[:1].isdigit() or line.startswith("refmarshal")][-3:]
    except OSError:
        last = ["(no rebuild yet)"]
    for line in last:
        _say(f"          {line}")


_LEVEL_RUN = ("python", "python -O", "python -OO")


def _levels_status(image, named):
    """One line per optimization level: its image (beside ``image``, as the start-up hook
    looks for it), whether it exists and is current.  ``named``: REFMARSHAL_IMAGE chose
    ``image``, which the hook then uses at every level."""
    from .importer import source_unchanged
    from .refresh import base_image
    if named:
        _say("levels    REFMARSHAL_IMAGE is used as named, at every optimization level")
        return
    base = base_image(image)
    _say("levels    one image per optimization level (refmarshal build --optimize 0,1,2); "
         "python -O or -OO")
    _say("          without an image of its level imports the stock way, silently")
    for level, run in enumerate(_LEVEL_RUN):
        path = _level_image(base, level)
        problem = _usable(path, level)
        if problem == "missing":
            state = "no image"
        elif problem:
            state = f"unusable: {problem}"
        else:
            changed = sum(not source_unchanged(e) for e in _directory(path).entries)
            state = f"not current: {changed} module(s) changed" if changed else "current"
        _say(f"  {level} {run:<11}{state}  {path}")


# ------------------------------------------------------------------------------ refresh

def _keep_last_lines(path, count):
    """Cut the log at ``path`` to its last ``count`` lines, in place (writers append)."""
    with open(path, "r+", encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
        if len(lines) > count:
            fh.seek(0)
            fh.truncate()
            fh.writelines(lines[-count:])


def cmd_refresh(args):
    import fcntl
    from .refresh import LOG_LINES, lock_path, log_path, stamp
    from ._startup import level_path
    base = _level_image(args.image, 0)
    try:
        os.nice(10)
    except OSError:
        pass
    os.makedirs(os.path.dirname(base), exist_ok=True)
    lock = os.open(lock_path(base), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"{stamp()} another rebuild of {base} is running: not started")
            return 0
        os.utime(lock_path(base))           # when the last rebuild started (refresh.at_exit)
        if os.path.exists(log_path(base)):
            _keep_last_lines(log_path(base), LOG_LINES)
        _say(f"{stamp()} rebuild started (pid {os.getpid()})"
             f"{': ' + args.reason if args.reason else ''}")
        modules = _modules_like(base, False)
        for name, _, path in (add.partition("=") for add in args.add):
            if os.path.isfile(path):
                modules[name] = path
        modules = dict(sorted(modules.items()))
        for level in (0, 1, 2):
            path = level_path(base, level)
            if level == 0 or os.path.exists(path):
                build_image(path, modules, 1, optimize=level)
        _say(f"{stamp()} rebuild done")
    finally:
        os.close(lock)                      # and with it the lock
    return 0


# ------------------------------------------------------------------------------ bench

def _run_bench(modules, runs):
    from . import bench
    if not os.path.exists(pth_path()):
        raise CliError(f"refmarshal is not enabled here (no {pth_path()}); "
                       f"run refmarshal enable first")
    statements = ([bench.statement(None)] + [bench.statement(m) for m in modules]
                  if modules else bench.default_statements())
    try:
        bench.run(sys.executable, pth_path(), statements, runs, _say,
                  Progress("rounds", "rounds"))
    except bench.BenchError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_bench(args):
    return _run_bench(args.modules, args.runs)


# ------------------------------------------------------------------------------ profile

def run_profile(argv):
    """``refmarshal profile ...`` belongs to refmarshal.profiler; its arguments pass through."""
    try:
        from .profiler.cli import main as profile_main
    except ImportError as exc:
        print(f"refmarshal profile: error: the profiler is not available ({exc})",
              file=sys.stderr)
        return 2
    return profile_main(argv)


# ------------------------------------------------------------------------------ parser

def make_parser():
    p = _Parser(prog="refmarshal", description="Fast imports from one image of an "
                "environment's code objects.  Run a command with --help for its options.")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    def command(name, func, help):
        c = sub.add_parser(name, help=help, description=help)
        c.set_defaults(func=func)
        return c

    c = command("build", cmd_build, "write an image of the environment's modules (default: "
                "every pure-Python module importable from sys.path)")
    c.add_argument("-o", "--output", metavar="PATH",
                   help="where to write it (default: the environment's image path)")
    c.add_argument("--dir", action="append", default=[], metavar="DIR",
                   help="only modules under DIR, named relative to it, as if it were on "
                   "sys.path (repeatable; earlier ones shadow later ones)")
    c.add_argument("--package", action="append", default=[], metavar="NAME",
                   help="only this module or package and its submodules, as found on sys.path "
                   "(repeatable; adds to --dir)")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out modules whose name, or a parent package's name, matches "
                   "GLOB, e.g. 'test' or '*.tests' (repeatable)")
    c.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="compile in N processes (default 1: with the C writer one process is "
                   "about as fast as compileall)")
    c.add_argument("-O", "--optimize", type=_levels, default=[0], metavar="LEVELS",
                   help="one image per optimization level, a comma list such as 0,1,2 (level "
                   "1 serves python -O, 2 python -OO; -o PATH names level 0's, the others go "
                   "beside it as PATH.opt-N.img; default: 0)")
    c.add_argument("-v", "--verbose", action="store_true", help="list the skipped modules")

    c = command("enable", cmd_enable, "install the .pth hook that imports through the image "
                "in every new interpreter of this environment; builds the image first if it "
                "is missing or unusable")
    c.add_argument("--image", metavar="PATH", help="use this image instead of the "
                   "environment's default one (built there if missing)")
    c.add_argument("--build", action="store_true", help="rebuild the image even if it exists")
    c.add_argument("-O", "--optimize", type=_levels, default=[0], metavar="LEVELS",
                   help="also the images for these optimization levels, a comma list such as "
                   "0,1,2 (built when missing; level 0 always)")
    c.add_argument("--auto-refresh", type=int, nargs="?", const=60, metavar="SECONDS",
                   help="a process that imported modules the stock way because the image is "
                   "out of date starts one rebuild, detached and at low priority, when it "
                   "exits (refmarshal refresh; logged beside the image); at most one every "
                   "SECONDS (default %(const)s)")
    c.add_argument("--bench", action="store_true",
                   help="then time a few imports before and after (as refmarshal bench)")
    c.add_argument("--runs", type=int, default=10, metavar="N",
                   help="runs per measurement for --bench (default %(default)s)")
    c.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="build with N processes (default %(default)s)")

    command("disable", cmd_disable, "remove the .pth hook (the image is kept)")

    c = command("info", cmd_info, "what an image holds: modules, section sizes, string "
                "sharing, the interpreter it is for")
    c.add_argument("path", nargs="?", help="the image (default: the environment's)")
    c.add_argument("-v", "--verbose", action="store_true", help="list every module")

    c = command("verify", cmd_verify, "load every module through the accelerator and compare "
                "it with compiling its source; exit status 1 on any difference")
    c.add_argument("path", nargs="?", help="the image (default: the environment's)")

    c = command("status", cmd_status, "is the hook enabled, is the image current, which "
                "modules are stale; exit status 1 when the image is missing or not current")
    c.add_argument("-v", "--verbose", action="store_true", help="list every stale module")

    c = command("bench", cmd_bench, "time `python -c \"import MODULE\"` in fresh interpreters, "
                "stock (refmarshal.pth moved aside) against the image, interleaved: medians "
                "and middle halves, and which statements are slower; needs the hook enabled")
    c.add_argument("modules", nargs="*", metavar="MODULE",
                   help="modules to import (default: pass, json, argparse, asyncio and up to "
                   "three installed heavy packages)")
    c.add_argument("--runs", type=int, default=10, metavar="N",
                   help="runs per arm and module (default %(default)s)")

    c = command("refresh", cmd_refresh, "rebuild the environment's images (every level that "
                "has one) from the modules they hold, at low priority, one rebuild at a time, "
                "logging to a file beside the image: what enable --auto-refresh starts")
    c.add_argument("--image", metavar="PATH", help="the level-0 image (default: the "
                   "environment's)")
    c.add_argument("--reason", default="", help=argparse.SUPPRESS)
    c.add_argument("--add", action="append", default=[], metavar="NAME=PATH",
                   help="also this module, from this source (repeatable)")

    sub.add_parser("profile", add_help=False, help="profile imports (refmarshal.profiler; "
                   "see refmarshal profile --help)")
    return p


def _check_counts(args):
    for opt in ("jobs", "runs"):
        if getattr(args, opt, 1) < 1:
            raise CliError(f"--{opt} must be at least 1", 2, f"refmarshal {args.command}")
    if (getattr(args, "auto_refresh", None) or 0) < 0:
        raise CliError("--auto-refresh must be 0 or more", 2, f"refmarshal {args.command}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "profile":
        return run_profile(argv[1:])
    try:
        args = make_parser().parse_args(argv)
        if args.command is None:
            raise CliError("no command given (see refmarshal --help)", 2)
        _check_counts(args)
        return args.func(args)
    except CliError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("refmarshal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`refmarshal info | head`): nothing more to say to anyone;
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        from .errors import ImageError
        kind = "error" if isinstance(exc, (ImageError, OSError)) else \
            f"internal error ({type(exc).__name__})"
        print(f"refmarshal: {kind}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
