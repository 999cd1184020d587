"""``kvmsnap inspect``: what a core file holds, decoded offline (no KVM needed)."""
import functools

import click

from .render import Result, json_option


class _SectionOption(click.Option):
    """``--section``, whose help lists the section names (read only when the help is shown)."""

    def get_help_record(self, ctx):
        from ..summary import SECTIONS
        self.help = f"Only these parts (repeatable): {', '.join(SECTIONS)}."
        return super().get_help_record(ctx)


@click.command()
@click.argument("core", type=click.Path(dir_okay=False))
@click.option("--vcpu", type=click.IntRange(min=0), help="Only this vCPU (thread, for process cores).")
@click.option("--section", "sections", cls=_SectionOption, multiple=True, metavar="NAME")
@click.option("--raw", metavar="TYPE", help="Hex dump of one note, by type name (KVMSNAP_LAPIC, NT_PRSTATUS) "
                                            "or number; with --vcpu, that vCPU's.")
@click.option("--all", "show_all", is_flag=True, help="Also show all-zero vector registers and CPUID leaves.")
@json_option
def inspect(core, vcpu, sections, raw, show_all):
    """Decode CORE: registers and their bits, segments, FPU/SSE/AVX/AVX-512 state, MSRs, LAPIC,
    events, CPUID, devices, process and vmcore notes; memory map and every note.

    Works on kvmsnap cores and on other ELF cores (QEMU dump-guest-memory for x86-64 and aarch64,
    gdb gcore, kernel process cores, vmcores). Reads headers and notes only.
    """
    from .. import describe, summary
    if raw:
        return Result(summary.raw_note(core, raw, vcpu), describe.render_raw)
    return Result(summary.summarize(core, vcpu=vcpu, sections=sections or None),
                  functools.partial(describe.render_blocks, show_all=show_all))
