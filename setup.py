"""Builds the optional cffi accelerator.  If it cannot be built (no compiler, no headers), the
package installs without it and refmarshal uses the pure-Python reference reader."""

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no accelerator"
            print(f"refmarshal: accelerator not built ({exc}); using the reference reader",
                  file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"refmarshal: accelerator not built ({exc}); using the reference reader",
                  file=sys.stderr)


setup(cffi_modules=["refmarshal/_accel/build_accel.py:ffibuilder"],
      cmdclass={"build_ext": OptionalBuildExt})
