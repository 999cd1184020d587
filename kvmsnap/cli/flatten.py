"""``kvmsnap flatten``: an increment and its bases written as one whole core."""
import os

import click

from ..errors import KvmsnapError
from .render import Progress, Result, json_option


@click.command()
@click.argument("core", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@json_option
def flatten(core, out):
    """Write CORE, read through its chain of bases, as one whole core OUT.

    OUT holds every page and needs no other file: for debuggers (which read one file) and to
    keep a snapshot whose bases may go. OUT is written beside itself and renamed into place.
    """
    from .. import __version__
    from ..formats.kvmsnap import read_core
    from ..formats.writer import write_core
    progress = Progress("flattening")
    with read_core(core) as snapshot:
        layers = [m.path for m in snapshot.memory.layers()]
        snapshot.base = snapshot.changed = None
        try:
            result = write_core(snapshot, out, producer=f"kvmsnap {__version__}",
                                host_kernel=snapshot.info.host_kernel, progress=progress)
        except OSError as e:
            raise KvmsnapError(f"cannot write {out}: {e.strerror or e}") from None
        finally:
            progress.done()
    data = dict(path=result.path, layers=layers, apparent_size=result.apparent_size,
                size_on_disk=result.size_on_disk, state_blake3=result.state_blake3)
    return Result(data, lambda d: f"wrote {d['path']}: {len(d['layers'])} file(s) flattened "
                                  f"({' <- '.join(os.path.basename(p) for p in d['layers'])}), "
                                  f"{d['apparent_size']} bytes, {d['size_on_disk']} on disk")
