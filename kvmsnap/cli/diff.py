"""``kvmsnap diff``: what differs between two cores."""
import click

from .render import Result, json_option


@click.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@json_option
def diff(a, b):
    """Compare cores A and B: registers and device state by name, notes, and memory pages
    (summarised as ranges of changed 4 KiB pages). Exit status 0 either way."""
    from .. import describe
    from ..diff import diff as compare
    return Result(compare(a, b), describe.render_diff)
