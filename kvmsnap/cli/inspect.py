"""``kvmsnap inspect``: what a core file holds, decoded offline (no KVM needed)."""
import json

import click

from .. import inspect as inspector
from . import cli


@cli.command()
@click.argument("core", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object (docs/inspect-json.md).")
def inspect(core, as_json):
    """Summarise CORE: architecture, producer, vCPUs and their registers, memory map and notes.

    Works on kvmsnap cores and on other ELF cores (QEMU dump-guest-memory, gdb gcore, kernel
    process cores). Reads headers and notes only.
    """
    summary = inspector.summarize(core)
    click.echo(json.dumps(summary, indent=2) if as_json else inspector.render_text(summary).rstrip("\n"))
