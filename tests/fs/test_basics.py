"""POSIX behaviour through a real mount: the calls and errnos a Linux program expects."""

import errno
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from mounting import Mount, fsck, stored_bytes, wait_for

from vfsd.fs.mount import GC_INTERVAL
from vfsd.fs.readahead import READAHEAD_KIB, SYSFS_BDI, mount_device
from vfsd.store import Store

pytestmark = pytest.mark.timeout(120)


def expect_errno(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value


def test_files_dirs_and_errnos(mnt):
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"hello")
    assert (mnt / "d" / "f").read_bytes() == b"hello"
    expect_errno(errno.EEXIST, os.mkdir, mnt / "d")
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "d")
    expect_errno(errno.ENOENT, os.stat, mnt / "nope")
    expect_errno(errno.ENOTDIR, os.listdir, mnt / "d" / "f")
    expect_errno(errno.EISDIR, os.unlink, mnt / "d")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mnt / ("x" * 256))
    expect_errno(errno.ENAMETOOLONG, os.stat, mnt / ("x" * 256))  # a lookup, not a create
    expect_errno(errno.EEXIST, os.open, mnt / "d" / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with open(mnt / "d" / "f", "ab") as f:
        f.write(b" world")
    assert (mnt / "d" / "f").read_bytes() == b"hello world"
    with open(mnt / "d" / "f", "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert (mnt / "d" / "f").read_bytes() == b"new"
    os.rename(mnt / "d" / "f", mnt / "g")
    assert sorted(os.listdir(mnt)) == ["d", "g"]
    os.rmdir(mnt / "d")
    os.link(mnt / "g", mnt / "h")
    assert os.stat(mnt / "g").st_nlink == 2
    os.symlink("g", mnt / "s")
    assert os.readlink(mnt / "s") == "g" and (mnt / "s").read_bytes() == b"new"
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)


def test_attributes(mnt):
    p = mnt / "f"
    p.write_bytes(b"x" * 1000)
    os.chmod(p, 0o600)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    os.truncate(p, 10)
    assert p.read_bytes() == b"x" * 10
    os.truncate(p, 100_000)
    assert p.read_bytes() == b"x" * 10 + bytes(99_990)
    os.setxattr(p, "user.color", b"blue")
    assert os.getxattr(p, "user.color") == b"blue"
    assert "user.color" in os.listxattr(p)
    os.removexattr(p, "user.color")
    expect_errno(errno.ENODATA, os.getxattr, p, "user.color")


def test_posix_acls_are_refused_so_cp_a_keeps_modes(mnt, tmp_path):
    """The mount does not do POSIX ACLs. Stored as plain xattrs, cp -a's ACL (the way it
    copies a mode where ACLs work) left copies at cp's interim 0600 and enforced nothing;
    EOPNOTSUPP makes cp fall back to chmod, as on any file system without ACLs."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "readme").write_text("hi")
    os.chmod(tmp_path / "tree" / "readme", 0o644)
    os.chmod(tmp_path / "tree", 0o755)
    subprocess.run(["cp", "-a", str(tmp_path / "tree"), str(mnt / "tree")], check=True)
    assert stat.S_IMODE(os.stat(mnt / "tree").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(mnt / "tree" / "readme").st_mode) == 0o644
    p = mnt / "tree" / "readme"
    # USER_OBJ rw-, GROUP_OBJ r--, OTHER r--: the ACL that is just the mode 0644
    acl = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000400ffffffff")
    # (the kernel itself refuses a default ACL on a file: EACCES)
    for path, name in ((p, "system.posix_acl_access"), (mnt / "tree", "system.posix_acl_default")):
        expect_errno(errno.EOPNOTSUPP, os.setxattr, path, name, acl)
        expect_errno(errno.EOPNOTSUPP, os.getxattr, path, name)
        assert not [n for n in os.listxattr(path) if n.startswith("system.posix_acl")]


def test_o_creat_without_o_excl_opens_a_file_another_process_just_made(mnt, store_path):
    """Another process (the gateway) may make the name between the kernel's LOOKUP and its
    CREATE: open(2) without O_EXCL then opens that file; only O_EXCL may fail with EEXIST.
    (A QA pass: 47 of 300 such opens failed with EEXIST.)"""
    import threading

    from vfsd.store import Store

    (mnt / "race").mkdir()
    outcomes: dict[str, int] = {}
    with Store.open(store_path) as s:
        for i in range(150):
            maker = threading.Thread(target=s.write_file, args=(f"race/f{i}", b"other"))
            maker.start()
            try:
                os.close(os.open(mnt / "race" / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                 0o644))
                outcomes["opened"] = outcomes.get("opened", 0) + 1
            except OSError as e:
                outcomes[errno.errorcode[e.errno]] = outcomes.get(errno.errorcode[e.errno], 0) + 1
            finally:
                maker.join()
    assert outcomes == {"opened": 150}
    expect_errno(errno.EEXIST, os.open, mnt / "race" / "f0", os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_the_permission_check_of_an_open_that_found_the_file_made():
    """That open's file was checked by no one (the kernel checked the directory for a create):
    `_may_open` makes default_permissions' mode check."""
    from types import SimpleNamespace

    from vfsd.fs.operations import _may_open
    from vfsd.store import Inode

    f = Inode(7, stat.S_IFREG | 0o640, uid=1000, gid=100)
    for uid, gid, flags, allowed in [
        (0, 0, os.O_RDWR, True),  # root
        (1000, 5, os.O_RDWR, True),  # owner: rw-
        (2000, 100, os.O_RDONLY, True),  # group: r--
        (2000, 100, os.O_WRONLY, False),
        (2000, 100, os.O_RDWR, False),
        (3000, 300, os.O_RDONLY, False),  # other: ---
    ]:
        assert _may_open(f, flags | os.O_CREAT, SimpleNamespace(uid=uid, gid=gid)) is allowed


def test_rename_flags(mnt):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").mkdir()

    def renameat2(old, new, flags):
        if libc.renameat2(-100, bytes(old), -100, bytes(new), flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    expect_errno(errno.EEXIST, renameat2, mnt / "a", mnt / "b", 1)  # RENAME_NOREPLACE
    renameat2(mnt / "a", mnt / "b", 2)  # RENAME_EXCHANGE
    assert (mnt / "b").read_bytes() == b"A" and (mnt / "a").is_dir()


def test_unlinked_open_file_lives_until_close(mnt, store_path):
    p = mnt / "tmp"
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"still here" * 10_000)
    os.fsync(fd)
    os.unlink(p)
    assert not p.exists()
    os.pwrite(fd, b"more", 0)
    assert os.pread(fd, 14, 0) == b"morel here" + b"stil"
    os.close(fd)
    st = os.statvfs(mnt)
    assert st.f_blocks > 0


def test_unlinked_open_file_outlives_the_mounts_gc_passes(mnt):
    # The mount's gc pass frees orphans nobody holds; its own open file is held.
    p = mnt / "scratch"
    data = os.urandom(300_000)
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        time.sleep(GC_INTERVAL * 2)
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)


def test_a_small_file_being_written_uses_no_more_blocks_than_its_size(mnt):
    with open(mnt / "small", "wb") as f:
        f.write(os.urandom(10_000))
        f.flush()
        os.fsync(f.fileno())  # journaled: the chunk stays dirty in the mount's cache
        assert 0 < os.fstat(f.fileno()).st_blocks * 512 <= 10_240


def test_thin_blocks_and_sparse_100g(mnt):
    p = mnt / "disk"
    with open(p, "wb") as f:
        f.truncate(100 << 30)
    assert os.stat(p).st_blocks == 0
    with open(p, "r+b") as f:
        f.seek((100 << 30) - 4096)
        f.write(b"\xee" * 4096)
        f.flush()
        os.fsync(f.fileno())
    assert os.stat(p).st_size == 100 << 30
    assert 0 < os.stat(p).st_blocks * 512 <= 64 * 1024
    with open(p, "rb") as f:
        f.seek((100 << 30) - 8192)
        assert f.read(8192) == bytes(4096) + b"\xee" * 4096
        f.seek(50 << 30)
        assert f.read(4096) == bytes(4096)


def test_zero_writes_free_space(mnt):
    p = mnt / "z"
    p.write_bytes(os.urandom(4 << 20))
    assert os.stat(p).st_blocks * 512 >= 4 << 20
    with open(p, "r+b") as f:
        f.write(bytes(4 << 20))
    assert os.stat(p).st_blocks == 0
    assert p.read_bytes() == bytes(4 << 20)


def test_o_direct(mnt):
    import mmap

    p = mnt / "direct"
    buf = mmap.mmap(-1, 1 << 20)
    buf.write(os.urandom(1 << 20))
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, 0) == 1 << 20
        os.fdatasync(fd)
        back = mmap.mmap(-1, 1 << 20)
        assert os.preadv(fd, [back], 0) == 1 << 20
        assert back[:] == buf[:]
    finally:
        os.close(fd)


def test_writers_lease_the_file(mnt, store_path):
    from mounting import wait_for

    from vfsd.store import Store
    from vfsd.store.errors import Busy

    p = mnt / "disk"
    p.write_bytes(b"x")
    with Store.open(store_path) as s:
        ino = s.resolve("disk").ino
        # The kernel sends release after close() returns: poll for it.
        wait_for(lambda: s.leases.holder(ino) is None, 5, "the lease to go")
        with open(p, "r+b"):
            holder = s.leases.holder(ino)
            assert holder is not None and holder.kind == "the mount"
            with pytest.raises(Busy):
                s.leases.check_free(ino, "disk")
            with open(p, "r+b"):
                pass  # a second writer in the same mount re-enters the lease
            assert s.leases.holder(ino) is not None
        wait_for(lambda: s.leases.holder(ino) is None, 5, "the lease to go")


@pytest.mark.skipif(os.geteuid() != 0, reason="the readahead window is set through sysfs, as root")
def test_mount_widens_its_readahead_window(mnt):
    device = mount_device(Path(os.path.realpath(mnt)))
    assert device is not None
    knob = SYSFS_BDI / device / "read_ahead_kb"
    wait_for(lambda: knob.read_text().strip() == str(READAHEAD_KIB), 10, "the readahead window")


def test_o_trunc_empties_a_file_whose_writes_are_still_cached(mnt):
    """Nothing of the file is in the store yet (size 0 there), but O_TRUNC must still drop
    what the write-back cache and the fsync journal hold."""
    for fsync in (False, True):
        path = mnt / f"cached-{fsync}"
        writer = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(writer, b"hello world")
        if fsync:
            os.fsync(writer)
        truncating = os.open(path, os.O_WRONLY | os.O_TRUNC)
        assert os.fstat(truncating).st_size == 0
        os.close(truncating)
        os.close(writer)
        assert path.read_bytes() == b""


def test_o_trunc_truncates_a_file_opened_read_only(mnt):
    """Linux truncates on open(O_RDONLY | O_TRUNC) when the caller may write (the result is
    unspecified by POSIX; tmpfs and ext4 empty the file), and refuses it with EROFS on a
    read-only file."""
    path = mnt / "f"
    path.write_bytes(b"hello world")
    fd = os.open(path, os.O_RDONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        assert os.read(fd, 100) == b""
    finally:
        os.close(fd)
    assert path.read_bytes() == b""
    assert path.stat().st_size == 0


def test_o_trunc_leaves_the_old_contents_whole_until_the_new_ones_commit(store_path: Path,
                                                                          tmp_path: Path):
    """A file rewritten in place (open O_TRUNC, write, close: `cp`, an editor's save) is
    empty on the mount at once, reads as zeros wherever the new contents did not write
    (never as old bytes), and stays whole for other processes until the new contents
    commit with the truncation."""
    m = Mount(store_path, tmp_path / "mnt", "--commit-interval", "60").start()
    try:
        path = m.path / "f"
        old = os.urandom(300_000)
        path.write_bytes(old)
        fd = os.open(path, os.O_RDWR | os.O_TRUNC)
        try:
            assert os.fstat(fd).st_size == 0
            assert stored_bytes(store_path, "f") == old
            os.pwrite(fd, b"tail", 200_000)
            os.pwrite(fd, b"head", 10)  # a chunk the old file had, written in part
            expected = bytes(10) + b"head" + bytes(200_000 - 14) + b"tail"
            assert os.fstat(fd).st_size == len(expected)
            assert os.pread(fd, 300_000, 0) == expected
            assert stored_bytes(store_path, "f") == old
        finally:
            os.close(fd)
        assert stored_bytes(store_path, "f") == expected
        assert path.read_bytes() == expected
        # Nothing written: empty all the same, committed by the handle's release, which the
        # kernel sends once close(2) has returned.
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        wait_for(lambda: stored_bytes(store_path, "f") == b"", 10, "the bare truncation")
        assert path.stat().st_blocks == 0
    finally:
        m.stop()
    fsck(store_path)


def test_a_shell_redirection_over_a_file_replaces_it_in_one_step(store_path: Path,
                                                               tmp_path: Path):
    """`cmd > file`: the shell opens the file with O_TRUNC, hands a duplicate of the
    descriptor to the command and closes its own, a close (FLUSH) before anything is
    written. That close must not commit the bare truncation: other processes see the old
    contents until the command's output commits with it, never an empty file between."""
    m = Mount(store_path, tmp_path / "mnt", "--commit-interval", "60").start()
    try:
        path = m.path / "out"
        old = os.urandom(200_000)
        path.write_bytes(old)
        new = os.urandom(150_000)
        shells = os.open(path, os.O_WRONLY | os.O_TRUNC)
        commands = os.dup(shells)
        os.close(shells)
        assert stored_bytes(store_path, "out") == old
        os.write(commands, new)
        os.close(commands)
        assert stored_bytes(store_path, "out") == new
        # The same through a real shell and a real command.
        subprocess.run(["sh", "-c", f"head -c 70000 /dev/urandom > '{path}'"], check=True)
        assert len(stored_bytes(store_path, "out")) == 70_000
        assert path.read_bytes() == stored_bytes(store_path, "out")
    finally:
        m.stop()
    fsck(store_path)


def test_cp_over_a_file_replaces_it_in_one_step(store_path: Path, tmp_path: Path):
    """`cp` over an existing file: open(O_TRUNC), then copy_file_range of whole chunks. The
    copy shares the source's chunks and drops the old ones in one transaction (a race of
    GETs against it: tests/gateway/test_mount_coherence.py); an unaligned copy commits the
    truncation first and copies bytes. The old chunks' references go (fsck)."""
    m = Mount(store_path, tmp_path / "mnt", "--commit-interval", "60").start()
    try:
        src, dst = m.path / "src", m.path / "dst"
        data, old = os.urandom(300_000), os.urandom(500_000)
        src.write_bytes(data)
        dst.write_bytes(old)
        with open(src, "rb") as fin:
            fout = os.open(dst, os.O_WRONLY | os.O_TRUNC)
            try:
                assert stored_bytes(store_path, "dst") == old
                assert os.copy_file_range(fin.fileno(), fout, len(data), 0, 0) == len(data)
                assert stored_bytes(store_path, "dst") == data
                assert os.fstat(fout).st_size == len(data)
            finally:
                os.close(fout)
            assert dst.read_bytes() == data
            fout = os.open(dst, os.O_WRONLY | os.O_TRUNC)
            try:
                assert os.copy_file_range(fin.fileno(), fout, 1000, 5, 7) == 1000
            finally:
                os.close(fout)
        assert dst.read_bytes() == bytes(7) + data[5:1005]
        assert stored_bytes(store_path, "dst") == bytes(7) + data[5:1005]
    finally:
        m.stop()
    fsck(store_path)


def test_an_o_trunc_held_open_reaches_the_store_within_the_commit_interval(mount, store_path):
    path = mount.path / "g"
    path.write_bytes(b"x" * 100_000)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        wait_for(lambda: stored_bytes(store_path, "g") == b"", 5, "the truncation's commit")
        assert path.stat().st_size == 0
    finally:
        os.close(fd)


def test_o_trunc_of_an_empty_file_changes_its_times(mnt):
    path = mnt / "empty"
    path.write_bytes(b"")
    old = path.stat()
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))  # a second in the past
    before = path.stat().st_mtime_ns
    with open(path, "wb"):  # `: > empty`, a cheap touch build tools rely on
        pass
    assert path.stat().st_mtime_ns > before


def test_a_write_changes_ctime_with_mtime_and_its_later_commit_changes_neither(mount):
    # write(2) marks mtime and ctime for update together; the commit of the cached data a
    # moment later (here: at close) is no change a program made. Before, ctime stayed at the
    # file's creation until the commit, then jumped to the commit's time: ctime < mtime,
    # and a ctime change nobody made (git's index, backup tools' change detection).
    path = mount.path / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        time.sleep(0.01)  # the write's time differs from the creation's
        os.pwrite(fd, b"x" * 100, 0)
        written = os.stat(path)
        time.sleep(0.01)
    finally:
        os.close(fd)  # commits
    assert written.st_ctime_ns == written.st_mtime_ns
    mount.stop()
    mount.start()
    stored = os.stat(path)
    assert (stored.st_mtime_ns, stored.st_ctime_ns) == (written.st_mtime_ns,
                                                        written.st_ctime_ns)


def test_truncate_after_utimensat_shows_the_truncates_mtime_while_a_writer_is_open(mnt):
    # utimensat while a handle writes to the file (tar and rsync set times on open files)
    # used to leave its time in the mount's cache entry, which then hid the mtime of every
    # later change that did not go through the cache (ftruncate) until the last close.
    path = mnt / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"x" * 1000)
        os.ftruncate(fd, 1000)  # commits the write; the open writer keeps the cache entry
        os.utime(path, ns=(10**18, 10**18))
        assert os.stat(path).st_mtime_ns == 10**18
        before = time.time_ns()
        os.ftruncate(fd, 10)
        assert os.stat(path).st_mtime_ns >= before
    finally:
        os.close(fd)


def test_a_setgid_directory_hands_down_its_group(mnt):
    shared = mnt / "shared"
    shared.mkdir()
    os.chown(shared, -1, 100)
    os.chmod(shared, 0o2775)
    (shared / "file").write_bytes(b"x")
    (shared / "sub").mkdir()
    os.symlink("file", shared / "link")
    os.mkfifo(shared / "fifo")
    for name in ("file", "sub", "link", "fifo"):
        assert os.lstat(shared / name).st_gid == 100, name
    assert os.stat(shared / "sub").st_mode & stat.S_ISGID
    assert not os.stat(shared / "file").st_mode & stat.S_ISGID


def test_renaming_or_adding_an_entry_for_each_one_listed_ends(mnt):
    """POSIX leaves it open whether entries made during a listing show up in it; they must
    not keep showing up (a renamed entry gets a new place at the end of the directory)."""
    directory = mnt / "busy"
    directory.mkdir()
    names = {f"f{i:03d}" for i in range(300)}
    for name in names:
        (directory / name).write_bytes(b"")
    seen = []
    with os.scandir(directory) as entries:
        for entry in entries:
            seen.append(entry.name)
            os.rename(directory / entry.name, directory / (entry.name + ".x"))
            assert len(seen) <= len(names)
    assert sorted(seen) == sorted(names)
    added = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            (directory / (entry.name + ".bak")).write_bytes(b"")
            added += 1
            assert added <= len(names)
    assert added == len(names)
    assert len(os.listdir(directory)) == 2 * len(names)  # a new listing sees everything


def test_a_removed_working_directory_lists_as_empty(mnt):
    (mnt / "gone").mkdir()
    here = os.getcwd()
    os.chdir(mnt / "gone")
    try:
        (mnt / "gone").rmdir()
        time.sleep(1.1)  # past the kernel's cached attributes: the mount is asked
        assert os.listdir(".") == []  # ext4 and tmpfs answer this, not ENOENT
        assert os.stat(".").st_nlink == 0
        expect_errno(errno.ENOENT, os.open, "new", os.O_CREAT | os.O_WRONLY)
    finally:
        os.chdir(here)


def test_reading_sets_the_access_time_as_relatime_does(mount, store_path):
    p = mount.path / "mailbox"
    p.write_bytes(b"new mail")
    st = os.stat(p)
    os.utime(p, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))  # read before the last write
    time.sleep(1.1)  # past the kernel's cached attributes
    assert os.stat(p).st_atime_ns < os.stat(p).st_mtime_ns
    before = time.time_ns()
    assert p.read_bytes() == b"new mail"
    time.sleep(1.1)
    read_at = os.stat(p).st_atime_ns
    assert read_at >= before > os.stat(p).st_mtime_ns  # what mail readers and biff look at
    # relatime: newer than the mtime now, so reading again leaves it; O_NOATIME never sets it.
    p.read_bytes()
    os.close(os.open(p, os.O_RDONLY | os.O_NOATIME))
    time.sleep(1.1)
    assert os.stat(p).st_atime_ns == read_at
    # A change of the inode right after the read keeps the access (QA pass: it reverted).
    q = mount.path / "outbox"
    q.write_bytes(b"x")
    st = os.stat(q)
    os.utime(q, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))
    time.sleep(1.1)
    before = time.time_ns()
    q.read_bytes()
    os.chmod(q, 0o600)
    time.sleep(3)  # past the lazy write
    assert os.stat(q).st_atime_ns >= before
    mount.stop()  # written to the store at unmount at the latest
    with Store.open(store_path) as store:
        assert store.resolve("mailbox").atime_ns == read_at


def test_concurrent_opens_leave_no_hold_or_lease_behind(mnt, store_path):
    """Each handle holds the file (vfsd/store/opens.py) and, if writable, a count of its
    lease. Gating both on 'the first handle' raced with opens in flight: the last close then
    left a hold (deletes parked the file for ever) or a lease (409s, vm start refused)."""
    import threading

    from vfsd.store.opens import Opens

    p = mnt / "shared"
    p.write_bytes(b"x" * 100_000)
    ino = os.stat(p).st_ino

    def churn(flags: int) -> None:
        for _ in range(40):
            os.close(os.open(p, flags))

    for flags in (os.O_RDONLY, os.O_RDWR):
        threads = [threading.Thread(target=churn, args=(flags,)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    opens = Opens(store_path / "run")
    try:
        wait_for(lambda: not opens.held_elsewhere(ino), 5, "the mount's holds given back")
    finally:
        opens.close()
    with Store.open(store_path) as store:
        wait_for(lambda: store.leases.holder(ino) is None, 5, "the lease given back")
