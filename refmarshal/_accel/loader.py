"""The accelerator's Python side: policy around what rm_loader.c and rm_import.c do.

``AccelImage`` has the API of ``reader.ReferenceImage``.  C does the directory lookup, the
checks and the fix-ups; the header is checked once, when the image is opened.  ``get_code``
(and the import hook's ``find_spec`` and ``get_code``) are C methods (rm_import.c), so loading a
module runs no Python frame.

The accelerator is one shared object with two modules in it (build_accel.py):
``_hook`` (rm_hook.c), a plain CPython module with what the import hook needs (open an image
and check its header, the capsules, the C methods), and cffi's ``_loader`` (``ffi``, ``lib``)
for everything else.  This module is on the import hook's path at a process's first import,
so it imports ``_hook`` only: ``ffi``, ``lib`` and the format module (``F``) are loaded at
their first use (``names``, ``entry``, ``header``, the tests, the CLI), never by the hook.
"""

import os
import sys

import _thread

from .. import ImageError   # refmarshal.errors's, made in the package

# The main interpreter only: _startup.in_main_interpreter says why (not imported from there:
# this module is below the import hook, ARCHITECTURE.md).  _is_main_interpreter is 3.12+.
if not getattr(_thread, "_is_main_interpreter", lambda: True)():
    raise ImportError("the refmarshal accelerator works in the main interpreter only")

from . import load_hook  # noqa: E402

_hook = load_hook()         # the C module that holds what the import hook uses


class _OnFirstUse:
    """Stands for the module global ``ffi``, ``lib`` or ``F`` until its first attribute use,
    which loads cffi's module (or format.py) and puts the real object in its place."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(load_cffi()[self._name], attr)

    def __repr__(self):
        return f"<{self._name}: loaded at its first use>"


ffi, lib, F = _OnFirstUse("ffi"), _OnFirstUse("lib"), _OnFirstUse("F")


def load_cffi():
    """cffi's module (``ffi``, ``lib``) and format.py (``F``), put in this module's globals
    (ImportError when cffi's module cannot be imported)."""
    global ffi, lib, F
    if type(lib) is _OnFirstUse:
        from .. import format as F
        from ._loader import ffi, lib
        if lib.rm_python_version() >> 16 != sys.hexversion >> 16:
            raise ImportError("refmarshal accelerator was built for another Python version")
    return {"ffi": ffi, "lib": lib, "F": F}


def address(obj):
    """obj as C sees it, for the cffi functions that take Python objects (cffi has no PyObject*
    arguments): CPython's id() is the object's address.  The caller keeps obj alive."""
    return ffi.cast("void *", id(obj))


def install_method(cls, key):
    """Make cls's method (key "Class.method", as listed in rm_import.c) the C one, once: a
    wrapper put there later (the profiler's) stays.  cls must not define it in Python."""
    if key.split(".")[1] in vars(cls):
        return
    _hook.install_method(cls, key)

_ERRLEN = 256
# How the image's bytes are brought into memory (rm_loader.h); benchmarks compare them.  "auto"
# is the default: huge pages are faster, but where the kernel compacts memory to make one (THP
# "defrag" setting "madvise" or "always") a fault stalled imports by hundreds of milliseconds on
# a busy machine (BENCHMARKS.md), so there it uses small pages.
MODES = {"huge-pages": _hook.MODE_HUGE_PAGES, "small-pages": _hook.MODE_SMALL_PAGES,
         "file-mapping": _hook.MODE_FILE_MAPPING, "auto": _hook.MODE_AUTO}


def _crc32(*chunks):
    """format.crc32 in C: zlib is not imported for one header."""
    c = 0
    for chunk in chunks:
        c = lib.rm_crc32(c, chunk, len(chunk))
    return c


class AccelImage:
    """An image whose modules are brought into memory and fixed up in place on first request."""

    implementation = "accel"

    def __init__(self, path, mode="auto"):
        self.path = os.fspath(path)
        try:
            addr, self._base, self._size, hdr, self.optimize, problem = _hook.open(
                os.fsencode(self.path), MODES[mode])
        except ValueError as exc:      # rm_open's message
            raise ImageError(f"{self.path}: {exc}") from None
        if problem is not None:        # the message is format.check_header's
            _hook.close(addr)
            try:
                F.check_header(hdr, self._size, _crc32)
            except ImageError as exc:
                problem = str(exc)
            raise ImageError(f"{self.path}: {problem}") from None
        self._addr = addr              # closed by __del__
        self._header = hdr
        self._entries = {}
        self._capsule = _hook.image_capsule(addr, self.path, ImageError)
        # what the C methods reach the image through

    @classmethod
    def _adopt(cls, path, capsule):
        """The image a finder opened (``_hook.open_finder``), for the API: ``finder.image``.
        The capsule owns it: this object keeps it and never closes it."""
        self = cls.__new__(cls)
        self.path = path
        self._adopted = True
        self._addr, self._base, self._size, self._header, self.optimize = _hook.image_info(
            capsule, ImageError)
        self._entries = {}
        self._capsule = capsule
        return self

    def __del__(self):
        # rm_close keeps the memory while any module's code lives in it ([LOAD-4])
        addr = getattr(self, "_addr", None)
        if addr is not None and not self.__dict__.get("_adopted"):
            self._addr = None
            _hook.close(addr)

    @property
    def header(self):
        """The header's fields (``format.check_header``'s dict), parsed at the first use."""
        h = self.__dict__.get("_fields")
        if h is None:
            h = self._fields = F.check_header(self._header, self._size, _crc32)
        return h

    @property
    def sections(self):
        return self.header["sections"]

    @property
    def _handle(self):
        """The image as cffi sees it (``rm_image *``), for the functions called through cffi."""
        h = self.__dict__.get("_cffi_handle")
        if h is None:
            if self._addr is None:
                raise ImageError(f"{self.path}: closed")
            h = self._cffi_handle = ffi.cast("rm_image *", self._addr)
        return h

    @property
    def _err(self):
        """A buffer for the message of a cffi function that fails."""
        e = self.__dict__.get("_errbuf")
        if e is None:
            e = self._errbuf = ffi.new("char[]", _ERRLEN)
        return e

    def _error(self):
        return ffi.string(self._err).decode(errors="replace")

    @property
    def relocated(self):
        """True when the image is not at its preferred base (PTR records applied)."""
        return _hook.relocated(self._addr)

    @property
    def bytes_read(self):
        """How many bytes of the file have been brought into memory so far."""
        return _hook.bytes_read(self._addr)

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
        return [self._entry_at(i).name for i in range(_hook.module_count(self._addr))]

    def entry(self, name):
        """The directory entry of ``name`` (KeyError when the image does not hold it)."""
        found = self._entries.get(name)
        if found is None:
            index = self._find(name)
            found = self._entries[name] = (index, self._entry_at(index))
        return found[1]

    # get_code(name): the module's code object, living in the image's memory (KeyError when
    # absent): a C method, installed below.


install_method(AccelImage, "AccelImage.get_code")
