"""The pool seen through the mount: statfs shows the quota, writes past it fail with ENOSPC
and leave nothing half-written."""

import contextlib
import ctypes
import errno
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount, fill_disk, free_port, tmpfs, wait_for

from vfsd.store import Store

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def test_quota_statfs_and_enospc(mount, mnt, store_path):
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "32M",
                    "--store", str(store_path)], check=True, capture_output=True)
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 32 * MiB
    (mnt / "fits").write_bytes(os.urandom(8 * MiB))
    st = os.statvfs(mnt)
    assert 23 * MiB <= st.f_bavail * st.f_frsize <= 24 * MiB + 4096

    with pytest.raises(OSError) as info, open(mnt / "too-big", "wb") as f:
        f.writelines(os.urandom(MiB) for _ in range(64))
        f.flush()
        os.fsync(f.fileno())
    assert info.value.errno == errno.ENOSPC
    # The file that fit is intact and the pool is not overdrawn.
    assert len((mnt / "fits").read_bytes()) == 8 * MiB
    st = os.statvfs(mnt)
    assert st.f_bavail * st.f_frsize >= 0
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "none",
                    "--store", str(store_path)], check=True, capture_output=True)
    (mnt / "after").write_bytes(b"space again")
    assert (mnt / "after").read_bytes() == b"space again"


def test_a_discard_on_a_full_pool_gives_room_back(mount, mnt, store_path):
    """A guest's TRIM is what frees a full pool: a hole punched while dirty data that does
    not fit waits in the cache must not first try to commit that data (it failed with
    ENOSPC, and QEMU paused the guest for good). Punched, the data then fits."""
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "40M",
                    "--store", str(store_path)], check=True, capture_output=True)
    old, new = os.urandom(32 * MiB), os.urandom(16 * MiB)
    fd = os.open(mnt / "disk", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, old)
        os.fsync(fd)
        os.pwrite(fd, new, 32 * MiB)  # 16 MiB more than the quota holds: stays dirty
        libc = ctypes.CDLL(None, use_errno=True)
        keep_size_punch_hole = 1 | 2
        if libc.fallocate(fd, keep_size_punch_hole, ctypes.c_long(0), ctypes.c_long(32 * MiB)):
            raise OSError(ctypes.get_errno(), "fallocate")
        assert os.pread(fd, 1 * MiB, 31 * MiB) == bytes(MiB)
        os.fsync(fd)
        assert os.pread(fd, 16 * MiB, 32 * MiB) == new
    finally:
        os.close(fd)
    assert (mnt / "disk").stat().st_blocks * 512 <= 17 * MiB
    data = (mnt / "disk").read_bytes()
    assert data[: 32 * MiB] == bytes(32 * MiB) and data[32 * MiB:] == new


def test_a_file_rewritten_in_place_on_a_nearly_full_pool(mount, mnt, store_path):
    """O_TRUNC, then new contents as large as the old, in a quota that cannot hold both: the
    commit counts the room the old contents give back, and replaces them in one step."""
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "12M",
                    "--store", str(store_path)], check=True, capture_output=True)
    (mnt / "bkt").mkdir()
    (mnt / "bkt" / "f").write_bytes(os.urandom(8 * MiB))
    new = os.urandom(8 * MiB)
    (mnt / "bkt" / "f").write_bytes(new)  # open(O_TRUNC), write, close
    assert (mnt / "bkt" / "f").read_bytes() == new
    with Store.open(store_path) as s:
        inode = s.resolve("bkt/f")
        assert bytes(s.read(inode.ino, 0, inode.size)) == new
    assert "event=truncation-committed-alone" not in (store_path / "vfsd.log").read_text()


@pytest.mark.timeout(180)
def test_a_file_rewritten_in_place_on_a_nearly_full_disk(tmp_path):
    """The same on a disk: the old bodies take their space until gc compacts them, so the
    first commit of the new contents cannot be staged beside them. The truncation then
    commits alone (as before it was deferred), gc gives the space back, and the rewrite
    fits."""
    with _disk_image_on_a_small_disk(tmp_path, "200m", 40) as (_mount, image, small):
        with Store.open(small / "store") as s:
            reserve = s.gc_reserve()
        st = os.statvfs(small)
        room = st.f_bavail * st.f_frsize - reserve
        (small / "ballast").write_bytes(bytes(room - 2 * MiB))  # less than one batch left
        new = os.urandom(40 * MiB)
        image.write_bytes(new)  # open(O_TRUNC), write, close
        assert image.read_bytes() == new
        log = (small / "store" / "vfsd.log").read_text()
        assert "event=truncation-committed-alone" in log


def test_fsynced_past_the_quota_the_store_stays_usable(mount, mnt, store_path):
    """fsync journals the bytes (one record) though the pool cannot take them; close then
    says ENOSPC. After unmount every command replays the journal when it opens the store:
    the replay keeps the acknowledged bytes past the quota instead of failing all of them."""
    vfsd = [sys.executable, "-m", "vfsd"]
    subprocess.run([*vfsd, "pool", "set", "--quota", "1M", "--store", str(store_path)],
                   check=True, capture_output=True)
    (mnt / "bkt").mkdir()
    data = os.urandom(MiB)
    fd = os.open(mnt / "bkt" / "f", os.O_CREAT | os.O_WRONLY)
    os.write(fd, data)
    os.fsync(fd)
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    mount.stop()
    assert "event=unmount-unwritten files=1" in mount.output()
    for verb in (["stats"], ["fsck"], ["pool", "set", "--quota", "none"]):
        done = subprocess.run([*vfsd, *verb, "--store", str(store_path)], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stderr
    mount.start()
    assert (mnt / "bkt" / "f").read_bytes() == data


def test_fsynced_writes_of_a_file_deleted_while_open_let_the_journal_lap(mount, mnt,
                                                                          store_path):
    """A file fsynced past the quota, unlinked while open, then closed (ENOSPC): its data
    can never be committed and the inode is freed at its release. Its journal sets need no
    replay (a recovery drops them), so the ring must be free to start a new lap: they kept
    it uncovered for the mount's life, every later fsync grew the journal file past its
    16 MiB ring, and the unmount kept the journal as if data were unwritten (the cache
    retried the dead file's data every interval until then)."""
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "1M",
                    "--store", str(store_path)], check=True, capture_output=True)
    fd = os.open(mnt / "tmp", os.O_CREAT | os.O_WRONLY)
    os.write(fd, os.urandom(MiB))
    os.fsync(fd)  # journaled: the pool cannot take it
    os.unlink(mnt / "tmp")
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    time.sleep(2)  # the release (sent after close returns), then a commit interval
    mount.stop()
    assert "event=journal-kept" not in mount.output()
    assert "event=unmount-unwritten" not in mount.output()
    assert (store_path / "journal" / "spare").exists()
    assert [p.name for p in (store_path / "journal").iterdir()] == ["spare"]


def test_a_flush_that_keeps_failing_is_logged_once_a_minute(mount, mnt, store_path):
    """Dirty data the full pool cannot take stays cached and is retried every commit
    interval; it was logged at every retry (a QA pass: every ~0.5 s until the file went)."""
    import time

    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "8M",
                    "--store", str(store_path)], check=True, capture_output=True)
    with pytest.raises(OSError) as info, open(mnt / "too-big", "wb") as f:
        f.writelines(os.urandom(MiB) for _ in range(16))
        f.flush()
        os.fsync(f.fileno())
    assert info.value.errno == errno.ENOSPC
    time.sleep(3.5)  # three commit intervals of retries
    log = (store_path / "vfsd.log").read_text()
    assert log.count("event=flush-failed") == 1, log
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "none",
                    "--store", str(store_path)], check=True, capture_output=True)
    wait_for(lambda: "event=flush-recovered" in (store_path / "vfsd.log").read_text(), 5,
             "the retried flush to succeed")
    assert len((mnt / "too-big").read_bytes()) == 16 * MiB


def test_a_full_disk_under_the_index_is_enospc_not_eio(tmp_path):
    """The file system under the store full: a metadata change (mkdir, create, rename) cannot
    commit its LMDB transaction. lmdb's DiskError reached the handler uncaught, so the caller
    got EIO and the log a handler-crash traceback; a full disk is ENOSPC, as for data."""
    with tmpfs(tmp_path / "small", "128m") as small:
        Store.init(small / "store").close()
        mount = Mount(small / "store", tmp_path / "mnt").start()
        try:
            mnt = mount.path
            (mnt / "keep").write_bytes(b"kept")
            ballast = fill_disk(small)
            failed = None
            for i in range(64):  # enough new names to need new index pages
                try:
                    (mnt / f"{i:03}{'d' * 200}").mkdir()
                except OSError as e:
                    failed = e
                    break
            assert failed is not None and failed.errno == errno.ENOSPC
            assert (mnt / "keep").read_bytes() == b"kept"
            ballast.unlink()
            (mnt / "later").mkdir()
            assert sorted(p.name for p in mnt.iterdir() if len(p.name) < 200) == ["keep", "later"]
        finally:
            mount.stop()


def _overwrite_in_place(disk: Path, writes: int, outcome: list[str]) -> None:
    """Random 1 MiB overwrites of a 100 MiB disk image with an fdatasync every 16, as a VM's
    flushes; notes each ENOSPC in `outcome`, then "done" (or the error that ended it)."""
    rng = random.Random(5)
    try:
        fd = os.open(disk, os.O_WRONLY)
    except OSError as e:
        outcome.append(f"open: {e!r}")
        return
    try:
        for i in range(writes):
            try:
                os.pwrite(fd, os.urandom(MiB), rng.randrange(100) * MiB)
                if i % 16 == 15:
                    os.fdatasync(fd)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                outcome.append("ENOSPC")
        outcome.append("done")
    except OSError as e:
        outcome.append(repr(e))
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def _disk_image_on_a_small_disk(tmp_path: Path, disk: str = "300m", image_mib: int = 100
                                ) -> Iterator[tuple[Mount, Path, Path]]:
    """A mount (32 MiB cache) of a store on a small tmpfs (its mount point is the third
    value), holding a disk image of random bytes."""
    with tmpfs(tmp_path / "small", disk) as small:
        Store.init(small / "store").close()
        mount = Mount(small / "store", tmp_path / "mnt", "--cache-size", "32M").start()
        try:
            image = mount.path / "disk.raw"
            image.write_bytes(os.urandom(image_mib * MiB))
            yield mount, image, small
        finally:
            mount.stop()


@pytest.mark.timeout(300)
def test_overwrites_wait_for_gc_instead_of_failing(tmp_path):
    """A disk image a third of a small disk, overwritten in place again and again: the dead
    bodies of the overwrites fill the disk until gc compacts their segments (every 2 s, then
    a 5 s grace). A QA pass saw 20-40% of the writes and fdatasyncs fail with ENOSPC though
    two thirds of the disk was garbage; a flush refused for room now waits for gc's passes
    while gc is giving space back, so the writer waits instead of failing."""
    with _disk_image_on_a_small_disk(tmp_path) as (_mount, disk, _small):
        outcome: list[str] = []
        _overwrite_in_place(disk, 600, outcome)
        assert outcome == ["done"], f"{outcome.count('ENOSPC')} writes failed: {outcome[-3:]}"


@pytest.mark.timeout(300)
def test_a_writer_waiting_for_cache_room_hears_of_a_failed_flush(tmp_path):
    """A file overwritten in place on a full disk, with the write-back cache full of its
    dirty chunks. The flushes that would make room failed (NoSpace), and the flusher then
    left the file alone until its next fsync reported the error; but its writer was blocked
    in write(2) waiting for room, so it never got to fsync: the write hung for good (a QA
    pass: minutes, with the mount idle and 160 MiB free again after gc). The waiting writer
    now gets the flush's error (ENOSPC), and writes work again once there is room."""
    with _disk_image_on_a_small_disk(tmp_path) as (mount, disk, _small):
        outcome: list[str] = []
        hung = _hangs(lambda: _overwrite_in_place(disk, 300, outcome), mount, 60)
        assert not hung, f"a write hung; before that: {outcome}"
        assert outcome[-1] == "done", outcome
        with open(disk, "r+b") as f:  # once gc has given the dead bodies back: room again
            wait_for(lambda: _written_and_synced(f), 60, "room for an fsynced write")


def _hangs(work, mount: Mount, seconds: float) -> bool:
    """Run `work` in a thread; if it has not returned after `seconds` (a write blocked for
    good), kill the mount, which ends it (ENOTCONN), and say so."""
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(seconds)
    if not thread.is_alive():
        return False
    mount.kill()
    thread.join(30)
    return True


def _written_and_synced(f) -> bool:
    try:
        f.seek(0)
        f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
        return True
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        time.sleep(1)
        return False


@pytest.mark.timeout(120)
def test_a_writer_waiting_for_room_held_by_other_files_hears_enospc(store_path, tmp_path):
    """The write-back cache full of other files' chunks that the full pool cannot take: their
    flushes failed, and the flusher leaves those files alone until their writers hear of it.
    A writer of another file that waited for room waited for good (its write(2) hung, with
    nothing of its own to flush). Now it hears ENOSPC, as on a full Linux file system."""
    vfsd = [sys.executable, "-m", "vfsd"]
    subprocess.run([*vfsd, "pool", "set", "--quota", "1M", "--store", str(store_path)],
                   check=True, capture_output=True)
    port = free_port()
    m = Mount(store_path, tmp_path / "mnt", "--cache-size", "2M",
              "--metrics-listen", f"127.0.0.1:{port}").start()

    def dirty() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return int(float(text.split("\nvfsd_mount_dirty_bytes ")[1].split()[0]))

    fds: list[int] = []
    outcome: list[str] = []
    try:
        (m.path / "fills").write_bytes(os.urandom(MiB - 64 * 1024))  # the pool is full now
        for i in range(64):  # one whole chunk per file, each file left open
            if dirty() + 64 * 1024 > 2 * MiB:
                break
            fd = os.open(m.path / f"a{i}", os.O_WRONLY | os.O_CREAT)
            fds.append(fd)
            os.write(fd, os.urandom(64 * 1024))
        assert dirty() == 2 * MiB  # the cache is full of chunks the pool cannot take

        def write_b() -> None:
            try:
                with open(m.path / "b", "wb") as f:
                    f.write(os.urandom(64 * 1024))
                    f.flush()
                outcome.append("written")
            except OSError as e:
                outcome.append(errno.errorcode.get(e.errno or 0, str(e)))

        assert not _hangs(write_b, m, 30), "the write waited for good"
        assert outcome == ["ENOSPC"], outcome
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # their close says ENOSPC: nothing was committed
        m.stop()
