"""Runs inside the profiled interpreter: times every import the target makes, then runs the
target the way ``python`` would.

The parent starts it as ``python -c BOOTSTRAP collect.py OUT MODE IMAGE_ROOT KIND TARGET ARGS...``
(see ``child_command``).  The bootstrap executes this file in a private namespace, so the target
gets the pristine ``__main__`` of ``-c`` and nothing but modules already loaded at start-up is
imported before the hooks go in: the profile holds the target's imports and nothing else.

MODE is "timed" (hooks on) or "plain" (hooks off, to measure the profiler's own overhead).
IMAGE_ROOT is "" for stock import, else the directory holding the refmarshal package, whose
importer is installed before the target runs (REFMARSHAL_IMAGE, set by the parent, names it).

What is timed, per module that is actually imported (not already in sys.modules):
  cumulative  the whole of importlib._bootstrap._find_and_load, the span -X importtime measures
  find        _find_spec: every finder on sys.meta_path, failed ones included
  load        loader.get_code (read + unmarshal, or materialise from the image), or
              loader.create_module for extension, built-in and frozen modules
  exec        _load_unlocked minus load: running the module body
nested imports are subtracted from the phase they happened in, so self = cumulative - children.

The hooks are installed on importlib's own module (C looks ``_find_and_load`` up there on every
import) and on loader classes; their code objects carry importlib's file name so that CPython
trims them from import tracebacks and ``warnings`` skips them, exactly like importlib's frames.
Results are written with marshal (always loaded) when the target ends, however it ends.
"""

import os
import sys
import marshal
import _frozen_importlib as _bootstrap
import _frozen_importlib_external as _external
from time import perf_counter_ns as _now, process_time_ns as _cpu_now
from _thread import get_ident as _thread_id

# Record fields (a list per module, filled in while the import runs).
NAME, INDEX, PARENT, IMPORTER, ORIGIN, CUM, FIND, LOAD, EXEC, CHILD, PHASE, OK = range(12)
# Phases; CHILD holds the cumulative time of nested imports started in each phase.
P_OTHER, P_FIND, P_LOAD, P_EXEC = range(4)

_records = []
_stacks = {}
_orig = {}
_patched = set()
_kinds = {}          # loader class -> origin kind; its get_code etc. are hooked on first sight
_IMPORTLIB_FILE = _bootstrap._find_and_load.__code__.co_filename


def _top():
    stack = _stacks.get(_thread_id())
    return stack[-1] if stack else None


def _find_and_load(name, import_):
    if name in sys.modules:          # loaded, or being initialised: nothing is imported
        return _orig["_find_and_load"](name, import_)
    tid = _thread_id()
    stack = _stacks.get(tid)
    if stack is None:
        stack = _stacks[tid] = []
    parent = stack[-1] if stack else None
    # The importer is the nearest module running its body: a package imported on behalf of
    # its submodule (before the submodule's body runs) counts as imported by the same module.
    importer = "__main__"
    for rec in reversed(stack):
        if rec[PHASE] == P_EXEC:
            importer = rec[NAME]
            break
    rec = [name, len(_records), -1 if parent is None else parent[INDEX], importer, None,
           0, 0, 0, 0, [0, 0, 0, 0], P_OTHER, True]
    _records.append(rec)
    stack.append(rec)
    t0 = _now()
    try:
        return _orig["_find_and_load"](name, import_)
    except BaseException:
        rec[OK] = False
        raise
    finally:
        t1 = _now()
        stack.pop()
        rec[CUM] = t1 - t0
        if rec[ORIGIN] is None:   # never searched: importing its parent package imported it
            rec[ORIGIN] = "via parent" if rec[OK] else "failed"
        if parent is not None:
            parent[CHILD][parent[PHASE]] += t1 - t0


def _find_spec(name, path, target=None):
    rec = _top()
    if rec is None or rec[NAME] != name or rec[PHASE] != P_OTHER:
        return _orig["_find_spec"](name, path, target)
    rec[PHASE] = P_FIND
    t0 = _now()
    try:
        spec = _orig["_find_spec"](name, path, target)
    finally:
        rec[FIND] += _now() - t0
        rec[PHASE] = P_OTHER
    if spec is None:
        rec[ORIGIN] = "not found"
    else:
        loader = spec.loader
        cls = loader if isinstance(loader, type) else type(loader)
        kind = _kinds.get(cls)
        if kind is None:
            kind = _kinds[cls] = _origin_kind(cls)
            _hook_loader(cls)
        rec[ORIGIN] = kind
    return spec


def _find_overhead_ns(calls=3000):
    """What the _find_spec hook itself adds to a module's find figure (ns per call, median of
    five batches): the hook's span around a finder-less _find_spec minus a bare call of it.
    Measured after the target ran, with the hooks off; reported, not subtracted."""
    def nothing(name, path, target=None):
        return None
    rec = ["_refmarshal_profile_probe", -1, -1, "", None, 0, 0, 0, 0, [0, 0, 0, 0], P_OTHER,
           True]
    tid = _thread_id()
    saved_stack, saved = _stacks.get(tid), _orig.get("_find_spec")
    _stacks[tid] = [rec]
    _orig["_find_spec"] = nothing
    hooked = _find_spec
    results = []
    try:
        for _ in range(5):
            rec[FIND] = 0
            for _ in range(calls):
                hooked(rec[NAME], None)
            t0 = _now()
            for _ in range(calls):
                nothing(rec[NAME], None)
            bare = _now() - t0
            results.append(max(0, rec[FIND] - bare) / calls)
    finally:
        _orig["_find_spec"] = saved
        if saved_stack is None:
            del _stacks[tid]
        else:
            _stacks[tid] = saved_stack
    results.sort()
    return results[2]


def _load_unlocked(spec):
    rec = _top()
    if rec is None or rec[NAME] != spec.name or rec[PHASE] != P_OTHER:
        return _orig["_load_unlocked"](spec)
    rec[PHASE] = P_EXEC
    t0 = _now()
    try:
        return _orig["_load_unlocked"](spec)
    finally:
        rec[EXEC] += _now() - t0
        rec[PHASE] = P_OTHER


def _timed_load(func, stock_get_code):
    """Wrap get_code / create_module: the outermost call for the module being imported is its
    load phase; a nested call into stock SourceLoader.get_code means the loader fell back to
    the .pyc/source path (for example the image loader with a stale module)."""
    def timed_load(*args, **kwargs):
        rec = _top()
        if rec is None or not args or _subject(args[-1]) != rec[NAME]:
            return func(*args, **kwargs)
        if rec[PHASE] != P_EXEC:
            if stock_get_code and rec[PHASE] == P_LOAD and rec[ORIGIN] == "image":
                rec[ORIGIN] = "pyc"
            return func(*args, **kwargs)
        if stock_get_code and rec[ORIGIN] == "image":
            rec[ORIGIN] = "pyc"
        rec[PHASE] = P_LOAD
        t0 = _now()
        try:
            return func(*args, **kwargs)
        finally:
            rec[LOAD] += _now() - t0
            rec[PHASE] = P_EXEC
    return timed_load


def _noting_compile(func):
    """Wrap source_to_code: called during the load phase, the .pyc was missing or stale."""
    def noting_compile(*args, **kwargs):
        rec = _top()
        if rec is not None and rec[PHASE] == P_LOAD:
            rec[ORIGIN] = "source"
        return func(*args, **kwargs)
    return noting_compile


def _subject(arg):
    """get_code(fullname) names the module; create_module(spec) carries it in the spec."""
    return arg if isinstance(arg, str) else getattr(arg, "name", None)


def _hook_loader(cls):
    for attr, wrap in (("get_code", _timed_load), ("create_module", _timed_load),
                       ("source_to_code", _noting_compile)):
        owner = next((k for k in cls.__mro__ if attr in vars(k)), None)
        if owner is None or owner is object or (owner, attr) in _patched:
            continue
        _patched.add((owner, attr))
        raw = vars(owner)[attr]
        kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
        func = raw.__func__ if kind else raw
        if wrap is _timed_load:
            wrapped = wrap(func, owner is _external.SourceLoader and attr == "get_code")
        else:
            wrapped = wrap(func)
        _as_importlib(wrapped)
        try:
            setattr(owner, attr, kind(wrapped) if kind else wrapped)
        except (TypeError, AttributeError):
            pass        # a C type: its modules' load time stays inside exec


def _origin_kind(cls):
    if cls is type(None):
        return "namespace"
    if cls.__module__.startswith("refmarshal"):
        return "image"
    for base, kind in _ORIGIN_KINDS:
        if issubclass(cls, base):
            return kind
    if "NamespaceLoader" in cls.__name__:
        return "namespace"
    return cls.__name__


_ORIGIN_KINDS = ((_bootstrap.BuiltinImporter, "built-in"), (_bootstrap.FrozenImporter, "frozen"),
                 (_external.ExtensionFileLoader, "extension"),
                 (_external.SourcelessFileLoader, "pyc"), (_external.SourceLoader, "pyc"))


def _as_importlib(func):
    """Give func (and code nested in it) importlib's file name: CPython then trims these frames
    from import tracebacks and warnings' stacklevel skips them, as for importlib's own."""
    def rename(code):
        consts = tuple(rename(c) if isinstance(c, type(code)) else c for c in code.co_consts)
        return code.replace(co_filename=_IMPORTLIB_FILE, co_consts=consts)
    func.__code__ = rename(func.__code__)
    return func


def _install_hooks():
    for name, hook in (("_find_and_load", _find_and_load), ("_find_spec", _find_spec),
                       ("_load_unlocked", _load_unlocked)):
        _orig[name] = getattr(_bootstrap, name)
        setattr(_bootstrap, name, _as_importlib(hook))


def _install_image(root):
    """Install the refmarshal importer for REFMARSHAL_IMAGE as the .pth hook would (install()
    returns the finder already there if the hook did it); True when the image is in use."""
    saved = list(sys.path)
    sys.path.insert(0, root)
    try:
        from refmarshal import importer
        from refmarshal.hookstate import active_finder
        importer.install(os.environ["REFMARSHAL_IMAGE"],
                         checked=os.environ.get("REFMARSHAL_UNCHECKED") != "1")
        return active_finder() is not None
    except Exception as exc:     # report it; the run goes on with stock import
        print(f"refmarshal profile: the importer could not be installed: {exc}", file=sys.stderr)
        return False
    finally:
        sys.path[:] = saved


def _run_target(kind, target, args):
    """Run the target as ``python -c`` / ``-m`` / ``script`` would (sys.argv, sys.path[0])."""
    main = sys.modules["__main__"]
    if kind == "-c":
        sys.argv[:] = ["-c", *args]
        _set_path0("")
        exec(compile(target, "<string>", "exec"), main.__dict__)
    elif kind == "-m":
        import runpy
        sys.argv[:] = ["-m", *args]
        _set_path0(os.getcwd())
        runpy._run_module_as_main(target, alter_argv=True)
    else:
        sys.argv[:] = [target, *args]
        _set_path0(os.path.dirname(os.path.realpath(target)))
        path = os.path.abspath(target)       # python makes __main__.__file__ absolute
        with open(path, "rb") as fh:
            source = fh.read()
        main.__file__ = path
        main.__cached__ = None
        main.__loader__ = _external.SourceFileLoader("__main__", path)
        exec(compile(source, path, "exec"), main.__dict__)


def _set_path0(entry):
    """With PYTHONSAFEPATH (-P) python prepends nothing to sys.path, nor did the bootstrap."""
    if not sys.flags.safe_path:
        sys.path[0] = entry


def _match_python_startup(kind, target):
    """Version difference (3.13+): ``python -c`` imports linecache and puts its source there as
    "<string>" for tracebacks, and the bootstrap is a -c program.  For a -c target, put the
    target's source in the bootstrap's place; for -m and scripts, which python starts without
    linecache, unload it so that the target imports it as it would."""
    linecache = sys.modules.get("linecache")
    entry = linecache.cache.get("<string>") if linecache is not None else None
    if entry is None:
        return
    if kind == "-c":
        lines = [line + "\n" for line in target.splitlines()]
        linecache.cache["<string>"] = (len(target), entry[1], lines, entry[3])
    else:
        del sys.modules["linecache"]


def _strip_own_frames(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def main(argv):
    out, mode, image_root, kind, target, *args = argv
    _match_python_startup(kind, target)
    t_install = _now()
    image_active = bool(image_root) and _install_image(image_root)
    install_ns = _now() - t_install if image_root else 0
    if kind == "-m":
        import runpy  # noqa: F401  (python -m imports it before the module, untimed here too)
    if mode == "timed":
        _install_hooks()
    status, message, exit_code = "ok", "", 0
    t0, cpu0 = _now(), _cpu_now()
    try:
        _run_target(kind, target, args)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            status, message = "exit", str(exc.code)
            exit_code = exc.code if isinstance(exc.code, int) else 1
        raise                     # the interpreter prints and exits as it would have
    except BaseException as exc:
        status, message, exit_code = "raised", f"{type(exc).__name__}: {exc}", 1
        exc = exc.with_traceback(_strip_own_frames(exc.__traceback__))
        sys.excepthook(type(exc), exc, exc.__traceback__)
    finally:
        elapsed, cpu = _now() - t0, _cpu_now() - cpu0
        if mode == "timed":
            for name, func in _orig.items():
                setattr(_bootstrap, name, func)
        find_overhead = _find_overhead_ns() if mode == "timed" else 0
        records = [(r[NAME], r[PARENT], r[IMPORTER], r[ORIGIN] or "unfinished", r[CUM], r[FIND],
                    r[LOAD], r[EXEC], tuple(r[CHILD]), r[OK]) for r in _records]
        with open(out, "wb") as fh:
            marshal.dump({"records": records, "status": status, "message": message,
                          "exit_code": exit_code, "target_ns": elapsed, "target_cpu_ns": cpu,
                          "mode": mode, "install_ns": install_ns, "image_active": image_active,
                          "find_overhead_ns": find_overhead,
                          "version": sys.version.split()[0]}, fh)
    if exit_code:
        raise SystemExit(exit_code)


if __name__ == "_refmarshal_profile_collect":
    main(sys.argv[3:])
