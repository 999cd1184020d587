"""``kvmsnap verify``: is a core (and every base it reads through) what was written?"""
import click

from .render import Progress, Result, json_option


@click.command()
@click.argument("core", type=click.Path(dir_okay=False))
@json_option
def verify(core):
    """Check CORE against the digests it carries, and its bases if it is an increment.

    Every byte is covered: the ELF and program headers, each note, and each chunk of memory (a
    damaged one is named by file offset and guest-physical address). The standard notes gdb and
    crash read are checked against the private notes restore loads. Exit status 0: intact; 1:
    damaged, or not covered by digests (cores written before format 1.4).
    """
    from ..verify import verify as verify_core
    progress = Progress("verifying")
    try:
        report = verify_core(core, progress)
    finally:
        progress.done()
    return Result(report, _text, status=0 if report["intact"] else 1)


def _text(report: dict) -> str:
    lines = []
    for f in report["files"]:
        if f["damaged"]:
            lines += [f"{f['path']}: DAMAGED: {d['what']}" for d in f["damaged"]]
        elif not f["covered"]:
            lines.append(f"{f['path']}: not verified: {f['unchecked']}")
        else:
            lines.append(f"{f['path']}: intact (headers, {f['notes']} notes and {f['chunks']} memory chunks of "
                         f"{f['chunk_size'] >> 20} MiB match their BLAKE3 digests)")
    lines += [f"{report['path']}: DAMAGED: {d}" for d in report["standard_notes"]]
    return "\n".join(lines)
