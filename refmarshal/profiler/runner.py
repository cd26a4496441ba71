"""Start the target in a fresh interpreter with collect.py and read back what it recorded."""

import marshal
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import collect, importtime
from .model import from_collect

# Executes collect.py (passed as text) in a private namespace: the target keeps the untouched
# __main__ that ``python -c`` creates, and sys.path[0] is "" as for ``-c``; collect.py then
# sets both as the target's own mode (-c, -m or a script) would have them.
BOOTSTRAP = ("exec(compile(__import__('sys').argv[2],__import__('sys').argv[1],'exec'),"
             "{'__name__':'_refmarshal_profile_collect','__file__':__import__('sys').argv[1]})")


class RunFailed(Exception):
    """The child produced no profile at all (it could not start, or died)."""


def child_env(image):
    env = dict(os.environ)
    env.pop("REFMARSHAL_IMAGE", None)
    env.pop("REFMARSHAL", None)
    if image is None:
        env["REFMARSHAL"] = "0"          # stock: also keeps an enabled .pth hook out of the way
    else:
        env["REFMARSHAL_IMAGE"] = str(image)
    return env


def child_command(out, mode, image, kind, target, args, *, python=None, importtime_log=False):
    source_path = collect.__file__
    with open(source_path, encoding="utf-8") as fh:
        source = fh.read()
    package_root = str(Path(collect.__file__).resolve().parents[2]) if image else ""
    flags = ["-X", "importtime"] if importtime_log else []
    return [python or sys.executable, *flags, "-c", BOOTSTRAP, source_path, source, str(out),
            mode, package_root, kind, target, *args]


def run_child(kind, target, args, *, image=None, mode="timed", label, quiet=False,
              importtime_log=False):
    """Run the target once; returns (Run, importtime Run or None, stderr lines not from
    importtime).  quiet: the target's output is not shown (repeat runs)."""
    with tempfile.TemporaryDirectory(prefix="refmarshal-profile-") as tmp:
        out = Path(tmp) / "records"
        cmd = child_command(out, mode, image, kind, target, args, importtime_log=importtime_log)
        capture = subprocess.PIPE if importtime_log or quiet else None
        proc = subprocess.run(cmd, env=child_env(image), stdout=subprocess.DEVNULL if quiet
                              else None, stderr=capture, text=True, errors="replace")
        stderr = proc.stderr or ""
        log = None
        if importtime_log:
            log = importtime.parse(stderr, "the child's -X importtime log")
            stderr = "".join(line for line in stderr.splitlines(True)
                             if not line.startswith(importtime.PREFIX))
            if not quiet:
                sys.stderr.write(stderr)
        try:
            with open(out, "rb") as fh:
                data = marshal.load(fh)
        except (OSError, EOFError, ValueError, TypeError):
            last = stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise RunFailed(f"the {label} run ended before recording anything: {last[0]}") \
                from None
    run = from_collect(data, label)
    return run, log, stderr
