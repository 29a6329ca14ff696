"""`vfsd vm start` / `vm stop` on a mounted store, through the command line as users run them.

The VM's disk holds no boot loader (the test guest is a kernel + initramfs, not a disk), so the
firmware just waits for a bootable device: enough to see QEMU started, refused a second time,
stopped, and refused while another process has the disk open for writing through the mount.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounting import Mount
from vmtools import QEMU, VM

from vfsd.store.leases import process_start_time

pytestmark = pytest.mark.timeout(180)


def vfsd(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfsd", *args, "--store", str(store)],
                          check=False, capture_output=True, text=True, timeout=90)


def running_qemu(store: Path) -> int | None:
    """The pid in the VM's pidfile, if that process is alive and is QEMU."""
    try:
        pid = int((store / "run" / "vms" / f"{VM}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None
    return pid if name.endswith(QEMU.encode()) and process_start_time(pid) else None


@pytest.fixture(autouse=True)
def no_qemu_left(store_path: Path, mount: Mount):
    """Whatever a test (or a broken `vm start`) started is killed before the mount stops."""
    yield
    pid = running_qemu(store_path)
    if pid is not None:
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while process_start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)


def test_start_refuse_stop(store_path: Path, mount: Mount):
    started = vfsd(store_path, "vm", "start", VM, "--accel", "tcg")
    assert started.returncode == 0, started.stderr
    pid = running_qemu(store_path)
    assert pid is not None, started.stdout + started.stderr
    try:
        again = vfsd(store_path, "vm", "start", VM, "--accel", "tcg")
        assert again.returncode != 0
        assert again.stderr.count("\n") == 1 and "already running" in again.stderr, again.stderr
        assert running_qemu(store_path) == pid
        removing = vfsd(store_path, "vm", "rm", VM)  # would orphan QEMU and its files
        assert removing.returncode != 0 and "is running" in removing.stderr, removing.stderr
        resizing = vfsd(store_path, "vm", "resize", VM, "--disk", "2G")  # QEMU has the disk
        assert resizing.returncode != 0 and resizing.stderr.count("\n") == 1, resizing.stderr
        # QEMU runs the raw extents, where guest discards reach the store (not the vmdk
        # driver, which drops them).
        args = vfsd(store_path, "vm", "qemu-args", VM, "--accel", "tcg").stdout
        assert f"{VM}-flat.vmdk,format=raw,cache=none,discard=unmap" in args, args
        assert f"{VM}.vmdk," not in args, args

        # What QEMU says of the guest (a full pool pauses it with io-error).
        listed = json.loads(vfsd(store_path, "vm", "ls", "--json").stdout)
        assert [(v["name"], v["state"]) for v in listed] == [(VM, "running")]
        assert "running" in vfsd(store_path, "vm", "show", VM).stdout.splitlines()[0]

        stopped = vfsd(store_path, "vm", "stop", VM, "--timeout", "2")
        assert stopped.returncode == 0, stopped.stderr
        assert process_start_time(pid) is None, "QEMU still runs after vm stop"
        assert running_qemu(store_path) is None
        assert json.loads(vfsd(store_path, "vm", "show", VM, "--json").stdout)[
            "state"] == "stopped"

        not_running = vfsd(store_path, "vm", "stop", VM)
        assert not_running.returncode != 0 and "not running" in not_running.stderr
    finally:
        if process_start_time(pid) is not None:
            os.kill(pid, 9)


HOLD = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
print("open", flush=True)
sys.stdin.read()
"""


def test_start_refused_while_disk_is_open_for_writing(store_path: Path, mount: Mount):
    flat = mount.path / "vms" / VM / f"{VM}-flat.vmdk"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(flat)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        refused = vfsd(store_path, "vm", "start", VM, "--accel", "tcg")
        assert refused.returncode != 0
        assert refused.stderr.count("\n") == 1 and "open for writing" in refused.stderr, \
            refused.stderr
        assert running_qemu(store_path) is None
        removing = vfsd(store_path, "vm", "rm", VM)
        assert removing.returncode != 0 and "open for writing" in removing.stderr, \
            removing.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)

    # Closed again: the lease is gone and the VM starts.
    deadline = time.monotonic() + 10
    while True:
        started = vfsd(store_path, "vm", "start", VM, "--accel", "tcg")
        if started.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert started.returncode == 0, started.stderr
    pid = running_qemu(store_path)
    try:
        assert pid is not None
        assert vfsd(store_path, "vm", "stop", VM, "--timeout", "1").returncode == 0
        assert process_start_time(pid) is None
    finally:
        if pid and process_start_time(pid) is not None:
            os.kill(pid, 9)


def test_a_vm_qemu_cannot_build_is_not_reported_started(store_path: Path, mount: Mount):
    """QEMU makes its monitor socket before the machine; with memory it cannot have it dies
    just after. `vm start` must say so, not 'started' (exit 0) with nothing running."""
    made = vfsd(store_path, "vm", "create", "huge", "--disk", "1M", "--memory", "100P")
    assert made.returncode == 0, made.stderr
    started = vfsd(store_path, "vm", "start", "huge", "--accel", "tcg")
    assert started.returncode != 0, started.stdout
    assert started.stderr.count("\n") == 1 and "QEMU exited at once" in started.stderr, \
        started.stderr
    again = vfsd(store_path, "vm", "start", "huge", "--accel", "tcg")
    assert "already running" not in again.stderr
