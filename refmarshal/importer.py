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
The start-up hook (``_startup``) makes the finder with the accelerator's C module alone and
loads this module only to say why an image is refused (``install``), or for the API: keep its
imports minimal all the same.
"""

import os
import sys
# The same objects importlib.machinery exports; importing that package at start-up costs about
# a millisecond (on 3.12 it imports warnings), while the frozen module is always loaded.
from _frozen_importlib_external import PathFinder, SourceFileLoader

from ._startup import (PendingFinder, default_image_path, in_main_interpreter,
                       load_hook_module, place)
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


def _warn_in_import(message, stacklevel=3):
    """_warn from inside an import: under -W error the warning must not fail the import that
    stock would have done, so it is said on stderr instead.  ``stacklevel``: _warn's, from this
    function (a caller in between adds one)."""
    try:
        _warn(message, stacklevel)
    except Exception as exc:
        from ._startup import report
        report(exc)


def _classes():
    """ImageFinder and ImageLoader: the accelerator's C module's (rm_hook.c), or, where it
    cannot be loaded, stand-ins of the same names that nothing is an instance of."""
    try:
        hook = load_hook_module()
        return hook.ImageFinder, hook.ImageLoader
    except Exception:   # not built, built for another Python, a broken .so: _open says so
        pass

    class ImageFinder:
        """The accelerator is not available here: no image finder exists."""

    class ImageLoader(SourceFileLoader):
        """The accelerator is not available here: no image loader exists."""
        __slots__ = ("_hook", "_spec")

    return ImageFinder, ImageLoader


# ImageFinder finds as PathFinder does and loads from the image what it holds unchanged: its
# find_spec (rm_import.c) makes the spec stock import would find, or asks PathFinder for it,
# and only when that spec is the very file the image recorded (same path, a plain source
# module, and nothing but stock's finders between it and PathFinder on sys.meta_path) gives it
# an ImageLoader, a SourceFileLoader whose get_code (rm_import.c) returns the image's code.
# Both are C (their docstrings say more), so an import adds no Python frame of refmarshal's:
# tracers, debuggers and warnings see what they see with stock import.  The finder's counters:
# hits, fallbacks, direct, stamped, extensions, absent.
ImageFinder, ImageLoader = _classes()


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
        hook = load_hook_module()
        if ImageFinder is not hook.ImageFinder:
            raise ImportError("it could not be loaded when refmarshal.importer was imported")
    except Exception as exc:   # not built, built for another Python, a broken .so: step aside
        return _decline(path, f"the accelerator is unavailable ({exc})", 5)
    try:
        return hook.open_finder(path, checked, _warn_in_import)
    except ValueError:
        pass
    # why not, the slow way: the header's check says what is wrong (format.check_header)
    try:
        from ._accel.loader import AccelImage
        level = AccelImage(path).optimize
    except Exception as exc:
        if not os.path.exists(path):
            return _decline(path, "no image here (build one with `refmarshal build`)", 5)
        reason = str(exc)
        if reason.startswith(path + ": "):
            reason = reason[len(path) + 2:]
        return _decline(path, reason, 5)
    if level != sys.flags.optimize:
        return _decline(path, f"built at optimization level {level}, this interpreter runs "
                              f"at level {sys.flags.optimize}", 5)
    if not _debug_ranges():
        return _decline(path, "this interpreter runs without column positions in its code "
                              "(-X no_debug_ranges or PYTHONNODEBUGRANGES), the image's "
                              "code has them", 5)
    return _decline(path, "the accelerator cannot set up the import hook", 5)


def _debug_ranges():
    """False under -X no_debug_ranges (PYTHONNODEBUGRANGES, or an embedding's config), when
    every code object the interpreter makes, from source or from a .pyc, loses its column
    positions (tracebacks show no carets); an image's code keeps those it was built with.
    The start-up hook steps aside silently for the option and the variable (a user's choice,
    not a problem: CPython's own tests read such children's stderr); install() says why.

    The accelerator's C module asks (rm_hook.c: ``debug_ranges``, which ``open_finder`` asks
    too): ``code.replace()`` makes a code object the way compiling and unmarshalling do (a few
    microseconds); ``compile()`` would make the ``ast`` module's classes first, one to seven
    milliseconds at a process's first call."""
    return load_hook_module().debug_ranges()


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
    if finder is not None:
        place(finder, slot)
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
