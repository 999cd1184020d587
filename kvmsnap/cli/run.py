"""``kvmsnap run``: start a guest in the embedded VMM."""
import contextlib
import sys

import click

from ..errors import InputError, KvmsnapError
from .params import Address, Size
from .render import note


class GuestFailed(KvmsnapError):
    """The guest stopped with an error."""


def open_console(console: str):
    """A context giving stdout, or a file the console is appended to (closed at the end)."""
    if console == "stdio":
        return contextlib.nullcontext(sys.stdout.buffer)
    try:
        return open(console, "ab")
    except OSError as e:
        raise InputError(f"{console}: cannot open console file: {e.strerror}") from None


#: Shared by run and restore.
save_on_fault_option = click.option(
    "--save-on-fault", metavar="CORE", type=click.Path(dir_okay=False),
    help="If the guest stops with an error (triple fault, an instruction KVM cannot emulate), save it "
         "to CORE first, as it was at that moment.")
vmlinux_option = click.option(
    "--vmlinux", metavar="FILE", help="The guest kernel with its symbols (the -dbg package's vmlinux): an "
                                      "error that stops the guest names the function at its RIP.")


@click.command()
@click.argument("guest", required=False)
@click.option("--mem", "mem_size", type=Size(), default="256M", show_default=True, help="Guest RAM size.")
@click.option("--cpus", type=click.IntRange(1, 1024), help="Number of vCPUs [default: the sample's, else 1].")
@click.option("--console", default="stdio", show_default=True, metavar="stdio|PATH",
              help="Where the guest's serial console goes (a file is appended to).")
@click.option("--control", metavar="SOCKET", help="Serve the control protocol on this Unix socket (docs/control.md).")
@click.option("--load-addr", type=Address(), help="Load address of a flat (non-ELF) image [default: 0x7c00].")
@click.option("--paused", is_flag=True, help="Start with every vCPU paused (resume over --control).")
@click.option("--kernel", metavar="VMLINUX", help="Boot this Linux kernel (an ELF vmlinux with a PVH entry) "
                                                   "instead of GUEST.")
@click.option("--initrd", metavar="FILE", help="The Linux kernel's initrd (initramfs).")
@click.option("--append", "cmdline", default="", metavar="TEXT", help="The Linux kernel's command line.")
@save_on_fault_option
@vmlinux_option
def run(guest, mem_size, cpus, console, control, load_addr, paused, kernel, initrd, cmdline, save_on_fault,
        vmlinux):
    """Run GUEST: a sample name (see `kvmsnap samples`, default `counter`) or an image path;
    or a Linux kernel given with --kernel.

    ELF64 images start in long mode at the entry they ask for, a Linux vmlinux at its PVH entry
    (with --initrd and --append); other files are flat binaries started in 16-bit real mode at
    --load-addr. Ends when the guest stops, on `quit` over --control, on SIGTERM, or on Ctrl-C.
    """
    from ..decode.symbols import KernelSymbols
    from ..runner import GuestSession
    from ..samples import DEFAULT
    if kernel and guest:
        raise InputError(f"give GUEST ({guest}) or --kernel ({kernel}), not both")
    symbols = KernelSymbols(vmlinux) if vmlinux else None
    with open_console(console) as sink:
        session = GuestSession.boot(kernel or guest or DEFAULT, mem_size, cpus, sink, control, load_addr,
                                    cmdline, initrd)
        for message in session.notes:
            note(message)
        session.machine.symbols = symbols
        error = session.run(paused=paused, keyboard=console == "stdio", save_on_fault=save_on_fault)
    if error:
        raise GuestFailed(error)
