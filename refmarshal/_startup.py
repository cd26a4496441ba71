"""What the ``refmarshal.pth`` line runs at every interpreter start: a PendingFinder where the
image finder goes.  The image is opened (and the accelerator loaded) at the first import that
reaches it, so ``python -c pass`` pays for this one small module and one stat: the line loads
it from its file, without searching ``sys.path`` nor importing the package
(``importer.pth_text``).  The first import loads the accelerator's C module alone, which makes
the finder (``_install_quickly``); only when it cannot are the package and ``importer`` loaded
the same way (``_load_hook_modules``), to say why.

In a subinterpreter (3.12+) it does nothing: see ``in_main_interpreter``.  Nor without debug
ranges (``-X no_debug_ranges``, ``PYTHONNODEBUGRANGES``): see ``importer._debug_ranges``.

Under ``-O`` or ``-OO`` it uses the image built for that level (``default_image_path``) and
does nothing, silently, when there is none.

Environment: ``REFMARSHAL=0`` turns it off, ``REFMARSHAL_IMAGE=path`` uses another image than
the environment's default, ``REFMARSHAL_UNCHECKED=1`` trusts the image (no per-module stat).
Under ``-E`` or ``-I`` the last two are ignored, as ``PYTHONPATH`` is: they choose code to run.
``run`` never raises: interpreter start must not depend on refmarshal.
"""

import os
import sys


def in_main_interpreter():
    """False in a subinterpreter of 3.12 or later, legacy or with its own GIL, where refmarshal
    steps aside silently.  The accelerator's functions are called by cffi with the GIL released
    and take it back with PyGILState_Ensure, which knows one thread state per thread: the main
    interpreter's.  (3.11's subinterpreters share the GIL, the interned strings and the
    singletons with the main interpreter, and the accelerator keeps no Python object of its
    own: there it works, and 3.11 has no cheap way to ask.)"""
    # Version difference: _thread._is_main_interpreter exists from 3.12 on.
    import _thread   # built in, and already imported by every interpreter
    is_main = getattr(_thread, "_is_main_interpreter", None)
    return is_main is None or is_main()


def default_image_path(optimize=None):
    """The image ``refmarshal build`` writes by default: inside the environment, one per
    interpreter version and optimization level, named as .pyc files are (``cpython-312.img``,
    ``cpython-312.opt-1.img``).  ``optimize``: the level (default: this interpreter's)."""
    path = os.path.join(sys.prefix, "share", "refmarshal", sys.implementation.cache_tag + ".img")
    return level_path(path, sys.flags.optimize if optimize is None else optimize)


def level_path(path, optimize):
    """The image for optimization level ``optimize`` beside ``path``, the level-0 one."""
    if not optimize:
        return path
    return f"{path[:-4] if path.endswith('.img') else path}.opt-{optimize}.img"


_ran = None                     # run's arguments, once it has run


def run(image=None, refresh=None):
    """``refresh``: auto-refresh is on (``refmarshal enable --auto-refresh``), at most one
    rebuild every ``refresh`` seconds: when the image is opened, an ``atexit`` handler is
    registered that may start one (``refmarshal.refresh``)."""
    global _ran
    _ran = (image, refresh)     # the .pth line, read again, does not call run again
    env = os.environ
    if env.get("REFMARSHAL") == "0":
        return
    try:
        if _shadowed():         # ordinary import finds another refmarshal: that one runs
            del sys.modules[__name__]
            try:
                import refmarshal._startup as other
            except ImportError:
                return
            return other.run(image, refresh)
        if not in_main_interpreter():
            return
        from _frozen_importlib_external import PathFinder
        if sys.flags.ignore_environment:
            env = {}
        if "no_debug_ranges" in sys._xoptions or env.get("PYTHONNODEBUGRANGES"):
            return                          # stock, silently: see importer._debug_ranges
        if env.get("REFMARSHAL_IMAGE"):     # a file chosen by hand: used (or declined) as is
            path = os.path.abspath(env["REFMARSHAL_IMAGE"])
        else:
            level = sys.flags.optimize
            path = os.path.abspath(level_path(image, level) if image else default_image_path())
            if level and not os.path.exists(path):
                return      # -O / -OO without an image of its own: stock, silently
        checked = env.get("REFMARSHAL_UNCHECKED") != "1"
        mp = sys.meta_path
        if any(getattr(f, "path", None) == path and type(f).__module__.startswith("refmarshal")
               for f in mp):
            return                          # already in place (the .pth read twice)
        if PathFinder not in mp or not os.path.exists(path):
            _load_hook_modules()
            from .importer import install   # says why, once
            _refresh_at_exit(install(path, checked=checked), refresh)
            return
        mp.insert(mp.index(PathFinder), PendingFinder(path, checked, refresh))
    except Exception as exc:   # e.g. -W error made our warning an exception: still say it
        report(exc)


class PendingFinder:
    """Holds the image finder's place until the first import reaches it, then installs the
    real finder (importer.install) in its place and hands the import over to it."""

    # Imported at every start after the .pth files: by site (usually finding they do not
    # exist) and, from 3.13, for ``-c`` (linecache, which imports nothing at its top).  Stock
    # import serves them without waking the image up, so ``python -c pass`` never opens it.
    _STARTUP_NAMES = frozenset({"sitecustomize", "usercustomize", "linecache"})

    def __init__(self, path, checked, refresh=None):
        self.path = path
        self.checked = checked
        self.refresh = refresh
        self.done = False

    def __repr__(self):
        return f"<refmarshal.PendingFinder {self.path!r}{' (done)' if self.done else ''}>"

    def find_spec(self, fullname, path=None, target=None):
        if self.done or fullname in self._STARTUP_NAMES:
            return None
        self.done = True            # the imports made while installing pass by
        try:
            finder = _install_quickly(self)
            if finder is None:      # the way that can say why
                _load_hook_modules()
                from .importer import install
                finder = install(self.path, checked=self.checked)
            _refresh_at_exit(finder, self.refresh)
        except Exception as exc:    # -W error made our warning an exception: still say it
            report(exc)
            finder = None
        if fullname in sys.modules:  # installing imported it (e.g. _cffi_backend, imported first)
            return _already_imported(sys.modules[fullname])
        return None if finder is None else finder.find_spec(fullname, path, target)


def _shadowed():
    """True when the ``.pth`` line loaded this module from its file (``importer.pth_text``; its
    package is not imported then) where importing ``refmarshal._startup`` would find another
    file: this installation's directory is not on ``sys.path``, or an entry before it holds
    a ``refmarshal``."""
    if __package__ in sys.modules:
        return False            # imported the ordinary way, or the package is loaded
    root, path = os.path.dirname(os.path.dirname(__file__)), sys.path
    if root not in path:
        return True
    return any(os.path.exists(os.path.join(d, __package__)) for d in path[:path.index(root)])


def _install_quickly(pending):
    """The finder in ``pending``'s place, made by the accelerator's C module alone
    (``open_finder``): none of refmarshal's Python modules is loaded.  None when anything is
    not as usual (importer.install then decides, and says why)."""
    mp = sys.meta_path
    from _frozen_importlib_external import PathFinder
    if PathFinder not in mp or not any(f is pending for f in mp) or \
            any(getattr(f, "path", None) == pending.path and type(f).__name__ == "ImageFinder"
                for f in mp):
        return None
    try:
        hook = load_hook_module()
        finder = hook.open_finder(pending.path, pending.checked, warn_in_import)
    except Exception:           # e.g. not built, or the image is refused
        return None
    place(finder, [i for i, f in enumerate(mp) if f is pending][0])
    return finder


def place(finder, slot=None):
    """Put ``finder`` on ``sys.meta_path`` at ``slot`` (in place of what is there), or just
    before PathFinder; then before stock's BuiltinImporter and FrozenImporter when they come
    just before it and PathFinder just after (importer.install says why).  What follows the
    slot keeps its index, so a walk of the import system's (a PendingFinder woke up in it)
    goes on at PathFinder."""
    from _frozen_importlib import BuiltinImporter, FrozenImporter
    from _frozen_importlib_external import PathFinder
    mp = sys.meta_path
    if slot is None:
        slot = mp.index(PathFinder)
        mp.insert(slot, finder)
    else:
        mp[slot] = finder   # in place: the import system may be walking sys.meta_path now
    if slot >= 2 and mp[slot - 2:slot] == [BuiltinImporter, FrozenImporter] \
            and mp[slot + 1:slot + 2] == [PathFinder]:
        del mp[slot]
        mp.insert(slot - 2, finder)


def warn_in_import(message):
    """What a finder calls when something goes wrong during an import: importer's
    ``_warn_in_import``, loaded then (one frame more between it and the import)."""
    _load_hook_modules()
    from .importer import _warn_in_import
    _warn_in_import(message, 4)


def load_hook_module():
    """``refmarshal._accel._hook``, the accelerator's C module for the import hook (rm_hook.c),
    loaded from the cffi-built shared object beside this module (its second init function,
    ``PyInit__hook``) as the import system loads an extension module, without importing its
    package, and kept in ``sys.modules`` (None there stops it, as it stops an import).
    ImportError when it is not built, or cannot be loaded here."""
    name = __package__ + "._accel._hook"
    module = sys.modules.get(name, 0)
    if module is None:
        raise ImportError(f"import of {name} halted; None in sys.modules", name=name)
    if module:
        return module
    from _frozen_importlib import module_from_spec
    from _frozen_importlib_external import ExtensionFileLoader, spec_from_file_location
    from _imp import extension_suffixes
    here = os.path.join(os.path.dirname(__file__), "_accel")
    for suffix in extension_suffixes():
        path = os.path.join(here, "_loader" + suffix)
        if os.path.isfile(path):
            break
    else:
        raise ImportError("the refmarshal accelerator is not built", name=name)
    loader = ExtensionFileLoader(name, path)
    module = module_from_spec(spec_from_file_location(name, path, loader=loader))
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    parent = sys.modules.get(__package__ + "._accel")
    if parent is not None:
        parent._hook = module
    return module


# What the first import needs of refmarshal when it goes the slow way (install), in import
# order: each module's file under this module's directory.
_HOOK_MODULES = (("refmarshal", "__init__.py"), ("refmarshal.importer", "importer.py"),
                 ("refmarshal._accel", os.path.join("_accel", "__init__.py")),
                 ("refmarshal._accel.loader", os.path.join("_accel", "loader.py")))


def _load_hook_modules():
    """Load what the slow way of the first import needs of refmarshal (``_HOOK_MODULES``; also
    ``ImageFinder.image`` and ``warn_in_import``) from its files in this module's directory, as
    importing them would (the same specs: ``FileFinder`` makes them with
    ``spec_from_file_location``), without searching ``sys.path``, the package's directories or
    ``sys.meta_path``.  (So ``-X importtime`` does not list them.)  The package is the one
    beside this module, which the ``.pth`` line loaded from its file: ``sys.path`` may now
    have, in front, a directory that shadows it.  A module already imported is left as it is; the accelerator's Python
    side may fail to load: ``importer._open`` imports it again and says why."""
    here = os.path.dirname(__file__)
    pkg = sys.modules.get(__package__)
    if pkg is not None and here not in getattr(pkg, "__path__", ()):
        return                  # another refmarshal is imported: importing finds its modules
    from _frozen_importlib import _load
    from _frozen_importlib_external import spec_from_file_location
    for name, rel in _HOOK_MODULES:
        module = sys.modules.get(name)
        if module is None:
            path = os.path.join(here, rel)
            search = [os.path.dirname(path)] if rel.endswith("__init__.py") else None
            try:
                module = _load(spec_from_file_location(name, path,
                                                       submodule_search_locations=search))
            except Exception:
                if name.startswith("refmarshal._accel"):
                    return
                raise
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
        if name == __package__ and "_startup" not in vars(module):
            module._startup = sys.modules[__name__]  # as importing this module would have set


def _refresh_at_exit(finder, refresh):
    """With auto-refresh on, let ``refresh.at_exit`` look at what ``finder`` served when the
    process exits (imported only then), leaving out the modules imported before it was in
    place, which no image could serve."""
    if refresh is not None and finder is not None:
        import atexit   # built in
        atexit.register(_at_exit, finder, frozenset(sys.modules), refresh)


def _at_exit(finder, before, interval):
    try:
        from .importer import source_unchanged
        from .refresh import at_exit
        at_exit(finder, before, source_unchanged, interval)
    except BaseException:   # noqa: BLE001 - the process is ending: nothing may stop it
        pass


class _AlreadyImported:
    """The loader that hands the import system a module imported while it was still looking
    for it (by installing the finder), instead of executing it a second time."""

    def __init__(self, module, spec):
        self.module = module
        self.spec = spec

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        module.__spec__ = self.spec   # put back what _init_module_attrs replaced


def _already_imported(module):
    # The import system swaps a spec it finds for module.__spec__ when the module is already
    # in sys.modules, and would load that spec again; with __spec__ None it keeps ours.
    from _frozen_importlib import ModuleSpec
    spec = getattr(module, "__spec__", None)
    module.__spec__ = None
    return ModuleSpec(module.__name__, _AlreadyImported(module, spec))


def report(exc):
    """Say on stderr, once, what stopped the hook; never raise."""
    try:
        text = str(exc)
        if not text.startswith("refmarshal: "):
            text = f"refmarshal: start-up hook failed ({type(exc).__name__}: {exc}); " \
                   "imports go on as stock"
        sys.stderr.write(text + "\n")
    except Exception:
        pass
