"""``kvmsnap samples``: list the built-in guests and where their images are."""
import json
import os

import click

from ..samples import SAMPLES
from . import cli


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
def samples(as_json):
    """List the sample guests with the path of each built image (usable with QEMU or gdb)."""
    rows = [{"name": s.name, "vcpus": s.vcpus, "path": s.path, "built": os.path.exists(s.path),
             "description": s.description} for s in SAMPLES.values()]
    if as_json:
        click.echo(json.dumps({"samples": rows}, indent=2))
        return
    for r in rows:
        state = "" if r["built"] else "  (not built)"
        click.echo(f"{r['name']:<9} {r['path']}{state}\n          {r['description']}")
