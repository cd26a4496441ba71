"""Read ``python -X importtime`` logs (CPython 3.11, 3.12, 3.13) into a Run.

Each import is one line, written when it finishes, so children come before their parent::

    import time: self [us] | cumulative | imported package
    import time:       374 |       1909 |     json.scanner
    import time:      1062 |       2971 |   json.decoder

Two spaces of indentation per nesting level.  Other lines (the program's own stderr) are
ignored; a line that starts like an importtime line but does not parse is an error.
"""

import re

from .model import ModuleTiming, Run

PREFIX = "import time:"
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S.*?)\s*$")
_HEADER = re.compile(r"import time: self \[us\] \| cumulative \| imported package\s*$")


class ImportTimeError(ValueError):
    """A malformed log: the message names the line."""


def parse(text, source="<log>"):
    """Parse a whole log; returns a Run labelled "importtime" (phases unknown)."""
    pending = {}         # depth -> finished modules at that depth waiting for their parent
    modules = []         # in completion order; reordered to start order below
    seen = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith(PREFIX):
            continue
        seen += 1
        if _HEADER.match(line):
            continue
        m = _LINE.match(line)
        if m is None or len(m.group(3)) % 2 == 0:
            raise ImportTimeError(f"{source}:{lineno}: not an importtime line: {line.strip()!r}")
        self_us, cum_us, indent, name = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        if cum_us < self_us:
            raise ImportTimeError(f"{source}:{lineno}: cumulative time below self time")
        depth = (len(indent) - 1) // 2
        node = {"name": name, "self": self_us, "cum": cum_us,
                "children": pending.pop(depth + 1, [])}
        for deeper in [d for d in pending if d > depth]:
            # children whose parent line is missing (log cut or interleaved): keep them here
            node["children"].extend(pending.pop(deeper))
        pending.setdefault(depth, []).append(node)
        modules.append(node)
    if not seen:
        raise ImportTimeError(f"{source}: no '-X importtime' lines found")
    roots = [n for d in sorted(pending) for n in pending[d]]
    run = Run(label="importtime", modules=[])
    for root in roots:
        _flatten(root, None, "__main__", run.modules)
    return run.link_children()


def _flatten(node, parent, importer, out):
    """Depth-first in start order; a package imported for its submodule (``a`` logged inside
    ``a.b``) gets the submodule's importer, as the profiler attributes it."""
    index = len(out)
    out.append(ModuleTiming(name=node["name"], parent=parent, importer=importer, origin="?",
                            cumulative=node["cum"] * 1e-6, self_time=node["self"] * 1e-6))
    for child in node["children"]:
        child_importer = importer if node["name"].startswith(child["name"] + ".") \
            else node["name"]
        _flatten(child, index, child_importer, out)


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise ImportTimeError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, str(path))
