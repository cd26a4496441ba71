"""Is this interpreter importing through a refmarshal image?  One answer for every caller.

``active_finder()`` is the one test, used by the CLI, the benchmark helpers and the profiler.
A child interpreter that is asked the question (``refmarshal enable``/``status``/``bench``,
benchmarks/imports.py) runs the same function as source, ``probe_code``: importing this module
there would add a module to what is measured and, served from the image, a hit.
"""

_SOURCE = '''\
import sys


def active_finder(meta_path=None):
    """The refmarshal image finder on ``sys.meta_path`` (or ``meta_path``), None when there is
    none: an ``ImageFinder`` of refmarshal.importer (``.path``, ``.image``, ``.hits``,
    ``.fallbacks``).  The start-up hook's placeholder (``PendingFinder``) does not count: it
    becomes the finder at the first import that reaches it."""
    for f in sys.meta_path if meta_path is None else meta_path:
        t = type(f)
        if t.__module__ == "refmarshal.importer" and t.__name__ == "ImageFinder":
            return f
    return None
'''
exec(_SOURCE)


def probe_code(*expressions, wake=False):
    """Source for ``python -c`` that prints ``expressions`` on one line, separated by spaces;
    in them ``f`` is ``active_finder()`` and ``sys`` is imported.  ``wake``: first import a
    module that does not exist, so that the start-up hook's placeholder installs the finder
    (an import that reaches it does that), without importing anything that exists."""
    code = _SOURCE
    if wake:
        code += ("try:\n    import refmarshal_probe_no_such_module\n"
                 "except ImportError:\n    pass\n")
    return code + f"f = active_finder()\nprint({', '.join(expressions)})\n"
