"""A clone boots: a guest writes on VM web's disk, `vfsd vm clone web web2` copies chunk maps
(no bytes) while mounted, web2's guest reads web's file and writes its own, and web's disk
never sees web2's write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mounting import Mount, wait_for
from qemu_guest import Guest, run_guest
from vmtools import VM, mkfs_ext4

pytestmark = pytest.mark.timeout(300)
CLONE = "web2"

WRITE = """
set -e
waitdev /dev/vda
mount -t ext4 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/payload bs=1k count=500 2>/dev/null
mark SHA $(sha256sum /mnt/payload | cut -d' ' -f1)
sync
umount /mnt
"""

READ_AND_WRITE = """
set -e
waitdev /dev/vda
mount -t ext4 /dev/vda /mnt
mark SHA $(sha256sum /mnt/payload | cut -d' ' -f1)
echo clone-only >/mnt/clone-note
sync
umount /mnt
"""

CHECK_ORIGINAL = """
set -e
waitdev /dev/vda
mount -t ext4 -o ro /dev/vda /mnt
[ ! -e /mnt/clone-note ] && mark UNTOUCHED
umount /mnt
"""


def test_cloned_vm_boots_and_diverges(guest: Guest, mount: Mount, store_path: Path,
                                      tmp_path: Path):
    web = mount.path / "vms" / VM
    mkfs_ext4(web / f"{VM}-flat.vmdk")
    first = run_guest(guest, tmp_path / "g1", WRITE, web, VM, [Path(f"{VM}.vmdk")],
                      label="write", cache="none", timeout=120)
    written = first.markers("SHA")
    assert written, first.describe()

    subprocess.run([sys.executable, "-m", "vfsd", "vm", "clone", VM, CLONE, "--store",
                    str(store_path)], check=True, capture_output=True)
    clone = mount.path / "vms" / CLONE
    wait_for(lambda: (clone / f"{CLONE}.vmdk").exists(), 5, "the clone on the mount")

    second = run_guest(guest, tmp_path / "g2", READ_AND_WRITE, clone, CLONE,
                       [Path(f"{CLONE}.vmdk")], label="clone", cache="none", timeout=120)
    assert second.markers("SHA") == written, second.describe()
    third = run_guest(guest, tmp_path / "g3", CHECK_ORIGINAL, web, VM, [Path(f"{VM}.vmdk")],
                      label="original", cache="none", read_only=True, timeout=120)
    assert third.markers("UNTOUCHED"), third.describe()
