"""Snapshots, clones and reverts of VMs and volumes: chunk-map copies, never body copies."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from vfsd.store import InodeFlags, Store
from vfsd.store.errors import Busy, Exists, NotFound, ReadOnly
from vfsd.store.leases import Holder
from vfsd.store.snapshots import Snapshots
from vfsd.store.vmdk import parse_extent
from vfsd.store.vms import Vms

pytestmark = pytest.mark.timeout(120)
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CS = 64 * KiB
DISK = 64 * MiB


def fill(store: Store, ino: int, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    for at in range(0, size, 4 * MiB):
        store.write(ino, at, data[at:at + 4 * MiB])
    return data


@pytest.fixture
def web(new_store, probe):
    """A store with VM `web` whose 64 MiB disk is fully written with random bytes."""
    store = new_store()
    Vms(store).create("web", DISK, 32 * MiB)
    flat = store.resolve("vms/web/web-flat.vmdk")
    data = fill(store, flat.ino, DISK, 1)
    swap = store.resolve("vms/web/web.vswp")
    store.write(swap.ino, 0, b"s" * CS)  # swap contents must never reach a snapshot
    store.write(store.resolve("vms/web/web.nvram").ino, 0, b"nvram-vars")
    probe.fsck_clean(store)
    return store, data


def names(store: Store, path: str) -> set[str]:
    return {e.name.decode() for e in store.readdir(store.resolve(path).ino)}


def test_snapshot_is_read_only_metadata_copy(web, probe) -> None:
    store, data = web
    physical = store.physical_bytes()
    info = Snapshots(store).create("web", "s1")
    assert store.physical_bytes() == physical  # no body copied
    assert info.name == "s1" and info.size >= DISK and info.stored >= DISK
    assert names(store, "vms/web/.snapshots/s1") == {
        "web.vmdk", "web-flat.vmdk", "web.nvram", "web.vmx"}  # no .vswp
    snap_flat = store.resolve("vms/web/.snapshots/s1/web-flat.vmdk")
    assert snap_flat.flags & InodeFlags.READONLY and not snap_flat.flags & InodeFlags.FIXED_SIZE
    assert store.resolve("vms/web/.snapshots/s1").flags & InodeFlags.READONLY
    assert store.resolve("vms/web/.snapshots").flags & InodeFlags.READONLY
    assert bytes(store.read(snap_flat.ino, 0, DISK)) == data
    with pytest.raises(ReadOnly):
        store.write(snap_flat.ino, 0, b"x")
    with pytest.raises(ReadOnly):
        store.truncate(snap_flat.ino, 0)
    with pytest.raises(ReadOnly):
        store.unlink(store.resolve("vms/web/.snapshots/s1").ino, b"web.vmx")
    with pytest.raises(ReadOnly):
        store.create(store.resolve("vms/web/.snapshots/s1").ino, b"new")
    with pytest.raises(ReadOnly):
        store.mkdir(store.resolve("vms/web/.snapshots").ino, b"fake")
    # the snapshot's descriptor names the flat file next to it, inside the snapshot
    desc = store.read_file("vms/web/.snapshots/s1/web.vmdk")
    assert parse_extent(desc) == ("web-flat.vmdk", DISK)
    # the VM goes on changing; the snapshot does not
    flat = store.resolve("vms/web/web-flat.vmdk")
    store.write(flat.ino, 0, b"\xff" * 4096)
    assert bytes(store.read(snap_flat.ino, 0, 4096)) == data[:4096]
    with pytest.raises(Exists):
        Snapshots(store).create("web", "s1")
    assert [s.name for s in Snapshots(store).list("web")] == ["s1"]
    probe.fsck_clean(store)


def test_clone_adds_under_one_percent_and_writes_cost_one_chunk(web, probe) -> None:
    store, data = web
    physical = store.physical_bytes()
    info = Snapshots(store).clone("web", "web2")
    assert store.physical_bytes() - physical < DISK // 100
    assert names(store, "vms/web2") == {
        "web2.vmdk", "web2-flat.vmdk", "web2.vswp", "web2.nvram", "web2.vmx"}
    assert info.disks[0].extent == "web2-flat.vmdk" and info.disks[0].size == DISK
    assert parse_extent(store.read_file("vms/web2/web2.vmdk")) == ("web2-flat.vmdk", DISK)
    vmx = store.read_file("vms/web2/web2.vmx")
    assert b'displayName = "web2"' in vmx and b'"web2.vmdk"' in vmx and b"web." not in vmx
    swap = store.resolve("vms/web2/web2.vswp")
    assert swap.stored == 0 and swap.size == 32 * MiB and swap.flags & InodeFlags.EPHEMERAL
    assert store.read_file("vms/web2/web2.nvram").startswith(b"nvram-vars")
    clone_flat = store.resolve("vms/web2/web2-flat.vmdk")
    assert clone_flat.flags & InodeFlags.FIXED_SIZE and not clone_flat.flags & InodeFlags.READONLY
    assert bytes(store.read(clone_flat.ino, 0, DISK)) == data
    physical = store.physical_bytes()
    store.write(clone_flat.ino, 5 * MiB + 100, b"w" * 4096)
    assert store.physical_bytes() - physical <= CS
    assert bytes(store.read(store.resolve("vms/web/web-flat.vmdk").ino, 5 * MiB, CS)) == \
        data[5 * MiB:5 * MiB + CS]
    with pytest.raises(Exists):
        Snapshots(store).clone("web", "web2")
    probe.fsck_clean(store)


def test_clone_from_a_snapshot_outlives_the_snapshot(web, probe) -> None:
    store, data = web
    snaps = Snapshots(store)
    snaps.create("web", "gold")
    flat = store.resolve("vms/web/web-flat.vmdk")
    store.write(flat.ino, 0, bytes(8 * MiB))  # the VM moves on (and frees chunks)
    snaps.clone("web", "web3", snapshot="gold")
    snaps.remove("web", "gold")
    assert snaps.list("web") == []
    probe.fsck_clean(store)
    clone = store.resolve("vms/web3/web3-flat.vmdk")
    assert bytes(store.read(clone.ino, 0, DISK)) == data
    Vms(store).remove("web")  # even with the source VM gone
    assert bytes(store.read(clone.ino, 0, DISK)) == data
    probe.fsck_clean(store)
    with pytest.raises(NotFound):
        snaps.clone("web3", "web4", snapshot="nope")


def test_revert_restores_bytes_and_size(web, probe) -> None:
    store, data = web
    snaps = Snapshots(store)
    snaps.create("web", "before")
    flat = store.resolve("vms/web/web-flat.vmdk")
    store.write(flat.ino, 3 * MiB + 7, b"damage" * 1000)
    store.punch_hole(flat.ino, 10 * MiB, 4 * MiB)
    Vms(store).resize("web", 2 * DISK)
    store.write(store.resolve("vms/web/web.nvram").ino, 0, b"changed!!!")
    assert snaps.revert("web", "before") == ["web-flat.vmdk", "web.nvram", "web.vmdk"]
    flat = store.resolve("vms/web/web-flat.vmdk")
    assert flat.size == DISK and bytes(store.read(flat.ino, 0, DISK)) == data
    assert parse_extent(store.read_file("vms/web/web.vmdk")) == ("web-flat.vmdk", DISK)
    assert store.read_file("vms/web/web.nvram").startswith(b"nvram-vars")
    assert store.resolve("vms/web/web.vswp").stored == CS  # swap is not the snapshot's business
    probe.fsck_clean(store)
    # the snapshot is still there, and the VM's disk writable again
    store.write(flat.ino, 0, b"again")
    assert bytes(store.read(store.resolve("vms/web/.snapshots/before/web-flat.vmdk").ino, 0, 5)) \
        == data[:5]
    probe.fsck_clean(store)


def test_revert_is_refused_while_a_disk_is_leased(web, probe) -> None:
    store, data = web
    snaps = Snapshots(store)
    snaps.create("web", "s")
    flat = store.resolve("vms/web/web-flat.vmdk")
    store.write(flat.ino, 0, b"new")
    holder = Holder.this_process("mount")
    store.leases.acquire(flat.ino, holder)
    try:
        with pytest.raises(Busy):
            snaps.revert("web", "s")
    finally:
        store.leases.release(flat.ino, holder)
    assert bytes(store.read(flat.ino, 0, 3)) == b"new"
    snaps.revert("web", "s")
    assert bytes(store.read(flat.ino, 0, 3)) == data[:3]


def test_snapshot_flush_hook_and_removal(web, probe) -> None:
    store, _data = web
    snaps = Snapshots(store)
    flushed: list[list[int]] = []
    snaps.create("web", "a", flush=flushed.append)
    swap = store.resolve("vms/web/web.vswp").ino
    assert flushed and store.resolve("vms/web/web-flat.vmdk").ino in flushed[0]
    assert swap not in flushed[0]
    snaps.create("web", "b")
    assert [s.name for s in snaps.list("web")] == ["a", "b"]
    chunks_before = store.physical_bytes()
    snaps.remove("web", "a")
    snaps.remove("web", "b")
    with pytest.raises(NotFound):
        snaps.remove("web", "b")
    assert store.physical_bytes() == chunks_before  # the VM still holds every chunk
    probe.fsck_clean(store)
    Vms(store).remove("web")  # a VM with snapshots goes with them
    snaps2 = Snapshots(store)
    with pytest.raises(NotFound):
        snaps2.list("web")
    assert store.physical_bytes() < MiB
    probe.fsck_clean(store)


def test_snapshot_and_clone_with_an_attached_volume(web, probe) -> None:
    store, _data = web
    vms = Vms(store)
    vms.create_volume("data", 4 * MiB)
    vol = store.resolve("volumes/data-flat.vmdk")
    vol_data = fill(store, vol.ino, 4 * MiB, 7)
    vms.attach("data", "web")
    snaps = Snapshots(store)
    snaps.create("web", "s")
    assert "data-flat.vmdk" in names(store, "vms/web/.snapshots/s")
    info = snaps.clone("web", "copy", snapshot="s")
    assert [d.extent for d in info.disks] == ["copy-flat.vmdk", "copy_1-flat.vmdk"]
    assert [d.volume for d in info.disks] == [None, None]  # instance disks of the clone
    assert bytes(store.read(store.resolve("vms/copy/copy_1-flat.vmdk").ino, 0, 4 * MiB)) \
        == vol_data
    assert parse_extent(store.read_file("vms/copy/copy_1.vmdk")) == ("copy_1-flat.vmdk", 4 * MiB)
    assert vms.show_volume("data").attached_to == "web"
    probe.fsck_clean(store)


def test_volume_snapshot_clone_revert(new_store, probe) -> None:
    store = new_store()
    vms, snaps = Vms(store), Snapshots(store)
    vms.create_volume("data", 8 * MiB)
    vol = store.resolve("volumes/data-flat.vmdk")
    data = fill(store, vol.ino, 8 * MiB, 9)
    physical = store.physical_bytes()
    snaps.create_volume_snapshot("data", "v1")
    assert names(store, "volumes/.snapshots/data/v1") == {"data.vmdk", "data-flat.vmdk"}
    assert vms.volume_names() == ["data"]
    clone = snaps.clone_volume("data", "data2", snapshot="v1")
    assert (clone.name, clone.size, clone.attached_to) == ("data2", 8 * MiB, None)
    assert store.physical_bytes() - physical < 8 * MiB // 100
    assert vms.volume_names() == ["data", "data2"]
    assert parse_extent(store.read_file("volumes/data2.vmdk")) == ("data2-flat.vmdk", 8 * MiB)
    store.write(vol.ino, 0, b"x" * MiB)
    snaps.revert_volume("data", "v1")
    assert bytes(store.read(vol.ino, 0, 8 * MiB)) == data
    assert [s.name for s in snaps.list_volume_snapshots("data")] == ["v1"]
    snaps.remove_volume_snapshot("data", "v1")
    assert names(store, "volumes/.snapshots") == set()
    assert bytes(store.read(store.resolve("volumes/data2-flat.vmdk").ino, 0, 8 * MiB)) == data
    snaps.clone_volume("data2", "data3")
    probe.fsck_clean(store)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
def test_qemu_img_reads_a_snapshot(web, tmp_path) -> None:
    """Export a snapshot directory as the core stores it: qemu-img must open its descriptor and
    find the snapshot's own flat extent."""
    store, _data = web
    Snapshots(store).create("web", "s")
    out = tmp_path / "export"
    out.mkdir()
    for e in store.readdir(store.resolve("vms/web/.snapshots/s").ino):
        (out / e.name.decode()).write_bytes(
            store.read_file(b"vms/web/.snapshots/s/" + e.name))
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(out / "web.vmdk")],
        check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "vmdk" and info["virtual-size"] == DISK
    assert info["format-specific"]["data"]["extents"][0]["filename"].endswith("web-flat.vmdk")


def test_snapshot_of_a_disk_repeating_one_chunk(new_store, probe) -> None:
    """copy_chunks counts one reference per use, not per distinct chunk."""
    store = new_store()
    Vms(store).create("rep", 4 * MiB, MiB)
    flat = store.resolve("vms/rep/rep-flat.vmdk")
    block = random.Random(2).randbytes(CS)
    store.write_chunks(flat.ino, {i: block for i in range(0, 64, 2)}, size=4 * MiB)
    snaps = Snapshots(store)
    snaps.create("rep", "s")
    snaps.clone("rep", "rep2", snapshot="s")
    probe.fsck_clean(store)
    assert store.physical_bytes() < 2 * CS
    snaps.remove("rep", "s")
    Vms(store).remove("rep")
    assert bytes(store.read(store.resolve("vms/rep2/rep2-flat.vmdk").ino, 2 * CS, CS)) == block
    probe.fsck_clean(store)


def test_volume_snapshots_outlive_the_volume(new_store, probe) -> None:
    store = new_store()
    vms, snaps = Vms(store), Snapshots(store)
    vms.create_volume("logs", 4 * MiB)
    data = fill(store, store.resolve("volumes/logs-flat.vmdk").ino, 4 * MiB, 4)
    snaps.create_volume_snapshot("logs", "daily")
    vms.remove_volume("logs")
    assert [s.name for s in snaps.list_volume_snapshots("logs")] == ["daily"]
    snaps.clone_volume("logs", "logs", snapshot="daily")  # restore under the old name
    assert bytes(store.read(store.resolve("volumes/logs-flat.vmdk").ino, 0, 4 * MiB)) == data
    snaps.remove_volume_snapshot("logs", "daily")
    with pytest.raises(NotFound):
        snaps.list_volume_snapshots("nope")
    probe.fsck_clean(store)


SNAPSHOTTER = """
import sys
from vfsd.store import Store
from vfsd.store.snapshots import Snapshots
from vfsd.store.vms import Vms
store = Store.open(sys.argv[1])
snaps, vms, r = Snapshots(store), Vms(store), sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    snaps.create("web", f"r{r}s{i}")
    snaps.clone("web", f"r{r}c{i}", snapshot=f"r{r}s{i}")
    snaps.revert("web", f"r{r}s{i}")
    if i % 2:
        snaps.remove("web", f"r{r}s{i - 1}")
        vms.remove(f"r{r}c{i - 1}")
    i += 1
"""


def test_sigkill_during_snapshots_and_clones(tmp_path, probe) -> None:
    """Kill a process looping over snapshot/clone/revert/remove at random moments: each
    snapshot and clone is there whole or not at all, the VM's disk never changes, fsck stays
    clean."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    path = tmp_path / "store"
    rng = random.Random()
    with Store.init(path) as store:
        Vms(store).create("web", 8 * MiB, MiB)
        data = fill(store, store.resolve("vms/web/web-flat.vmdk").ino, 8 * MiB, 3)
    env = dict(os.environ, PYTHONPATH=str(repo))
    for round_no in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SNAPSHOTTER, str(path), str(round_no)],
                                cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.3, 0.8))  # one loop takes a few ms
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with Store.open(path) as store:
            probe.fsck_clean(store)
            assert bytes(store.read(store.resolve("vms/web/web-flat.vmdk").ino, 0, 8 * MiB)) \
                == data
            snaps = Snapshots(store)
            assert any(s.name.startswith(f"r{round_no}s") for s in snaps.list("web"))
            for snap in snaps.list("web"):
                assert names(store, f"vms/web/.snapshots/{snap.name}") == {
                    "web.vmdk", "web-flat.vmdk", "web.nvram", "web.vmx"}
            for vm in Vms(store).names():
                if vm == "web":
                    continue
                assert names(store, f"vms/{vm}") == {
                    f"{vm}.vmdk", f"{vm}-flat.vmdk", f"{vm}.vswp", f"{vm}.nvram", f"{vm}.vmx"}
                flat = store.resolve(f"vms/{vm}/{vm}-flat.vmdk").ino
                assert bytes(store.read(flat, 0, 8 * MiB)) == data


def test_a_new_volume_does_not_take_an_old_volumes_snapshots(new_store, probe) -> None:
    """Snapshots outlive their volume (to clone from later); a new volume of the same name
    would list them as its own and revert to an unrelated (smaller) disk: refused."""
    store = new_store()
    vms, snaps = Vms(store), Snapshots(store)
    vms.create_volume("vs", 4 * MiB)
    snaps.create_volume_snapshot("vs", "s1")
    vms.remove_volume("vs")
    with pytest.raises(Exists, match="snapshots of an earlier volume vs"):
        vms.create_volume("vs", 64 * MiB)
    snaps.clone_volume("vs", "vs-copy", snapshot="s1")  # what they are kept for
    snaps.remove_volume_snapshot("vs", "s1")
    assert vms.create_volume("vs", 64 * MiB).size == 64 * MiB
    probe.fsck_clean(store)


def test_removed_snapshot_and_vm_files_stay_readable_while_held(web, probe) -> None:
    """A GET streaming a snapshot's disk, or a reader on the mount, holds the file
    (vfsd/store/opens.py): snapshot rm and vm rm park it, as unlink does, until let go."""
    store, data = web
    Snapshots(store).create("web", "s")
    snap_flat = store.resolve("vms/web/.snapshots/s/web-flat.vmdk")
    live_flat = store.resolve("vms/web/web-flat.vmdk")
    for inode in (snap_flat, live_flat):
        store.opens.hold(inode.ino)
    Snapshots(store).remove("web", "s")
    Vms(store).remove("web")
    for inode in (snap_flat, live_flat):
        assert bytes(store.data.read(inode.ino, 0, CS, inode.version)) == data[:CS]
        store.opens.release(inode.ino)
        store.release_orphan(inode.ino)
    with store.env.read() as tx:
        assert not any(True for _ in tx.cursor(tx.db.orphans))
    probe.fsck_clean(store)
