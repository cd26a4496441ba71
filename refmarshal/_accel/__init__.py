"""The accelerator (spec section 8): the loader (rm_loader.c, loader.py) reads an image's pages
into memory as they are needed and fixes modules up in place; the C writer (rm_writer.c,
writer.py) encodes images from live objects.

One shared object, built by cffi (build_accel.py), holds two modules: cffi's ``_loader``
(``ffi``, ``lib``) and ``_hook`` (rm_hook.c), a plain CPython module with what the import hook
needs, which ``load_hook`` loads from the same file without importing ``_cffi_backend``.

Optional: when it is not built, ``refmarshal.Image`` uses the pure-Python reference reader and
``refmarshal.build`` the reference writer.
"""

import os
import sys


def load_hook():
    """``refmarshal._accel._hook``, loaded from the cffi-built shared object (its second init
    function, ``PyInit__hook``) as the import system loads an extension module, and kept in
    ``sys.modules`` (None there stops it, as it stops an import)."""
    name = __name__ + "._hook"
    if name in sys.modules:
        module = sys.modules[name]
        if module is None:
            raise ImportError(f"import of {name} halted; None in sys.modules", name=name)
        return module
    from _frozen_importlib import module_from_spec
    from _frozen_importlib_external import ExtensionFileLoader, spec_from_file_location
    from _imp import extension_suffixes
    here = os.path.dirname(__file__)
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
    globals()["_hook"] = module
    return module
