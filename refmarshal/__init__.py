"""refmarshal: fast imports from one image of an environment's code objects in native layout.

Public API (spec/ describes the format, docs/ the rest):

``build(path, entries)``   write an image of (module name, source path) pairs
``Image(path)``            open an image: ``.names()``, ``.get_code(name)``, ``.owns(obj)``
``ImageError``             raised for any malformed, foreign or unusable image

Importing this package is cheap on purpose (the import hook imports it at a process's first
import): the writer and the reference reader are imported only when first used.
"""

__all__ = ["ImageError", "Image", "build", "accelerator_available"]


# The exception types of ``refmarshal.errors`` (which documents and exports them) are made
# here, so that the import hook's path has one module fewer to import.
class ImageError(Exception):
    """An image is malformed, truncated, corrupted, stale or built for another interpreter.

    The message says what is wrong and, where it applies, at which file offset.
    Callers that import through an image treat it as "step aside": stock import carries on.
    """
    __module__ = "refmarshal.errors"


class RefmarshalWarning(RuntimeWarning):
    """An image cannot be used (or one of its modules cannot): refmarshal steps aside for it
    and stock import carries on.  Issued once per problem."""
    __module__ = "refmarshal.errors"


def __getattr__(name):
    if name == "build":
        from .building import build
        return build
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def accelerator_available():
    """True when the compiled accelerator imports and matches this interpreter: both its
    modules, the import hook's (``_hook``) and cffi's (``_loader``), which the rest of the API
    reads images through."""
    try:
        from ._accel import loader
        loader.load_cffi()
    except ImportError:
        return False
    return True


def Image(path, implementation="auto"):
    """Open an image.  ``implementation`` is "auto" (the accelerator when it is available,
    else the reference reader), "accel" or "reference" (to force one, for tests)."""
    if implementation not in ("auto", "accel", "reference"):
        raise ValueError(f"unknown implementation {implementation!r}")
    if implementation == "accel" or (implementation == "auto" and accelerator_available()):
        from ._accel.loader import AccelImage, load_cffi
        load_cffi()         # ImportError without cffi's module: names() and entry() use it
        return AccelImage(path)
    from .reader import ReferenceImage
    return ReferenceImage(path)


def _attach_startup():
    """The start-up hook's module, loaded from its file by the ``.pth`` line before this
    package, becomes its attribute, as importing it would have made it."""
    import sys
    module = sys.modules.get(__name__ + "._startup")
    if module is not None:
        globals()["_startup"] = module


_attach_startup()
