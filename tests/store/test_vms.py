"""VM and volume layout in the core, and the descriptor checked by a real qemu-img."""

import json
import os
import shutil
import subprocess

import pytest

from vfsd.store import InodeFlags, Store, fsck
from vfsd.store.errors import Busy, Exists, FileTooBig, NotFound, PermissionDenied, ReadOnly
from vfsd.store.vms import Vms

pytestmark = pytest.mark.timeout(60)
GiB = 1 << 30


@pytest.fixture
def store(tmp_path):
    with Store.init(tmp_path / "store") as s:
        yield s


def test_vm_files_and_flags(store):
    Vms(store).create("web", 20 * GiB, 2 * GiB)
    names = {e.name for e in store.readdir(store.resolve("vms/web").ino)}
    assert names == {b"web.vmdk", b"web-flat.vmdk", b"web.vswp", b"web.nvram", b"web.vmx"}
    flat = store.resolve("vms/web/web-flat.vmdk")
    assert flat.size == 20 * GiB and flat.flags & InodeFlags.FIXED_SIZE
    assert store.resolve("vms/web/web.vswp").flags & InodeFlags.EPHEMERAL
    assert store.resolve("vms/web/web.vswp").size == 2 * GiB
    descriptor = store.resolve("vms/web/web.vmdk")
    with pytest.raises(ReadOnly):
        store.write(descriptor.ino, 0, b"x")
    with pytest.raises(FileTooBig):
        store.write(flat.ino, 20 * GiB - 1, b"xy")
    store.write(flat.ino, 20 * GiB - 1, b"x")  # the last byte is inside
    assert store.physical_bytes() < 200_000  # thin: only the small files and one chunk
    with pytest.raises(Exists):
        Vms(store).create("web", GiB, GiB)
    assert fsck.check(store).clean


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
def test_qemu_img_reads_the_descriptor(store, tmp_path):
    """Export the VM's descriptor and extent as the core stores them; qemu-img must accept them."""
    size = 3 * GiB + 512
    Vms(store).create("db", size, GiB)
    flat = store.resolve("vms/db/db-flat.vmdk")
    store.write(flat.ino, 1 << 20, b"\xab" * 4096)
    out = tmp_path / "export"
    out.mkdir()
    (out / "db.vmdk").write_bytes(store.read_file("vms/db/db.vmdk"))
    with open(out / "db-flat.vmdk", "wb") as f:
        f.truncate(flat.size)
        f.seek(1 << 20)
        f.write(bytes(store.read(flat.ino, 1 << 20, 4096)))
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(out / "db.vmdk")],
        check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "vmdk"
    assert info["virtual-size"] == size
    subprocess.run(["qemu-img", "check", str(out / "db.vmdk")], check=True, capture_output=True)
    raw = subprocess.run(["qemu-img", "convert", "-O", "raw", str(out / "db.vmdk"),
                          str(tmp_path / "copy.raw")], check=True, capture_output=True)
    assert raw.returncode == 0
    with open(tmp_path / "copy.raw", "rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == b"\xab" * 4096


def test_resize_grows_and_rewrites_descriptor(store):
    vms = Vms(store)
    vms.create("web", GiB, GiB)
    vms.resize("web", 2 * GiB)
    assert store.resolve("vms/web/web-flat.vmdk").size == 2 * GiB
    assert b"RW 4194304 FLAT" in store.read_file("vms/web/web.vmdk")
    with pytest.raises(PermissionDenied):
        vms.resize("web", GiB)


def test_resize_is_refused_while_the_disk_is_written_and_volumes_grow_too(store):
    from vfsd.store.leases import Holder

    vms = Vms(store)
    vms.create("web", GiB, GiB)
    flat = store.resolve("vms/web/web-flat.vmdk")
    holder = Holder.this_process("mount")  # a running VM: QEMU has the disk open
    store.leases.acquire(flat.ino, holder)
    try:
        with pytest.raises(Busy):
            vms.resize("web", 2 * GiB)
    finally:
        store.leases.release(flat.ino, holder)
    assert store.resolve("vms/web/web-flat.vmdk").size == GiB  # nothing half-done
    assert b"RW 2097152 FLAT" in store.read_file("vms/web/web.vmdk")
    vms.create_volume("data", GiB)
    vms.attach("data", "web")
    assert vms.resize_volume("data", 3 * GiB).size == 3 * GiB
    assert store.resolve("vms/web/data-flat.vmdk").size == 3 * GiB  # the same inode
    assert b"RW 6291456 FLAT" in store.read_file("vms/web/data.vmdk")
    with pytest.raises(PermissionDenied):
        vms.resize_volume("data", GiB)


def test_volume_moves_between_vms_and_survives_vm_rm(store):
    vms = Vms(store)
    vms.create("a", GiB, GiB)
    vms.create("b", GiB, GiB)
    vms.create_volume("data", 10 * GiB)
    vms.attach("data", "a")
    disk = store.resolve("vms/a/data-flat.vmdk")
    assert disk.ino == store.resolve("volumes/data-flat.vmdk").ino  # one inode, two names
    store.write(disk.ino, 4096, b"written in A")
    with pytest.raises(Busy):
        vms.attach("data", "b")
    with pytest.raises(Busy):
        vms.remove_volume("data")
    assert [d.volume for d in vms.show("a").disks] == [None, "data"]
    assert vms.detach("data") == "a"
    vms.attach("data", "b")
    moved = store.resolve("vms/b/data-flat.vmdk")
    assert bytes(store.read(moved.ino, 4096, 12)) == b"written in A"
    vms.remove("b")
    assert vms.names() == ["a"]
    volume = vms.show_volume("data")
    assert volume.attached_to is None and volume.physical > 0
    assert bytes(store.read(store.resolve("volumes/data-flat.vmdk").ino, 4096, 12)) == \
        b"written in A"
    vms.remove_volume("data")
    with pytest.raises(NotFound):
        vms.show_volume("data")
    assert fsck.check(store).clean


def test_vm_rm_frees_instance_storage(store):
    vms = Vms(store)
    vms.create("tmp", GiB, GiB)
    before = store.physical_bytes()
    flat = store.resolve("vms/tmp/tmp-flat.vmdk")
    store.write(flat.ino, 0, os.urandom(1 << 20))
    assert store.physical_bytes() >= before + (1 << 20)
    vms.remove("tmp")
    assert store.physical_bytes() == 0
    assert fsck.check(store).clean


def test_swap_left_by_a_dead_mount_is_dropped_unless_a_live_process_holds_it(store):
    """`drop_abandoned_swap` (the mount's start-up): a swap file with data and no live writer
    is emptied; one leased to a live process (a VM running through another mount) is not."""
    from vfsd.procstat import state_and_start_time
    from vfsd.store.leases import Holder

    vms = Vms(store)
    vms.create("web", GiB, 64 << 20)
    vms.create("db", GiB, 64 << 20)
    for name in ("web", "db"):
        swap = store.resolve(f"vms/{name}/{name}.vswp")
        store.write(swap.ino, 0, os.urandom(256 << 10))
    web_swap = store.resolve("vms/web/web.vswp")
    db_swap = store.resolve("vms/db/db.vswp")
    dead = Holder(2**22 + 1, 1, "the mount")  # no such process: its lease is stale
    store.leases.acquire(web_swap.ino, dead)
    init = state_and_start_time(1)
    assert init is not None
    alive = Holder(1, init[1], "the mount")  # pid 1 lives as long as the machine
    store.leases.acquire(db_swap.ino, alive)
    me = Holder.this_process("the mount")
    try:
        assert vms.drop_abandoned_swap(me) == 1
    finally:
        store.leases.release(db_swap.ino, alive)
    assert store.resolve("vms/web/web.vswp").stored == 0
    assert store.read(web_swap.ino, 0, 256 << 10) == bytes(256 << 10)
    assert store.resolve("vms/web/web.vswp").size == 64 << 20
    assert store.resolve("vms/db/db.vswp").stored > 0
    assert store.leases.holder(web_swap.ino) is None  # its lease given back
    assert vms.drop_abandoned_swap(me) == 1  # db's, now nobody's
    assert vms.drop_abandoned_swap(me) == 0
    assert fsck.check(store).clean
