"""The accelerator's Python side: policy around what rm_loader.c and rm_import.c do.

``AccelImage`` has the API of ``reader.ReferenceImage``.  C does the directory lookup, the
checks and the fix-ups; Python checks the header once.  ``get_code`` (and the import hook's
``find_spec`` and ``get_code``) are C methods (rm_import.c), so loading a module runs no Python
frame.  This module is on the import hook's path at every interpreter start, so it imports only
the container constants (format.py), never the reference reader or writer.
"""

import os
import sys

import _thread

from .. import format as F
from ..errors import ImageError

# The main interpreter only: _startup.in_main_interpreter says why (not imported from there:
# this module is below the import hook, ARCHITECTURE.md).  _is_main_interpreter is 3.12+.
if not getattr(_thread, "_is_main_interpreter", lambda: True)():
    raise ImportError("the refmarshal accelerator works in the main interpreter only")

from ._loader import ffi, lib  # noqa: E402

if lib.rm_python_version() >> 16 != sys.hexversion >> 16:
    raise ImportError("refmarshal accelerator was built for another Python version")


def address(obj):
    """obj as C sees it, for the functions that take Python objects (cffi has no PyObject*
    arguments): CPython's id() is the object's address.  The caller keeps obj alive."""
    return ffi.cast("void *", id(obj))


def install_method(cls, key):
    """Make cls's method (key "Class.method", as listed in rm_import.c) the C one, once: a
    wrapper put there later (the profiler's) stays.  cls must not define it in Python."""
    if key.split(".")[1] in vars(cls):
        return
    if lib.rm_install_method(address(cls), key.encode()) != 0:
        raise ImportError(f"refmarshal accelerator: cannot install {key}")

_ERRLEN = 256
# How the image's bytes are brought into memory (rm_loader.h); benchmarks compare them.  "auto"
# is the default: huge pages are faster, but where the kernel compacts memory to make one (THP
# "defrag" setting "madvise" or "always") a fault stalled imports by hundreds of milliseconds on
# a busy machine (BENCHMARKS.md), so there it uses small pages.
MODES = {"huge-pages": lib.RM_MODE_HUGE_PAGES, "small-pages": lib.RM_MODE_SMALL_PAGES,
         "file-mapping": lib.RM_MODE_FILE_MAPPING, "auto": lib.RM_MODE_AUTO}


def _crc32(*chunks):
    """format.crc32 in C: zlib is not imported at start-up for one header."""
    c = 0
    for chunk in chunks:
        c = lib.rm_crc32(c, chunk, len(chunk))
    return c


class AccelImage:
    """An image whose modules are brought into memory and fixed up in place on first request."""

    implementation = "accel"

    def __init__(self, path, mode="auto"):
        self.path = os.fspath(path)
        self._err = ffi.new("char[]", _ERRLEN)
        handle = lib.rm_open(os.fsencode(self.path), MODES[mode], self._err, _ERRLEN)
        if handle == ffi.NULL:
            raise ImageError(f"{self.path}: {self._error()}")
        self._handle = handle
        self._base = int(ffi.cast("uintptr_t", lib.rm_base(handle)))
        self._size = lib.rm_size(handle)
        try:
            # rm_open has read the header: the region starts with the file's first bytes
            header = bytes(ffi.buffer(lib.rm_base(handle), F.HEADER_SIZE))
            self.header = F.check_header(header, self._size, _crc32)
        except ImageError as exc:
            self._handle = None          # closed here, not again by __del__
            lib.rm_close(handle)
            raise ImageError(f"{self.path}: {exc}") from None
        self.sections = self.header["sections"]
        self._entries = {}
        io = [self.path, ImageError]
        if lib.rm_image_capsule(handle, address(io)) != 0:
            raise ImageError(f"{self.path}: out of memory")
        self._capsule = io[2]      # what the C methods reach the image through

    def __del__(self):
        # rm_close keeps the memory while any module's code lives in it ([LOAD-4])
        handle = getattr(self, "_handle", None)
        if handle is not None:
            self._handle = None
            lib.rm_close(handle)

    def _error(self):
        return ffi.string(self._err).decode(errors="replace")

    @property
    def relocated(self):
        """True when the image is not at its preferred base (PTR records applied)."""
        return bool(lib.rm_relocated(self._handle))

    @property
    def bytes_read(self):
        """How many bytes of the file have been brought into memory so far."""
        return lib.rm_bytes_read(self._handle)

    def owns(self, obj):
        return self._base <= id(obj) < self._base + self._size

    # -- directory ([DIR-1], [DIR-2]) --
    def _entry_at(self, index):
        info = ffi.new("rm_entry_info *")
        if lib.rm_entry(self._handle, index, info, self._err, _ERRLEN) != 0:
            raise ImageError(f"{self.path}: {self._error()}")
        return F.ModuleEntry(
            ffi.unpack(info.name, info.name_len).decode("utf-8"),
            os.fsdecode(ffi.unpack(info.path, info.path_len)),
            info.mtime_ns, info.size, bool(info.flags & F.MOD_PACKAGE), info.seg_off,
            info.seg_size, info.root, info.data_crc, info.dir_mtime_ns, info.pkg_mtime_ns,
            bool(info.flags & F.MOD_FIRST_IN_DIR))

    def _find(self, name):
        key = name.encode("utf-8")
        index = lib.rm_find(self._handle, key, len(key), self._err, _ERRLEN)
        if index == -1:
            raise KeyError(name)
        if index < 0:
            raise ImageError(f"{self.path}: {self._error()}")
        return index

    def names(self):
        return [self._entry_at(i).name for i in range(lib.rm_module_count(self._handle))]

    def entry(self, name):
        """The directory entry of ``name`` (KeyError when the image does not hold it)."""
        found = self._entries.get(name)
        if found is None:
            index = self._find(name)
            found = self._entries[name] = (index, self._entry_at(index))
        return found[1]

    # get_code(name): the module's code object, living in the image's memory (KeyError when
    # absent): a C method, installed below.

    def new_hook(self, checked, *objects):
        """The C state of an import hook on this image (rm_import.c: rm_hook_new lists the
        objects it takes): its rm_hook, which Python reads and sets, and the capsule that owns
        it, which the C methods use."""
        io = [self, *objects]
        hook = lib.rm_hook_new(int(checked), address(io))
        if hook == ffi.NULL:
            raise ImageError(f"{self.path}: cannot set up the import hook")
        return hook, io[-1]


install_method(AccelImage, "AccelImage.get_code")
