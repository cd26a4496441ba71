"""CPython's own regression tests as a conformance check: run a chosen set of them twice in this
environment, once importing through an image of the whole environment (standard library,
``Lib/test``, site-packages) and once with ``REFMARSHAL=0``, and fail on any difference in
which tests pass.

Run it with the interpreter of a dedicated environment in which refmarshal is installed (tox's
``regrtest-py3X`` environments): it builds that environment's image and enables the ``.pth`` hook
there for the duration of the run (the test workers are fresh interpreters of it), then removes
the hook.  Each run records every test case's outcome (regrtest's ``--junit-xml``) and every
test file's; a test file whose results differ is run again in both modes, once, to tell a
flaky test from a real difference.

    python tests/cpython/regrtest_compare.py [--jobs N] [TEST ...]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

# The test files the issue names (test_capi holds the subinterpreter tests), and the
# subinterpreter modules' own, where this version has them.
TESTS = ["test_import", "test_importlib", "test_threading", "test_warnings", "test_re",
         "test_trace", "test_sys_settrace", "test_traceback", "test_inspect", "test_pkgutil",
         "test_runpy", "test_zipimport", "test_site", "test_cmd_line_script", "test_doctest",
         "test_pdb", "test_unittest", "test_capi", "test__xxsubinterpreters",
         "test_interpreters"]
MODES = {"image": {}, "stock": {"REFMARSHAL": "0"}}


def available(names):
    import test
    root = os.path.dirname(test.__file__)
    return [n for n in names if os.path.exists(os.path.join(root, n + ".py"))
            or os.path.isdir(os.path.join(root, n))]


# Children run outside the source tree, so that they import the installed refmarshal.
OUTSIDE = tempfile.gettempdir()


def refmarshal_cli(*args):
    subprocess.run([sys.executable, "-m", "refmarshal", *args], check=True, cwd=OUTSIDE)


def outcomes(xml_path):
    """{test case id: 'pass' | 'fail' | 'skip'} from regrtest's JUnit XML."""
    cases = {}
    if not os.path.exists(xml_path):
        return cases
    for case in ET.parse(xml_path).iter("testcase"):
        cid = case.get("name", "")          # the full id: test.test_x.Class.method
        if case.get("classname"):
            cid = f"{case.get('classname')}.{cid}"
        kinds = {child.tag for child in case}
        cases[cid] = "fail" if kinds & {"failure", "error"} else \
            "skip" if "skipped" in kinds else "pass"
    return cases


_HEADING = re.compile(r"^(\d+ )?tests? (failed|crashed|failed again|skipped|"
                      r"omitted|altered the execution environment|did not run|run no tests|"
                      r"had resource denied|interrupted|failed with a timeout)")


def file_results(output, files):
    """{test file: its status} from regrtest's closing summary ("2 tests failed:" followed by
    indented names, and the like); a file it does not list passed."""
    status, current = {}, None
    for line in output.splitlines():
        m = _HEADING.match(line.strip()) if not line.startswith(" ") else None
        if m:
            current = m.group(2)
            continue
        if current and line.startswith("    "):
            for name in line.split():
                status[name] = current
        elif line.strip():
            current = None
    return {f: status.get(f, "ok") for f in files}


def check_hook_is_on():
    """The image mode must really import through the image (else the comparison says
    nothing): a fresh interpreter of this environment serves Lib/test from it."""
    r = subprocess.run([sys.executable, "-c", "import sys, test.support\n"
                        "f = [f for f in sys.meta_path if type(f).__name__ == 'ImageFinder']\n"
                        "print(f[0].hits if f else 0)"],
                       capture_output=True, text=True, cwd=OUTSIDE,
                       env={k: v for k, v in os.environ.items() if not k.startswith("REFMARSHAL")})
    hits = int(r.stdout.strip() or 0)
    if r.returncode != 0 or hits < 10 or r.stderr:
        raise SystemExit(f"the image is not in use ({hits} modules from it): {r.stderr}")
    return hits


def run_mode(mode, files, jobs, workdir, tag=""):
    xml_path = os.path.join(workdir, f"{mode}{tag}.xml")
    cmd = [sys.executable, "-m", "test", "-j", str(jobs), "--junit-xml", xml_path, *files]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFMARSHAL")}
    env.update(MODES[mode])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
    took = time.monotonic() - t0
    with open(os.path.join(workdir, f"{mode}{tag}.log"), "w") as fh:
        fh.write(proc.stdout + proc.stderr)
    print(f"  {mode:5} {' '.join(files)}: exit "
          f"{proc.returncode}, {took:.0f} s", flush=True)
    results = file_results(proc.stdout, files)
    results["exit status"] = proc.returncode
    return results, outcomes(xml_path)


def differences(a, b):
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def compare(batch, jobs, workdir):
    """Run `batch` in both modes; rerun files whose results differ once.  Returns the
    differences left ([] when none) and the number of test cases compared."""
    runs = {m: run_mode(m, batch, jobs, workdir) for m in MODES}
    files, cases = ({m: r[i] for m, r in runs.items()} for i in (0, 1))
    diff_files = differences(files["image"], files["stock"])
    diff_cases = differences(cases["image"], cases["stock"])
    suspects = sorted(set(diff_files) | {c.split(".")[1] for c in diff_cases
                                         if c.startswith("test.") and c.count(".") > 1})
    suspects = [s for s in suspects if s in batch] or (batch if diff_cases or diff_files else [])
    left = []
    if suspects:
        print(f"  results differ in {', '.join(suspects)}: running them again", flush=True)
        again = {m: run_mode(m, suspects, jobs, workdir, "-again") for m in MODES}
        for f in differences(again["image"][0], again["stock"][0]):
            left.append(f"{f}: image {again['image'][0][f]}, stock {again['stock'][0][f]}")
        for c in differences(again["image"][1], again["stock"][1]):
            left.append(f"{c}: image {again['image'][1].get(c, 'absent')}, "
                        f"stock {again['stock'][1].get(c, 'absent')}")
    if not cases["stock"]:
        left.append(f"{' '.join(batch)}: no test case ran")
    return left, len(cases["stock"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tests", nargs="*", help="test files (default: the chosen set)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    files = available(args.tests or TESTS)
    print(f"CPython {sys.version.split()[0]}: {len(files)} test files, with the image and "
          "without", flush=True)
    refmarshal_cli("build", "-j", str(args.jobs))
    refmarshal_cli("enable")       # the image just built: the hook in this environment
    try:
        print(f"  a fresh interpreter imports {check_hook_is_on()} modules from the image "
              "to import test.support", flush=True)
        with tempfile.TemporaryDirectory(prefix="refmarshal-regrtest-") as workdir:
            left, n = compare(files, args.jobs, workdir)
            if left:
                print(f"FAILED: {len(left)} results differ with the image:")
                for line in left:
                    print("  " + line)
                for log in sorted(os.listdir(workdir)):
                    if log.startswith("image") and log.endswith(".log"):
                        print(f"--- {log} (last 60 lines) ---")
                        with open(os.path.join(workdir, log)) as fh:
                            print("".join(fh.readlines()[-60:]))
                return 1
    finally:
        refmarshal_cli("disable")
    print(f"identical: {n} test cases in {len(files)} test files pass, fail and "
          "skip alike with the image and without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
