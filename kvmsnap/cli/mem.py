"""``kvmsnap mem``: read guest memory from a core file."""
import click

from .params import Address, Size
from .render import Result


@click.command()
@click.argument("core", type=click.Path(dir_okay=False))
@click.argument("addr", type=Address())
@click.argument("length", type=Size(), default=64)
@click.option("--virtual", is_flag=True, help="ADDR is guest-virtual: translate it through the vCPU's page tables "
                                              "(process cores: a process address).")
@click.option("--vcpu", type=click.IntRange(min=0), default=0, show_default=True,
              help="vCPU whose page tables translate a --virtual address.")
@click.option("--format", "fmt", type=click.Choice(["hex", "raw"]), default="hex", show_default=True,
              help="hex: a hex dump; raw: the bytes themselves on stdout.")
def mem(core, addr, length, virtual, vcpu, fmt):
    """Print LENGTH bytes (default 64) of guest memory at ADDR in CORE.

    ADDR is guest-physical unless --virtual is given. An unmapped address or a page the core does
    not hold is an error naming the address.
    """
    from .. import describe
    from ..memory.core import CoreMemory
    with CoreMemory.open(core) as memory:
        data = memory.read_virt(vcpu, addr, length) if virtual else memory.read_phys(addr, length)
    return Result(data, bytes if fmt == "raw" else lambda d: describe.hexdump_blocks(d, addr))
