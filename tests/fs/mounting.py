"""Helpers to run a real vfsd mount in tests: a foreground daemon a test can SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfsd.store import Store


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mnt` for the block, a small disk to fill (skips the test
    unless root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_disk(directory: Path, block: int = 4096) -> Path:
    """Fill the file system holding `directory` with a ballast file; unlink it to make room."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, bytes(block))
    os.close(fd)
    return ballast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_bytes(store: Path, name: str) -> bytes:
    """The file as another process (the gateway) reads it from the store, without replaying
    any journal."""
    with Store.open(store) as s:
        inode = s.resolve(name)
        return bytes(s.read(inode.ino, 0, inode.size))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def is_mounted(path: Path) -> bool:
    """True for live and for broken (daemon killed) FUSE mounts alike."""
    target = os.path.realpath(path).encode()
    with open("/proc/self/mounts", "rb") as f:
        return any(line.split()[1] == target for line in f)


class Mount:
    """`vfsd mount --foreground` in a subprocess, so a test can SIGKILL it and remount."""

    def __init__(self, store: Path, path: Path, *extra: str):
        self.store, self.path, self.extra = store, path, extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mount:
        self.path.mkdir(exist_ok=True)
        # Open while the daemon runs: stop() closes it.
        self.log = open(self.store.parent / "mount-output.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vfsd", "mount", "--foreground", "--store", str(self.store),
             str(self.path), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: os.path.ismount(self.path) or self.proc.poll() is not None, 30,
                 "the mount")
        if self.proc.poll() is not None:
            raise RuntimeError("vfsd mount exited: " + self.output())
        return self

    def output(self) -> str:
        return (self.store.parent / "mount-output.log").read_text(errors="replace")

    def logged(self, event: str, field: str) -> int:
        """A count the stopped mount logged at unmount (`event=EVENT ... FIELD=N`); -1 if it
        logged no such line."""
        lines = [line for line in self.output().splitlines() if f"event={event} " in line]
        return int(lines[-1].split(f"{field}=")[1].split()[0]) if lines else -1

    def kill(self) -> None:
        """SIGKILL the daemon (no flush), then detach the dead mount like an admin would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True,
                       check=False)
        wait_for(lambda: not os.path.ismount(self.path), 30, "the lazy unmount")

    def stop(self) -> None:
        """Unmount the normal way (the daemon flushes and exits)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, check=False)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.path):  # a dead daemon's mount is not os.path.ismount()
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True,
                           check=False)
        self.log.close()
        self.proc = None


def fsck(store: Path) -> None:
    """`vfsd fsck` of a store nothing has mounted: it must find nothing wrong."""
    result = subprocess.run([sys.executable, "-m", "vfsd", "fsck", "--store", str(store)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"fsck: {result.stdout}{result.stderr}"


@contextlib.contextmanager
def gatefs_mounted(mnt: Path, *args: str, output: Path | None = None
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """tests/fs/gatefs.py mounted at `mnt` (made here) in a subprocess, its output to
    `output`: a read of its `gate` waits until `opener` is written. Yields the process once
    mounted, or once it exited (the caller says how that fails); always stopped and
    unmounted after."""
    mnt.mkdir()
    with open(output or os.devnull, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("gatefs.py")),
                                 str(mnt), *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 20, "gatefs to mount")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
