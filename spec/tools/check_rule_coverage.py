"""Fail unless every rule id of spec/format.rst ([CONV-1] ... [STR-4]) has a test named after it.

    python spec/tools/check_rule_coverage.py          # list the rules and their tests

A rule [KIND-n] is covered by a function ``def test_KIND_n_...`` (or ``test_KIND_n``) in
tests/.  Run by ``tox -e docs``.
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(ROOT, "spec", "format.rst")
TESTS = os.path.join(ROOT, "tests")

RULE = re.compile(r"\[([A-Z]+)-(\d+)\]")
TEST = re.compile(r"^\s*(?:async\s+)?def (test_([A-Z]+)_(\d+)(?:_\w*)?)\s*\(", re.M)


def rules():
    with open(SPEC, encoding="utf-8") as fh:
        return sorted({(k, int(n)) for k, n in RULE.findall(fh.read())})


def tests():
    found = {}
    for dirpath, dirnames, filenames in os.walk(TESTS):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                with open(path, encoding="utf-8") as fh:
                    for name, kind, n in TEST.findall(fh.read()):
                        found.setdefault((kind, int(n)), []).append(
                            f"{os.path.relpath(path, ROOT)}::{name}")
    return found


def main():
    ids, found = rules(), tests()
    missing = [r for r in ids if r not in found]
    for kind, n in ids:
        print(f"[{kind}-{n}] {', '.join(found.get((kind, n), ['MISSING']))}")
    unknown = sorted(set(found) - set(ids))
    for kind, n in unknown:
        print(f"test named after [{kind}-{n}], which the spec does not define: "
              f"{', '.join(found[(kind, n)])}")
    print(f"{len(ids) - len(missing)} of {len(ids)} rules have a test")
    if missing or unknown:
        print("rules without a test: " + " ".join(f"[{k}-{n}]" for k, n in missing),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
