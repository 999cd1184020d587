"""The ``kvmsnap`` command line. Library errors become one-line messages and exit codes here only:
2 for bad usage or input, 1 for failures, 130 for Ctrl-C."""
import sys

import click

from .. import __version__
from ..errors import KvmsnapError
from ..kvm import KvmError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvmsnap")
def cli():
    """Save running KVM guests as ELF core files, restore them, and inspect cores offline.

    Start a guest with `kvmsnap run` (the sample `counter` by default); `kvmsnap samples` lists
    the built-in guests.
    """


def _register():
    from . import diff, inspect, mem, restore, run, samples, save  # noqa: F401  (each module adds its command to ``cli``)


def fail(message: str, code: int) -> None:
    click.echo(f"kvmsnap: {message}", err=True)
    sys.exit(code)


def main(argv=None) -> None:
    """Entry point of the ``kvmsnap`` console script."""
    _register()
    try:
        code = cli.main(args=argv, prog_name="kvmsnap", standalone_mode=False)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "kvmsnap"
        fail(f"{e.format_message()} (see '{command} --help')", 2)
    except click.ClickException as e:
        fail(e.format_message(), e.exit_code)
    except (KeyboardInterrupt, click.Abort):
        fail("interrupted", 130)
    except KvmsnapError as e:
        fail(str(e), e.exit_code)
    except KvmError as e:
        fail(str(e), 1)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:              # a bug: still one line, with what it was
        fail(f"internal error: {type(e).__name__}: {e}", 1)
    sys.exit(code or 0)
