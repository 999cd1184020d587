"""The one place where results and errors are printed: text for people, or JSON with ``--json``.

Commands return a ``Result``; ``main`` prints it. An error is one line on stderr; with ``--json``
it is also JSON on stdout, ``{"error": MESSAGE, "exit": STATUS}`` (docs/cli.md).
"""
import sys
from typing import Any, Callable, NamedTuple, NoReturn

import click

_json = False


class Result(NamedTuple):
    """A command's answer: ``data`` (what ``--json`` prints) and ``text(data)``, its text form
    (``bytes`` are written to stdout as they are; an iterator of strings, block by block), and the
    exit status once printed (1: the answer is "no", as ``verify`` of a damaged core)."""
    data: Any
    text: Callable[[Any], str | bytes]
    status: int = 0


def json_option(f):
    """The ``--json`` flag; the group reads it from the arguments (``wants_json``), so that even an
    error while parsing them is printed as JSON."""
    return click.option("--json", is_flag=True, expose_value=False,
                        help="Print the result, or the error, as one JSON object on stdout.")(f)


def wants_json(command: click.Command | None, args: list[str]) -> None:
    """Switch to JSON output when ``command`` has ``--json`` and ``args`` (before any ``--``) give it."""
    global _json
    options = args[:args.index("--")] if "--" in args else args
    _json = "--json" in options and any(p.name == "json" for p in getattr(command, "params", ()))


def emit(result: Result) -> None:
    if _json:
        import json     # only here: start-up without --json does not pay for it
        for chunk in json.JSONEncoder(indent=2, default=_hex).iterencode(result.data):
            sys.stdout.write(chunk)     # as it is made: a core's thousands of vCPUs are never held at once
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    out = result.text(result.data)
    if isinstance(out, bytes):
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    elif isinstance(out, str):
        click.echo(out.rstrip("\n"))
    else:
        for block in out:               # text too large to build at once, written as it is made
            sys.stdout.write(block)
        sys.stdout.flush()


def _hex(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Progress:
    """A one-line meter on stderr (``kvmsnap: <what> 12/1024 MiB``), only when stderr is a terminal."""

    def __init__(self, what: str):
        self.what = what
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            click.echo(f"\rkvmsnap: {self.what} {done >> 20}/{total >> 20} MiB", err=True, nl=False)

    def done(self) -> None:
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)


def note(message: str) -> None:
    """Something the user should know: one line on stderr."""
    click.echo(f"kvmsnap: {message}", err=True)


def warn(message: str) -> None:
    """A warning: always one line on stderr."""
    click.echo(f"kvmsnap: warning: {message}", err=True)


def fail(message: str, status: int) -> NoReturn:
    """Print an error (one line on stderr; with ``--json`` also as JSON on stdout) and exit with
    ``status``."""
    if _json:
        import json
        click.echo(json.dumps({"error": message, "exit": status}))
    click.echo(f"kvmsnap: {message}", err=True)
    sys.exit(status)
