"""`vfsd up` as `make run` uses it, and the mount staying alive through bad data."""

import errno
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from mounting import free_port, wait_for

from vfsd.store import Store

pytestmark = pytest.mark.timeout(120)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def up_argv(store, mnt, *more: str) -> list[str]:
    return [sys.executable, "-m", "vfsd", "up", "--store", str(store), "--mnt", str(mnt), *more]


def start_up(store, mnt, *more: str, stderr=subprocess.STDOUT) -> subprocess.Popen:
    return subprocess.Popen(up_argv(store, mnt, *more), stdout=subprocess.PIPE, stderr=stderr,
                            text=True)


def run_up(store, mnt, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(up_argv(store, mnt, *more), capture_output=True, text=True,
                          timeout=60, check=False)


def test_up_inits_mounts_serves_s3_and_stops_cleanly_on_ctrl_c(tmp_path):
    store, mnt, port = tmp_path / "data", tmp_path / "mnt", free_port()
    proc = start_up(store, mnt, "--listen", f"127.0.0.1:{port}")
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


def test_up_with_a_port_it_cannot_have_stops_before_mounting(tmp_path):
    store, mnt = tmp_path / "data", tmp_path / "mnt"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            result = run_up(store, mnt, "--listen", f"127.0.0.1:{port}")
        finally:  # (before the fix `up` mounted anyway, and the timeout killed it)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                           check=False)
    assert result.returncode == 1, result
    assert "Address already in use" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "vfsd: error: the S3 gateway did not start (exit status 1); nothing was mounted")
    assert not os.path.ismount(mnt) and "Traceback" not in result.stdout + result.stderr


def test_up_reports_a_gateway_that_dies_and_keeps_the_mount_serving(tmp_path):
    store, mnt, port = tmp_path / "data", tmp_path / "mnt", free_port()
    proc = start_up(store, mnt, "--listen", f"127.0.0.1:{port}", stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, "vfsd up")
        gateway = int(subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "vfsd gateway"],
                                     capture_output=True, text=True, check=True).stdout.split()[0])
        os.kill(gateway, signal.SIGKILL)
        wait_for(lambda: not answers(port), 30, "the gateway to die")
        (mnt / "after").write_bytes(b"still served")  # the mount goes on
        assert (mnt / "after").read_bytes() == b"still served"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 1
        assert not os.path.ismount(mnt)
        errors = proc.stderr.read()
        assert "event=gateway-exited how='killed by SIGKILL': S3 is down" in errors, errors
        assert "Traceback" not in errors
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def test_up_killed_takes_its_gateway_along_and_starts_again(tmp_path):
    """`kill -9` of `vfsd up` (OOM killer, an admin): its gateway went on serving, orphaned,
    beside the dead mount, and the next `vfsd up` on the same port failed ("Address already
    in use") until someone found and killed the stray gateway. The gateway dies with `up`
    now, as the gateway's server processes die with their supervisor."""
    store, mnt, port = tmp_path / "data", tmp_path / "mnt", free_port()
    proc = start_up(store, mnt, "--listen", f"127.0.0.1:{port}")
    again = None
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, "vfsd up")
        wait_for(lambda: answers(port), 30, "the S3 gateway")
        (mnt / "before").write_bytes(b"kept")
        proc.kill()
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        wait_for(lambda: not answers(port), 30, "the gateway to die with `vfsd up`")
        again = start_up(store, mnt, "--listen", f"127.0.0.1:{port}")
        wait_for(lambda: os.path.ismount(mnt) or again.poll() is not None, 30, "vfsd up again")
        assert again.poll() is None, again.stdout.read()
        wait_for(lambda: answers(port), 30, "the new S3 gateway")
        assert (mnt / "before").read_bytes() == b"kept"
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=60) == 0
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def test_up_refuses_a_mount_point_that_is_a_file_before_making_a_store(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_up(tmp_path / "data", tmp_path / "file")
    assert result.returncode == 1
    assert result.stderr.strip() == f"vfsd: error: mount point {tmp_path / 'file'} is not a directory"
    assert not (tmp_path / "data").exists()


def test_up_passes_the_gateway_options_on(tmp_path):
    store, mnt, port, metrics = tmp_path / "data", tmp_path / "mnt", free_port(), free_port()
    mount_metrics = free_port()
    result = run_up(store, mnt, "--tls-cert", str(tmp_path / "cert.pem"))
    assert result.returncode == 2 and "--tls-cert and --tls-key go together" in result.stderr
    assert not store.exists()
    proc = start_up(store, mnt, "--listen", f"127.0.0.1:{port}", "--processes", "1",
                    "--metrics-listen", f"127.0.0.1:{metrics}", "--region", "eu-x-1",
                    "--mount-metrics-listen", f"127.0.0.1:{mount_metrics}")
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, "vfsd up")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            assert b"vfsd_gateway_requests_in_flight" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{mount_metrics}/metrics",
                                    timeout=10) as r:
            assert b"vfsd_mount_dirty_bytes" in r.read()
        gateway = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "vfsd gateway"],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert len(gateway) == 1
        # --processes 1: the gateway serves itself, no server processes under it
        assert subprocess.run(["pgrep", "-P", gateway[0]], capture_output=True,
                              check=False).returncode == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        output = proc.stdout.read()
        assert f"metrics at http://127.0.0.1:{metrics}/metrics" in output
        assert "(region eu-x-1)" in output
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
