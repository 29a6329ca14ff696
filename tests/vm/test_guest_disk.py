"""A Linux guest under QEMU uses a VM disk on the mount: ext4 made on the host, files written by
the guest through the flat extent (cache=none: O_DIRECT), TRIM reaching the store, the files
read back through the VMDK descriptor (format=vmdk, cache=writeback) on virtio-blk and
virtio-scsi, and the host's e2fsck and debugfs agreeing with the guest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from qemu_guest import Guest, run_guest
from vmtools import VM, debugfs_dump, e2fsck, mkfs_ext4

pytestmark = pytest.mark.timeout(240)

# Sizes in KiB: sub-block, sub-chunk, one chunk, unaligned multi-chunk.
FILES = {"tiny": 1, "small": 7, "chunk": 64, "odd": 333}
BIG_KIB = 8192  # written, synced, deleted and trimmed

WRITE_AND_TRIM = """
set -e
waitdev /dev/vda
mount -t ext4 /dev/vda /mnt
mkdir /mnt/data
""" + "".join(
    f"dd if=/dev/urandom of=/mnt/data/{name} bs=1k count={kib} 2>/dev/null\n"
    for name, kib in FILES.items()
) + f"""
cd /mnt/data
sha256sum * >/mnt/MANIFEST
sed 's/^/VFSD-SHA /' /mnt/MANIFEST
dd if=/dev/urandom of=/mnt/big bs=64k count={BIG_KIB // 64} 2>/dev/null
sync
rm /mnt/big
sync
mark TRIM $(fstrim -v /mnt)
cd /
umount /mnt
"""

VERIFY_READ_ONLY = """
set -e
waitdev /dev/vda
waitdev /dev/sda
mount -t ext4 -o ro,noload /dev/vda /mnt
cd /mnt/data
sha256sum -c /mnt/MANIFEST >/dev/null
mark VERIFIED $(wc -l </mnt/MANIFEST) files
cd /
umount /mnt
a=$(dd if=/dev/vda bs=1M count=16 2>/dev/null | sha256sum)
b=$(dd if=/dev/sda bs=1M count=16 2>/dev/null | sha256sum)
[ "$a" = "$b" ]
mark SAME virtio-blk and virtio-scsi read the same bytes
"""


def test_guest_writes_trims_and_reads_back(guest: Guest, vm_dir: Path, tmp_path: Path):
    flat = vm_dir / f"{VM}-flat.vmdk"
    mkfs_ext4(flat)
    stored_after_mkfs = flat.stat().st_blocks * 512

    # Boot 1: the flat extent as a raw disk, O_DIRECT, guest discards passed down.
    first = run_guest(guest, tmp_path / "guest", WRITE_AND_TRIM, vm_dir, VM,
                      [Path(f"{VM}-flat.vmdk")], label="write", cache="none",
                      discard="unmap", timeout=120)
    manifest = {name: sha for sha, name in (line.split() for line in first.markers("SHA"))}
    assert sorted(manifest) == sorted(FILES), first.describe()
    # The big file's chunks were stored, then fstrim punched them out again. Without TRIM
    # reaching the store the disk would hold > BIG_KIB more.
    grown = flat.stat().st_blocks * 512 - stored_after_mkfs
    print(f"write boot: ready {first.time_of('READY'):.1f} s, done {first.time_of('OK'):.1f} s; "
          f"disk grew {grown} bytes; {first.markers('TRIM')}")
    assert grown < BIG_KIB * 1024 // 2, (
        f"TRIM did not reach the store: the disk grew by {grown} bytes; {first.markers('TRIM')}")

    # Boot 2: the descriptor through QEMU's vmdk driver, read-only (see test_qemu_img.py for
    # why not read-write), through the host page cache, on two controllers at once.
    second = run_guest(guest, tmp_path / "guest", VERIFY_READ_ONLY, vm_dir, VM,
                       [Path(f"{VM}.vmdk"), Path(f"{VM}.vmdk")], label="verify",
                       interface=["virtio", "virtio-scsi"], read_only=True,
                       cache="writeback", timeout=120)
    assert second.markers("VERIFIED") == [f"{len(FILES)} files"], second.describe()
    assert second.markers("SAME"), second.describe()
    print(f"verify boot: ready {second.time_of('READY'):.1f} s, "
          f"done {second.time_of('OK'):.1f} s")

    # The host agrees: a clean file system holding the bytes the guest wrote.
    check = e2fsck(flat, "-fn")
    assert check.returncode == 0, check.stdout + check.stderr
    dumped = debugfs_dump(flat, [f"data/{name}" for name in FILES], tmp_path / "dump")
    for name in FILES:
        assert hashlib.sha256(dumped[f"data/{name}"]).hexdigest() == manifest[name], name
