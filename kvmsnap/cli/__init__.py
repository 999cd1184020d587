"""The ``kvmsnap`` command line. Commands are imported only when run or listed (``LazyGroup``), and
import what they need inside the command, so start-up and the offline commands never load the KVM
layer. Library errors become one line (or JSON, ``render``) and an exit status here only:
2 for bad usage or input, 1 for failures, 130 for Ctrl-C."""
import atexit
import gc
import importlib
import signal
import sys


def _exit_interrupted(_signum, _frame):
    """Ctrl-C while kvmsnap is still starting up: nothing to clean up yet."""
    sys.stderr.write("kvmsnap: interrupted\n")
    raise SystemExit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:   # not when started with SIGINT ignored
    signal.signal(signal.SIGINT, _exit_interrupted)

# The interpreter's last cyclic collection, at exit, walks every object the imports made: about 15 ms
# of a 120 ms `inspect`. Nothing needs it then (reference counting still runs every destructor).
atexit.register(gc.freeze)

import click  # noqa: E402  (after the handler: importing takes a while)

from .. import __version__  # noqa: E402
from ..errors import InputError, Interrupted, KvmsnapError  # noqa: E402
from . import render  # noqa: E402

#: One module per command, ``kvmsnap.cli.<name>``, defining the click command ``<name>``.
COMMANDS = ("diff", "flatten", "inspect", "mem", "restore", "run", "samples", "save", "verify")


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is run or listed."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        return getattr(importlib.import_module(f"{__name__}.{name}"), name) if name in COMMANDS else None

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        render.wants_json(command, rest)
        return name, command, rest

    def format_commands(self, ctx, formatter):
        """Each command's first sentence in full (click would cut it to the terminal's width)."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, self.get_command(ctx, name).get_short_help_str(limit=1 << 16))
                                for name in COMMANDS])


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvmsnap")
@click.pass_context
def cli(ctx):
    """Save running KVM guests as ELF core files, restore them, and inspect cores offline.

    Start a guest with `kvmsnap run` (the sample `counter` by default); `kvmsnap samples` lists
    the built-in guests.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


#: The flag that sets each machine setting an InputError can name.
SETTING_FLAGS = {"mem_size": "--mem", "vcpus": "--cpus", "cmdline": "--append"}


def exit_status(e: BaseException) -> int | None:
    """The exit status for an error the library raises on purpose; None for anything else (a bug)."""
    for cls, status in ((Interrupted, 130), (InputError, 2), (KvmsnapError, 1)):
        if isinstance(e, cls):
            return status
    kvm_errors = sys.modules.get("kvmsnap.kvm.errors")      # loaded whenever a KvmError can exist
    return 1 if kvm_errors and isinstance(e, kvm_errors.KvmError) else None


def _interrupt(_signum, _frame):
    raise Interrupted()


def main(argv=None) -> None:
    """Entry point of the ``kvmsnap`` console script."""
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, _interrupt)    # from here on, Ctrl-C unwinds (and cleans up) as our error
    try:
        result = cli.main(args=argv, prog_name="kvmsnap", standalone_mode=False)
        if isinstance(result, render.Result):
            render.emit(result)
            result = result.status
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "kvmsnap"
        render.fail(f"{e.format_message()} (see '{command} --help')", 2)
    except click.ClickException as e:
        render.fail(e.format_message(), e.exit_code)
    except (KeyboardInterrupt, click.Abort):
        render.fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:
        status = exit_status(e)
        message = str(e) if status else f"internal error: {type(e).__name__}: {e}"
        if getattr(e, "setting", None) in SETTING_FLAGS:
            message += f" ({SETTING_FLAGS[e.setting]})"
        render.fail(message, status or 1)
    sys.exit(result or 0)
