"""The write-back cache against a bytearray, through a real mount.

Random writes (whole chunks, parts of chunks, zeros, spans), fsyncs, truncates, hole punches,
copies into the file and reopens, read back through O_DIRECT handles so that every read reaches
the daemon (its dirty, flushing and clean layers and the store) instead of the kernel's page
cache. The file must equal the model after every step, after a remount, and fsck stays clean.
"""

from __future__ import annotations

import ctypes
import os
import random
from pathlib import Path

import pyfuse3
import pytest
from mounting import Mount

from vfsd.store import Store, fsck

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not hasattr(pyfuse3.Operations, "fallocate"),
                       reason="needs the patched pyfuse3 (scripts/install-pyfuse3)"),
]
CS = 64 * 1024
SPAN = 12 * CS  # the file wanders over about a dozen chunks
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch(fd: int, offset: int, length: int) -> None:
    if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


class Model:
    def __init__(self, rng: random.Random, path: Path, source: Path):
        self.rng, self.path = rng, path
        self.data = bytearray()
        self.source = source.read_bytes()
        self.source_fd = os.open(source, os.O_RDONLY)
        self.fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)

    def write(self) -> str:
        rng = self.rng
        kind = rng.choice(["part", "part", "part", "whole", "span", "zeros"])
        if kind == "whole":
            offset, length = rng.randrange(SPAN // CS) * CS, CS * rng.randint(1, 2)
        elif kind == "span":
            offset, length = rng.randrange(SPAN), rng.randrange(CS, 3 * CS)
        else:
            offset, length = rng.randrange(SPAN), rng.choice([1, 512, 4096, rng.randrange(CS)])
        data = bytes(length) if kind == "zeros" else rng.randbytes(length)
        assert os.pwrite(self.fd, data, offset) == length
        if len(self.data) < offset + length:
            self.data.extend(bytes(offset + length - len(self.data)))
        self.data[offset:offset + length] = data
        return f"write {kind} {offset}+{length}"

    def truncate(self) -> str:
        size = self.rng.randrange(SPAN + CS)
        os.ftruncate(self.fd, size)
        self.data = self.data[:size] + bytes(max(0, size - len(self.data)))
        return f"truncate {size}"

    def punch(self) -> str:
        offset, length = self.rng.randrange(SPAN), self.rng.randrange(1, 2 * CS)
        punch(self.fd, offset, length)
        end = min(offset + length, len(self.data))
        if offset < end:
            self.data[offset:end] = bytes(end - offset)
        return f"punch {offset}+{length}"

    def copy_in(self) -> str:
        rng = self.rng
        off_in, off_out = rng.randrange(0, len(self.source), CS), rng.randrange(0, SPAN, CS)
        length = rng.randint(1, 3) * CS
        copied = os.copy_file_range(self.source_fd, self.fd, length, off_in, off_out)
        piece = self.source[off_in:off_in + copied]
        if len(self.data) < off_out + copied:
            self.data.extend(bytes(off_out + copied - len(self.data)))
        self.data[off_out:off_out + copied] = piece
        return f"copy {off_in}->{off_out}+{copied}"

    def fsync(self) -> str:
        os.fsync(self.fd)
        return "fsync"

    def reopen(self) -> str:
        os.close(self.fd)
        self.fd = self._open()
        return "reopen"

    def check_range(self) -> None:
        offset = self.rng.randrange(SPAN + CS)
        length = self.rng.choice([1, 100, 4096, CS, 3 * CS])
        assert os.pread(self.fd, length, offset) == bytes(self.data[offset:offset + length]), \
            f"read {offset}+{length}"

    def check_all(self) -> None:
        assert os.fstat(self.fd).st_size == len(self.data)
        assert os.pread(self.fd, len(self.data) + 1, 0) == bytes(self.data)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.source_fd)


@pytest.mark.parametrize("round_", range(3))
@pytest.mark.parametrize("cache", ["256M", "1M"])  # 1M: 16 chunks, so batches stream and overlap
def test_cache_layers_match_a_model(store_path: Path, tmp_path: Path, round_: int,
                                    cache: str) -> None:
    seed = int(os.environ.get("VFSD_TEST_SEED", random.randrange(1 << 30))) + round_
    print(f"seed {seed}")
    rng = random.Random(seed)
    mount = Mount(store_path, tmp_path / "mnt", "--cache-size", cache).start()
    try:
        source = mount.path / "source"
        source.write_bytes(rng.randbytes(8 * CS))
        model = Model(rng, mount.path / "file", source)
        ops = [model.write] * 10 + [model.fsync] * 3 + [model.truncate, model.punch,
                                                      model.copy_in, model.reopen]
        history = []
        try:
            for step in range(400):
                history.append(rng.choice(ops)())
                try:
                    model.check_range()
                    if step % 25 == 0:
                        model.check_all()
                except AssertionError as e:
                    raise AssertionError(f"{e} after: {history[-8:]}") from None
            model.fsync()
        finally:
            model.close()  # open handles would keep the unmount waiting
        expected = bytes(model.data)
    finally:
        mount.stop()
    mount = Mount(store_path, tmp_path / "mnt").start()
    try:
        assert (mount.path / "file").read_bytes() == expected
    finally:
        mount.stop()
    with Store.open(store_path) as store:
        report = fsck.check(store)
        assert report.clean, report.damage
