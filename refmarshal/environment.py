"""Which pure-Python modules an environment can import, found the way stock import finds them.

The rules mirror the path-based finder (``importlib.machinery.PathFinder`` and ``FileFinder``),
without importing anything:

- a top-level name is looked up in each ``sys.path`` entry in order; in one directory a regular
  package (``name/__init__`` + a loader suffix) comes first, then ``name`` + each suffix in the
  order extension modules, source, bytecode; the first hit wins, in every later entry too;
- a directory without ``__init__`` is a namespace portion: it counts only when no entry holds a
  regular module of that name, and then all portions together are the package's ``__path__``;
- builtin and frozen modules are found before the path, so their names are never path imports.

Relative path entries are made absolute against the current directory, as FileFinder does.

Only hits on a ``.py`` source are returned; a name an extension module or a sourceless ``.pyc``
takes hides any later source of that name, as it does at import time.
"""

import fnmatch
import os
import sys
from importlib.machinery import (BYTECODE_SUFFIXES, EXTENSION_SUFFIXES, SOURCE_SUFFIXES,
                                 BuiltinImporter, FrozenImporter)

# FileFinder's loader order: extensions, then source, then bytecode.
_SUFFIXES = [(s, False) for s in EXTENSION_SUFFIXES] + [(s, True) for s in SOURCE_SUFFIXES] \
    + [(s, False) for s in BYTECODE_SUFFIXES]


def import_path():
    """The environment's ``sys.path``: without the entry for the running script or the
    current directory, which belongs to this invocation, not to the environment."""
    if sys.flags.safe_path:
        return list(sys.path)
    return list(sys.path[1:])


def _absolute(entry):
    """A path entry as FileFinder holds it: '' and '.' are the current directory, others
    are joined to it when relative (not normalised)."""
    if not entry or entry == ".":
        return os.getcwd()
    return entry if os.path.isabs(entry) else os.path.join(os.getcwd(), entry)


def _not_path_import(name):
    """Builtin and frozen modules are found before the path finder (for submodules too:
    3.11 freezes importlib.util)."""
    return BuiltinImporter.find_spec(name) is not None or FrozenImporter.find_spec(name) is not None


class _Scanner:
    """One search of the file system; each directory is listed once, as FileFinder caches."""

    def __init__(self):
        self._listings = {}

    def listing(self, path):
        if path not in self._listings:
            try:
                self._listings[path] = frozenset(os.listdir(path))
            except OSError:          # missing, a zip file, unreadable: holds nothing for us
                self._listings[path] = frozenset()
        return self._listings[path]

    def find_in_dir(self, directory, name):
        """FileFinder's answer for ``name`` in one directory: ("package", init, pkgdir),
        ("module", path, None), ("namespace", portion, None) or None.  The path of a
        non-source hit is None: the name is taken, but not by a source file."""
        here = self.listing(directory)
        portion = None
        if name in here:
            pkgdir = os.path.join(directory, name)
            inside = self.listing(pkgdir)
            for suffix, is_source in _SUFFIXES:
                if "__init__" + suffix in inside:
                    init = os.path.join(pkgdir, "__init__" + suffix)
                    return ("package", init if is_source else None, pkgdir)
            if os.path.isdir(pkgdir):
                portion = pkgdir
        for suffix, is_source in _SUFFIXES:
            if name + suffix in here:
                path = os.path.join(directory, name + suffix)
                if os.path.isfile(path):
                    return ("module", path if is_source else None, None)
        return ("namespace", portion, None) if portion else None

    def resolve(self, name, directories):
        """Stock import's answer for the last part ``name`` searched along ``directories``:
        ("package", init, [dir]), ("module", path, None), ("namespace", None, portions)
        or None."""
        portions = []
        for d in directories:
            hit = self.find_in_dir(d, name)
            if hit is None:
                continue
            kind, path, pkgdir = hit
            if kind == "namespace":
                portions.append(path)
                continue
            return kind, path, [pkgdir] if pkgdir else None
        return ("namespace", None, portions) if portions else None

    def candidate_names(self, directories):
        """Names that could be modules in these directories, sorted.  A file's name counts
        without its suffix unless it holds a dot (``import_module`` reaches names like
        ``_sysconfigdata__linux_x86_64-linux-gnu``); a directory's only when it is an
        identifier (so ``site-packages`` or ``foo.dist-info`` are never namespace portions)."""
        names = set()
        for d in directories:
            for fn in self.listing(d):
                for suffix, _ in _SUFFIXES:
                    if fn.endswith(suffix):
                        stem = fn[:-len(suffix)]
                        if stem and "." not in stem and stem != "__init__":
                            names.add(stem)
                        break
                else:
                    if fn.isidentifier() and fn != "__pycache__":
                        names.add(fn)
        return sorted(names)

    def walk(self, prefix, directories, out, active):
        """Add every source module under ``directories`` (a package's ``__path__``, or the
        import path when ``prefix`` is empty) to ``out``."""
        for stem in self.candidate_names(directories):
            name = prefix + stem
            if _not_path_import(name):
                continue
            hit = self.resolve(stem, directories)
            if hit is None:
                continue
            kind, path, search = hit
            if path is not None:
                out[name] = path
            if search:
                key = tuple(os.path.realpath(d) for d in search)
                if key in active:             # a symlink loop would recurse for ever
                    continue
                active.add(key)
                self.walk(name + ".", search, out, active)
                active.discard(key)


def discover(paths=None):
    """Every module importable from ``paths`` (default: the environment's path) whose code comes
    from a ``.py`` source: a dict of module name -> source path, sorted by name."""
    directories = [_absolute(p) for p in (import_path() if paths is None else paths)]
    out = {}
    _Scanner().walk("", directories, out, set())
    return dict(sorted(out.items()))


def package_modules(name, paths=None):
    """One module, or a package and all its submodules, found along ``paths`` (default: the
    environment's path).  Raises LookupError when there is no such module with a source."""
    directories = [_absolute(p) for p in (import_path() if paths is None else paths)]
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise LookupError(f"{name!r} is not a module name")
    scanner = _Scanner()
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i + 1])
        hit = None if _not_path_import(prefix) else scanner.resolve(part, directories)
        if hit is None:
            raise LookupError(f"no module named {prefix!r} on the import path")
        kind, path, search = hit
        if i < len(parts) - 1:
            if not search:
                raise LookupError(f"{prefix!r} is not a package")
            directories = search
    out = {name: path} if path is not None else {}
    if search:
        scanner.walk(name + ".", search, out, set())
    if not out:
        raise LookupError(f"{name!r} has no Python source (an extension or bytecode module)")
    return dict(sorted(out.items()))


def excluded(name, patterns):
    """True when a glob in ``patterns`` matches ``name`` or one of its parent packages."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)
