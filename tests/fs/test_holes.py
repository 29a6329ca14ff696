"""Thin provisioning through the mount: punch holes, find them, copy without copying."""

import ctypes
import os
import subprocess
import urllib.request

import pyfuse3
import pytest
from mounting import Mount, free_port, stored_bytes, wait_for

from vfsd.store import Store

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not hasattr(pyfuse3.Operations, "fallocate"),
                       reason="needs the patched pyfuse3 (scripts/install-pyfuse3)"),
]
MiB = 1 << 20


def physical(store_path):
    with Store.open(store_path) as s:
        return s.physical_bytes()


def test_punch_hole_frees_space_and_reads_zeros(mnt, store_path):
    p = mnt / "disk.raw"
    data = os.urandom(8 * MiB)
    p.write_bytes(data)
    blocks_before = os.stat(p).st_blocks
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(MiB), "--length",
                    str(4 * MiB), str(p)], check=True)
    assert os.stat(p).st_size == 8 * MiB
    assert os.stat(p).st_blocks * 512 == blocks_before * 512 - 4 * MiB
    back = p.read_bytes()
    assert back[:MiB] == data[:MiB]
    assert back[MiB:5 * MiB] == bytes(4 * MiB)
    assert back[5 * MiB:] == data[5 * MiB:]
    # Unaligned edges: bytes outside the range survive, inside read zeros.
    subprocess.run(["fallocate", "--punch-hole", "--offset", "100", "--length", "1000",
                    str(p)], check=True)
    back = p.read_bytes()
    assert back[:100] == data[:100] and back[100:1100] == bytes(1000)
    assert back[1100:MiB] == data[1100:MiB]
    out = subprocess.run(["du", "-B1", str(p)], check=True, capture_output=True, text=True)
    assert int(out.stdout.split()[0]) <= 4 * MiB + 64 * 1024


def test_seek_data_and_hole(mnt):
    p = mnt / "sparse"
    with open(p, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(16 * MiB)
        f.write(b"x" * MiB)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 16 * MiB
        assert os.lseek(fd, 16 * MiB, os.SEEK_HOLE) == 17 * MiB
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 0
        with pytest.raises(OSError):
            os.lseek(fd, 17 * MiB, os.SEEK_DATA)  # ENXIO: no data after the last chunk
    finally:
        os.close(fd)
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", "raw", str(p)],
                         check=True, capture_output=True, text=True).stdout
    assert '"data": false' in out and '"data": true' in out


def test_cp_shares_chunks_and_uses_no_space(mnt, store_path):
    src = mnt / "image"
    block = os.urandom(MiB)
    with open(src, "wb") as f:
        f.writelines(block[i:] + block[:i] for i in range(256))  # 256 MiB of distinct chunks
    used = physical(store_path)
    subprocess.run(["cp", str(src), str(mnt / "copy")], check=True)
    assert physical(store_path) - used < MiB  # metadata only: chunks are shared
    assert os.stat(mnt / "copy").st_size == 256 * MiB
    with open(src, "rb") as a, open(mnt / "copy", "rb") as b:
        assert a.read() == b.read()


def test_posix_fallocate_checks_the_pool(mnt):
    p = mnt / "prealloc"
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 10 * MiB)
        assert os.fstat(fd).st_size == 10 * MiB
        with pytest.raises(OSError):
            os.posix_fallocate(fd, 0, 1 << 60)  # far past any pool
    finally:
        os.close(fd)


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def _fallocate(fd, mode, offset, length):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


def _open_handles(port):
    return _metric(port, "vfsd_mount_open_handles")


def _metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith(name + " "))


def test_a_copy_into_a_rewritten_file_keeps_the_size_a_punch_kept(mnt):
    """O_TRUNC, a write, a punch of all of it (the size stays), then a copy of whole chunks
    into the start: the file keeps the punched size, as on any Linux file system."""
    src, dst = mnt / "src", mnt / "dst"
    src.write_bytes(os.urandom(65536))
    dst.write_bytes(os.urandom(3 * 65536))
    fd_in = os.open(src, os.O_RDONLY)
    fd = os.open(dst, os.O_RDWR | os.O_TRUNC)
    try:
        os.pwrite(fd, b"x" * (2 * 65536), 0)
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 * 65536)
        assert os.copy_file_range(fd_in, fd, 65536, 0, 0) == 65536
        assert os.fstat(fd).st_size == 2 * 65536
    finally:
        os.close(fd)
        os.close(fd_in)
    assert os.stat(dst).st_size == 2 * 65536
    assert dst.read_bytes() == src.read_bytes() + bytes(65536)


def test_a_punch_is_committed_by_its_close_not_over_a_later_put(store_path, tmp_path):
    """The mount gives up a file's lease when its last writer closes. A punch's partial
    edges (zeros written through the cache) were committed only at the next commit
    interval, after the close: on top of whatever another process (a PUT through the
    gateway) stored meanwhile."""
    port = free_port()
    m = Mount(store_path, tmp_path / "mnt", "--commit-interval", "2",
              "--metrics-listen", f"127.0.0.1:{port}").start()
    try:
        a = m.path / "a"
        a.write_bytes(os.urandom(4 * 65536))
        fd = os.open(a, os.O_RDWR)
        try:
            _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1000, 200_000)
        finally:
            os.close(fd)
        wait_for(lambda: _open_handles(port) == 0, 10, "the release")
        put = os.urandom(4 * 65536)
        with Store.open(store_path) as s:  # another process, as the gateway is
            s.write_file("a", put)
        wait_for(lambda: _metric(port, "vfsd_mount_dirty_bytes") == 0, 10, "the commit")
        assert stored_bytes(store_path, "a") == put
    finally:
        m.stop()
