"""Each sample guest boots in kvmsnap's VMM on real /dev/kvm and prints its self-checked lines."""
import re

import pytest

from conftest import needs_kvm

pytestmark = needs_kvm


def consecutive(lines, regex):
    """The N values of lines matching ``regex`` (one group), asserting they count up by one."""
    values = [int(re.fullmatch(regex, l).group(1)) for l in lines if re.fullmatch(regex, l)]
    assert values == list(range(values[0], values[0] + len(values))), values
    return values


def test_counter_ticks_from_zero(guest):
    g = guest("counter", "--mem", "32M")
    lines = g.wait_lines(5)
    assert lines[:5] == [f"tick {n}" for n in range(5)]
    assert g.quit() == 0


def test_smp_two_vcpus_each_count(guest):
    g = guest("smp", "--cpus", "2", "--mem", "32M")
    g.wait_lines(5, r"^cpu0 tick")
    g.wait_lines(5, r"^cpu1 tick")
    for cpu in (0, 1):
        values = consecutive(g.lines(), rf"cpu{cpu} tick (\d+)")
        assert values[0] == 0
    assert all(re.fullmatch(r"cpu[01] tick \d+", l) for l in g.lines()), g.lines()
    assert g.quit() == 0


def test_fpu_registers_check_out(guest):
    g = guest("fpu", "--mem", "32M")
    lines = g.wait_lines(5, r"^fpu tick")
    assert all(l.endswith(" ok") for l in lines), lines
    consecutive(lines, r"fpu tick (\d+) ok")
    assert "MISMATCH" not in "\n".join(g.lines())
    assert g.quit() == 0


def test_timer_interrupts_drive_ticks(guest):
    g = guest("timer", "--mem", "32M")
    lines = g.wait_lines(5, r"^timer tick")
    consecutive(lines, r"timer tick (\d+)")
    assert not any("EXCEPTION" in l or "STALLED" in l for l in g.lines()), g.lines()
    assert g.quit() == 0


def test_memtest_rounds_pass(guest):
    g = guest("memtest", "--mem", "64M")
    lines = g.wait_lines(3, r"^memtest round")
    assert all(re.fullmatch(r"memtest round \d+ ok \d+ MiB", l) for l in lines), lines
    assert g.quit() == 0


@pytest.mark.slow
def test_memtest_across_the_hole(guest):
    g = guest("memtest", "--mem", "4G")
    lines = g.wait_lines(1, r"^memtest round", timeout=120)
    mib = int(re.fullmatch(r"memtest round 0 ok (\d+) MiB", lines[0]).group(1))
    assert mib > 3 * 1024          # RAM above the 4 GiB boundary was tested too
    assert g.quit() == 0


def test_realmode_ticks(guest):
    g = guest("realmode", "--mem", "4M")
    lines = g.wait_lines(3, r"^realmode tick", timeout=60)
    assert lines[:3] == [f"realmode tick {n}" for n in range(3)]
    assert g.quit() == 0
