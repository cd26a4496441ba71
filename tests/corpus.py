"""The modules the conformance suite compiles: the running interpreter's whole standard library
(every .py under its lib directory, test suite included, site-packages excluded) and the real
third-party packages tox installs (attrs, idna, packaging) plus pytest and pluggy.

Names are derived from paths relative to their root; files that do not compile are kept here
and skipped by the tests that need compiling (they still test "skipped, counted" in build()).
"""

import importlib.util
import os
import sysconfig

THIRD_PARTY = ("attr", "attrs", "idna", "packaging", "pytest", "_pytest", "pluggy")


def _modules_under(root, prefix=""):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ("site-packages", "__pycache__") and d.isidentifier())
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            stem = fn[:-3]
            mod = parts + ([] if stem == "__init__" else [stem])
            name = prefix + ".".join(mod)
            if name and all(p.isidentifier() for p in mod):
                yield name, os.path.join(dirpath, fn)


def stdlib_modules():
    return list(_modules_under(sysconfig.get_paths()["stdlib"]))


def third_party_modules():
    out = []
    for top in THIRD_PARTY:
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        if spec.submodule_search_locations:
            out += list(_modules_under(spec.submodule_search_locations[0], top + "."))
            out = [(n[:-1] if n.endswith(".") else n, p) for n, p in out]
        else:
            out.append((top, spec.origin))
    return out


def compiles(path):
    try:
        with open(path, "rb") as fh:
            compile(fh.read(), path, "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError):
        return False
