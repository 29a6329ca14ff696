"""`vfsd vm start` / `vm stop` on a mounted store, through the command line as users run them.

The VM's disk holds no boot loader (the test guest is a kernel + initramfs, not a disk), so the
firmware just waits for a bootable device: enough to see QEMU started, refused a second time,
stopped, and refused while another process has the disk open for writing through the mount.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounting import Mount, fsck, wait_for
from qemu_guest import APPEND, Guest
from vmtools import QEMU, VM, debugfs_dump, e2fsck, mkfs_ext4

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


# The guest writes a file through its page cache (never synced) and another with O_DIRECT
# (on the VM's disk, never flushed), then idles. With `listen`, it shuts down cleanly on the
# ACPI power button, as a real OS does; without, it ignores it.
UNSYNCED = """
waitdev /dev/vda
mount -t ext4 /dev/vda /mnt
{listen}
dd if=/dev/urandom of=/tmp/c bs=64k count=4 2>/dev/null
dd if=/dev/zero of=/mnt/direct bs=64k count=4 2>/dev/null
sync
cp /tmp/c /mnt/cached
dd if=/dev/urandom of=/tmp/d bs=64k count=4 2>/dev/null
dd if=/tmp/d of=/mnt/direct bs=64k oflag=direct conv=notrunc 2>/dev/null
mark WRITTEN $(sha256sum </tmp/c | cut -c1-64) $(sha256sum </tmp/d | cut -c1-64)
sleep 1000
"""
LISTEN = ("for e in /dev/input/event*; do (dd if=$e bs=24 count=1 >/dev/null 2>&1; "
          "mark POWERBUTTON; cd /; umount /mnt; sync; poweroff -f) & done")


@pytest.mark.parametrize("honours_acpi", [True, False], ids=["guest-shuts-down",
                                                             "guest-ignores-acpi"])
def test_stop_keeps_what_the_guest_wrote(guest: Guest, store_path: Path, mount: Mount,
                                         vm_dir: Path, tmp_path: Path, honours_acpi: bool):
    """`vm stop` of a guest with unsynced writes: a guest that shuts down on the power button
    keeps everything; one that ignores it is stopped with SIGTERM after --timeout, which
    keeps what reached its disk (QEMU flushes and closes it) but not the guest's page cache,
    and `vm stop` must say so instead of reporting a clean stop (a QA pass: it printed
    "stopped VM web" either way)."""
    flat = vm_dir / f"{VM}-flat.vmdk"
    mkfs_ext4(flat)
    script = UNSYNCED.format(listen=LISTEN if honours_acpi else "")
    append = f"{APPEND} vfsd.cmd={base64.b64encode(script.encode()).decode()}"
    started = vfsd(store_path, "vm", "start", VM, "--accel", "tcg", "--kernel",
                   str(guest.kernel), "--initrd", str(guest.initrd), "--append", append)
    assert started.returncode == 0, started.stderr
    console = store_path / "run" / "vms" / f"{VM}.console"
    wait_for(lambda: "VFSD-WRITTEN " in console.read_text(errors="replace"), 120,
             "the guest's writes")
    line = next(x for x in console.read_text().splitlines() if "VFSD-WRITTEN " in x)
    cached_sha, direct_sha = line.split("VFSD-WRITTEN ", 1)[1].split()

    stopped = vfsd(store_path, "vm", "stop", VM, "--timeout", "60" if honours_acpi else "2")
    assert stopped.returncode == 0, stopped.stderr
    assert running_qemu(store_path) is None
    if honours_acpi:
        assert "VFSD-POWERBUTTON" in console.read_text(errors="replace")
        assert stopped.stdout == f"stopped VM {VM}\n", stopped.stdout
    else:
        assert "did not power off within 2 s" in stopped.stdout, stopped.stdout
        assert "SIGTERM" in stopped.stdout and "warning:" in stopped.stdout, stopped.stdout

    mount.stop()
    mount.start()
    repair = e2fsck(flat, "-fy")
    assert repair.returncode in (0, 1), repair.stdout
    files = debugfs_dump(flat, ["cached", "direct"], tmp_path / "dump")
    # What reached the disk survives either way, flushed by the guest or not.
    assert hashlib.sha256(files["direct"]).hexdigest() == direct_sha
    if honours_acpi:
        assert hashlib.sha256(files.get("cached", b"")).hexdigest() == cached_sha
    mount.stop()
    fsck(store_path)
