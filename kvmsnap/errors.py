"""The library's error types; the CLI (``kvmsnap.cli.exit_status``) maps them to exit statuses."""


class KvmsnapError(Exception):
    """A failure reported to the user as one line."""


class InputError(KvmsnapError):
    """Bad input from the user: a file, a flag, a value; ``setting`` names the machine setting to
    change (``"mem_size"``, ``"vcpus"``), for the CLI to name its flag."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class Interrupted(KvmsnapError):
    """The user pressed Ctrl-C (SIGINT)."""

    def __init__(self):
        super().__init__("interrupted")
