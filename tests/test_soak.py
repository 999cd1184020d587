"""The soak (scripts/soak, docs/reliability.md) for three minutes with a fixed seed: a minute each of
`counter`, `timer` and `memtest` through saves of every kind (each verified), killed writers and
restores in every memory mode, each step checked."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, needs_kvm, seconds



@needs_kvm
@pytest.mark.slow
def test_three_minutes_of_random_saves_and_restores_hold(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "soak"), "--minutes", "3", "--seed", "20261201",
                        "--dir", tmp_path / "soak"], capture_output=True, text=True, timeout=seconds(900),
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert "all held" in summary, summary
    for name in ("counter", "timer", "memtest"):
        assert f"{name} restore" in summary and f"{name} increment" in summary, summary
