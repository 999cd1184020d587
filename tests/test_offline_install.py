"""``pip install .`` where the KVM module cannot be built (here: KVMSNAP_OFFLINE=1, as on a machine without
<linux/kvm.h> or a C compiler) warns and installs a working inspect/mem/diff; the live commands then say
in one line what is missing."""
import importlib.util
import os
import shutil
import subprocess
import sys

import setuptools

from conftest import ROOT


def _copy_source(dest):
    """The source tree without anything a previous build left in it (compiled module, guests, caches)."""
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), dest)
    for name in ("kvmsnap", "samples"):
        shutil.copytree(os.path.join(ROOT, name), dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "_kvm*", "guests", "build"))


def test_offline_install(tmp_path, core_path):
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    _copy_source(src)
    # Without `wheel` an old setuptools cannot build a wheel from this environment: then let pip build in
    # isolation (setuptools and cffi from PyPI, as pyproject.toml asks).
    offline_build = importlib.util.find_spec("wheel") or tuple(map(int, setuptools.__version__.split(".")[:2])) >= (70, 1)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--disable-pip-version-check",
                        "--target", target, *(["--no-build-isolation"] if offline_build else []), src],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, KVMSNAP_OFFLINE="1", PIP_ROOT_USER_ACTION="ignore"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "kvmsnap: warning: installing without KVM support" in r.stdout + r.stderr
    assert not [f for f in os.listdir(target / "kvmsnap" / "kvm") if f.startswith("_kvm")]

    def python(*args):            # from tmp_path, so that only the target holds a kvmsnap package
        return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(target)), timeout=60)

    def kvmsnap(*args):
        return python("-m", "kvmsnap", *args)

    where = python("-c", "import kvmsnap; print(kvmsnap.__file__)")
    assert where.stdout.startswith(str(target)), where
    for args in (("inspect", core_path), ("mem", core_path, "0x100000"), ("diff", core_path, core_path)):
        r = kvmsnap(*args)
        assert r.returncode == 0 and r.stdout and r.stderr == "", (args, r.stderr)
    for args in (("run",), ("restore", core_path)):
        r = kvmsnap(*args)
        assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith("kvmsnap: no KVM support in this installation") and "kvmsnap.kvm._kvm" in r.stderr
