"""``kvmsnap diff``: what differs between two cores."""
import json

import click

from .. import describe
from ..diff import diff as compare
from . import cli


@cli.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as one JSON object.")
def diff(a, b, as_json):
    """Compare cores A and B: registers and device state by name, notes, and memory pages
    (summarised as ranges of changed 4 KiB pages). Exit status 0 either way."""
    result = compare(a, b)
    click.echo(json.dumps(result, indent=2) if as_json else describe.render_diff(result).rstrip("\n"))
