"""Faults during a save, made real: a full disk (a small tmpfs), an I/O error (ext4 on a loop device
whose backing file cannot grow), the target directory removed, the VMM killed (SIGKILL) at random
points.  Each time the target holds nothing or a complete core that verifies, no temporary file
stays, and the guest runs on (or, killed, its next save cleans up)."""
import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import RunningGuest, kvmsnap_cmd, needs_kvm, run_kvmsnap, seconds
from test_background_save import ROUND

pytestmark = needs_kvm


@contextlib.contextmanager
def mounted(tmp_path, name, *mount_args):
    point = tmp_path / name
    point.mkdir()
    r = subprocess.run(["mount", *mount_args, point], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here ({r.stderr.strip()}): this fault needs root")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", point], check=False)


def memtest(guest, mem="64M"):
    g = guest("memtest", "--mem", mem)
    g.wait_lines(1, ROUND, timeout=120)
    return g


def runs_on(g) -> None:
    assert g.request("status")["state"] == "running"
    n = len(g.wait_lines(1, ROUND))
    g.wait_lines(n + 1, ROUND, timeout=120)


def failed_cleanly(r, directory, *words) -> None:
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert [e for e in os.listdir(directory) if e != "lost+found"] == []      # no core, no temporary file


@pytest.mark.parametrize("background", [False, True], ids=["stopped", "background"])
def test_a_full_disk_leaves_nothing_and_the_guest_running(guest, tmp_path, background):
    g = memtest(guest)                                  # 64 MiB of patterns: no room in 8 MiB
    with mounted(tmp_path, "small", "-t", "tmpfs", "-o", "size=8M", "tmpfs") as disk:
        r = run_kvmsnap("save", "--control", g.sock, disk / "full.core", *(("--background",) if background else ()))
        failed_cleanly(r, disk, "full.core", "No space left on device")
    runs_on(g)


def test_an_io_error_leaves_nothing_and_the_guest_running(guest, tmp_path):
    """ext4 on a loop device over a 24 MiB tmpfs file of 256 MiB: writes land in the page cache,
    and fsync meets the loop device's I/O errors once the file under it cannot grow."""
    g = memtest(guest)
    with mounted(tmp_path, "backing", "-t", "tmpfs", "-o", "size=24M", "tmpfs") as backing:
        image = backing / "disk.img"
        with open(image, "wb") as f:
            f.truncate(256 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1", image], check=True,
                       capture_output=True)
        loop = subprocess.run(["losetup", "--find", "--show", image], capture_output=True, text=True)
        if loop.returncode:
            pytest.skip(f"no loop device: {loop.stderr.strip()}")
        device = loop.stdout.strip()
        try:
            with mounted(tmp_path, "ext4", "-o", "errors=continue", device) as disk:
                r = run_kvmsnap("save", "--control", g.sock, disk / "eio.core")
                assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
                assert "Input/output error" in r.stderr or "No space left on device" in r.stderr, r.stderr
                assert not (disk / "eio.core").exists()
                assert [e for e in os.listdir(disk) if e.startswith(".eio.core.tmp")] == []
        finally:
            subprocess.run(["losetup", "-d", device], check=False)
    runs_on(g)


def test_the_target_directory_removed_during_a_save(guest, tmp_path):
    g = memtest(guest, "256M")
    for attempt in range(5):                # until the removal lands inside a save
        target = tmp_path / f"gone{attempt}"
        target.mkdir()
        result = {}
        client = threading.Thread(target=lambda: result.update(r=run_kvmsnap(
            "save", "--control", g.sock, target / "x.core", timeout=300)))
        client.start()
        while client.is_alive() and not [e for e in os.listdir(target) if ".tmp-" in e]:
            time.sleep(0.001)
        subprocess.run(["rm", "-rf", target], check=True)
        client.join()
        if result["r"].returncode != 0:
            break
    r = result["r"]
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "No such file or directory" in r.stderr, \
        r.stderr
    assert not target.exists()
    runs_on(g)


def test_a_vmm_killed_at_any_point_of_a_save_leaves_nothing_or_a_valid_core(tmp_path):
    """SIGKILL to the VMM at a random moment (0-1.5 s) of a stopped save of 256 MiB of memtest: the target
    is absent or verifies; the temporary file left is removed by the next save to that path.
    KVMSNAP_FAULT_KILLS (5) kills, at moments drawn from KVMSNAP_FAULT_SEED (7)."""
    rng = random.Random(int(os.environ.get("KVMSNAP_FAULT_SEED", "7")))
    out = tmp_path / "cores" / "k.core"
    out.parent.mkdir()
    outcomes = []
    for i in range(int(os.environ.get("KVMSNAP_FAULT_KILLS", "5"))):
        g = RunningGuest(tmp_path, "memtest", "--mem", "256M", console=tmp_path / f"k{i}.console",
                         sock=tmp_path / f"k{i}.sock")
        g.wait_lines(1, ROUND, timeout=120)
        client = subprocess.Popen(kvmsnap_cmd("save", "--control", g.sock, out),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 1.5))                 # a stopped save of 256 MiB takes 0.3-1 s here
        g.proc.send_signal(signal.SIGKILL)
        g.exit_code(30)
        client.wait(seconds(30))
        if out.exists():
            r = run_kvmsnap("verify", out)
            assert r.returncode == 0, r.stdout + r.stderr
            outcomes.append("complete")
        else:
            outcomes.append("absent")
        leftovers = [e for e in os.listdir(out.parent) if ".tmp-" in e]
        g = RunningGuest(tmp_path, "counter", "--mem", "16M", console=tmp_path / f"c{i}.console",
                         sock=tmp_path / f"c{i}.sock")
        g.wait_lines(1)
        saved = json.loads(run_kvmsnap("save", "--control", g.sock, out, "--json").stdout)
        assert sorted(os.path.basename(p) for p in saved["leftovers_removed"]) == sorted(leftovers)
        assert sorted(os.listdir(out.parent)) == ["k.core"]
        assert g.quit() == 0
        out.unlink()
    print("outcomes:", {o: outcomes.count(o) for o in set(outcomes)})
