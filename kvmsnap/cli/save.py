"""``kvmsnap save``: ask a running ``kvmsnap run`` to write its guest to an ELF core."""
import os

import click

from ..errors import InputError
from .render import Progress, Result, json_option


def _text(r) -> str:
    resumed = f" (running again {r['resumed_ms']:.1f} ms after the request)" if r["background"] else ""
    removed = (f"; removed {len(r['leftovers_removed'])} temporary file(s) that killed saves had left: "
               + ", ".join(r["leftovers_removed"])) if r["leftovers_removed"] else ""
    increment = f" (an increment of {r['incremental_from']})" if r["incremental_from"] else ""
    return (f"saved {r['path']}{increment}: {r['apparent_size']} bytes, {r['size_on_disk']} on disk, "
            f"guest paused {r['paused_ms']:.1f} ms{resumed}, {r['wall_ms']:.1f} ms in all"
            + ("; guest ended" if r["quit"] else "") + removed)


@click.command()
@click.option("--control", "sock", required=True, metavar="SOCKET", help="Control socket of `kvmsnap run`.")
@click.argument("out", type=click.Path(dir_okay=False, writable=False))
@click.option("--quit", "quit_after", is_flag=True, help="End the guest after saving, without running it further.")
@click.option("--background", is_flag=True,
              help="Pause only to capture the vCPUs and devices: a forked writer keeps a copy-on-write view of "
                   "guest RAM and writes the file while the guest runs.")
@click.option("--incremental-from", "base", type=click.Path(dir_okay=False), metavar="BASE",
              help="Write only the pages the guest wrote since BASE, the last core this VMM saved or restored; "
                   "the new core names BASE, and reading it needs BASE (flatten makes a whole core).")
@json_option
def save(sock, out, quit_after, background, base):
    """Save the guest behind SOCKET to the ELF core OUT.

    The guest is paused, its whole state written to a temporary file beside OUT, synced and
    renamed to OUT, then resumed (or ended, with --quit). With --background the guest runs again
    as soon as its state is captured; the command returns when the file is complete. With
    --incremental-from the file holds all vCPU and device state but only the pages changed since
    BASE. On failure no file is left at OUT and the guest keeps running.
    """
    from .. import control
    if quit_after and background:
        raise InputError("--quit and --background exclude each other")
    progress = Progress("writing")
    try:
        extra = {"incremental_from": os.path.abspath(base)} if base is not None else {}
        reply = control.request(sock, "save", path=os.path.abspath(out), quit=quit_after, background=background,
                                on_progress=lambda p: progress(p["done"], p["total"]) if p.get("total") else None,
                                **extra)
    finally:
        progress.done()
    keys = ("path", "paused_ms", "wall_ms", "bytes_written", "apparent_size", "size_on_disk", "quit", "background",
            "incremental_from", "state_blake3", "leftovers_removed")
    return Result({k: reply[k] for k in keys + (("resumed_ms",) if background else ())}, _text)
