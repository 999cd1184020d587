"""The offline half (formats, notes, corefile, inspector, mem, diff) imports without the compiled
KVM module (``kvmsnap.kvm``), the VMM (``kvmsnap.vmm``) or /dev/kvm; and it imports in one
direction, formats <- notes <- corefile <- inspect."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OFFLINE = ["kvmsnap.formats", "kvmsnap.formats.elf", "kvmsnap.formats.x86", "kvmsnap.formats.arm64",
           "kvmsnap.notes", "kvmsnap.pagewalk", "kvmsnap.corefile", "kvmsnap.decode.x86", "kvmsnap.decode.arm64",
           "kvmsnap.decode.lapic", "kvmsnap.decode.devices", "kvmsnap.decode.linux",
           "kvmsnap.inspect", "kvmsnap.describe", "kvmsnap.memaccess", "kvmsnap.diff"]


def test_offline_modules_import_without_kvm():
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith("kvmsnap.kvm") or name in ("cffi", "elftools.construct"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import os
_open = os.open
def guarded(path, *a, **k):
    assert "kvm" not in str(path), path
    return _open(path, *a, **k)
os.open = guarded
for m in {OFFLINE!r}:
    importlib = __import__("importlib")
    importlib.import_module(m)
bad = [m for m in sys.modules if m.startswith(("kvmsnap.kvm", "kvmsnap.vmm", "kvmsnap.snapshot",
                                               "kvmsnap.cli", "kvmsnap.restore"))]
assert not bad, bad
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_import_direction():
    """formats <- notes <- corefile <- inspect: no module imports one to its right."""
    order = ["kvmsnap/formats/elf.py", "kvmsnap/formats/x86.py", "kvmsnap/notes.py",
             "kvmsnap/pagewalk.py", "kvmsnap/corefile.py", "kvmsnap/inspect.py"]
    later = {"kvmsnap/formats/elf.py": ["kvmsnap.notes", "kvmsnap.corefile", "kvmsnap.inspect"],
             "kvmsnap/formats/x86.py": ["kvmsnap.notes", "kvmsnap.corefile", "kvmsnap.inspect"],
             "kvmsnap/notes.py": ["kvmsnap.corefile", "kvmsnap.inspect", "kvmsnap.pagewalk"],
             "kvmsnap/pagewalk.py": ["kvmsnap.corefile", "kvmsnap.inspect", "kvmsnap.notes"],
             "kvmsnap/corefile.py": ["kvmsnap.inspect"],
             "kvmsnap/inspect.py": []}
    for path in order:
        text = open(os.path.join(ROOT, path)).read()
        for forbidden in later[path] + ["kvmsnap.kvm", "kvmsnap.snapshot", "kvmsnap.cli",
                                        "elftools.construct"]:
            assert f"import {forbidden}" not in text and f"from {forbidden}" not in text, \
                (path, forbidden)
        assert "from kvmsnap import corefile" not in text or path == "kvmsnap/inspect.py"
