"""The accelerator (spec section 8): the loader (rm_loader.c, loader.py) reads an image's pages
into memory as they are needed and fixes modules up in place; the C writer (rm_writer.c,
writer.py) encodes images from live objects.

One shared object, built by cffi (build_accel.py), holds two modules: cffi's ``_loader``
(``ffi``, ``lib``) and ``_hook`` (rm_hook.c), a plain CPython module with what the import hook
needs, which ``load_hook`` loads from the same file without importing ``_cffi_backend``.

Optional: when it is not built, ``refmarshal.Image`` uses the pure-Python reference reader and
``refmarshal.build`` the reference writer.
"""


def load_hook():
    """``refmarshal._accel._hook``, the C module with what the import hook needs
    (``_startup.load_hook_module`` loads it from this package's shared object)."""
    from .._startup import load_hook_module
    module = load_hook_module()
    globals()["_hook"] = module
    return module


def _attach_hook():
    """The hook's C module, loaded before this package at a process's first import
    (``_startup.load_hook_module``), becomes its attribute, as importing it would have made
    it."""
    import sys
    module = sys.modules.get(__name__ + "._hook")
    if module is not None:
        globals()["_hook"] = module


_attach_hook()
