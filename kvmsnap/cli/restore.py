"""``kvmsnap restore``: run a guest on from a core file, exactly where it was saved."""
import click

from .render import warn
from .run import GuestFailed, open_console, save_on_fault_option, vmlinux_option


@click.command()
@click.argument("core", type=click.Path(dir_okay=False))
@click.option("--console", default="stdio", show_default=True, metavar="stdio|PATH",
              help="Where the guest's serial console goes (a file is appended to).")
@click.option("--control", metavar="SOCKET", help="Serve the control protocol on this Unix socket (docs/control.md).")
@click.option("--paused", is_flag=True, help="Restore, then wait with every vCPU paused (resume over --control).")
@click.option("--memory", "memory_mode", type=click.Choice(["background", "lazy", "eager"]), default="background",
              show_default=True,
              help="background: start at once on fresh RAM that a thread fills from CORE behind the guest, "
                   "first what it touches (userfaultfd; else CORE mapped and copied in); lazy: map RAM "
                   "copy-on-write from CORE only (each page is copied on its first write); eager: read it all "
                   "before the guest starts.")
@click.option("--no-verify", is_flag=True,
              help="Do not check CORE against its digests (headers and notes before anything is created; memory "
                   "before the guest runs with --memory eager, else from a thread while it runs, stopping it "
                   "if damaged).")
@click.option("--allow-missing-msrs", is_flag=True,
              help="Skip saved MSRs this host's KVM does not list or refuses to set, instead of refusing.")
@click.option("--allow-missing-features", is_flag=True,
              help="Clear CPUID features this host lacks from the guest's CPUID, instead of refusing.")
@click.option("--allow-missing-registers", is_flag=True,
              help="arm64: leave out saved registers this host's KVM does not list or refuses, instead of "
                   "refusing (docs/restore.md).")
@save_on_fault_option
@vmlinux_option
def restore(core, console, control, paused, memory_mode, no_verify, allow_missing_msrs, allow_missing_features,
            allow_missing_registers, save_on_fault, vmlinux):
    """Restore the guest saved in CORE and run it on.

    The whole file is validated, checked against its digests (see --no-verify) and against this
    host (vCPUs, CPUID features, XCR0 and XSAVE size, MSRs) before anything is created; guest RAM is mapped copy-on-write from CORE
    (or read, with --memory eager), which is never modified. Every register set is read back
    and compared after restoring.
    """
    from ..decode.symbols import KernelSymbols
    from ..restore import Policy, restore as restore_core
    from ..runner import GuestSession
    policy = Policy(allow_missing_msrs=allow_missing_msrs, allow_missing_features=allow_missing_features,
                    allow_missing_registers=allow_missing_registers, memory=memory_mode, verify=not no_verify)
    symbols = KernelSymbols(vmlinux) if vmlinux else None
    with open_console(console) as sink:
        machine, warnings = restore_core(core, sink, policy)
        machine.symbols = symbols
        for warning in warnings:
            warn(warning)
        error = GuestSession(machine, control).run(paused=paused, keyboard=console == "stdio",
                                                   save_on_fault=save_on_fault)
    if error:
        raise GuestFailed(error)
