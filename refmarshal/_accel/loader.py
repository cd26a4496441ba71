"""The accelerator's Python side: policy and validation of what the C side maps.

``AccelImage`` has the API of ``reader.ReferenceImage``.  The header and the directory entries
it visits are checked here (cheaply: binary search touches log2(n) entries, and only the found
one is checksummed); the module's bytes are checked and fixed up in C (rm_loader.c).
"""

import os
import sys

from .. import format as F
from ..errors import ImageError
from ..reader import read_entry, read_entry_name
from ._loader import ffi, lib

if lib.rm_python_version() >> 16 != sys.hexversion >> 16:
    raise ImportError("refmarshal accelerator was built for another Python version")

# rm_load_module hands its result over by appending it here (cffi has no PyObject* return).
_inbox = []
if lib.rm_bind_inbox(__name__.encode(), b"_inbox") != 0:
    raise ImportError("refmarshal accelerator: cannot bind its result list")

_ERRLEN = 256


class AccelImage:
    """An image mapped into memory; modules are fixed up in place on first request."""

    implementation = "accel"

    def __init__(self, path):
        self.path = os.fspath(path)
        err = ffi.new("char[]", _ERRLEN)
        handle = lib.rm_open(os.fsencode(self.path), err, _ERRLEN)
        if handle == ffi.NULL:
            raise ImageError(f"{self.path}: {ffi.string(err).decode(errors='replace')}")
        self._handle = handle
        self._base = int(ffi.cast("uintptr_t", lib.rm_base(handle)))
        self._size = lib.rm_size(handle)
        self._mem = ffi.buffer(lib.rm_base(handle), self._size)
        try:
            self.header = F.check_header(bytes(self._mem[:F.HEADER_SIZE]), self._size)
            self.sections = self.header["sections"]
        except ImageError as exc:
            self._handle = None          # closed here, not again by __del__
            lib.rm_close(handle)
            raise ImageError(f"{self.path}: {exc}") from None
        self._codes = {}
        self._entries = {}

    def __del__(self):
        # rm_close keeps the mapping while any module's code lives in it ([LOAD-4])
        handle = getattr(self, "_handle", None)
        if handle is not None:
            self._handle = None
            lib.rm_close(handle)

    @property
    def relocated(self):
        """True when the file could not be mapped at its preferred base (PTR records applied)."""
        return bool(lib.rm_relocated(self._handle))

    def owns(self, obj):
        return self._base <= id(obj) < self._base + self._size

    # -- directory ([DIR-1], [DIR-2]) --
    def _find(self, name):
        key = name.encode("utf-8")
        lo, hi = 0, self.header["modules"]
        try:
            while lo < hi:
                mid = (lo + hi) // 2
                n = read_entry_name(self._mem, self.sections, mid)
                if n == key:
                    return mid, read_entry(self._mem, self.sections, mid)[1]
                if n < key:
                    lo = mid + 1
                else:
                    hi = mid
        except ImageError as exc:
            raise ImageError(f"{self.path}: {exc}") from None
        raise KeyError(name)

    def names(self):
        return [read_entry_name(self._mem, self.sections, i).decode("utf-8")
                for i in range(self.header["modules"])]

    def entry(self, name):
        if name not in self._entries:
            self._entries[name] = self._find(name)
        return self._entries[name][1]

    def get_code(self, name):
        if name in self._codes:
            return self._codes[name]
        self.entry(name)
        index = self._entries[name][0]
        err = ffi.new("char[]", _ERRLEN)
        if lib.rm_load_module(self._handle, index, err, _ERRLEN) != 0:
            raise ImageError(f"{self.path}: module {name}: "
                             f"{ffi.string(err).decode(errors='replace')}")
        code = _inbox.pop()
        self._codes[name] = code
        return code
