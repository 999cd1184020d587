"""Pause, resume and quit of a running guest over the control socket (real /dev/kvm)."""
import os
import socket
import stat
import tempfile
import time

import pytest

from conftest import KVM_MODULE, assemble, needs_kvm, run_kvmsnap, seconds, tiny_elf
from kvmsnap.errors import KvmsnapError

pytestmark = needs_kvm


def test_pause_stops_console_and_resume_continues_with_next_line(guest):
    g = guest("counter", "--mem", "32M")
    g.wait_lines(3)
    reply = g.request("pause")
    assert 0 < reply["paused_ms"] < 1000
    frozen = g.lines()
    time.sleep(0.5)                       # ~15 ticks' worth of time
    assert g.lines() == frozen, "console advanced while paused"
    assert g.request("status")["state"] == "paused"
    g.request("resume")
    after = g.wait_lines(len(frozen) + 3)
    assert after[:len(frozen)] == frozen
    n = int(frozen[-1].split()[1])
    assert after[len(frozen):len(frozen) + 3] == [f"tick {n + 1}", f"tick {n + 2}", f"tick {n + 3}"]
    assert g.quit() == 0


def test_pause_smp_stops_every_vcpu(guest):
    g = guest("smp", "--cpus", "2", "--mem", "32M")
    g.wait_lines(2, r"^cpu1 ")
    g.request("pause")
    frozen = g.lines()
    time.sleep(0.4)
    assert g.lines() == frozen
    g.request("resume")
    g.wait_lines(len(frozen) + 4)
    assert g.quit() == 0


def test_status_reports_configuration(guest):
    g = guest("counter", "--mem", "48M")
    status = g.request("status")
    assert status["state"] == "running" and status["vcpus"] == 1 and status["mem_size"] == 48 << 20
    assert status["guest"] == "counter"
    assert g.quit() == 0


def test_control_socket_is_private(guest):
    shared = tempfile.mkdtemp(prefix="kvmsnap-sock-")        # a directory another user can enter
    os.chmod(shared, 0o755)
    g = guest("counter", "--mem", "32M", sock=os.path.join(shared, "ctl.sock"))
    assert stat.S_IMODE(os.stat(g.sock).st_mode) == 0o600
    # an unknown command is an error reply, and the server keeps serving
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(g.sock)
        s.sendall(b'{"cmd": "fly"}\nnot json\n')
        f = s.makefile("rb")
        assert b"unknown command" in f.readline()
        assert b"not JSON" in f.readline()
    assert g.request("status")["state"] == "running"
    # another user who gets past the file mode (here: it is opened to all) is still not served:
    # the VMM checks the peer's uid (SO_PEERCRED) and hangs up without a reply
    os.chmod(g.sock, 0o666)
    other = 65534 if os.getuid() != 65534 else 65533
    pid = os.fork()
    if pid == 0:                                    # the other user, in a child
        try:
            os.setresgid(other, other, other)
            os.setresuid(other, other, other)
        except PermissionError:
            os._exit(2)
        code = 3
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(g.sock)
                s.sendall(b'{"cmd": "quit"}\n')
                code = 0 if s.recv(100) == b"" else 1    # closed, no reply
        except (ConnectionResetError, BrokenPipeError):
            code = 0                                     # hung up on, the request unread
        finally:
            os._exit(code)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if status == 2:
        pytest.skip("cannot become another user here (not root): the uid check is not exercised")
    assert status == 0
    assert g.request("status")["state"] == "running"      # the other user's quit was not taken
    assert g.quit() == 0
    os.rmdir(shared)


@pytest.mark.parametrize("kind", ["file", "fifo", "directory", "symlink"])
def test_control_path_that_is_not_a_stale_socket_is_never_replaced(tmp_path, kind):
    path = tmp_path / "ctl"
    if kind == "file":
        path.write_text("the user's notes")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_text("kept")
        path.symlink_to(tmp_path / "target")
    before = os.lstat(path)
    r = run_kvmsnap("run", "counter", "--mem", "16M", "--console", tmp_path / "c.log", "--control", path)
    assert r.returncode == 2 and r.stderr.strip() == (f"kvmsnap: {path}: exists and is not a socket; refusing "
                                                      "to replace it (remove it, or name another path)"), r.stderr
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_a_stale_socket_is_replaced_and_removed_at_exit(guest, tmp_path):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))                  # bound, never listening, left behind: a killed VMM's
    g = guest("counter", "--mem", "16M", sock=stale)
    deadline = time.monotonic() + seconds(30)
    while True:                             # the path was there before the VMM: wait until it answers
        try:
            assert g.request("status")["state"] == "running"
            break
        except KvmsnapError:
            assert time.monotonic() < deadline and g.proc.poll() is None, g.stderr()
            time.sleep(0.02)
    assert g.quit() == 0 and not stale.exists()


def test_save_onto_the_vmms_own_files_is_refused(guest, tmp_path):
    g = guest("counter", "--mem", "16M")
    g.wait_lines(1)
    for own, what in ((g.sock, "control socket"), (g.console, "console file")):
        r = run_kvmsnap("save", "--control", g.sock, own)
        assert r.returncode == 2 and r.stderr.strip() == f"kvmsnap: save: {own} is this VMM's {what}: a save would " \
                                                         "replace it", r.stderr
    assert stat.S_ISSOCK(os.lstat(g.sock).st_mode) and g.request("status")["state"] == "running"
    n = len(g.lines())
    g.wait_lines(n + 1)                     # the console file still gets the guest's lines
    assert g.quit() == 0


def test_hostile_control_clients_get_a_reply_or_nothing_and_no_traceback(guest, tmp_path):
    g = guest("counter", "--mem", "16M")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(g.sock)
        s.sendall(b"[" * 30000 + b"\n" + b'{"cmd": "save", "path": "/tmp/a\\u0000b"}\n')
        f = s.makefile("rb")
        assert b"nested too deeply" in f.readline()
        assert b"without NUL" in f.readline()
    for _ in range(200):                    # clients that leave before their reply
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(g.sock)
            s.sendall(b'{"cmd": "status"}\n')
    assert g.request("status")["state"] == "running"
    assert g.quit() == 0 and g.stderr() == "", g.stderr()


def test_a_hundred_concurrent_saves_all_queue_and_succeed(guest, tmp_path):
    import threading
    from kvmsnap import control
    g = guest("counter", "--mem", "16M")
    g.wait_lines(1)
    replies, errors = [], []

    def one(i):
        try:
            replies.append(control.request(g.sock, "save", path=str(tmp_path / f"c{i}.core"), timeout=seconds(120)))
        except Exception as e:          # noqa: BLE001 - collected for the assertion below
            errors.append(repr(e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(replies) == 100
    assert sorted(p.name for p in tmp_path.glob("c*.core")) == sorted(f"c{i}.core" for i in range(100))
    assert g.quit() == 0


def test_sigterm_ends_the_guest_cleanly(guest):
    g = guest("counter", "--mem", "32M")
    g.wait_lines(1)
    g.proc.terminate()
    assert g.exit_code(20) == 0
    assert not os.path.exists(g.sock)


def test_ctrl_c_stops_the_guest_and_cleans_up(guest):
    import signal
    g = guest("counter", "--mem", "32M")
    g.wait_lines(1)
    g.proc.send_signal(signal.SIGINT)
    assert g.exit_code(20) == 130
    assert g.stderr().strip() == "kvmsnap: interrupted"
    assert not os.path.exists(g.sock)


def test_guest_failure_is_reported_with_rip(guest, tmp_path):
    """A triple fault (an image whose first instruction faults with no IDT) ends the run with exit 1,
    naming the faulting RIP; kvm_amd resets the vCPU on shutdown, and then the message says so."""
    img = tiny_elf(tmp_path / "ud2.elf", b"\x0f\x0b")                 # ud2
    g = guest(str(img), "--mem", "16M")
    assert g.exit_code(30) == 1
    err = g.stderr().strip()
    where = "reset the vCPU (kvm_amd does), so its RIP is lost" if KVM_MODULE == "kvm_amd" else "RIP 0x100000"
    assert len(err.splitlines()) == 1 and "triple fault" in err and where in err, err


@pytest.mark.skipif(KVM_MODULE == "kvm_amd", reason="needs a KVM whose emulator reports the failing "
                    "instruction (kvm_pvm, kvm_intel): kvm_amd on the lab's emulated SVM stops this "
                    "guest at RIP 0xffffff with no instruction bytes")
def test_emulation_failure_names_rip_and_instruction_bytes(guest, tmp_path):
    """A CPL0 AVX load from an address with no RAM (MMIO) goes to KVM's instruction emulator, which
    has no VEX instructions: KVM_EXIT_INTERNAL_ERROR."""
    img = tiny_elf(tmp_path / "vex.elf", bytes.fromhex("c5fe6f042500000000d0"), boot_cpl=0)  # vmovdqu ymm0, [0xd0000000]
    g = guest(str(img), "--mem", "16M")
    assert g.exit_code(30) == 1
    err = g.stderr().strip()
    assert len(err.splitlines()) == 1, err
    assert "instruction emulation failed at RIP 0x100000" in err and "c5 fe 6f 04 25" in err, err


@pytest.mark.skipif(KVM_MODULE == "kvm_amd", reason="needs a KVM whose emulator reports the failing "
                    "instruction (kvm_pvm, kvm_intel); kvm_amd on the lab's emulated SVM loses the RIP")
def test_fault_names_the_function_at_rip_and_the_last_console_line(guest, tmp_path):
    """With --vmlinux (any ELF with a symbol table) the message names the symbol at RIP."""
    img = assemble(tmp_path, "fault", ".text\n.globl start64\nstart64:\n"
                   " mov $0x3f8, %dx\n mov $'h', %al\n out %al, %dx\n mov $'i', %al\n out %al, %dx\n"
                   " mov $10, %al\n out %al, %dx\n mov $0xd0000000, %eax\n"
                   ".globl load_from_mmio\nload_from_mmio:\n vmovdqu (%rax), %ymm0\n")
    g = guest(str(img), "--mem", "16M", "--vmlinux", str(img))
    assert g.exit_code(30) == 1
    err = g.stderr().strip()
    assert len(err.splitlines()) == 1, err
    assert "instruction emulation failed" in err and "RIP is in load_from_mmio+0x0" in err, err
    assert err.endswith("last console line: 'hi'"), err


def test_cmpxchg16b_in_kernel_mode_compares_and_exchanges(guest, tmp_path):
    """CMPXCHG16B at CPL0, locked and RIP-relative and GS-relative, equal and not: on a KVM that
    emulates kernel mode its emulator stops at it and kvmsnap's assist completes it (an atomic
    compare-exchange on guest RAM); elsewhere the CPU runs it. Either way the guest checks ZF,
    RDX:RAX and memory and prints what it found."""
    img = assemble(tmp_path, "cx16", """.text
.globl start64
start64:
    mov $0x3f8, %dx
    lea slot(%rip), %rsi
    mov $1, %eax; mov $2, %edx; mov $3, %ebx; mov $4, %ecx
    lock cmpxchg16b (%rsi)             # equal: the slot takes {3, 4}
    jnz bad
    mov $1, %eax; mov $2, %edx
    lock cmpxchg16b slot(%rip)         # differs: RDX:RAX take {3, 4}
    jz bad
    cmp $3, %rax; jne bad
    cmp $4, %rdx; jne bad
    mov $0xc0000101, %ecx              # GS.base = slot - 16
    lea slot-16(%rip), %rax
    mov %rax, %rdx; shr $32, %rdx
    wrmsr
    mov $3, %eax; mov $4, %edx; mov $5, %ebx; mov $6, %ecx
    cmpxchg16b %gs:16                  # equal, not locked, GS-relative: the slot takes {5, 6}
    jnz bad
    cmpq $5, slot(%rip); jne bad
    cmpq $6, slot+8(%rip); jne bad
    lea ok(%rip), %rsi
    jmp print
bad:
    lea no(%rip), %rsi
print:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al; jz 2f
    out %al, %dx
    jmp 1b
2:  hlt
    jmp 2b
ok: .asciz "cmpxchg16b ok\\n"
no: .asciz "cmpxchg16b MISMATCH\\n"
.data
.balign 16
slot: .quad 1, 2
""")
    g = guest(str(img), "--mem", "16M")
    g.wait_lines(1, timeout=30)
    assert g.lines() == ["cmpxchg16b ok"], (g.lines(), g.stderr())
    assert g.quit() == 0


def test_tsc_deadline_timer_is_held_to_the_floor_only_where_kernel_mode_is_emulated(guest, tmp_path):
    """A CPL0 guest whose LAPIC timer (TSC-deadline mode) re-arms itself 2^20 TSC ticks ahead (under
    1 ms) prints a line every 25 interrupts.  Its `int3` makes an emulating KVM known (an emulation
    failure kvmsnap assists); there no deadline is sooner than TIMER_FLOOR ahead, so 25 interrupts
    take at least 25 floors; where kernel mode runs natively the timer is left alone."""
    from kvmsnap.arch.x86_64.assist import TIMER_FLOOR
    img = assemble(tmp_path, "deadline", """.text
.globl start64
start64:
    lea stack_top(%rip), %rsp
    mov $0xff, %al; out %al, $0x21; out %al, $0xa1      # 8259s masked
    lea idt+16*3(%rip), %rdi; lea breakpoint(%rip), %rsi; call set_gate
    lea idt+16*0x40(%rip), %rdi; lea tick(%rip), %rsi; call set_gate
    lidt idt_ptr(%rip)
    int3
    mov $0xfee00000, %eax
    movl $0x1ff, 0xf0(%rax)                             # SVR: LAPIC on
    movl $0x40040, 0x320(%rax)                          # LVT timer: TSC-deadline mode, vector 0x40
    call arm
1:  sti; hlt; cli
    cmpq $25, count(%rip); jb 1b
    movq $0, count(%rip)
    lea line(%rip), %rsi
    mov $0x3f8, %dx
2:  lodsb; test %al, %al; jz 1b; out %al, %dx; jmp 2b
arm:
    rdtsc; shl $32, %rdx; or %rdx, %rax; add $0x100000, %rax
    mov %rax, %rdx; shr $32, %rdx; mov $0x6e0, %ecx; wrmsr
    ret
tick:
    push %rax; push %rcx; push %rdx
    incq count(%rip)
    call arm
    mov $0xfee000b0, %eax; movl $0, (%rax)              # EOI
    pop %rdx; pop %rcx; pop %rax
    iretq
breakpoint:
    iretq
line: .asciz "25 timer interrupts\\n"
.data
count: .quad 0
""")
    g = guest(str(img), "--mem", "16M")
    g.wait_lines(1, timeout=30)
    start = time.monotonic()
    g.wait_lines(4, timeout=30)
    per_line = (time.monotonic() - start) / 3
    if KVM_MODULE == "kvm_pvm":
        assert per_line >= 25 * TIMER_FLOOR * 0.9, per_line
    else:
        assert per_line < 25 * TIMER_FLOOR / 4, per_line
    assert g.quit() == 0


@pytest.mark.parametrize("code, decoded", [
    ("f0480fc70e", (5, None, 6, None, 1, 0)),                       # lock cmpxchg16b (%rsi)
    ("65480fc70e", (5, "gs", 6, None, 1, 0)),                       # cmpxchg16b %gs:(%rsi)
    ("f0490fc74c2410", (7, None, 12, None, 1, 0x10)),               # lock cmpxchg16b 0x10(%r12)
    ("f04a0fc74cc8f0", (7, None, 0, 9, 8, -0x10)),                  # lock cmpxchg16b -0x10(%rax,%r9,8)
    ("f0480fc70d10000000", (9, None, "rip", None, 1, 0x10)),        # lock cmpxchg16b 0x10(%rip)
    ("f0480fc70c8500100000", (10, None, None, 0, 4, 0x1000)),       # lock cmpxchg16b 0x1000(,%rax,4)
    ("f0480fc7ce", None), ("480fc70e", (4, None, 6, None, 1, 0)), ("f0480fc716", None), ("cc", None)])
def test_cmpxchg16b_operand_forms_are_decoded(code, decoded):
    """The assist's decoder: (length, segment, base, index, scale, displacement) of the memory
    operand; None for what is not CMPXCHG16B m128 (a register operand, /2, another opcode)."""
    from kvmsnap.arch.x86_64.assist import _decode_cmpxchg16b
    assert _decode_cmpxchg16b(bytes.fromhex(code) + bytes(8)) == decoded


def test_oversized_request_gets_one_reply_and_the_connection_closes(guest):
    g = guest("counter", "--mem", "32M")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(g.sock)
        s.sendall(b'{"cmd": "status", "pad": "' + b"x" * (70 * 1024) + b'"}\n')
        f = s.makefile("rb")
        assert b"longer than 65536" in f.readline()
        assert f.readline() == b""              # closed: no second reply from the rest of the line
    assert g.request("status")["state"] == "running"
    assert g.quit() == 0


def test_resume_waits_for_a_save_in_progress(guest, tmp_path):
    """A resume from a second client during a save must not let the guest run while it is saved."""
    import threading
    g = guest("memtest", "--mem", "1G")
    g.wait_lines(1, r"^memtest round 0 ok", timeout=120)
    out = {}
    t0 = time.monotonic()
    saver = threading.Thread(target=lambda: out.update(g.request("save", path=str(tmp_path / "m.core"))))
    saver.start()
    deadline = t0 + 10
    while g.request("status")["state"] != "paused":   # the save has paused the guest
        assert time.monotonic() < deadline
        time.sleep(0.005)
    g.request("resume")                               # waits until the save has finished
    resumed_after_ms = (time.monotonic() - t0) * 1000
    saver.join(60)
    assert out["paused_ms"] > 0
    assert resumed_after_ms >= out["wall_ms"], (resumed_after_ms, out)
    assert g.request("status")["state"] == "running"
    assert g.quit() == 0


def test_uart_input_is_read_in_order_with_data_ready_and_its_interrupt():
    """What Linux's 8250 driver relies on: IIR names received data first, LSR.DR until empty."""
    import io
    from kvmsnap.notes import UART_INPUT_LIMIT
    from kvmsnap.vmm import uart
    pulses = []
    u = uart.Uart(io.BytesIO(), raise_irq=pulses.append)
    assert u.receive(b"ab") == 2 and not pulses                 # receive interrupt not enabled yet
    u.write(uart.IER_DLM, uart.IER_RDA | uart.IER_THRE)
    assert u.read(uart.IIR_FCR) & 0x0F == uart.IIR_RDA and u.read(uart.LSR) & uart.LSR_DR
    assert [u.read(uart.THR_RBR_DLL), u.read(uart.THR_RBR_DLL)] == [ord("a"), ord("b")]
    assert not u.read(uart.LSR) & uart.LSR_DR and u.read(uart.IIR_FCR) & 0x0F == uart.IIR_THRE
    u.receive(b"c")
    assert pulses[-1] == uart.IRQ and u.read(uart.THR_RBR_DLL) == ord("c")
    assert u.receive(bytes(UART_INPUT_LIMIT + 1)) == UART_INPUT_LIMIT                # bounded


def test_uart_input_reloaded_is_read_as_received():
    import io
    from kvmsnap.vmm import uart
    u = uart.Uart(io.BytesIO())
    u.receive(b"xy")
    v = uart.Uart(io.BytesIO())
    v.load_unread_input(uart.UartInput(u).state_bytes())
    assert v.read(uart.LSR) & uart.LSR_DR and [v.read(uart.THR_RBR_DLL) for _ in "xy"] == [ord("x"), ord("y")]
    assert not v.read(uart.LSR) & uart.LSR_DR


# 64-bit user-mode code (IOPL 3): counts RCX down from 2^32 (a second or more), then echoes every
# byte the UART receives.
LATE_ECHO = bytes.fromhex(
    "48b90000000001000000"              # mov rcx, 1 << 32
    "48ffc9" "75fb"                     # 1: dec rcx; jnz 1b
    "66bafd03" "ec" "a801" "74fb"       # 2: mov dx, 0x3fd; 3: in al, dx; test al, 1 (LSR.DR); jz 3b
    "66baf803" "ec" "ee" "ebef")        # mov dx, 0x3f8; in al, dx; out dx, al; jmp 2b


def test_input_the_guest_has_not_read_is_saved_and_read_after_restore(guest, tmp_path):
    """Typed before the guest reads it, saved with --quit: the core holds it and the restored
    guest reads it (KVMSNAP_UART_INPUT)."""
    import json
    from conftest import Restored, run_kvmsnap, save_quit
    g = guest(str(tiny_elf(tmp_path / "echo.elf", LATE_ECHO, boot_cpl=3)), "--mem", "16M")
    assert g.request("type", text="echo me\n") == {"ok": True, "taken": 8}
    core = tmp_path / "echo.core"
    save_quit(g, core)
    assert "echo me" not in "\n".join(g.lines()), "the guest read its input before the save: count longer"
    out = run_kvmsnap("inspect", "--json", core)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["devices"]["uart_input"] == {"length": 8, "text": "echo me\n"}
    text = run_kvmsnap("inspect", "--section", "devices", core).stdout
    assert "uart_input: 8 bytes the guest has not read: 'echo me\\n'" in text, text
    r = Restored(tmp_path, core, console=tmp_path / "restored.console")
    try:
        r.wait_lines(1, "^echo me$", timeout=120)
    finally:
        r.kill()


# 64-bit user-mode code (IOPL 3): a PCI configuration read of 00:00.0 register 0 into ECX, then
# CMOS status register B into BL; then it spins.
LEGACY_PORTS = bytes.fromhex(
    "b800000080" "66baf80c" "ef"        # mov eax, 0x80000000; mov dx, 0xcf8; out dx, eax
    "66bafc0c" "ed" "89c1"              # mov dx, 0xcfc; in eax, dx; mov ecx, eax
    "b00b" "e670" "e471" "89c3"         # mov al, 0x0b; out 0x70, al; in al, 0x71; mov ebx, eax
    "ebfe")                             # jmp .


def test_pci_host_bridge_and_cmos_answer_and_their_registers_are_saved(guest, tmp_path):
    import json
    from conftest import run_kvmsnap
    g = guest(str(tiny_elf(tmp_path / "ports.elf", LEGACY_PORTS, boot_cpl=3)), "--mem", "16M")
    time.sleep(0.5)
    core = tmp_path / "ports.core"
    g.request("save", path=str(core), quit=True)
    out = run_kvmsnap("inspect", "--json", core)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    regs = s["vcpus"][0]["sections"]["regs"]
    assert regs["rcx"] == 0x0008_1B36                    # device 0x0008, vendor 0x1b36: the host bridge
    assert regs["rbx"] & 0xFF == 0x02                     # status B: 24-hour, BCD
    assert s["devices"]["pci"]["address"] == 0x8000_0000 and s["devices"]["pci"]["enabled"]
    assert s["devices"]["cmos"]["index"] == 0x0B


def test_reset_through_the_keyboard_controller_ends_the_run_cleanly(guest, tmp_path):
    """Linux's `reboot` without ACPI: command 0xfe to port 0x64."""
    g = guest(str(tiny_elf(tmp_path / "reset.elf", bytes.fromhex("b0fee664ebfe"), boot_cpl=3)), "--mem", "16M")
    assert g.exit_code(30) == 0
    assert g.stderr().strip() == ""


def test_cmos_clock_reads_the_host_utc_time_in_the_format_register_b_asks_for():
    from kvmsnap.vmm import cmos
    rtc = cmos.Cmos(clock=lambda: 1_796_136_930.0)        # 2026-12-01 14:55:30 UTC, a Tuesday

    def reg(index):
        rtc.write(cmos.INDEX, 0x80 | index)               # bit 7 (NMI mask) is not part of the index
        return rtc.read(cmos.DATA)
    assert [reg(r) for r in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)] == \
        [0x30, 0x55, 0x14, 0x03, 0x01, 0x12, 0x26, 0x20]  # BCD, 24-hour
    rtc.write(cmos.INDEX, cmos.STATUS_B)
    rtc.write(cmos.DATA, cmos.B_BINARY)                   # binary, 12-hour
    assert [reg(0x04), reg(0x02)] == [0x80 | 2, 55]       # 2 PM
    rtc.write(cmos.INDEX, 0x40)
    rtc.write(cmos.DATA, 0xA5)
    assert reg(0x40) == 0xA5 and reg(cmos.STATUS_D) & cmos.D_VALID
    copy = cmos.Cmos()
    copy.load_state_bytes(rtc.state_bytes())
    assert copy.ram == rtc.ram and copy.index == rtc.index


def test_acpi_pm_registers_keep_what_linux_writes_and_report_poweroff_and_reset():
    from kvmsnap.arch.x86_64 import acpi
    from kvmsnap.vmm import acpi_pm
    pm = acpi_pm.AcpiPm()
    assert pm.read(acpi.PM1A_CNT_PORT, 2) & acpi.SCI_EN                  # always in ACPI mode
    assert pm.write(acpi.PM1A_EVT_PORT + 2, 2, 0x0020) is None            # enable the global-lock event
    assert pm.read(acpi.PM1A_EVT_PORT + 2, 2) == 0x0020 and pm.read(acpi.PM1A_EVT_PORT, 2) == 0
    assert pm.write(acpi.PM1A_CNT_PORT, 2, acpi.SLP_TYP_S5 << acpi.SLP_TYP_SHIFT) is None   # type first
    assert pm.write(acpi.PM1A_CNT_PORT, 2, acpi.SLP_TYP_S5 << acpi.SLP_TYP_SHIFT | acpi.SLP_EN) == "poweroff"
    assert pm.write(acpi.RESET_PORT, 1, acpi.RESET_VALUE) == "reset"
    copy = acpi_pm.AcpiPm()
    copy.load_state_bytes(pm.state_bytes())
    assert (copy.enable, copy.control) == (pm.enable, pm.control)


def test_pci_config_space_has_only_the_host_bridge():
    from kvmsnap.vmm import pci
    bus = pci.PciConfig()
    bus.write(pci.ADDRESS, 4, 0x8000_0008)                # 00:00.0, register 8: revision and class
    assert bus.read(pci.ADDRESS, 4) == 0x8000_0008 and bus.read(pci.DATA, 4) >> 8 == 0x060000
    assert bus.read(pci.DATA + 3, 1) == 0x06 and bus.read(pci.DATA + 2, 2) == 0x0600
    bus.write(pci.ADDRESS, 4, 0x8000_0800)                # 00:01.0: nothing there
    assert bus.read(pci.DATA, 4) == 0xFFFF_FFFF and bus.read(pci.DATA, 2) == 0xFFFF
    bus.write(pci.ADDRESS, 4, 0x0000_0000)                # not enabled
    assert bus.read(pci.DATA, 4) == 0xFFFF_FFFF
    bus.write(pci.ADDRESS + 3, 1, 0x01)                   # a byte write is not the address register
    assert bus.read(pci.ADDRESS, 4) == 0


@needs_kvm
def test_type_sends_text_to_the_guest_uart(guest):
    g = guest("counter", "--mem", "16M")
    g.wait_lines(1)
    assert g.request("type", text="ls\n") == {"ok": True, "taken": 3}
    with pytest.raises(Exception, match="text"):
        g.request("type", text=7)


def test_save_on_fault_keeps_the_guest_as_it_died(tmp_path):
    """--save-on-fault: the failing run still exits 1 with its one line, which names the core, and
    the core (which inspect and gdb read) holds the vCPU where it stopped."""
    import json
    from conftest import run_kvmsnap
    img = tiny_elf(tmp_path / "ud2.elf", b"\x90\x0f\x0b")                 # nop; ud2
    core = tmp_path / "dead.core"
    r = run_kvmsnap("run", img, "--mem", "16M", "--console", tmp_path / "c.log", "--save-on-fault", core)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "triple fault" in r.stderr and f"saved as it stopped to {core}" in r.stderr, r.stderr
    rip = json.loads(run_kvmsnap("inspect", "--json", "--section", "regs", core).stdout)["vcpus"][0]["regs"]["rip"]
    assert rip == (0xFFF0 if KVM_MODULE == "kvm_amd" else 0x100001)     # kvm_amd resets the vCPU
