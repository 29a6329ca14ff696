"""Widen the kernel's readahead window on our mount.

The kernel offers FUSE its default readahead (128 KiB) at INIT and a file system cannot ask for
more there, so a buffered sequential read arrives as 128 KiB requests, each paying one thread hop
and one index lookup. The mount's backing device info in sysfs takes a larger window; requests
then grow up to FUSE's 1 MiB request limit (max_pages), the size O_DIRECT and write requests
already have. Needs root (sysfs); without it the mount works at the default.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("vfsd.mount")
READAHEAD_KIB = 1024  # FUSE's largest request (256 pages); more only splits into more requests
SYSFS_BDI = Path("/sys/class/bdi")


def mount_device(mountpoint: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The "major:minor" of the file system mounted at `mountpoint` (an absolute, resolved
    path), from mountinfo: a stat of our own mount would wait on this very daemon. Paths are
    compared as bytes: a name may be any bytes, not only UTF-8."""
    target = os.fsencode(mountpoint)
    try:
        lines = mountinfo.read_bytes().splitlines()
    except OSError:
        return None
    device = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            device = fields[2].decode()  # the last match is the top of any stack of mounts
    return device


def widen_readahead(mountpoint: Path, kib: int = READAHEAD_KIB) -> bool:
    device = mount_device(mountpoint)
    if device is None:
        log.warning("event=readahead-unchanged reason=mount-not-found mountpoint=%s", mountpoint)
        return False
    try:
        (SYSFS_BDI / device / "read_ahead_kb").write_text(f"{kib}\n")
    except OSError as e:
        log.info("event=readahead-unchanged reason=%r device=%s", e.strerror, device)
        return False
    log.info("event=readahead device=%s kib=%d", device, kib)
    return True


def _unescape(field: bytes) -> bytes:
    """Undo the octal escapes mountinfo writes for space, tab, newline and backslash."""
    return field.decode("unicode_escape").encode("latin-1")
