"""What the ``refmarshal.pth`` line runs at every interpreter start: install the image finder.

Environment: ``REFMARSHAL=0`` turns it off, ``REFMARSHAL_IMAGE=path`` uses another image than
the environment's default, ``REFMARSHAL_UNCHECKED=1`` trusts the image (no per-module stat).
``run`` never raises: interpreter start must not depend on refmarshal.
"""

import os


def run(image=None):
    env = os.environ
    if env.get("REFMARSHAL") == "0":
        return
    try:
        from .importer import install
        install(env.get("REFMARSHAL_IMAGE") or image,
                checked=env.get("REFMARSHAL_UNCHECKED") != "1")
    except Exception as exc:   # e.g. -W error made our warning an exception: still say it
        try:
            import sys
            text = str(exc)
            if not text.startswith("refmarshal: "):
                text = f"refmarshal: start-up hook failed ({type(exc).__name__}: {exc}); " \
                       "imports go on as stock"
            sys.stderr.write(text + "\n")
        except Exception:
            pass
