"""``kvmsnap save``: ask a running ``kvmsnap run`` to write its guest to an ELF core."""
import os
import sys

import click

from ..errors import InputError
from .render import Result, json_option


class _Progress:
    """A one-line progress meter on stderr, only when stderr is a terminal."""

    def __init__(self):
        self.enabled = sys.stderr.isatty()

    def __call__(self, p):
        if self.enabled and p.get("total"):
            click.echo(f"\rkvmsnap: writing {p['done'] >> 20}/{p['total'] >> 20} MiB", err=True, nl=False)

    def done(self):
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)


def _text(r) -> str:
    resumed = f" (running again {r['resumed_ms']:.1f} ms after the request)" if r["background"] else ""
    removed = (f"; removed {len(r['leftovers_removed'])} temporary file(s) that killed saves had left: "
               + ", ".join(r["leftovers_removed"])) if r["leftovers_removed"] else ""
    return (f"saved {r['path']}: {r['apparent_size']} bytes, {r['size_on_disk']} on disk, "
            f"guest paused {r['paused_ms']:.1f} ms{resumed}, {r['wall_ms']:.1f} ms in all"
            + ("; guest ended" if r["quit"] else "") + removed)


@click.command()
@click.option("--control", "sock", required=True, metavar="SOCKET", help="Control socket of `kvmsnap run`.")
@click.argument("out", type=click.Path(dir_okay=False, writable=False))
@click.option("--quit", "quit_after", is_flag=True, help="End the guest after saving, without running it further.")
@click.option("--background", is_flag=True,
              help="Pause only to capture the vCPUs and devices: a forked writer keeps a copy-on-write view of "
                   "guest RAM and writes the file while the guest runs.")
@json_option
def save(sock, out, quit_after, background):
    """Save the guest behind SOCKET to the ELF core OUT.

    The guest is paused, its whole state written to a temporary file beside OUT, synced and
    renamed to OUT, then resumed (or ended, with --quit). With --background the guest runs again
    as soon as its state is captured; the command returns when the file is complete. On failure
    no file is left at OUT and the guest keeps running.
    """
    from .. import control
    if quit_after and background:
        raise InputError("--quit and --background exclude each other")
    progress = _Progress()
    try:
        reply = control.request(sock, "save", path=os.path.abspath(out), quit=quit_after, background=background,
                                on_progress=progress)
    finally:
        progress.done()
    keys = ("path", "paused_ms", "wall_ms", "bytes_written", "apparent_size", "size_on_disk", "quit", "background",
            "leftovers_removed")
    return Result({k: reply[k] for k in keys + (("resumed_ms",) if background else ())}, _text)
