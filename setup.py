"""Build hooks: the cffi KVM module (kvmsnap/kvm/build_ffi.py) and the sample guests (samples/Makefile)."""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildExtAndGuests(build_ext):
    """Compile the cffi module, then assemble the sample guests into kvmsnap/guests/."""

    def run(self):
        super().run()
        inplace = self.inplace or getattr(self, "editable_mode", False)
        root = os.path.dirname(os.path.abspath(__file__))
        out = os.path.join(root if inplace else os.path.abspath(self.build_lib), "kvmsnap", "guests")
        if not shutil.which("make") or not shutil.which("as"):
            sys.exit("kvmsnap: building the sample guests needs make and binutils: "
                     "install the Debian packages make and binutils")
        subprocess.run(["make", "-s", "-C", os.path.join(root, "samples"), f"OUT={out}"], check=True)


setup(cffi_modules=["kvmsnap/kvm/build_ffi.py:ffibuilder"], cmdclass={"build_ext": BuildExtAndGuests})
