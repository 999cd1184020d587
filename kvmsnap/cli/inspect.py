"""``kvmsnap inspect``: what a core file holds, decoded offline (no KVM needed)."""
import json

import click

from .. import describe
from .. import inspect as inspector
from . import cli


@cli.command()
@click.argument("core", type=click.Path(dir_okay=False))
@click.option("--vcpu", type=click.IntRange(min=0), help="Only this vCPU (thread, for process cores).")
@click.option("--section", "sections", multiple=True, metavar="NAME",
              help=f"Only these parts (repeatable): {', '.join(inspector.SECTIONS)}.")
@click.option("--raw", metavar="TYPE", help="Hex dump of one note, by type name (KVMSNAP_LAPIC, NT_PRSTATUS) "
                                            "or number; with --vcpu, that vCPU's.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object (docs/inspect-json.md).")
def inspect(core, vcpu, sections, raw, as_json):
    """Decode CORE: registers and their bits, segments, FPU/SSE/AVX/AVX-512 state, MSRs, LAPIC,
    events, CPUID, devices, process and vmcore notes; memory map and every note.

    Works on kvmsnap cores and on other ELF cores (QEMU dump-guest-memory for x86-64 and aarch64,
    gdb gcore, kernel process cores, vmcores). Reads headers and notes only.
    """
    if raw:
        note = inspector.raw_note(core, raw, vcpu)
        if as_json:
            click.echo(json.dumps(dict(note, data=note["data"].hex()), indent=2))
        else:
            click.echo(describe.render_raw(note).rstrip("\n"))
        return
    summary = inspector.summarize(core, vcpu=vcpu, sections=sections or None)
    click.echo(json.dumps(summary, indent=2) if as_json else describe.render_text(summary).rstrip("\n"))
