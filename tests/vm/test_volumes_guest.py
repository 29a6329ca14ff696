"""Volume storage with real guests: a volume (ext4 made on the host through the mount) is
attached to VM web, whose guest writes a file on it; detached and attached to VM db, whose guest
reads the same file back. Removing web keeps the volume; a volume attached elsewhere is not
attached twice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mounting import Mount, wait_for
from qemu_guest import Guest, run_guest
from vmtools import VM, create_vm, mkfs_ext4

from vfsd.store import Store
from vfsd.store.errors import Busy
from vfsd.store.vms import Vms

pytestmark = pytest.mark.timeout(300)

OTHER = "db"
VOLUME = "data"

WRITE = """
set -e
waitdev /dev/vdb
mount -t ext4 /dev/vdb /mnt
dd if=/dev/urandom of=/mnt/payload bs=1k count=777 2>/dev/null
echo "written by $(cat /etc/vfsd-guest)" >/mnt/note
mark SHA $(sha256sum /mnt/payload | cut -d' ' -f1)
sync
umount /mnt
"""

READ = """
set -e
waitdev /dev/vdb
mount -t ext4 -o ro /dev/vdb /mnt
mark SHA $(sha256sum /mnt/payload | cut -d' ' -f1)
mark NOTE $(cat /mnt/note)
umount /mnt
"""


def test_volume_moves_between_guests(guest: Guest, store_path: Path, mount: Mount,
                                     tmp_path: Path):
    create_vm(store_path, name=OTHER)
    with Store.open(store_path) as store:
        vms = Vms(store)
        vms.create_volume(VOLUME, 64 << 20)
        vms.attach(VOLUME, VM)
        extent = f"{VOLUME}-flat.vmdk"
        web_dir, db_dir = mount.path / "vms" / VM, mount.path / "vms" / OTHER
        wait_for(lambda: (web_dir / extent).exists(), 10, "the attached volume on the mount")
        assert os.stat(web_dir / extent).st_ino == os.stat(mount.path / "volumes" / extent).st_ino
        mkfs_ext4(mount.path / "volumes" / extent)

        first = run_guest(guest, tmp_path / "guest", WRITE, web_dir, VM,
                          [Path(f"{VM}-flat.vmdk"), Path(extent)], label="write",
                          cache="none", timeout=120)
        written = first.markers("SHA")
        assert len(written) == 1 and len(written[0]) == 64, first.describe()

        # web's guest has powered off: the volume moves to db.
        with pytest.raises(Busy):
            vms.attach(VOLUME, OTHER)  # still attached to web
        assert vms.detach(VOLUME) == VM
        wait_for(lambda: not (web_dir / extent).exists(), 10, "the detach on the mount")
        vms.attach(VOLUME, OTHER)
        assert vms.show_volume(VOLUME).attached_to == OTHER
        assert [d.volume for d in vms.show(OTHER).disks] == [None, VOLUME]
        wait_for(lambda: (db_dir / extent).exists(), 10, "the volume in db's directory")

        second = run_guest(guest, tmp_path / "guest", READ, db_dir, OTHER,
                           [Path(f"{OTHER}-flat.vmdk"), Path(extent)], label="read",
                           cache="none", timeout=120)
        assert second.markers("SHA") == written, second.describe()
        assert second.markers("NOTE") and second.markers("NOTE")[0].startswith("written by"), \
            second.describe()

        # Deleting a VM never deletes the volumes attached to it.
        vms.remove(OTHER)
        info = vms.show_volume(VOLUME)
        assert info.attached_to is None and info.size == 64 << 20 and info.physical > 0
        wait_for(lambda: not db_dir.exists(), 10, "db's removal on the mount")
        assert (mount.path / "volumes" / extent).exists()
        vms.attach(VOLUME, VM)  # free again: attachable
        with pytest.raises(Busy) as busy:
            vms.attach(VOLUME, VM)
        assert "attached to VM web" in str(busy.value)
        vms.remove(VM)
        assert VOLUME in vms.volume_names() and vms.show_volume(VOLUME).attached_to is None
