"""The bzImage setup header (offline): what kvmsnap boots, and the one-line reasons it refuses the rest.
Booting Debian's bzImage is in test_linux.py."""
import struct

import pytest

from kvmsnap.arch.x86_64 import bzimage


def fake_bzimage(version=0x020F, xloadflags=1, setup_sects=4, kernel=b"\x90" * 4096) -> bytes:
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x201] = 0x6A                                  # setup header ends at 0x26c
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, version)
    struct.pack_into("<IIB", head, 0x22C, 0x7FFFFFFF, 0x200000, 1)
    struct.pack_into("<H", head, 0x236, xloadflags)
    struct.pack_into("<I", head, 0x238, 2047)
    struct.pack_into("<QI", head, 0x258, 0x1000000, 0x800000)
    return bytes(head) + kernel


def test_setup_header_fields():
    h = bzimage.parse(fake_bzimage())
    assert (h.pref_address, h.init_size, h.relocatable, h.cmdline_size) == (0x1000000, 0x800000, True, 2047)
    assert h.kernel == b"\x90" * 4096 and len(h.header) == 0x26C - 0x1F1


@pytest.mark.parametrize("kw, reason", [(dict(version=0x020B), "boot protocol 2.11"),
                                        (dict(xloadflags=0), "no 64-bit entry"),
                                        (dict(kernel=b""), "setup sectors")])
def test_unbootable_bzimages_are_refused_with_the_reason(kw, reason):
    with pytest.raises(bzimage.NotBootable, match=reason):
        bzimage.parse(fake_bzimage(**kw))


def test_not_a_bzimage_has_no_vmlinux_inside():
    assert not bzimage.is_bzimage(b"\x7fELF" + bytes(1000))
    assert bzimage.embedded_vmlinux(fake_bzimage()) is None          # no compressed payload
