"""The save and restore paths again inside the x86 KVM lab (scripts/lab, docs/testing.md): kvm_amd
on QEMU's emulated SVM, the KVM users run, where this host's /dev/kvm is kvm_pvm. The README's one
test command so runs everything CI runs; inside the lab this test does not run again.

The whole suite takes 40 min in the lab (301 passed, 4 failed, 1 skipped on 2026-12-01); CI runs
the subset below (~15 min): every save, restore, sample-guest, VMM and KVM-layer test but the
console-continuity and fifty-cycle restore tests, which in the lab find one console line missing
now and then across a save/restore on kvm_amd (an open bug, docs/testing.md)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_TIMEOUT = 2400          # seconds for the lab's run of SUBSET
SUBSET = ["tests/test_kvm.py", "tests/test_samples.py", "tests/test_save.py", "tests/test_vmm.py",
          "tests/test_restore.py", "-k", "not continues_without_gap and not fifty_save_restore"]


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("KVMSNAP_LAB")), reason="already inside the lab")
def test_save_and_restore_pass_in_the_x86_lab(tmp_path):
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        r = subprocess.run([os.path.join(ROOT, "scripts", "lab"), "x86_64", "--timeout",
                            str(LAB_TIMEOUT), "--", "python3", "-m", "pytest", "-q", "-rfs",
                            "-p", "no:cacheprovider", *SUBSET],
                           cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=LAB_TIMEOUT + 300)
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-60:])
    assert r.returncode == 0, f"scripts/lab exit {r.returncode}; the lab's last lines:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail
