"""Error types the CLI maps to exit codes: bad input (2) and failures (1)."""


class KvmsnapError(Exception):
    """A failure reported to the user as one line; exit status 1."""
    exit_code = 1


class InputError(KvmsnapError):
    """Bad input from the user (a file, a flag, a value); exit status 2."""
    exit_code = 2


class Interrupted(KvmsnapError):
    """The user pressed Ctrl-C (SIGINT); exit status 130."""
    exit_code = 130

    def __init__(self):
        super().__init__("interrupted")
