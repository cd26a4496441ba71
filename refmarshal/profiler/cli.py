"""``refmarshal profile``: where start-up time goes, with and without the image.

    refmarshal profile [options] -c CODE [args...]
    refmarshal profile [options] -m MODULE [args...]
    refmarshal profile [options] SCRIPT [args...]
    refmarshal profile [options] --importtime LOGFILE
"""

import argparse
import json
import os
import shlex
import sys

from . import importtime, report, runner, svg
from .report import SORT_KEYS

# Options that take a value: the target starts at the first token that is not one of these
# (or their values), exactly as ``python`` stops reading its own options at -c, -m or a script.
VALUE_OPTIONS = {"--image", "--only", "--sort", "--limit", "--json", "--svg", "--importtime",
                 "--repeat"}


class ProfileError(Exception):
    """Reported as one line, with a non-zero exit."""


def build_parser():
    p = argparse.ArgumentParser(
        prog="refmarshal profile",
        usage="refmarshal profile [options] (-c CODE | -m MODULE | SCRIPT | --importtime LOG) "
              "[args ...]",
        description="Run a Python program in a fresh interpreter, once with the refmarshal "
                    "image and once with stock import, and show for every imported module the "
                    "time to find it, load its code and execute its body, with a summary and "
                    "an SVG picture of the import tree.")
    p.add_argument("-c", dest="code", metavar="CODE", help="program passed in as a string")
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    p.add_argument("--importtime", metavar="LOG",
                   help="read a `python -X importtime` log (its stderr) instead of running")
    p.add_argument("--image", metavar="PATH",
                   help="image for the image run (default: the environment's default image)")
    p.add_argument("--only", choices=("image", "stock"), help="do one run only")
    p.add_argument("--sort", choices=list(SORT_KEYS), default="exec",
                   help="table order (default: exec, the module's own execution time)")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="table rows (default 20; 0: all)")
    p.add_argument("--json", metavar="FILE", help="write every module's numbers as JSON")
    p.add_argument("--svg", metavar="FILE", default="refmarshal-profile.svg",
                   help="where to write the picture (default: ./refmarshal-profile.svg)")
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="run each configuration N times with and N times without the "
                        "instrumentation; the fastest of each is kept (default 3)")
    p.add_argument("--check-importtime", action="store_true",
                   help="also run the child under -X importtime and compare its cumulative "
                        "times with the profiler's, module by module")
    return p


def split_target(argv):
    """(profile options, target kind, target, target args); kind is None when there is none."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-c", "-m"):
            if i + 1 >= len(argv):
                raise ProfileError(f"argument {tok}: expected one argument")
            return argv[:i], tok, argv[i + 1], argv[i + 2:]
        if tok[:2] in ("-c", "-m") and not tok.startswith("--"):    # -cCODE, as python takes
            return argv[:i], tok[:2], tok[2:], argv[i + 1:]
        if tok == "--":
            rest = argv[i + 1:]
            return (argv[:i], "script", rest[0], rest[1:]) if rest else (argv[:i], None, None, [])
        if tok in VALUE_OPTIONS:
            i += 2
        elif tok.startswith("-"):
            i += 1
        else:
            return argv[:i], "script", tok, argv[i + 1:]
    return argv, None, None, []


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        head, kind, target, args = split_target(argv)
        opts = parser.parse_args(head)
    except ProfileError as exc:
        print(f"refmarshal profile: error: {exc}", file=sys.stderr)
        return 2
    try:
        return profile(opts, kind, target, args)
    except ProfileError as exc:
        print(f"refmarshal profile: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("refmarshal profile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:      # e.g. piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def profile(opts, kind, target, args):
    if opts.importtime:
        if kind is not None:
            raise ProfileError("--importtime reads a log: give it no program to run")
        try:
            runs = [importtime.read(opts.importtime)]
        except importtime.ImportTimeError as exc:
            raise ProfileError(str(exc)) from None
        title = f"-X importtime log {os.path.basename(opts.importtime)}"
        return finish(opts, runs, title, failure=None)
    if kind is None:
        raise ProfileError("nothing to profile: give -c CODE, -m MODULE, a script or "
                           "--importtime LOG (see --help)")
    if kind == "script" and os.path.isdir(target):
        raise ProfileError(f"{target!r} is a directory: profile its __main__.py, or use -m")
    if kind == "script" and not os.path.isfile(target):
        raise ProfileError(f"can't open file {target!r}: no such file")
    if opts.limit < 0:
        raise ProfileError("--limit must be 0 or more")
    if opts.repeat < 1:
        raise ProfileError("--repeat must be 1 or more")
    runs, failure = [], None
    for label, image in plan(opts):
        try:
            run = measure(opts, kind, target, args, label, image, quiet=bool(runs))
        except (runner.RunFailed, importtime.ImportTimeError) as exc:
            failure = failure or str(exc)
            continue
        if label == "image" and not run.image_active:
            print("refmarshal profile: the image could not be used (see the warning above); "
                  "that run is stock import", file=sys.stderr)
        runs.append(run)
        if run.status != "ok" and failure is None:
            if run.status == "raised":
                what = f"raised {run.message}"
            elif run.message == str(run.exit_code):
                what = f"exited with status {run.exit_code}"
            else:
                what = f"exited: {run.message}"
            failure = (f"the target {what} ({run.label} run); the profile shows the imports "
                       "made until then")
    if not runs:
        raise ProfileError(failure)
    shown = shlex.join(([] if kind == "script" else [kind]) + [target, *args])
    title = f"refmarshal profile: python {shown} (CPython {runs[0].version})"
    return finish(opts, runs, title, failure)


def measure(opts, kind, target, args, label, image, quiet):
    """The fastest of --repeat instrumented runs, with the fastest uninstrumented time (the
    same command without the hooks, and with -X importtime if the timed runs had it: the
    difference is the profiler's own overhead).  Only the first run shows the target's output;
    a target that fails is not run again."""
    best = plain = None
    for i in range(opts.repeat):
        run, log, _ = runner.run_child(kind, target, args, image=image, label=label,
                                       quiet=quiet or i > 0,
                                       importtime_log=opts.check_importtime)
        if log is not None:
            run.importtime = same_imports(run, log)
        if best is None or run.target_time < best.target_time:
            best = run
        if run.status != "ok":
            break
        again, _, _ = runner.run_child(kind, target, args, image=image, mode="plain",
                                       label=label, quiet=True,
                                       importtime_log=opts.check_importtime)
        if plain is None or again.target_time < plain.target_time:
            plain = again
    if plain is not None:
        best.plain_target_time, best.plain_target_cpu = plain.target_time, plain.target_cpu
    best.repeats = opts.repeat
    return best


def same_imports(run, log):
    """{name: importtime's cumulative} for the imports both saw exactly once.  A name seen
    twice (``import a.b`` finding ``a.b`` imported by ``a``) is ambiguous, and importtime
    does not see imports made through importlib.import_module at all."""
    ours, theirs = _once(run), _once(log)
    return {name: theirs[name].cumulative for name, m in ours.items()
            if m.ok and name in theirs}


def _once(run):
    seen = {}
    for m in run.modules:
        seen[m.name] = None if m.name in seen else m
    return {name: m for name, m in seen.items() if m is not None}


def plan(opts):
    """[(label, image path or None)] for the runs to make."""
    if opts.only == "stock":
        return [("stock", None)]
    image, why_not = find_image(opts.image)
    if image is None:
        if opts.only == "image":
            raise ProfileError(why_not)
        print(f"refmarshal profile: {why_not}; running stock import only", file=sys.stderr)
        return [("stock", None)]
    runs = [("image", image)]
    if opts.only != "image":
        runs.append(("stock", None))
    return runs


def find_image(path):
    """(image path, None) or (None, the reason there is none)."""
    if path is None:
        try:
            from refmarshal import importer
        except ImportError:
            return None, "no image: refmarshal.importer is not available"
        path = importer.default_image_path()
    if not os.path.isfile(path):
        return None, f"no image at {path} (build one with `refmarshal build`)"
    return os.path.abspath(path), None


def finish(opts, runs, title, failure):
    primary = runs[0]
    compare = next((r for r in runs if r.label == "stock"), None) if primary.label == "image" \
        else None
    print(title)
    print()
    for line in report.table(primary, sort=opts.sort, limit=opts.limit, compare=compare):
        print(line)
    print()
    for line in report.summary(runs):
        print(line)
    for run in runs:
        if run.has_phases:
            print(f"origins ({report.RUN_TITLES[run.label]}): {report.origins(run)}")
        if run.importtime:
            deltas = sorted(abs(m.cumulative - run.importtime[m.name]) for m in run.modules
                            if m.name in run.importtime)
            print(f"-X importtime of the same {run.label} run: {len(deltas)} modules compared, "
                  f"cumulative times differ by {deltas[len(deltas) // 2] * 1e6:.0f} us "
                  f"(median), {deltas[-1] * 1e6:.0f} us at most")
    try:
        if opts.json:
            with open(opts.json, "w", encoding="utf-8") as fh:
                json.dump({"title": title, "runs": [r.to_json() for r in runs]}, fh, indent=1)
            print(f"json: {os.path.abspath(opts.json)}")
        svg.write(opts.svg, runs, title)
    except OSError as exc:
        raise ProfileError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(f"svg: {os.path.abspath(opts.svg)}")
    if failure:
        print(f"refmarshal profile: error: {failure}", file=sys.stderr)
        return 1
    return 0
