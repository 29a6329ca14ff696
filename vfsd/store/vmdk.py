"""VMware monolithicFlat descriptors: the text file that points QEMU and VMware at a raw extent."""

from __future__ import annotations

import re

from .errors import InvalidArgument

SECTOR = 512
_CID = re.compile(rb"^CID=[0-9a-fA-F]+$", re.MULTILINE)
_EXTENT = re.compile(r'^RW (\d+) FLAT "([^"]+)" 0$', re.MULTILINE)


def descriptor(extent_name: str, size: int, adapter: str = "lsilogic") -> bytes:
    """The descriptor of a flat extent of `size` bytes (a multiple of 512)."""
    if size <= 0 or size % SECTOR:
        raise InvalidArgument("a disk size must be a positive multiple of 512 bytes")
    sectors = size // SECTOR
    cylinders = min(sectors // (255 * 63), 65535) or 1
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        "CID=fffffffe\n"
        "parentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} FLAT "{extent_name}" 0\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.virtualHWVersion = "14"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "255"\n'
        'ddb.geometry.sectors = "63"\n'
        f'ddb.adapterType = "{adapter}"\n'
    ).encode()


def parse_extent(text: bytes) -> tuple[str, int]:
    """(extent file name, size in bytes) of a monolithicFlat descriptor."""
    match = _EXTENT.search(text.decode(errors="replace"))
    if match is None:
        raise InvalidArgument("not a monolithicFlat VMDK descriptor")
    return match.group(2), int(match.group(1)) * SECTOR


def same_apart_from_cid(old: bytes, new: bytes) -> bool:
    """Whether `new` is `old` with only the CID value changed (and NUL/space padding).

    QEMU's vmdk driver rewrites the CID line of the descriptor on the first write after each
    open; that is the one change a read-only descriptor accepts."""

    def normal(text: bytes) -> bytes:
        return _CID.sub(b"CID=*", text.rstrip(b"\0 \t\r\n"))

    return normal(old) == normal(new) and _CID.search(new) is not None
