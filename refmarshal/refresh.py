"""Auto-refresh (``refmarshal enable --auto-refresh``): a process that imported modules the
stock way because its image is out of date starts one rebuild when it exits.

``at_exit(finder, ...)`` runs from an ``atexit`` handler the start-up hook registers (imported only
then).  It looks at the modules the process imported: *stale* ones, which the image holds from
the same file but whose source changed since the build, and *new* ones, imported from a
``.py`` file of the environment (under ``sys.prefix`` or ``sys.base_prefix``) that the image
does not hold.  When there are ``THRESHOLD`` or more, and no rebuild started in the last
``interval`` seconds (``refmarshal enable --auto-refresh SECONDS``, recorded in the ``.pth``
line), it starts ``python -m refmarshal refresh`` detached (its own session, output appended to
the log beside the image) and returns at once; it never raises.

The rebuild (``cli.cmd_refresh``) lowers its priority (``nice``), takes an exclusive
``flock`` on the lock file beside the image (one rebuild at a time; another one gives up), and
rebuilds every existing level's image, each written atomically, from the modules the level-0
image holds (their sources as they are now) and the new ones the process imported (with the
files it imported them from), then logs what it did.  The image so keeps its selection and
grows with what is used; ``refmarshal build`` takes in the whole environment.
"""

import os
import sys

THRESHOLD = 1        # outdated modules a process must have imported to start a rebuild
INTERVAL = 60        # seconds: by default at most one rebuild started per interval
LOG_LINES = 200      # the log keeps this many lines


def log_path(image):
    """The auto-refresh log beside the (level-0) image ``image``."""
    return image + ".refresh.log"


def lock_path(image):
    return image + ".refresh.lock"


def outdated(finder, before, source_unchanged):
    """(stale names, new (name, source path) pairs): the modules this process imported the
    stock way that an image rebuilt now would serve, leaving out those in ``before`` (imported
    before the finder was in place).  ``source_unchanged``: importer's (passed in: this module
    imports none of refmarshal's, so it is in no import cycle)."""
    from _frozen_importlib_external import SourceFileLoader

    image = finder.image
    # in checked mode a stale module goes the stock way and counts as a fallback: without
    # one, no source need be looked at
    look = finder.fallbacks > 0 or not finder.checked
    roots = tuple({os.path.join(p, "") for p in (sys.prefix, sys.base_prefix)})
    stale, new = [], []
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        origin = getattr(spec, "origin", None)
        if name in before or name == "__main__" or not isinstance(origin, str) or \
                not origin.endswith(".py") or \
                not isinstance(getattr(spec, "loader", None), SourceFileLoader):
            continue
        try:
            entry = image.entry(name)
        except KeyError:
            if origin.startswith(roots):
                new.append((name, origin))
            continue
        if look and entry.path == origin and not source_unchanged(entry):
            stale.append(name)
    return sorted(stale), sorted(new)


def base_image(path):
    """The level-0 image beside ``path`` (``x.opt-1.img`` -> ``x.img``)."""
    for level in (1, 2):
        suffix = f".opt-{level}.img"
        if path.endswith(suffix):
            return path[:-len(suffix)] + ".img"
    return path


def at_exit(finder, before, source_unchanged, interval=INTERVAL):
    """Start a rebuild when this process saw enough outdated modules; never raises."""
    try:
        if finder.disabled:
            return
        stale, new = outdated(finder, before, source_unchanged)
        if len(stale) + len(new) < THRESHOLD:
            return
        base = base_image(finder.path)
        try:
            if os.stat(lock_path(base)).st_mtime > _now() - interval:
                return                      # started (or finished) a moment ago
        except OSError:
            pass
        start(base, stale, new)
    except Exception:
        pass


def _now():
    import time
    return time.time()


def stamp():
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S")


def start(base, stale, new):
    """``python -m refmarshal refresh`` for ``base``, detached, output appended to its log."""
    names = [name for name, _ in new]
    why = f"{len(stale)} stale ({', '.join(stale[:5])}{' ...' * (len(stale) > 5)}), " \
          f"{len(names)} new ({', '.join(names[:5])}{' ...' * (len(names) > 5)})"
    env = dict(os.environ)
    env["REFMARSHAL"] = "0"                  # the rebuild imports the stock way
    argv = [sys.executable, "-P", "-m", "refmarshal", "refresh", "--image", base,
            "--reason", why] + [f"--add={name}={path}" for name, path in new]
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, log_path(base), flags, 0o644),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    try:
        os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
        said = f"rebuild requested by pid {os.getpid()}: {why}"
    except OSError as exc:
        said = f"rebuild could not be started by pid {os.getpid()} ({exc}): {why}"
    log = os.open(log_path(base), flags, 0o644)
    try:                                     # said before this process exits
        os.write(log, f"{stamp()} {said}\n".encode())
    finally:
        os.close(log)
