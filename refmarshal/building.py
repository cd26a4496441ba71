"""``refmarshal.build``: sources in, an image file out.

Orchestration only: compiling each module (in worker processes when asked), choosing the
writer (the reference writer, ``writer.py``, or the accelerator's C writer,
``_accel/writer.py``), and writing the file atomically.  How objects are encoded is the
writers' business, how the file is put together ``container.py``'s.
"""

import marshal
import os
import sys
import time
from typing import NamedTuple

from . import format as F
from .container import ModuleSource
from .errors import ImageError
from .layouts import current


def compile_module(source_path, optimize=-1):
    """Compile a module's source exactly as importlib's SourceLoader does."""
    with open(source_path, "rb") as fh:
        source = fh.read()
    return compile(source, source_path, "exec", dont_inherit=True, optimize=optimize)


class BuildResult:
    def __init__(self):
        self.modules = []        # names written
        self.skipped = []        # (name, source path, reason)
        self.size = 0
        self.strings = 0

    def __repr__(self):
        return (f"BuildResult(modules={len(self.modules)}, skipped={len(self.skipped)}, "
                f"bytes={self.size}, strings={self.strings})")


def build(path, entries, *, optimize=-1, jobs=1, progress=None, implementation="reference"):
    """Write an image of ``entries`` (pairs of module name and source path) to ``path``.

    Modules whose source cannot be read or compiled are skipped and listed in the result.
    The file is written to a temporary name and renamed into place.  ``jobs`` > 1 compiles
    modules in that many processes; ``progress(done, total, name)`` is called after each module
    is compiled.  ``implementation``: "reference" (writer.py, the oracle), "native" (the C
    writer of the accelerator, several times faster) or "auto" (native when it is built).

    Both writers write the same bytes for the same code objects, in one process or several.
    What ``compile()`` returns can differ slightly between processes, though: which equal
    constants it shares depends on the process's state (ftplib compiled after ``import ssl``
    shares one frozenset less), so an image may differ in such sharing, never in a value.
    """
    layout = current()
    if layout is None:
        raise ImageError(f"CPython {sys.version_info[0]}.{sys.version_info[1]} is not supported")
    encode, live = _encoder(implementation)
    level = sys.flags.optimize if optimize == -1 else optimize
    result = BuildResult()
    modules = {}
    started = time.time_ns()
    work = [_Work(name, os.fspath(source_path), level, live, started)
            for name, source_path in entries]
    for done, p in enumerate(_prepare_all(work, jobs), 1):
        if p.module is None:
            result.skipped.append((p.name, p.source_path, p.skipped))
        else:
            modules[p.name] = p.module
        if progress is not None:
            progress(done, len(work), p.name)
    data = encode(layout, modules, level)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    result.modules = sorted(modules)
    result.size = len(data)
    result.strings = F.HEADER_RECORD.read(data, "string_count")
    return result


def _encoder(implementation):
    """(the writer's ``encode_image``, whether it takes live code objects rather than graphs):
    writer.encode_image, or the C writer's encode_image_native."""
    if implementation not in ("auto", "native", "reference"):
        raise ValueError(f"unknown implementation {implementation!r}")
    if implementation != "reference":
        try:
            from ._accel.writer import encode_image_native
        except ImportError as exc:
            if implementation == "native":
                raise ImageError(f"the C writer is not available ({exc})") from None
        else:
            return encode_image_native, True
    from .writer import encode_image
    return encode_image, False


class _Work(NamedTuple):
    """One module to prepare (what a worker process is sent)."""
    name: str
    source_path: str
    optimize: int
    live: bool            # keep the live code object (C writer), else make its graph
    started: int          # the build's start, time.time_ns() ([DIR-6])


class _Prepared(NamedTuple):
    """One prepared module: its ``ModuleSource``, or None and why it was skipped."""
    name: str
    source_path: str
    module: ModuleSource = None
    skipped: str = None


def _prepare(work):
    """One module's part of build() that needs no other module: stat, compile, and for the
    reference writer the graph."""
    try:
        st = os.stat(work.source_path)
        code = compile_module(work.source_path, work.optimize)
        if not work.live:
            from .writer import code_graph
            code = code_graph(code)
    except (OSError, SyntaxError, ValueError, ImageError) as exc:
        return _Prepared(work.name, work.source_path, skipped=f"{type(exc).__name__}: {exc}")
    is_pkg = os.path.basename(work.source_path).rpartition(".")[0] == "__init__"
    stamps = directory_stamps(work.name, work.source_path, is_pkg, work.started)
    return _Prepared(work.name, work.source_path,
                     ModuleSource(work.source_path, st.st_mtime_ns, st.st_size, is_pkg, code,
                                  *stamps))


# [DIR-6] A directory modified this close to the build's start, or later, gets no stamp: a
# second change within the same tick of its clock (coarse file systems tick each second or two)
# would leave its mtime as recorded.
RACY_NS = 2_000_000_000


def _loader_order():
    """(suffix, is the source loader) in the order stock's FileFinder tries them: importlib's
    _get_supported_file_loaders (extensions, source, bytecode)."""
    from importlib.machinery import BYTECODE_SUFFIXES, EXTENSION_SUFFIXES, SOURCE_SUFFIXES
    return ([(s, False) for s in EXTENSION_SUFFIXES] + [(s, True) for s in SOURCE_SUFFIXES]
            + [(s, False) for s in BYTECODE_SUFFIXES])


def directory_stamps(name, source_path, is_package, started_ns):
    """[DIR-6] (dir_mtime_ns, pkg_mtime_ns, first_in_dir) of module ``name`` compiled from
    ``source_path``: (0, 0, False) unless stock's FileFinder, searching the directory the
    module's file is in (a package's: the one holding the package directory) for the name's
    last part, takes exactly that file, with no other candidate there at all, and the
    directories were last modified more than RACY_NS before ``started_ns``.

    Checked as FileFinder.find_spec does it, with the names it would try: for a module
    ``D/m.py``, nothing named ``m`` in D (a package or namespace directory; and a later
    ``__init__`` in an existing ``D/m`` would not change D's mtime) and none of ``m`` + a suffix
    that comes before ``.py``; for a package ``D/p/__init__.py``, none of ``__init__`` + such a
    suffix in ``D/p``.  Any later change to those names changes a stamped directory's mtime."""
    none = (0, 0, False)
    tail = name.rpartition(".")[2]
    parent, base = os.path.split(source_path)
    if not os.path.isabs(source_path):
        return none
    stem = "__init__" if is_package else tail
    if is_package and os.path.basename(parent) != tail:
        return none
    earlier = []
    for suffix, is_source in _loader_order():
        if stem + suffix == base:
            if not is_source:
                return none
            break
        earlier.append(stem + suffix)
    else:
        return none
    search = os.path.dirname(parent) if is_package else parent
    try:
        if any(os.path.lexists(os.path.join(parent, n)) for n in earlier):
            return none
        if not is_package and os.path.lexists(os.path.join(parent, tail)):
            return none
        if not os.path.isfile(source_path):
            return none
        dir_ns = os.stat(search).st_mtime_ns
        pkg_ns = os.stat(parent).st_mtime_ns if is_package else 0
    except (OSError, ValueError):
        return none
    if any(ns == 0 or ns > started_ns - RACY_NS for ns in ((dir_ns, pkg_ns) if is_package
                                                         else (dir_ns,))):
        return none
    return dir_ns, pkg_ns, True


def _prepare_all(work, jobs):
    """_prepare over ``work``, in order, in ``jobs`` processes when that is worth starting them."""
    if jobs <= 1 or len(work) < 2 * _CHUNK:
        yield from map(_prepare, work)
        return
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for prepared, packed in pool.imap(_prepare_packed, work, chunksize=_CHUNK):
            if packed is not None:
                prepared = prepared._replace(module=_unpack(prepared.module, packed))
            yield prepared


# What crosses back from a worker must give the same bytes as compiling here:
# - a live code object goes as marshal data, which keeps each object's identity (marshal refs)
#   and every string's interned state, and loads as a fresh, never-run code object;
# - a graph is pickled, but pickle loses the identity of ints and floats, which the reference
#   writer places once per object (by id), so numbers go through a side table.
# A worker returns (the _Prepared with its module's ``code`` left out, the code packed so).
_NUMBERS = (int, float, complex)


class _Packed(NamedTuple):
    kind: str             # "code" (marshal data) or "graph" (pickle)
    numbers: bytes        # "graph": the pickled side table of numbers
    data: bytes


def _prepare_packed(work):
    import io
    import pickle

    class NumberPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if type(obj) in _NUMBERS:
                if id(obj) not in index:
                    index[id(obj)] = len(table)
                    table.append(obj)
                return index[id(obj)]
            return None

    prepared = _prepare(work)
    if prepared.module is None:
        return prepared, None
    bare = prepared._replace(module=prepared.module._replace(code=None))
    if work.live:
        return bare, _Packed("code", b"", marshal.dumps(prepared.module.code))
    table, index = [], {}
    buf = io.BytesIO()
    NumberPickler(buf, pickle.HIGHEST_PROTOCOL).dump(prepared.module.code)
    return bare, _Packed("graph", pickle.dumps(table, pickle.HIGHEST_PROTOCOL), buf.getvalue())


def _unpack(module, packed):
    import io
    import pickle
    if packed.kind == "code":
        return module._replace(code=marshal.loads(packed.data))
    table = pickle.loads(packed.numbers)

    class NumberUnpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return table[pid]

    return module._replace(code=NumberUnpickler(io.BytesIO(packed.data)).load())


_CHUNK = 16
