"""Our pyfuse3 patch (patches/pyfuse3-3.5.0-fallocate-lseek-copy_file_range.patch) end to end.

bench/memfs.py is mounted in a subprocess with --debug, so each fallocate/lseek/copy_file_range
handler call is logged before it replies. The syscalls come from this process; a result alone
is not proof (without the handlers the kernel answers SEEK_HOLE itself and copy_file_range by
splicing through read/write), so every test also finds its exact call in the memfs log.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMFS = ROOT / "bench" / "memfs.py"
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3 (Debian package fuse3)",
    ),
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (os.posix_fallocate only does mode 0)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Memfs:
    def __init__(self, path: Path, log: Path, proc: subprocess.Popen):
        self.path, self.log, self.proc = path, log, proc

    def calls(self, handler: str) -> list[dict[str, int]]:
        """The logged calls of one handler: 'lseek(fh=2, offset=0, whence=4)' -> {'fh': 2, ...}."""
        marker = f"DEBUG: {handler}("
        calls = []
        for line in self.log.read_text(errors="replace").splitlines():
            if marker in line:
                args = line.split(marker, 1)[1].rstrip(")").split(", ")
                calls.append({k: int(v, 0) for k, v in (arg.split("=") for arg in args)})
        return calls

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (memfs unmounts itself), then always a lazy unmount; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout)
        return self.proc.returncode


@pytest.fixture
def memfs(tmp_path: Path) -> Iterator[Memfs]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "memfs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(MEMFS), "--debug", str(mnt)],
                                stdout=out, stderr=subprocess.STDOUT)
    fs = Memfs(mnt, log, proc)
    try:
        def mounted() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"memfs exited with {proc.returncode}:\n{log.read_text()}")
            return os.path.ismount(mnt)

        wait_until(mounted, 20, "memfs to mount")
        yield fs
    finally:
        fs.stop()


def test_installed_pyfuse3_has_the_handlers():
    import pyfuse3

    missing = [name for name in ("fallocate", "lseek", "copy_file_range")
               if not hasattr(pyfuse3.Operations, name)]
    assert not missing, f"pyfuse3 is unpatched (no {missing}): run scripts/install-pyfuse3"


def test_fallocate_punch_hole_and_mode_0_reach_the_handler(memfs):
    data = os.urandom(65536)
    path = memfs.path / "disk.img"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)
        assert os.fstat(fd).st_size == 65536
        assert os.pread(fd, 65536, 0) == data[:4096] + bytes(8192) + data[12288:]

        os.posix_fallocate(fd, 60000, 40000)  # mode 0, extends the file
        assert os.fstat(fd).st_size == 100000
    finally:
        os.close(fd)
    assert path.read_bytes() == data[:4096] + bytes(8192) + data[12288:] + bytes(34464)
    # Without the handler glibc's posix_fallocate would emulate mode 0 by writing zeros.
    assert [(c["mode"], c["offset"], c["length"]) for c in memfs.calls("fallocate")] == [
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192),
        (0, 60000, 40000),
    ]


def test_lseek_seek_data_and_seek_hole_reach_the_handler(memfs):
    path = memfs.path / "sparse.img"
    path.write_bytes(os.urandom(10000))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 10000  # memfs: the whole file is data
        assert os.lseek(fd, 123, os.SEEK_DATA) == 123
        with pytest.raises(OSError) as exc:
            os.lseek(fd, 10000, os.SEEK_DATA)
        assert exc.value.errno == errno.ENXIO
        # The kernel answers the other kinds of lseek itself.
        assert os.lseek(fd, 5, os.SEEK_SET) == 5
        assert os.lseek(fd, 5, os.SEEK_CUR) == 10
        assert os.lseek(fd, -1, os.SEEK_END) == 9999
    finally:
        os.close(fd)
    assert [(c["offset"], c["whence"]) for c in memfs.calls("lseek")] == [
        (0, os.SEEK_HOLE),
        (123, os.SEEK_DATA),
        (10000, os.SEEK_DATA),
    ]


def test_copy_file_range_reaches_the_handler(memfs):
    data = os.urandom(200000)
    (memfs.path / "src").write_bytes(data)
    src = os.open(memfs.path / "src", os.O_RDONLY)
    dst = os.open(memfs.path / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.copy_file_range(src, dst, 200000, 0, 0) == 200000
        assert os.copy_file_range(src, dst, 1000, 5000, 150000) == 1000
    finally:
        os.close(src)
        os.close(dst)
    expected = bytearray(data)
    expected[150000:151000] = data[5000:6000]
    assert (memfs.path / "dst").read_bytes() == expected
    calls = memfs.calls("copy_file_range")
    assert [(c["off_in"], c["off_out"], c["length"], c["flags"]) for c in calls] == [
        (0, 0, 200000, 0),
        (5000, 150000, 1000, 0),
    ]
    assert all(c["fh_in"] != c["fh_out"] for c in calls)


def test_memfs_unmounts_on_sigterm(memfs):
    (memfs.path / "f").write_bytes(b"x")
    assert memfs.stop() == 0
    assert not os.path.ismount(memfs.path)
