"""The import hook: a finder on ``sys.meta_path`` that serves modules' code from an image.

The finder finds as stock would: for a module the image holds it makes stock's spec itself
where directory listings or the image's directory stamps prove which file stock would take,
else it asks the standard ``PathFinder``, and only when the spec is the very file the image
recorded (same path, a plain source module) it gives it a loader whose ``get_code`` returns
the image's code object (in checked mode, when the source is unchanged on disk).  It stands
before ``BuiltinImporter`` and ``FrozenImporter`` and leaves their names to them.  Shadowing,
``sys.path`` changes, packages, namespace packages, ``path_hooks`` and ``invalidate_caches``
behave as stock; everything else about the module (``__file__``, ``__cached__``, ``__spec__``,
``get_source``, resources) comes from ``SourceFileLoader``, which the loader subclasses.

Any problem with the image disables it with one ``RefmarshalWarning`` and stock import goes
on.  Modules are loaded only through the accelerator, never the (slow) reference reader.
The start-up hook (``_startup``) imports this module at the first import of a process: keep
its imports minimal.
"""

import _imp
import os
import sys
from _frozen_importlib import BuiltinImporter, FrozenImporter
# The same objects importlib.machinery exports; importing that package at start-up costs about
# a millisecond (on 3.12 it imports warnings), while the frozen module is always loaded.
from _frozen_importlib_external import (ExtensionFileLoader, FileFinder, PathFinder,
                                        SourceFileLoader, _path_stat, spec_from_file_location)

from ._startup import PendingFinder, default_image_path, in_main_interpreter
from . import RefmarshalWarning   # refmarshal.errors's, made in the package

PTH_NAME = "refmarshal.pth"

__all__ = ["install", "uninstall", "default_image_path", "pth_text", "PTH_NAME", "ImageFinder",
           "ImageLoader"]


def pth_text(image=None, refresh=None):
    """The line ``refmarshal enable`` writes to ``PTH_NAME`` in site-packages.  site executes
    lines starting with ``import``.  ``image``: an image other than the default
    (``REFMARSHAL_IMAGE`` still overrides it); under ``-O``/``-OO`` the one beside it for that
    level (``_startup.level_path``).  ``refresh``: auto-refresh, at most one rebuild every
    ``refresh`` seconds (``refmarshal.refresh``).

    The line loads ``_startup`` from this installation's file, without searching ``sys.path``
    for it nor importing the package (about half a millisecond at every start); ``_startup``
    hands over to ordinary import where that would find another file
    (``_startup._shadowed``).  When the file is gone it imports ``refmarshal._startup`` the
    ordinary way, and does nothing, silently, when there is none (refmarshal uninstalled and
    the file left behind).  site compiles the line at every start: it is kept short."""
    image = None if image is None else os.fspath(image)
    args = [] if image is None else [repr(image)]
    if refresh is not None:
        args.append(f"refresh={refresh!r}")
    startup = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_startup.py")
    code = ("try:\n"
            " import _frozen_importlib as b, _frozen_importlib_external as e\n"
            " s = sys.modules.get('refmarshal._startup') or b._load(e.spec_from_file_location("
            f"'refmarshal._startup', {startup!r}))\n"
            "except Exception:\n"
            " try: import refmarshal._startup as s\n"
            " except ImportError: s = None\n"
            f"if s: s.run({', '.join(args)})")
    # site reads a virtual environment's site-packages twice: the second time, the line only
    # sees that _startup.run has run with its arguments (_startup._ran)
    return (f"import sys; getattr(sys.modules.get('refmarshal._startup'), '_ran', 0) == "
            f"{(image, refresh)!r} or exec({code!r})\n")


def _warn(message, stacklevel=2):
    import warnings   # not loaded at start-up: only pay for it when there is something to say
    warnings.warn(f"refmarshal: {message}; imports go on as stock", RefmarshalWarning,
                  stacklevel=stacklevel)


def _warn_in_import(message):
    """_warn from inside an import: under -W error the warning must not fail the import that
    stock would have done, so it is said on stderr instead."""
    try:
        _warn(message, 3)
    except Exception as exc:
        from ._startup import report
        report(exc)


class ImageFinder:
    """Finds as ``PathFinder`` does; loads from ``image`` what the image holds unchanged.

    ``find_spec(fullname, path=None, target=None)`` is a C method (rm_import.c): it makes the
    spec stock import would find, or asks ``PathFinder`` for it, and only when that spec is the
    very file the image recorded (same path, a plain source module, and nothing but stock's
    finders between this one and ``PathFinder`` on ``sys.meta_path``) gives it an
    ``ImageLoader``, which checks the source in checked mode.  Being C, it adds no Python
    frame to an import: tracers, debuggers and ``warnings`` see what they see with stock
    import.

    ``hits`` counts modules whose code came from the image, ``fallbacks`` modules the image
    holds that went through stock import (shadowed, stale, or a bad module)."""

    def __init__(self, image, checked):
        self.image = image
        self.path = image.path
        self._failed = set()       # modules that failed to load: stock from then on
        self._validated = set()    # FileFinders whose listing find_spec checked, and
        #                            (directory, stamp) pairs it found true (rm_import.c)
        self._c, self._hook = image.new_hook(
            checked, self._failed, PathFinder, SourceFileLoader, ImageLoader, _warn_in_import,
            FileFinder, spec_from_file_location, _path_stat, self._validated,
            BuiltinImporter, FrozenImporter, _imp.is_builtin, _imp.find_frozen,
            ExtensionFileLoader)

    def __repr__(self):
        state = "disabled" if self.disabled else "checked" if self.checked else "unchecked"
        return f"<refmarshal.ImageFinder {self.path!r} {state} hits={self.hits}>"

    @property
    def checked(self):
        """Compare each module's source mtime and size with the image's record."""
        return bool(self._c.checked)

    @checked.setter
    def checked(self, value):
        self._c.checked = bool(value)

    @property
    def disabled(self):
        """The image's directory proved bad: the finder finds nothing any more."""
        return bool(self._c.disabled)

    @property
    def hits(self):
        return self._c.hits

    @property
    def direct(self):
        """Specs found without asking PathFinder (rm_import.c: find_directly)."""
        return self._c.direct

    @property
    def stamped(self):
        """Of the direct specs, those proven by the image's directory stamps alone, without a
        FileFinder (rm_import.c: by_stamps)."""
        return self._c.stamped

    @property
    def extensions(self):
        """Top-level extension modules found on ``sys.path`` without asking PathFinder, by the
        same proof as ``direct`` (rm_import.c: find_extension)."""
        return self._c.extensions

    @property
    def absent(self):
        """Imports of top-level names nobody provides (not in the image, not built in or
        frozen, no candidate in any ``sys.path`` entry) answered without PathFinder: the
        finders after it asked, then stock's ModuleNotFoundError raised (rm_import.c:
        answer_absent)."""
        return self._c.absent

    def invalidate_caches(self):
        """importlib.invalidate_caches() calls it: every directory listing and directory
        stamp is checked again against its directory at its next use."""
        self._validated.clear()

    @property
    def fallbacks(self):
        return self._c.fallbacks


def source_unchanged(entry):
    """True when the module's source has the mtime and size its directory entry recorded: the
    rule checked mode applies (in C, rm_import.c: source_unchanged) before serving a module;
    the CLI applies it here to say which modules are stale."""
    try:
        st = os.stat(entry.path)
    except OSError:
        return False
    return st.st_mtime_ns == entry.mtime_ns and st.st_size == entry.size


class ImageLoader(SourceFileLoader):
    """A ``SourceFileLoader`` whose code comes from the image; everything else is stock.

    ``get_code`` is a C method (rm_import.c) and ``exec_module`` the stock one, which calls it
    and runs the code: no frame of refmarshal's is on the stack while the module's body runs.
    When ``get_code`` hands the code over, the module's ``__loader__`` and ``__spec__.loader``
    become a plain ``SourceFileLoader``, as stock import leaves them (code that looks loaders
    up by type, such as distlib's resource finders, depends on that); so does the loader of
    the spec ``find_spec`` made (``_spec``), which runpy (``python -m``) runs as ``__main__``.
    ``_hook`` is the finder's C state; slots, so the instance's ``__dict__`` is stock's."""

    __slots__ = ("_hook", "_spec")

    def __reduce__(self):
        # a copy or a pickle (of a spec, say) is the stock loader: the image stays here
        return SourceFileLoader, (self.name, self.path)


def _decline(path, reason, stacklevel=4):
    _warn(f"{path}: {reason}", stacklevel)   # attributed to install's caller
    return None


def _open(path, checked):
    """An ImageFinder for the image at path, or None after one warning."""
    if not in_main_interpreter():
        return _decline(path, "images are used in the main interpreter only, not in a "
                              "subinterpreter", 5)
    try:
        from ._accel.loader import AccelImage, install_method
        install_method(ImageFinder, "ImageFinder.find_spec")
        install_method(ImageLoader, "ImageLoader.get_code")
    except Exception as exc:   # not built, built for another Python, a broken .so: step aside
        return _decline(path, f"the accelerator is unavailable ({exc})", 5)
    try:
        image = AccelImage(path)
    except Exception as exc:
        if not os.path.exists(path):
            return _decline(path, "no image here (build one with `refmarshal build`)", 5)
        reason = str(exc)
        if reason.startswith(path + ": "):
            reason = reason[len(path) + 2:]
        return _decline(path, reason, 5)
    level = image.optimize
    if level != sys.flags.optimize:
        return _decline(path, f"built at optimization level {level}, this interpreter runs "
                              f"at level {sys.flags.optimize}", 5)
    if not _debug_ranges():
        return _decline(path, "this interpreter runs without column positions in its code "
                              "(-X no_debug_ranges or PYTHONNODEBUGRANGES), the image's "
                              "code has them", 5)
    return ImageFinder(image, checked)


def _debug_ranges():
    """False under -X no_debug_ranges (PYTHONNODEBUGRANGES, or an embedding's config), when
    every code object the interpreter makes, from source or from a .pyc, loses its column
    positions (tracebacks show no carets); an image's code keeps those it was built with.
    The start-up hook steps aside silently for the option and the variable (a user's choice,
    not a problem: CPython's own tests read such children's stderr); install() says why.

    ``code.replace()`` makes a code object the way compiling and unmarshalling do, so it is
    asked (a few microseconds); ``compile()`` would make the ``ast`` module's classes first,
    one to seven milliseconds at a process's first call."""
    code = _debug_ranges.__code__.replace()
    return any(p[2] is not None for p in code.co_positions())


def install(path=None, *, checked=True):
    """Put a finder for the image at ``path`` (default: ``default_image_path()``) on
    ``sys.meta_path`` and return it.  It goes before the standard ``BuiltinImporter`` and
    ``FrozenImporter`` when they come just before ``PathFinder``, as stock has them (it leaves
    to them every name they would find: an import it serves then skips their two Python
    methods), else just before ``PathFinder``.

    ``checked`` (the default) compares each module's source mtime and size with the image's
    record; unchecked trusts the image.  Returns None after one ``RefmarshalWarning`` when the
    image cannot be used.  Installing the same image twice returns the installed finder; a
    PendingFinder for it (the start-up hook's) is replaced in place."""
    path = os.path.abspath(default_image_path() if path is None else os.fspath(path))
    mp = sys.meta_path
    slot = None
    for i, f in enumerate(mp):
        if type(f) in (ImageFinder, PendingFinder) and f.path == path:
            if type(f) is ImageFinder and not f.disabled:
                f.checked = checked
                return f
            slot = i
    if PathFinder not in mp:
        return _decline(path, "the standard PathFinder is not on sys.meta_path")
    finder = _open(path, checked)
    if finder is None:
        return None
    if slot is None:
        slot = mp.index(PathFinder)
        mp.insert(slot, finder)
    else:
        mp[slot] = finder   # in place: the import system may be walking sys.meta_path now
    if slot >= 2 and mp[slot - 2:slot] == [BuiltinImporter, FrozenImporter] \
            and mp[slot + 1:slot + 2] == [PathFinder]:
        # before stock's two: what follows the slot keeps its index, so a walk of the import
        # system's (a PendingFinder woke up in it) goes on at PathFinder
        del mp[slot]
        mp.insert(slot - 2, finder)
    return finder


def uninstall(path=None):
    """Remove the finder for the image at ``path`` (default: every refmarshal finder) from
    ``sys.meta_path``.  Modules already imported keep their code.  (Not from inside an
    import: the import system may be walking ``sys.meta_path``.)"""
    if path is not None:
        path = os.path.abspath(os.fspath(path))
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not (type(f) in (ImageFinder, PendingFinder)
                                and (path is None or f.path == path))]
