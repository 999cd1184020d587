"""kvmsnap save --incremental-from on real KVM: an increment holds the pages the guest wrote since its
base and reads (and restores) as the whole save of the same instant; chains run on; wrong bases are
refused."""
import json

import pytest

from conftest import Restored, needs_kvm, run_kvmsnap, ticks_continue
from coretools import assert_continuous, console_lines, mask_volatile, notes_by_key, sequence
from kvmsnap import notes as N
from kvmsnap.formats.kvmsnap import read_core
from test_background_save import ROUND, memory_equal, save

pytestmark = needs_kvm


def refused(g, out, base):
    r = run_kvmsnap("save", "--control", g.sock, out, "--incremental-from", base)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert not out.exists()
    return r.stderr


def test_increment_equals_the_whole_save_of_the_same_instant(guest, tmp_path):
    g = guest("counter", "--mem", "64M")
    g.wait_lines(2, "^tick")
    base = tmp_path / "base.core"
    save(g, base)
    n = len(g.wait_lines(1, "^tick"))
    g.wait_lines(n + 2, "^tick")
    g.request("pause")
    inc = save(g, tmp_path / "inc.core", "--incremental-from", base)
    whole = save(g, tmp_path / "whole.core")
    g.request("resume")
    assert inc["incremental_from"] == str(base) and whole["incremental_from"] is None
    assert inc["apparent_size"] < whole["apparent_size"] / 64, (inc, whole)    # pages, not slots
    summary = json.loads(run_kvmsnap("inspect", tmp_path / "inc.core", "--json").stdout)
    assert summary["base"]["path"] == str(base) and 0 < summary["base"]["changed_bytes"] < 1 << 20
    assert memory_equal(tmp_path / "inc.core", tmp_path / "whole.core")
    a, _ = notes_by_key(tmp_path / "inc.core")
    b, _ = notes_by_key(tmp_path / "whole.core")
    assert a.keys() - b.keys() == {(N.OWNER_KVMSNAP, N.KVMSNAP_BASE, None)} and b.keys() <= a.keys()
    assert [k for k in b if k[1] != N.KVMSNAP_MEMORY_MAP and mask_volatile(k, a[k]) != mask_volatile(k, b[k])] == []
    # whole.core is now the last save: changes since base.core are no longer known
    assert f"is not the last core this VMM saved or restored ({tmp_path / 'whole.core'})" in \
        refused(g, tmp_path / "late.core", base)
    assert g.request("status")["state"] == "running"


def test_a_restored_chain_runs_on_and_saves_increments_of_itself(guest, tmp_path):
    g = guest("counter", "--mem", "64M")
    g.wait_lines(2, "^tick")
    cores = [tmp_path / f"{name}.core" for name in ("a", "b", "c", "d")]
    save(g, cores[0])
    for previous, core in zip(cores, cores[1:3]):
        n = len(g.wait_lines(1, "^tick"))
        g.wait_lines(n + 1, "^tick")
        save(g, core, "--incremental-from", previous, *(("--quit",) if core == cores[2] else ()))
    assert g.proc.wait(30) == 0
    r = Restored(tmp_path, cores[2], console=tmp_path / "restored.console")
    r.wait_lines(1, "^tick", timeout=60)
    save(r, cores[3], "--incremental-from", cores[2])
    ticks_continue(g.console, r)
    with read_core(cores[3]) as c:
        assert [m.path for m in c.memory.layers()] == [str(p) for p in cores]
    again = Restored(tmp_path, cores[3], console=tmp_path / "again.console")
    again.wait_lines(2, "^tick", timeout=60)
    assert again.quit() == 0
    before, restored = (sequence(console_lines(c), r"tick (\d+)") for c in (g.console, r.console))
    resumed = sequence(console_lines(again.console), r"tick (\d+)")
    assert before[-1] < resumed[0] <= restored[-1] + 1, (before[-1], resumed, restored)   # where d.core was saved


def test_an_increment_needs_the_last_core_of_this_vmm(guest, tmp_path):
    g = guest("counter", "--mem", "16M")
    g.wait_lines(1)
    not_core = tmp_path / "notes.txt"
    not_core.write_text("not a core\n")
    assert "has not saved or restored a core yet" in refused(g, tmp_path / "x.core", not_core)
    save(g, tmp_path / "base.core")
    assert f"the base {not_core}: " in refused(g, tmp_path / "x.core", not_core)
    assert "No such file" in refused(g, tmp_path / "x.core", tmp_path / "missing.core")
    moved = tmp_path / "renamed.core"
    (tmp_path / "base.core").rename(moved)                     # a base renamed since is still the base
    inc = save(g, tmp_path / "inc.core", "--incremental-from", moved)
    assert inc["incremental_from"] == str(moved)
    assert g.request("status")["state"] == "running"


@pytest.mark.slow
def test_background_increment_of_a_guest_rewriting_ram_restores_consistent(guest, tmp_path):
    g = guest("memtest", "--mem", "256M")
    g.wait_lines(1, ROUND, timeout=120)
    save(g, tmp_path / "base.core", "--background")
    n = len(g.wait_lines(1, ROUND))
    g.wait_lines(n + 1, ROUND, timeout=120)
    reply = save(g, tmp_path / "inc.core", "--background", "--incremental-from", tmp_path / "base.core")
    assert reply["paused_ms"] < reply["wall_ms"] / 4, reply
    g.kill()
    r = Restored(tmp_path, tmp_path / "inc.core", console=tmp_path / "restored.console")
    lines = r.wait_lines(2, ROUND, timeout=180)
    assert not any("MISMATCH" in line for line in lines), lines
    r.quit()
    assert_continuous(sequence(console_lines(r.console), ROUND), start=None)
