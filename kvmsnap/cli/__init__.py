"""The ``kvmsnap`` command line. Library errors become one-line messages and exit codes here only:
2 for bad usage or input, 1 for failures, 130 for Ctrl-C."""
import importlib
import signal
import sys


def _exit_interrupted(_signum, _frame):
    """Ctrl-C while kvmsnap is still starting up: nothing to clean up yet."""
    sys.stderr.write("kvmsnap: interrupted\n")
    raise SystemExit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:   # not when started with SIGINT ignored
    signal.signal(signal.SIGINT, _exit_interrupted)

import click  # noqa: E402  (after the handler: importing takes a while)

from .. import __version__  # noqa: E402
from ..errors import Interrupted, KvmsnapError  # noqa: E402
from ..kvm import KvmError  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvmsnap")
def cli():
    """Save running KVM guests as ELF core files, restore them, and inspect cores offline.

    Start a guest with `kvmsnap run` (the sample `counter` by default); `kvmsnap samples` lists
    the built-in guests.
    """


#: One module per command; importing it adds its command to ``cli``.
COMMANDS = ("diff", "inspect", "mem", "restore", "run", "samples", "save")


def _register():
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}")


def fail(message: str, code: int) -> None:
    click.echo(f"kvmsnap: {message}", err=True)
    sys.exit(code)


def _interrupt(_signum, _frame):
    raise Interrupted()


def main(argv=None) -> None:
    """Entry point of the ``kvmsnap`` console script."""
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, _interrupt)    # from here on, Ctrl-C unwinds (and cleans up) as our error
    try:
        _register()
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
