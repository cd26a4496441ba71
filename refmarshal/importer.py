"""The import hook: a finder on ``sys.meta_path`` that serves modules' code from an image.

Finding is left entirely to the standard ``PathFinder``: this finder sits just before it, asks
it for the spec exactly as stock import would, and only when that spec is the very file the
image recorded (same path, a plain source module, unchanged on disk) swaps the spec's loader for
one whose ``get_code`` returns the image's code object.  Shadowing, ``sys.path`` changes,
packages, namespace packages, ``path_hooks`` and ``invalidate_caches`` therefore behave as stock
by construction; everything else about the module (``__file__``, ``__cached__``, ``__spec__``,
``get_source``, resources) comes from ``SourceFileLoader``, which the loader subclasses.

Any problem with the image disables it with one ``RefmarshalWarning`` and stock import goes
on.  Modules are loaded only through the accelerator, never the (slow) reference reader.
The start-up hook (``_startup``) imports this module at the first import of a process: keep
its imports minimal.
"""

import os
import sys
# The same objects importlib.machinery exports; importing that package at start-up costs about
# a millisecond (on 3.12 it imports warnings), while the frozen module is always loaded.
from _frozen_importlib_external import PathFinder, SourceFileLoader

from ._startup import PendingFinder, default_image_path
from .errors import RefmarshalWarning

PTH_NAME = "refmarshal.pth"

__all__ = ["install", "uninstall", "default_image_path", "pth_text", "PTH_NAME", "ImageFinder",
           "ImageLoader"]


def pth_text(image=None):
    """The line ``refmarshal enable`` writes to ``PTH_NAME`` in site-packages.  site executes
    lines starting with ``import``; the try keeps interpreter start silent if refmarshal was
    uninstalled and the file left behind.  ``image``: an image other than the default
    (``REFMARSHAL_IMAGE`` still overrides it)."""
    if image is not None:
        code = ("try: import refmarshal._startup as s\nexcept ImportError: s = None\n"
                f"if s: s.run({os.fspath(image)!r})")
        return f"import sys; exec({code!r})\n"
    return ('import sys; exec("try: import refmarshal._startup as s\\n'
            'except ImportError: s = None\\nif s: s.run()")\n')


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

    ``hits`` counts modules whose code came from the image, ``fallbacks`` modules the image
    holds that went through stock import (shadowed, stale, or a bad module)."""

    def __init__(self, image, checked):
        self.image = image
        self.path = image.path
        self.checked = checked
        self.disabled = False
        self.hits = 0
        self.fallbacks = 0
        self._failed = set()

    def __repr__(self):
        state = "disabled" if self.disabled else "checked" if self.checked else "unchecked"
        return f"<refmarshal.ImageFinder {self.path!r} {state} hits={self.hits}>"

    def _next_is_path_finder(self):
        # Stock order is kept only while nothing has been inserted between us and PathFinder.
        mp = sys.meta_path
        for i, f in enumerate(mp):
            if f is self:
                return i + 1 < len(mp) and mp[i + 1] is PathFinder
        return False

    def find_spec(self, fullname, path=None, target=None):
        if self.disabled:
            return None
        if fullname in self._failed:
            self.fallbacks += 1
            return None
        try:
            entry = self.image.entry(fullname)
        except KeyError:
            return None
        except Exception as exc:   # a bad directory: the image can no longer be trusted
            self.disabled = True   # (not removed from sys.meta_path while it is being walked)
            _warn_in_import(f"{self.path}: {exc}; image disabled")
            return None
        if not self._next_is_path_finder():
            return None
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None:
            return None
        if (spec.origin != entry.path or type(spec.loader) is not SourceFileLoader
                or (self.checked and not _unchanged(entry))):
            self.fallbacks += 1
            return spec
        spec.loader = ImageLoader(fullname, spec.origin, self)
        return spec

    def _code(self, fullname):
        """The image's code for fullname, or None (one warning) when the module is bad."""
        try:
            code = self.image.get_code(fullname)
        except Exception as exc:
            self._failed.add(fullname)
            self.fallbacks += 1
            _warn_in_import(f"{self.path}: module {fullname}: {exc}")
            return None
        self.hits += 1
        return code


def _unchanged(entry):
    try:
        st = os.stat(entry.path)
    except OSError:
        return False
    return st.st_mtime_ns == entry.mtime_ns and st.st_size == entry.size


class ImageLoader(SourceFileLoader):
    """A ``SourceFileLoader`` whose code comes from the image; everything else is stock.
    ``exec_module`` calls ``get_code`` then runs it, so a profiler wrapping ``get_code`` sees
    the load phase on its own; once the module has run, its ``__loader__`` and
    ``__spec__.loader`` are a plain ``SourceFileLoader``, as stock import leaves them (code
    that looks loaders up by type, such as distlib's resource finders, depends on that)."""

    def __init__(self, fullname, path, finder):
        super().__init__(fullname, path)
        self.finder = finder

    def __reduce__(self):
        # a copy or a pickle (of a spec, say) is the stock loader: the image stays here
        return SourceFileLoader, (self.name, self.path)

    def exec_module(self, module):
        super().exec_module(module)
        stock = SourceFileLoader(self.name, self.path)
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = stock
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = stock

    def get_code(self, fullname):
        if fullname == self.name:
            code = self.finder._code(fullname)
            if code is not None:
                return code
        return super().get_code(fullname)


def _decline(path, reason, stacklevel=4):
    _warn(f"{path}: {reason}", stacklevel)   # attributed to install's caller
    return None


def _open(path, checked):
    """An ImageFinder for the image at path, or None after one warning."""
    try:
        from ._accel.loader import AccelImage
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
    level = image.header["optimize"]
    if level != sys.flags.optimize:
        return _decline(path, f"built at optimization level {level}, this interpreter runs "
                              f"at level {sys.flags.optimize}", 5)
    return ImageFinder(image, checked)


def install(path=None, *, checked=True):
    """Put a finder for the image at ``path`` (default: ``default_image_path()``) on
    ``sys.meta_path``, just before ``PathFinder``, and return it.

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
        mp.insert(mp.index(PathFinder), finder)
    else:
        mp[slot] = finder   # in place: the import system may be walking sys.meta_path now
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
