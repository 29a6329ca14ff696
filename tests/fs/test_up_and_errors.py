"""`vfsd up` as `make run` uses it, and the mount staying alive through bad data."""

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest
from mounting import wait_for

from vfsd.store import Store

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_up_inits_mounts_serves_s3_and_stops_cleanly_on_ctrl_c(tmp_path):
    store, mnt, port = tmp_path / "data", tmp_path / "mnt", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vfsd", "up", "--store", str(store),
                             "--mnt", str(mnt), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, "vfsd up")
        assert proc.poll() is None, proc.stdout.read()
        assert (store / "store.toml").exists()
        wait_for(lambda: answers(port), 30, "the S3 gateway")
        with open(mnt / "written-before-ctrl-c", "wb") as f:
            f.write(b"kept" * 1000)  # closed but never fsynced
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not os.path.ismount(mnt)
        assert not answers(port)
        output = proc.stdout.read()
        assert f"S3 endpoint  http://127.0.0.1:{port}" in output and "secret key" in output
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    with Store.open(store) as s:
        assert s.read_file("written-before-ctrl-c") == b"kept" * 1000


def test_corrupt_chunk_reads_eio_and_the_mount_survives(mount, mnt, store_path):
    (mnt / "good").write_bytes(b"g" * 70_000)
    (mnt / "bad").write_bytes(os.urandom(70_000))
    with Store.open(store_path) as s:
        ino = s.resolve("bad").ino
        with s.env.read() as tx:
            location = s.data._locations(tx, ino, 0, 0)[0]
    segment = store_path / "segments" / f"{location.segment:016x}.seg"
    with open(segment, "r+b") as f:
        f.seek(location.offset + 100)
        byte = f.read(1)
        f.seek(location.offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], capture_output=True,
                   check=False)
    fd = os.open(mnt / "bad", os.O_RDONLY | os.O_DIRECT)
    try:
        import mmap

        buf = mmap.mmap(-1, 65536)
        with pytest.raises(OSError) as info:
            os.preadv(fd, [buf], 0)
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert (mnt / "good").read_bytes() == b"g" * 70_000  # the mount is still serving
