"""cffi build script for the accelerator (out-of-line API mode).  cffi runs it on its own during
the package build (``cffi_modules`` in setup.py); it never imports refmarshal.

The shared object it builds holds two modules: cffi's ``refmarshal._accel._loader`` and, from
rm_hook.c, the plain CPython module ``refmarshal._accel._hook`` (its ``PyInit__hook``), which
the import hook loads from the same file (``loader.py``) without importing ``_cffi_backend``."""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
for header in ("rm_loader.h", "rm_writer.h"):
    with open(os.path.join(HERE, header)) as fh:
        ffibuilder.cdef("".join(l for l in fh if not l.startswith(("/*", " *"))))
ffibuilder.set_source(
    "refmarshal._accel._loader",
    '#include "rm_loader.h"\n#include "rm_writer.h"',
    # paths relative to the project root, where the package build runs this script
    sources=["refmarshal/_accel/rm_loader.c", "refmarshal/_accel/rm_import.c",
             "refmarshal/_accel/rm_writer.c", "refmarshal/_accel/rm_hook.c"],
    include_dirs=["refmarshal/_accel"],
    extra_compile_args=["-O2", "-Wall"],
    py_limited_api=False,  # it relies on one version's internal layouts: never abi3
)
