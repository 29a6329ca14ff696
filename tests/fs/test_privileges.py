"""The mount drops setuid/setgid and file capabilities itself on write, truncate and chown
(FUSE_HANDLE_KILLPRIV_V2, patches/libfuse-3.14.0-handle-killpriv-v2.patch), so the kernel no
longer asks getxattr(security.capability) before every write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from mounting import Mount

CAPABILITY = "security.capability"
# A version-2 file capability granting nothing: enough for the kernel and for us to keep.
EMPTY_CAPABILITY = b"\x01\x00\x00\x02" + bytes(16)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_send_no_capability_request_each(store_path: Path, tmp_path: Path) -> None:
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        fd = os.open(m.path / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            for i in range(300):
                os.pwrite(fd, b"x" * 4096, i * 4096)
        finally:
            os.close(fd)
    finally:
        m.stop()
    # Without KILLPRIV_V2 the kernel asked once per write: 300 requests.
    assert 0 <= m.logged("capability-requests", "count") <= 2


def test_a_write_drops_setuid_group_executable_setgid_and_capabilities(mnt: Path) -> None:
    path = mnt / "tool"
    path.write_bytes(b"#!/bin/sh\n")
    os.chmod(path, 0o6775)
    os.setxattr(path, CAPABILITY, EMPTY_CAPABILITY)
    with open(path, "ab") as f:
        f.write(b"true\n")
    assert mode_of(path) == 0o775  # seen at once: the kernel's cached mode was dropped
    assert CAPABILITY not in os.listxattr(path)
    # setgid without group execute marks mandatory locking, not privilege: it stays.
    os.chmod(path, 0o2745)
    with open(path, "ab") as f:
        f.write(b"true\n")
    assert mode_of(path) == 0o2745
    assert path.read_bytes() == b"#!/bin/sh\ntrue\ntrue\n"


def test_truncate_and_chown_drop_them_too(mnt: Path) -> None:
    path = mnt / "tool"
    path.write_bytes(b"x" * 10000)
    os.chmod(path, 0o4755)
    os.truncate(path, 100)
    assert mode_of(path) == 0o755
    os.chmod(path, 0o4755)
    os.setxattr(path, CAPABILITY, EMPTY_CAPABILITY)
    os.chown(path, 65534, 65534)
    assert mode_of(path) == 0o755
    assert CAPABILITY not in os.listxattr(path)
    assert os.stat(path).st_uid == 65534
    # A chmod afterwards sets the bits again; nothing drops them until the next write.
    os.chmod(path, 0o4755)
    assert mode_of(path) == 0o4755
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert mode_of(path) == 0o755


def test_chown_drops_them_from_any_file_but_a_directory(mnt: Path) -> None:
    # Linux's chown_common kills setuid (and group-executable setgid) on every non-directory;
    # with KILLPRIV_V2 the kernel leaves that to us (pjdfstest chown/00.t). A directory's
    # setgid hands its group down and stays.
    os.mkfifo(mnt / "fifo")
    os.mknod(mnt / "dev", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    for name in ("fifo", "dev"):
        os.chmod(mnt / name, 0o6755)
        os.chown(mnt / name, 65534, 65534)
        assert mode_of(mnt / name) == 0o755, name
    (mnt / "dir").mkdir()
    os.chmod(mnt / "dir", 0o2755)
    os.chown(mnt / "dir", 65534, 65534)
    assert mode_of(mnt / "dir") == 0o2755


@pytest.mark.parametrize("how", ["fallocate", "copy_file_range"])
def test_other_changes_to_the_contents_drop_them_like_a_write(mnt: Path, how: str) -> None:
    source = mnt / "source"
    source.write_bytes(b"s" * 70000)
    path = mnt / "tool"
    path.write_bytes(b"x" * 100)
    os.chmod(path, 0o4755)
    src_fd = os.open(source, os.O_RDONLY)
    fd = os.open(path, os.O_WRONLY)
    try:
        if how == "fallocate":
            os.posix_fallocate(fd, 0, 200000)
        else:
            assert os.copy_file_range(src_fd, fd, 70000, 0, 0) == 70000
    finally:
        os.close(fd)
        os.close(src_fd)
    assert mode_of(path) == 0o755
