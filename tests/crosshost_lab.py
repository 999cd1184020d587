"""The lab's half of moving cores between the x86 lab and this host: tests/test_lab.py runs this
file inside the lab with KVMSNAP_XFER naming a directory both share (pytest does not collect it
otherwise).  The host's core must continue here, or be refused naming what this KVM lacks; a core
of the lab's own is left there for the host to restore."""
import os
import shutil
from pathlib import Path

import pytest

from conftest import RunningGuest, needs_kvm, restore_where_possible, save_quit, ticks_continue

XFER = Path(os.environ.get("KVMSNAP_XFER", ""))
pytestmark = [needs_kvm, pytest.mark.skipif(not os.environ.get("KVMSNAP_XFER"),
                                            reason="run by tests/test_lab.py, which sets KVMSNAP_XFER")]


def test_the_hosts_core_continues_here_or_is_refused_by_name(tmp_path):
    refusals, restored = restore_where_possible(tmp_path, XFER / "host.core", tmp_path / "restored.console")
    (XFER / "lab-refusals.txt").write_text("".join(f"{r}\n" for r in refusals))
    if restored:
        ticks_continue(XFER / "host.console", restored)


def test_save_a_core_for_the_host(tmp_path):
    g = RunningGuest(tmp_path, "counter", "--mem", "16M")
    try:
        g.wait_lines(3, "^tick", timeout=60)
        save_quit(g, XFER / "lab.core")
    finally:
        g.kill()
    shutil.copy(g.console, XFER / "lab.console")

