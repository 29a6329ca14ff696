"""What survives: fsync'd data through SIGKILL of the daemon, dirty data through SIGTERM and
`fusermount3 -u` (DESIGN.md "Write path and durability").

Unsynced data may be lost at a SIGKILL, but only whole chunks at a time: each 64 KiB chunk of a
file reads as one of the versions the file really had, never as garbage.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounting import Mount, fsck, stored_bytes, wait_for

from vfsd.store import Store

CHUNK = 64 * 1024
WRITER = Path(__file__).with_name("journaled_writer.py")
SEED = int(os.environ.get("VFSD_TEST_SEED", random.randrange(1 << 32)))


@pytest.fixture(autouse=True)
def show_seed() -> None:
    print(f"random seed {SEED} (rerun with VFSD_TEST_SEED={SEED})")  # shown when a test fails


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data) == len(data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes, offset: int, piece: int = 100_000) -> None:
    """Several unaligned writes, like a program that does not think in chunks."""
    for at in range(0, len(data), piece):
        part = data[at:at + piece]
        assert os.pwrite(fd, part, offset + at) == len(part)


def close_all(fds: list[int]) -> None:
    """Close what a test holds open on the mount (a dead daemon makes close fail)."""
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


def check_chunks(name: str, actual: bytes, versions: list[bytes], *, exact_size: bool) -> None:
    """Each chunk of `actual` equals the same chunk of one of `versions` (read past a
    version's end as zeros: a hole), and the size is one of theirs (or between them)."""
    sizes = sorted({len(v) for v in versions})
    if exact_size:
        assert len(actual) in sizes, f"{name}: size {len(actual)} is none of {sizes}"
    else:
        assert sizes[0] <= len(actual) <= sizes[-1], f"{name}: size {len(actual)} not in {sizes}"
    longest = max(len(actual), sizes[-1])
    padded = [v + bytes(longest - len(v)) for v in versions]
    for at in range(0, len(actual), CHUNK):
        got = actual[at:at + CHUNK]
        if not any(got == v[at:at + len(got)] for v in padded):
            which = [sum(a != b for a, b in zip(got, v[at:at + len(got)])) for v in padded]
            raise AssertionError(f"{name}: chunk {at // CHUNK} (offset {at}) matches no version "
                                 f"the file ever had (differing bytes per version: {which})")


# --- (a) fsync, SIGKILL, remount ---------------------------------------------------------------

@pytest.mark.timeout(120)
def test_fsynced_data_survives_sigkill(store_path: Path, tmp_path: Path):
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt).start()
    fds: list[int] = []
    try:
        # Old contents, fsynced.
        old = {"a": rng.randbytes((1 << 20) + 1000), "b": rng.randbytes(3 << 20),
               "dir/c": rng.randbytes(200_000)}
        (mnt / "dir").mkdir()
        for name, data in old.items():
            write_file(mnt / name, data, sync=True)

        # a: overwritten in unaligned pieces and fsynced: must read back exactly.
        a_new = bytearray(old["a"])
        fd_a = os.open(mnt / "a", os.O_RDWR)
        try:
            for _ in range(20):
                offset, length = rng.randrange(len(a_new) + 50_000), rng.randint(1, 150_000)
                data = rng.randbytes(length)
                assert os.pwrite(fd_a, data, offset) == length
                if offset > len(a_new):
                    a_new.extend(bytes(offset - len(a_new)))
                a_new[offset:offset + length] = data
            os.fsync(fd_a)
        finally:
            os.close(fd_a)

        # b: overwritten everywhere and grown, never fsynced, still open at the kill.
        b_new = rng.randbytes(len(old["b"]) + 100_000)
        fd_b = os.open(mnt / "b", os.O_RDWR)
        fds.append(fd_b)
        pwrite_all(fd_b, b_new, 0)

        # c: new contents fsynced, then more written on top and not fsynced.
        c_synced = rng.randbytes(300_000)
        c_late = bytearray(c_synced)
        fd_c = os.open(mnt / "dir/c", os.O_RDWR | os.O_TRUNC)
        fds.append(fd_c)
        pwrite_all(fd_c, c_synced, 0)
        os.fsync(fd_c)
        late = rng.randbytes(150_000)
        pwrite_all(fd_c, late, 70_000, piece=33_333)
        c_late[70_000:220_000] = late

        # d: created (a namespace change, durable at once), written, never fsynced.
        d_new = rng.randbytes(500_000)
        fd_d = os.open(mnt / "d", os.O_CREAT | os.O_RDWR, 0o644)
        fds.append(fd_d)
        pwrite_all(fd_d, d_new, 0)

        m.kill()
        close_all(fds)
        fsck(store_path)  # the state the crash left, before a mount purges anything

        m = Mount(store_path, mnt).start()
        assert (mnt / "a").read_bytes() == a_new, f"fsynced data lost (seed {SEED})"
        check_chunks("b", (mnt / "b").read_bytes(), [old["b"], b_new], exact_size=False)
        check_chunks("dir/c", (mnt / "dir/c").read_bytes(), [c_synced, bytes(c_late)],
                     exact_size=True)
        assert (mnt / "dir/c").read_bytes()[:70_000] == c_synced[:70_000]
        assert (mnt / "d").exists(), "a created file vanished at the crash"
        check_chunks("d", (mnt / "d").read_bytes(), [b"", d_new], exact_size=False)
    finally:
        close_all(fds)
        m.stop()
    fsck(store_path)


# --- (b) a journaling writer, killed at random points ---------------------------------------

def replay(base: dict[str, bytes], journal: Path) -> dict[str, list[bytes]]:
    """The versions each file may have after the crash: exactly the journal's done batches
    applied to `base`, plus, for the file of the batch in flight, each prefix of its ops."""
    sys.path.insert(0, str(WRITER.parent))
    try:
        from journaled_writer import data_for
    finally:
        sys.path.remove(str(WRITER.parent))

    def apply(content: bytearray, op: list) -> None:
        if op[0] == "t":
            del content[op[1]:]
            content.extend(bytes(op[1] - len(content)))
        else:
            data = data_for(op)
            if op[1] > len(content):
                content.extend(bytes(op[1] - len(content)))
            content[op[1]:op[1] + len(data)] = data

    files = {name: bytearray(data) for name, data in base.items()}
    pending: dict | None = None
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        if "batch" in record:
            pending = record
        else:
            assert pending is not None and record["done"] == pending["batch"]
            for op in pending["ops"]:
                apply(files[pending["file"]], op)
            pending = None
    versions = {name: [bytes(content)] for name, content in files.items()}
    if pending is not None:
        content = files[pending["file"]]
        for op in pending["ops"]:
            apply(content, op)
            versions[pending["file"]].append(bytes(content))
    return versions


@pytest.mark.timeout(180)
def test_journaled_writer_survives_repeated_sigkill(store_path: Path, tmp_path: Path):
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    names = ["f0", "f1", "sub/f2"]
    max_size = 1 << 20
    m = Mount(store_path, mnt).start()
    writer = None
    try:
        (mnt / "sub").mkdir()
        base = {}
        for name in names:
            base[name] = rng.randbytes(rng.randrange(max_size))
            write_file(mnt / name, base[name], sync=True)
        for round_no in range(5):
            journal = tmp_path / f"journal-{round_no}.jsonl"
            writer = subprocess.Popen(
                [sys.executable, str(WRITER), str(mnt), str(journal), str(rng.getrandbits(32)),
                 str(max_size), *names], stderr=subprocess.PIPE, text=True)
            target = rng.randint(1, 30)  # fsynced batches before the kill

            def ready(journal: Path = journal, target: int = target,
                      writer: subprocess.Popen = writer) -> bool:
                done = journal.read_text().count('"done"') if journal.exists() else 0
                return done >= target or writer.poll() is not None

            wait_for(ready, 60, f"{target} fsynced batches")
            assert writer.poll() is None, f"the writer stopped early: {writer.stderr.read()}"
            time.sleep(rng.uniform(0, 0.2))  # the kill lands anywhere in a batch
            m.kill()
            writer.wait(timeout=30)
            writer.stderr.close()
            fsck(store_path)

            m = Mount(store_path, mnt).start()
            versions = replay(base, journal)
            for name in names:
                actual = (mnt / name).read_bytes()
                check_chunks(f"{name} after kill {round_no} (seed {SEED})", actual,
                             versions[name], exact_size=True)
                base[name] = actual
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        m.stop()
    fsck(store_path)


# --- (c) SIGTERM, (d) fusermount3 -u: dirty data is flushed on the way out --------------------

def read_core(store: Path, name: str) -> bytes:
    with Store.open(store) as s:
        return s.read_file(name)


@pytest.mark.timeout(60)
def test_sigterm_flushes_dirty_data_and_unmounts(store_path: Path, tmp_path: Path):
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    # A long commit interval: nothing but the shutdown can flush what is still open.
    m = Mount(store_path, mnt, "--commit-interval", "600").start()
    fds = []
    try:
        old = rng.randbytes(1 << 20)
        write_file(mnt / "old", old, sync=True)
        # The kernel sends that handle's RELEASE after close() returns, and a release flushes
        # the file: let it come before the writes that must stay dirty (its lease goes then).
        with Store.open(store_path) as s:
            ino = s.resolve("old").ino
            wait_for(lambda: s.leases.holder(ino) is None, 10, "the first handle's release")
        new_part = rng.randbytes(300_001)
        fd = os.open(mnt / "old", os.O_RDWR)
        fds.append(fd)
        pwrite_all(fd, new_part, 200_000)
        expected_old = old[:200_000] + new_part + old[500_001:]

        (mnt / "t").mkdir()
        fresh = rng.randbytes((2 << 20) + 123)
        fd = os.open(mnt / "t/fresh", os.O_CREAT | os.O_RDWR, 0o644)
        fds.append(fd)
        pwrite_all(fd, fresh, 0)

        # The precondition that makes this test mean something: the data is still dirty.
        assert read_core(store_path, "old") == old
        assert read_core(store_path, "t/fresh") == b""

        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=30) == 0, m.output()
        wait_for(lambda: not os.path.ismount(mnt), 10, "the unmount")
    finally:
        close_all(fds)
        m.stop()
    assert read_core(store_path, "old") == expected_old
    assert read_core(store_path, "t/fresh") == fresh
    fsck(store_path)


@pytest.mark.timeout(60)
def test_fusermount_unmount_flushes_closed_files(store_path: Path, tmp_path: Path):
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "600").start()
    expected: dict[str, bytes] = {}
    try:
        (mnt / "closed").mkdir()
        for i in range(5):  # written and closed, never fsynced
            data = rng.randbytes(rng.randrange(1, 1 << 20))
            write_file(mnt / f"closed/{i}", data, sync=False)
            expected[f"closed/{i}"] = data

        # Written through a shared mapping: dirty pages reach the daemon by page writeback.
        mapped = bytearray(rng.randbytes(1 << 20))
        fd = os.open(mnt / "mapped", os.O_CREAT | os.O_RDWR, 0o644)
        os.ftruncate(fd, len(mapped))
        view = mmap.mmap(fd, len(mapped), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)
        view[:] = mapped
        view[5000:6000] = mapped[5000:6000] = b"\xaa" * 1000
        view.close()
        expected["mapped"] = bytes(mapped)

        # Open while the others were written, closed just before the unmount.
        late = rng.randbytes(3 << 20)
        fd = os.open(mnt / "late", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            pwrite_all(fd, late, 0)
        finally:
            os.close(fd)
        expected["late"] = late
        result = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stderr
        assert m.proc.wait(timeout=30) == 0, m.output()
        assert not os.path.ismount(mnt)
    finally:
        m.stop()
    for name, data in expected.items():
        assert read_core(store_path, name) == data, name
    fsck(store_path)


# --- (c) the fsync journal: what it replays after a crash, and what it must not -------------

def journal_files(store: Path) -> list[Path]:
    return list((store / "journal").iterdir())


@pytest.mark.timeout(120)
def test_small_fsyncs_are_replayed_from_the_journal(store_path: Path, tmp_path: Path):
    """No commit runs (a 60 s interval, the file kept open): only the journal holds the
    fsynced writes when the daemon dies, and the next mount puts them in the store."""
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "60").start()
    fds: list[int] = []
    try:
        base = rng.randbytes(300_000)
        write_file(mnt / "db", base, sync=True)
        expected = bytearray(base)
        fd = os.open(mnt / "db", os.O_RDWR)
        fds.append(fd)
        for _ in range(30):  # a database's commits: a few pages each, then fsync
            for _ in range(rng.randint(1, 3)):
                offset, data = rng.randrange(len(expected) + 10_000), rng.randbytes(4096)
                assert os.pwrite(fd, data, offset) == len(data)
                expected.extend(bytes(max(0, offset - len(expected))))
                expected[offset:offset + len(data)] = data
            os.fdatasync(fd)
        [dead] = journal_files(store_path)
        m.kill()
        close_all(fds)
        assert stored_bytes(store_path, "db") == base, "something committed: nothing to prove"
        m = Mount(store_path, mnt).start()
        assert (mnt / "db").read_bytes() == expected, f"fsynced data lost (seed {SEED})"
        assert "sets_replayed=30" in m.output(), "the fsyncs did not go through the journal"
        assert dead not in journal_files(store_path), "a replayed journal was kept"
    finally:
        close_all(fds)
        m.stop()
    fsck(store_path)


@pytest.mark.timeout(120)
def test_replay_neither_undoes_a_truncate_nor_overrides_a_later_put(store_path: Path,
                                                                     tmp_path: Path):
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "60").start()
    fds: list[int] = []
    try:
        shrunk = os.open(mnt / "shrunk", os.O_CREAT | os.O_RDWR, 0o644)
        replaced = os.open(mnt / "replaced", os.O_CREAT | os.O_RDWR, 0o644)
        fds += [shrunk, replaced]
        os.pwrite(shrunk, b"old " * 50_000, 0)
        os.fsync(shrunk)
        os.ftruncate(shrunk, 10)  # commits everything first, then truncates
        os.pwrite(shrunk, b"new", 100)
        os.fsync(shrunk)
        os.pwrite(replaced, b"fsynced before the crash", 0)
        os.fsync(replaced)
        m.kill()
        close_all(fds)
        # While no mount runs, another process (the gateway) replaces the file's contents.
        with Store.open(store_path) as s:
            ino = s.resolve("replaced").ino
            s.write(ino, 0, b"written after the crash!")
        m = Mount(store_path, mnt).start()
        assert (mnt / "shrunk").read_bytes() == b"old " * 2 + b"ol" + bytes(90) + b"new"
        assert (mnt / "replaced").read_bytes() == b"written after the crash!"
    finally:
        close_all(fds)
        m.stop()
    fsck(store_path)


@pytest.mark.timeout(120)
def test_a_chunk_a_batch_committed_after_an_fsync_comes_back_whole(store_path: Path,
                                                                   tmp_path: Path):
    """Written and fsynced (a journal set), written again unsynced on the same chunk, then
    committed by a background batch that covers no set: after a crash the chunk is the
    batch's, not the set's bytes laid over it (old and new within one chunk)."""
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "60", "--cache-size", "16M").start()
    fds: list[int] = []
    try:
        fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
        fds.append(fd)
        os.pwrite(fd, b"A" * 100, 0)
        os.fsync(fd)  # journaled
        os.pwrite(fd, b"B" * 100, 50)
        # Whole chunks streamed after it make the flusher commit batches, oldest chunk first.
        os.pwrite(fd, os.urandom(8 << 20), 1 << 20)
        expected = b"A" * 50 + b"B" * 100
        wait_for(lambda: stored_bytes(store_path, "f")[:150] == expected, 30,
                 "a batch to commit the first chunk")
        m.kill()
        close_all(fds)
        m = Mount(store_path, mnt).start()
        assert (mnt / "f").read_bytes()[:CHUNK] == expected + bytes(CHUNK - 150)
        assert "sets_replayed=1" in m.output(), "the fsync did not go through the journal"
    finally:
        close_all(fds)
        m.stop()
    fsck(store_path)


@pytest.mark.timeout(60)
def test_fsync_through_a_reading_handle_commits(store_path: Path, tmp_path: Path):
    """`vfsd vm snapshot` fsyncs a running VM's disks through read-only handles: that puts
    the dirty data in the store, which is what a snapshot copies."""
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "60").start()
    try:
        with open(mnt / "disk", "wb") as writer:
            writer.write(b"journaled")
            writer.flush()
            os.fsync(writer.fileno())
            assert stored_bytes(store_path, "disk") == b""
            reader = os.open(mnt / "disk", os.O_RDONLY)
            try:
                os.fsync(reader)
            finally:
                os.close(reader)
            assert stored_bytes(store_path, "disk") == b"journaled"
    finally:
        m.stop()


@pytest.mark.timeout(120)
def test_a_failed_commit_is_not_papered_over_by_the_journal(store_path: Path, tmp_path: Path):
    """A commit that fails (the pool is full) puts its writes back as dirty data that no
    journal record holds: the next fsync must commit them, and fail, rather than journal
    only what came after and claim everything durable."""
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "60").start()
    fds: list[int] = []
    try:
        fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
        fds.append(fd)
        os.pwrite(fd, b"durable", 0)
        os.fsync(fd)  # journaled
        subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "1M",
                        "--store", str(store_path)], check=True, capture_output=True)
        os.pwrite(fd, os.urandom(2 << 20), CHUNK)
        with pytest.raises(OSError) as failed:
            os.lseek(fd, 0, os.SEEK_DATA)  # commits first: the pool refuses it
        assert failed.value.errno == errno.ENOSPC
        os.pwrite(fd, b"late", 10)
        with pytest.raises(OSError) as refused:
            os.fsync(fd)
        assert refused.value.errno == errno.ENOSPC
        m.kill()
        close_all(fds)
        subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "none",
                        "--store", str(store_path)], check=True, capture_output=True)
        m = Mount(store_path, mnt).start()
        assert (mnt / "f").read_bytes()[:7] == b"durable"
    finally:
        close_all(fds)
        m.stop()
    fsck(store_path)


@pytest.mark.timeout(120)
def test_unlinking_another_hard_link_keeps_the_files_uncommitted_writes(store_path: Path,
                                                                        tmp_path: Path):
    """Writes fsynced to the journal whose commit at close failed (the pool is full) stay
    in the cache for the next commit. Unlinking one of the file's two names must not take
    the file, which lives on under the other, for a deleted one and forget them."""
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--commit-interval", "60").start()
    try:
        old = os.urandom(4 * CHUNK)
        write_file(mnt / "a", old, sync=True)
        os.link(mnt / "a", mnt / "b")
        subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "64K",
                        "--store", str(store_path)], check=True, capture_output=True)
        new = os.urandom(100_000)
        fd = os.open(mnt / "a", os.O_RDWR)
        try:
            os.pwrite(fd, new, 1000)
            os.fsync(fd)  # journaled: durable, and still dirty
        finally:
            with pytest.raises(OSError) as refused:
                os.close(fd)  # its commit: the pool refuses it
        assert refused.value.errno == errno.ENOSPC
        os.unlink(mnt / "b")
        expected = old[:1000] + new + old[101_000:]
        buf = mmap.mmap(-1, len(old))
        fd = os.open(mnt / "a", os.O_RDONLY | os.O_DIRECT)  # past the kernel's page cache
        try:
            assert os.preadv(fd, [buf], 0) == len(old)
        finally:
            os.close(fd)
        assert bytes(buf) == expected
        subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "none",
                        "--store", str(store_path)], check=True, capture_output=True)
    finally:
        m.stop()
    assert stored_bytes(store_path, "a") == expected
    fsck(store_path)
