"""Build hooks: the cffi KVM module (kvmsnap/kvm/build_ffi.py) and the sample guests (samples/Makefile).

Where the module cannot be built (no <linux/kvm.h>, no C compiler, another architecture, or
KVMSNAP_OFFLINE=1), both are skipped with a warning: inspect, mem and diff still work, and the live
commands say in one line what is missing. Without make or as, only the sample guests are skipped."""
import os
import runpy
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
MISSING = runpy.run_path(os.path.join(ROOT, "kvmsnap", "kvm", "build_ffi.py"))["missing"]()


def warn(message: str) -> None:
    print(f"kvmsnap: warning: {message}", file=sys.stderr)


class BuildExtAndGuests(build_ext):
    """Compile the cffi module, then assemble the sample guests into kvmsnap/guests/."""

    def run(self):
        super().run()
        inplace = self.inplace or getattr(self, "editable_mode", False)
        out = os.path.join(ROOT if inplace else os.path.abspath(self.build_lib), "kvmsnap", "guests")
        if not shutil.which("make") or not shutil.which("as"):
            warn("sample guests not built: install the Debian packages make and binutils")
            return
        subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "samples"), f"OUT={out}"], check=True)


if MISSING:
    warn(f"installing without KVM support (inspect, mem and diff only): {MISSING}")
    setup()
else:
    setup(cffi_modules=["kvmsnap/kvm/build_ffi.py:ffibuilder"], cmdclass={"build_ext": BuildExtAndGuests})
