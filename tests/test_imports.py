"""The offline half imports without cffi, the compiled KVM module, the KVM layer (``kvmsnap.kvm``), the VMM
(``kvmsnap.vmm``) or /dev/kvm; so do the offline commands (``--help``, ``--version``, ``samples``, ``inspect``,
``mem``, ``diff``, ``flatten``), which also work with the compiled module blocked, while the live ones then fail in one line."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

#: The live half: modules that may need the KVM layer. Every other module of kvmsnap is offline.
LIVE = ("kvmsnap.kvm", "kvmsnap.vmm", "kvmsnap.save", "kvmsnap.restore", "kvmsnap.runner", "kvmsnap.memory.ram",
        "kvmsnap.memory.dirty", "kvmsnap.memory.userfault",
        "kvmsnap.arch.x86_64.boot", "kvmsnap.arch.x86_64.host", "kvmsnap.arch.x86_64.vcpu", "kvmsnap.arch.x86_64.vm",
        "kvmsnap.arch.x86_64.assist", "kvmsnap.arch.aarch64.boot", "kvmsnap.arch.aarch64.vcpu",
        "kvmsnap.arch.aarch64.host", "kvmsnap.arch.aarch64.vm", "kvmsnap.arch.aarch64.vgic")
#: What an offline module or command must never load.
FORBIDDEN = ("cffi", "_cffi_backend", "kvmsnap.kvm", "kvmsnap.vmm")


def _live(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in LIVE)


def offline_modules() -> list[str]:
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "kvmsnap")):
        package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        found += [package if f == "__init__.py" else f"{package}.{f[:-3]}" for f in files if f.endswith(".py")]
    return sorted(m for m in found if not _live(m) and m != "kvmsnap.__main__")


# Blocks the compiled module and cffi like an installation without them; ``block all`` also blocks every
# live module, and every mode reports the forbidden modules loaded.
PRELUDE = f"""
import importlib.abc, os, sys
MODE = sys.argv.pop(1)
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        live = name.startswith({LIVE!r}) if MODE == "all" else False
        if name in ("kvmsnap.kvm._kvm", "cffi", "_cffi_backend", "elftools.construct") or live:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
if MODE != "none":
    sys.meta_path.insert(0, Block())
_open = os.open
def guarded(path, *a, **k):
    assert str(path) != "/dev/kvm", path
    return _open(path, *a, **k)
os.open = guarded
def report():
    loaded = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))
    sys.stderr.write(f"LOADED {{loaded}}\\n")
"""

IMPORT_ALL = PRELUDE + """
import importlib
for m in sys.argv[1:]:
    importlib.import_module(m)
report()
"""

RUN_CLI = PRELUDE + """
from kvmsnap.cli import main
try:
    main(sys.argv[1:])
finally:
    sys.stdout.flush()
    report()
"""


def _python(code, mode, *args):
    r = subprocess.run([sys.executable, "-c", code, mode, *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    *lines, last = r.stderr.splitlines() or [""]
    assert last.startswith("LOADED "), r.stderr
    return r, eval(last[len("LOADED "):]), lines


def test_offline_modules_import_without_kvm():
    modules = offline_modules()
    assert "kvmsnap.cli" in modules and "kvmsnap.cli.run" in modules and "kvmsnap.describe" in modules
    r, loaded, errors = _python(IMPORT_ALL, "all", *modules)
    assert r.returncode == 0 and not errors, r.stderr
    assert loaded == [], loaded


@pytest.fixture
def offline_commands(core_path, tmp_path):
    return [["flatten", core_path, tmp_path / "flat.core"], [], ["--help"], ["--version"], ["samples"], ["samples", "--json"], ["run", "--help"],
            ["inspect", "--help"], ["inspect", core_path], ["inspect", core_path, "--json"],
            ["inspect", core_path, "--raw", "NT_PRSTATUS"], ["mem", core_path, "0x100000", "16"],
            ["diff", core_path, core_path], ["diff", core_path, core_path, "--json"]]


@pytest.mark.parametrize("mode", ["none", "compiled"])
def test_offline_commands_never_load_kvm(offline_commands, mode):
    """With everything installed (none blocked) and without the compiled module and cffi."""
    for args in offline_commands:
        r, loaded, _ = _python(RUN_CLI, mode, *args)
        assert r.returncode == 0 and r.stdout, (args, r.stderr)
        assert loaded == [], (args, loaded)


def test_live_commands_without_compiled_module_fail_in_one_line(core_path, tmp_path):
    for args in (["run"], ["run", "counter", "--mem", "64M"], ["restore", core_path]):
        r, _, lines = _python(RUN_CLI, "compiled", *args)
        assert r.returncode == 1 and r.stdout == "", (args, r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith("kvmsnap: no KVM support") and "kvmsnap.kvm._kvm" in lines[0], lines[0]
    r, _, _ = _python(RUN_CLI, "compiled", "run", "--json")          # run has no --json: a usage error
    assert r.returncode == 2
