"""``kvmsnap samples``: list the built-in guests and where their images are."""
import os

import click

from .render import Result, json_option


def _text(data) -> str:
    return "\n".join(f"{r['name']:<9} {r['path']}{'' if r['built'] else '  (not built)'}\n          {r['description']}"
                     for r in data["samples"])


@click.command()
@json_option
def samples():
    """List the sample guests with the path of each built image (usable with QEMU or gdb)."""
    from ..samples import SAMPLES
    return Result({"samples": [{"name": s.name, "vcpus": s.vcpus, "path": s.path, "built": os.path.exists(s.path),
                                "description": s.description} for s in SAMPLES.values()]}, _text)
