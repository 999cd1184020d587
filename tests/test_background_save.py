"""kvmsnap save --background on real KVM: the guest runs while a forked writer saves it, and the core
is the one a stopped save of the same instant gives."""
import json
import os
import signal
import socket
import threading
import time

import pytest

from conftest import Restored, needs_kvm, run_kvmsnap, seconds
from coretools import assert_continuous, console_lines, mask_volatile, notes_by_key, sequence
from kvmsnap.formats.kvmsnap import read_core

pytestmark = needs_kvm
ROUND = r"memtest round (\d+) ok \d+ MiB"


def save(g, path, *flags):
    r = run_kvmsnap("save", "--control", g.sock, path, "--json", *flags, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def raw_request(sock: str, request: dict) -> dict:
    """One request as the JSON given, and its reply line."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(s.makefile("rb").readline())


def memory_equal(a, b) -> bool:
    with read_core(a) as x, read_core(b) as y:
        slots = x.memory.slots()
        assert slots == y.memory.slots()
        for s in slots:
            for at in range(s.gpa, s.end, 64 << 20):
                n = min(64 << 20, s.end - at)
                if x.memory.read(at, n) != y.memory.read(at, n):
                    return False
    return True


def test_background_save_equals_a_stopped_save_of_the_same_instant(guest, tmp_path):
    """Pause a memtest, save it in the background, then stopped: same RAM, same notes but for the
    fields that read a clock; the guest stays paused through both (it was paused)."""
    g = guest("memtest", "--mem", "256M")
    g.wait_lines(1, ROUND, timeout=120)
    g.request("pause")
    reply = save(g, tmp_path / "background.core", "--background")
    assert reply["background"] and g.request("status")["state"] == "paused"
    save(g, tmp_path / "stopped.core")
    g.request("resume")
    assert memory_equal(tmp_path / "background.core", tmp_path / "stopped.core")
    a, _ = notes_by_key(tmp_path / "background.core")
    b, _ = notes_by_key(tmp_path / "stopped.core")
    assert a.keys() == b.keys()
    assert [k for k in a if mask_volatile(k, a[k]) != mask_volatile(k, b[k])] == []


def test_background_save_of_a_guest_rewriting_ram_restores_consistent(guest, tmp_path):
    """memtest rewrites and checks all its RAM every round: saved in the background while it runs,
    the core's RAM is one instant's (the restored memtest finds no mismatch), and the guest never
    stopped for the write."""
    g = guest("memtest", "--mem", "256M")
    g.wait_lines(1, ROUND, timeout=120)
    core = tmp_path / "running.core"
    reply = save(g, core, "--background")
    assert reply["paused_ms"] < reply["wall_ms"] / 4, reply      # the write happened with the guest running
    n = len(g.wait_lines(1, ROUND))
    g.wait_lines(n + 1, ROUND, timeout=120)                      # and it still runs
    g.kill()
    r = Restored(tmp_path, core, console=tmp_path / "restored.console")
    lines = r.wait_lines(2, ROUND, timeout=180)
    assert not any("MISMATCH" in line for line in lines), lines
    r.quit()
    rounds = sequence(console_lines(r.console), ROUND)
    assert len(rounds) >= 2
    assert_continuous(rounds, start=None)


def _writer_of(pid: int, timeout=30) -> int:
    """The child process of ``pid`` (the background writer), once there is one."""
    deadline = time.monotonic() + seconds(timeout)
    while time.monotonic() < deadline:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = open(f"/proc/{pid}/task/{task}/children").read().split()
            if children:
                return int(children[0])
        time.sleep(0.005)
    raise AssertionError(f"no writer child of {pid} appeared")


def test_killed_writer_leaves_no_file_and_the_guest_running(guest, tmp_path):
    g = guest("memtest", "--mem", "256M")
    g.wait_lines(1, ROUND, timeout=120)
    out = tmp_path / "target" / "killed.core"
    out.parent.mkdir()
    result = {}
    client = threading.Thread(target=lambda: result.update(r=run_kvmsnap(
        "save", "--control", g.sock, out, "--background", timeout=300)))
    client.start()
    writer = _writer_of(g.proc.pid)
    os.kill(writer, signal.SIGKILL)
    client.join()
    r = result["r"]
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"(pid {writer}) was killed by SIGKILL; no file was left" in r.stderr, r.stderr
    assert os.listdir(out.parent) == []                          # neither the core nor its temporary file
    assert g.request("status")["state"] == "running"
    n = len(g.wait_lines(1, ROUND))
    g.wait_lines(n + 1, ROUND, timeout=120)


def test_background_and_quit_exclude_each_other_and_flags_must_be_booleans(guest, tmp_path):
    g = guest("counter", "--mem", "16M")
    g.wait_lines(1)
    r = run_kvmsnap("save", "--control", g.sock, tmp_path / "x.core", "--background", "--quit")
    assert r.returncode == 2 and r.stderr.strip() == "kvmsnap: --quit and --background exclude each other"
    for field, value in (("quit", "false"), ("background", 1)):
        reply = raw_request(g.sock, {"cmd": "save", "path": str(tmp_path / "x.core"), field: value})
        assert reply == {"ok": False, "error": f'"{field}" must be true or false, not {json.dumps(value)}',
                         "input": True}
    assert not (tmp_path / "x.core").exists() and g.request("status")["state"] == "running"


@pytest.mark.slow
def test_guest_that_quits_during_a_background_save_waits_for_the_file(guest, tmp_path):
    g = guest("memtest", "--mem", "256M")
    g.wait_lines(1, ROUND, timeout=120)
    out = tmp_path / "last.core"
    result = {}
    client = threading.Thread(target=lambda: result.update(r=run_kvmsnap(
        "save", "--control", g.sock, out, "--background", "--json", timeout=300)))
    client.start()
    _writer_of(g.proc.pid)
    g.request("quit")
    assert g.exit_code(120) == 0
    client.join()
    assert result["r"].returncode == 0, result["r"].stderr
    assert "waiting for the background save to" in g.stderr()
    with read_core(out) as c:
        assert sum(s.size for s in c.memory.slots()) == 256 << 20
