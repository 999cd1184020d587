"""Parameter types shared by commands."""
import re

import click

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Size(click.ParamType):
    """A byte count: 268435456, 256M, 256MiB, 1G, 4GiB."""
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if not m:
            self.fail(f"{value!r} is not a size (examples: 256M, 1G, 4GiB)", param, ctx)
        return int(m.group(1)) * _UNITS[m.group(2).upper()]


class Address(click.ParamType):
    """An integer address, decimal or 0x-prefixed hex."""
    name = "ADDR"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 0)
        except ValueError:
            self.fail(f"{value!r} is not an address (examples: 0x7c00, 4096)", param, ctx)
