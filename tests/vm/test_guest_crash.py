"""Crash consistency with a real guest: QEMU is SIGKILLed while the guest writes files in a loop
(each one fsynced and followed by `sync` before the guest reports `VFSD-SYNCED n sha256`).
Afterwards e2fsck repairs whatever the crash left (journal replay), the file system checks
clean, and every file the guest reported synced is there with its bytes (read with debugfs).
The second case also SIGKILLs the vfsd daemon and remounts: what the guest's flushes
returned for must have reached the store, not only the daemon's memory. The mount's commit
interval is stretched to a minute so that only those flushes (fdatasync from QEMU) can have
made data durable: a flush that is lost on the way fails the test every time (checked with
cache=unsafe, where QEMU drops the guest's flushes)."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest
from mounting import Mount
from qemu_guest import Guest, GuestRun
from vmtools import VM, debugfs_dump, e2fsck, mkfs_ext4

pytestmark = pytest.mark.timeout(240)

SYNCED_BEFORE_KILL = 6


@pytest.fixture
def mount(store_path: Path, tmp_path: Path):
    """The mount, but flushing only when asked to (no timed commits within a test)."""
    m = Mount(store_path, tmp_path / "mnt", "--commit-interval", "60").start()
    try:
        yield m
    finally:
        m.stop()

WRITE_LOOP = """
set -e
waitdev {dev}
mount -t ext4 {dev} /mnt
mkdir -p /mnt/c
mark WRITING
i=0
while :; do
    i=$((i + 1))
    # unsynced traffic in flight when the kill comes
    dd if=/dev/urandom of=/mnt/c/unsynced$i bs=64k count=8 2>/dev/null
    dd if=/dev/urandom of=/tmp/f bs=64k count=3 2>/dev/null
    dd if=/tmp/f of=/mnt/c/f$i bs=64k conv=fsync 2>/dev/null
    sync
    mark SYNCED $i $(sha256sum </tmp/f | cut -c1-64)
done
"""


@pytest.mark.parametrize("interface, cache, kill_vfsd", [
    pytest.param("virtio", "none", False, id="virtio-cache-none-kill-qemu"),
    pytest.param("ahci", "writeback", True, id="ahci-writeback-kill-qemu-and-vfsd"),
])
def test_kill_qemu_mid_write(guest: Guest, mount: Mount, vm_dir: Path, tmp_path: Path,
                             interface: str, cache: str, kill_vfsd: bool):
    flat = vm_dir / f"{VM}-flat.vmdk"
    mkfs_ext4(flat)
    dev = "/dev/vda" if interface == "virtio" else "/dev/sda"
    with GuestRun(guest, tmp_path / "guest", WRITE_LOOP.format(dev=dev), vm_dir, VM,
                  [Path(f"{VM}-flat.vmdk")], label="crash", interface=interface, cache=cache,
                  discard="unmap") as run:
        run.wait_for("SYNCED", timeout=120, count=SYNCED_BEFORE_KILL)
        time.sleep(random.uniform(0, 0.3))  # land anywhere in the next write
        if kill_vfsd:
            # The daemon first: were QEMU killed first, closing its files would flush them.
            mount.kill()
        run.kill()
    synced = {}
    for detail in run.markers("SYNCED"):
        n, sha = detail.split()
        synced[f"c/f{n}"] = sha
    assert len(synced) >= SYNCED_BEFORE_KILL, run.describe()
    print(f"killed after {len(synced)} synced files, {time.monotonic() - run.started:.1f} s")

    if kill_vfsd:
        mount.stop()
        mount.start()

    repair = e2fsck(flat, "-fy")
    # 0: clean, 1: errors corrected (a journal replay counts); 4 and up: damage left behind.
    assert repair.returncode in (0, 1), repair.stdout + repair.stderr
    check = e2fsck(flat, "-fn")
    assert check.returncode == 0, repair.stdout + check.stdout + check.stderr

    dumped = debugfs_dump(flat, sorted(synced), tmp_path / "dump")
    missing = sorted(set(synced) - set(dumped))
    assert not missing, f"synced files lost: {missing}\n{repair.stdout}"
    damaged = [name for name, sha in synced.items()
               if hashlib.sha256(dumped[name]).hexdigest() != sha]
    assert not damaged, f"synced files with wrong bytes: {damaged}\n{repair.stdout}"
