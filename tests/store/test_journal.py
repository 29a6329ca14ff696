"""The fsync journal (vfsd/store/journal.py): its records, and which sets a recovery replays.

A "crash" here is a journal whose process is gone: it is made under a holder whose pid has
exited, and left without `close()`. Another process's change is made by a real second
process, as the gateway would make it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vfsd.store import Store, fsck
from vfsd.store.journal import (
    JOURNAL_DIR,
    RING_BYTES,
    Journal,
    encode,
    file_header,
    scan,
)
from vfsd.store.journalrecovery import recover
from vfsd.store.leases import Holder

CS = 65536


@pytest.fixture
def dead_holder() -> Holder:
    child = subprocess.Popen(["true"])
    child.wait()
    return Holder(child.pid, 1, "a mount that died")


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    return new_store()


def crash(journal: Journal) -> None:
    """The process dies: its journal stays as it was written, its hook goes with it."""
    journal.env.inode_hook = None
    journal.writer.close()
    os.close(journal.fd)


def make_file(store: Store, data: bytes) -> int:
    return store.write_file("f", data).ino


def foreign_write(store: Store, ino: int, offset: int, data: bytes) -> None:
    code = ("import sys; from vfsd.store import Store; s = Store.open(sys.argv[1]); "
            f"s.write({ino}, {offset}, {data!r}); s.close()")
    subprocess.run([sys.executable, "-c", code, str(store.config.path)], check=True)


def test_records_survive_a_torn_neighbour() -> None:
    head = file_header(1)
    first = encode(1, 1, 7, 99, 10, 5, [(0, b"abc"), (4096, b"x" * 5000)])
    second = encode(1, 2, 7, 99, 20, 6, [(8, b"tail")])
    assert len(first) % 512 == 0
    torn = first[: len(first) // 2] + bytes(len(first) - len(first) // 2)
    sets = list(scan(head + torn + second))
    assert [(s.seq, s.extents) for s in sets] == [(2, [(8, b"tail")])]
    flipped = bytearray(first)
    flipped[40] ^= 1
    assert [s.seq for s in scan(head + bytes(flipped) + second)] == [2]
    assert [s.extents for s in scan(head + first)] == [[(0, b"abc"), (4096, b"x" * 5000)]]


def test_only_the_current_lap_counts() -> None:
    """After the ring starts over, records of the lap before lie further on: ignored."""
    old = [encode(4, seq, 7, 99, 10, 5, [(0, b"old")]) for seq in (1, 2, 3)]
    new = encode(5, 4, 7, 99, 10, 5, [(0, b"new")])
    ring = new + b"".join(old[1:])  # the new lap overwrote the first old record
    assert [s.seq for s in scan(file_header(5) + ring)] == [4]
    # A torn first block: the newest lap among the records is taken.
    assert [s.seq for s in scan(bytes(512) + ring)] == [4]


def test_the_ring_starts_over_once_everything_is_covered(store: Store,
                                                         dead_holder: Holder) -> None:
    ino = make_file(store, bytes(CS))
    journal = Journal(store, dead_holder)
    piece = b"p" * (1 << 20)
    seq = 0
    while journal.lap == 1:
        seq = journal.append(ino, [(0, piece)], 1 << 20, 1)
        with journal.committing(ino, [0], covers=seq, includes=seq):
            store.write_chunks(ino, {0: piece[:CS]}, size=None)
    assert journal.end < RING_BYTES and os.path.getsize(journal.path) == RING_BYTES
    # An uncovered set holds the ring: the next record grows the file instead.
    journal.append(ino, [(0, b"kept")], 1 << 20, 2)
    for _ in range(RING_BYTES >> 20):
        journal.append(ino, [(0, piece)], 1 << 20, 3)
    assert journal.lap == 2 and os.path.getsize(journal.path) > RING_BYTES
    assert not journal.new_lap_if_idle()
    crash(journal)
    assert recover(store).replayed == 1 + (RING_BYTES >> 20)
    assert store.read(ino, 0, 4) == b"pppp"


def test_recovery_replays_what_no_commit_holds(store: Store, dead_holder: Holder) -> None:
    ino = make_file(store, b"a" * 100_000)
    journal = Journal(store, dead_holder)
    journal.append(ino, [(10, b"B" * 70_000)], 100_000, 1234)
    journal.append(ino, [(150_000, b"C" * 10)], 150_010, 5678)
    crash(journal)
    report = recover(store)
    assert (report.journals, report.replayed, report.dropped) == (1, 2, 0)
    data = store.read(ino, 0, 1 << 20)
    expected = bytearray(b"a" * 100_000 + bytes(50_010))
    expected[10:70_010] = b"B" * 70_000
    expected[150_000:150_010] = b"C" * 10
    assert data == expected
    assert store.getattr(ino).mtime_ns == 5678
    assert not list((store.config.path / JOURNAL_DIR).iterdir())
    assert fsck.check(store).clean


def test_a_later_change_by_another_process_wins(store: Store, dead_holder: Holder) -> None:
    ino = make_file(store, b"a" * 1000)
    journal = Journal(store, dead_holder)
    journal.append(ino, [(0, b"fsynced")], 1000, 1)
    crash(journal)
    foreign_write(store, ino, 500, b"PUT after the crash")
    report = recover(store)
    assert (report.replayed, report.dropped) == (0, 1)
    assert store.read(ino, 0, 7) == b"aaaaaaa"
    assert store.read(ino, 500, 19) == b"PUT after the crash"


def test_the_writers_own_commits_keep_its_sets_valid(store: Store, dead_holder: Holder) -> None:
    """A background flush of other bytes (not all the sets' writes) between and after sets:
    the inode's version is the writer's own, so every set is replayed, oldest first."""
    ino = make_file(store, bytes(3 * CS))
    journal = Journal(store, dead_holder)
    journal.append(ino, [(0, b"one")], 3 * CS, 1)
    store.write_chunks(ino, {2: b"z" * CS}, size=None)  # a batch: marks, covers nothing
    journal.append(ino, [(1, b"TWO")], 3 * CS, 2)
    store.write_chunks(ino, {1: b"y" * CS}, size=None)
    crash(journal)
    assert recover(store).replayed == 2
    assert store.read(ino, 0, 4) == b"oTWO"
    assert store.read(ino, CS, 2) == b"yy"
    assert store.read(ino, 2 * CS, 2) == b"zz"


def test_a_batch_that_holds_a_sets_bytes_is_not_overlaid_by_it(store: Store,
                                                               dead_holder: Holder) -> None:
    """A set is fsynced, a later unsynced write lands on the same chunk, and a background
    batch commits that chunk (covering nothing): the replay must not lay the set's older
    bytes over the batch's, which would give the chunk a state it never had. Chunks the
    batch did not write still get the set's bytes."""
    ino = make_file(store, bytes(2 * CS))
    journal = Journal(store, dead_holder)
    seq = journal.append(ino, [(0, b"A" * 100), (CS, b"a" * 10)], 2 * CS, 1)
    batch = b"A" * 50 + b"B" * 100 + bytes(CS - 150)
    with journal.committing(ino, [0], includes=seq):
        store.write_chunks(ino, {0: batch}, size=None)
    later = journal.append(ino, [(40, b"C" * 20)], 2 * CS, 2)  # after the batch was taken
    crash(journal)
    assert recover(store).replayed == 2
    assert store.read(ino, 0, 150) == b"A" * 40 + b"C" * 20 + b"B" * 90
    assert store.read(ino, CS, 11) == b"a" * 10 + b"\0"
    assert later == seq + 1


def test_a_covering_commit_drops_the_chunk_marks(store: Store, dead_holder: Holder) -> None:
    """Chunk marks are moot once their sets are covered: they go, and do not pile up."""
    ino = make_file(store, bytes(4 * CS))
    journal = Journal(store, dead_holder)
    seq = journal.append(ino, [(0, b"x")], 4 * CS, 1)
    with journal.committing(ino, [0, 1, 2], includes=seq):
        store.write_chunks(ino, {i: b"y" * CS for i in range(3)}, size=None)
    assert count_marks(store) == 4  # the inode's and three chunks'
    with journal.committing(ino, [3], covers=seq, includes=seq):
        store.write_chunks(ino, {3: b"z" * CS}, size=None)
    assert count_marks(store) == 1
    # The file's writes dropped (a swap file's last close): its next commit, the hole
    # punch, drops what the batch marked.
    seq = journal.append(ino, [(0, b"x")], 4 * CS, 1)
    with journal.committing(ino, [0, 1], includes=seq):
        store.write_chunks(ino, {i: b"w" * CS for i in range(2)}, size=None)
    journal.dropped(ino, seq)
    assert count_marks(store) == 3
    store.punch_hole(ino, 0, 4 * CS)
    assert count_marks(store) == 1
    journal.close()
    assert count_marks(store) == 0


def count_marks(store: Store) -> int:
    with store.env.read() as tx:
        return sum(1 for _ in tx.cursor(tx.db.journals))


def test_covered_sets_are_not_replayed(store: Store, dead_holder: Holder) -> None:
    """After a flush of everything, newer (unsynced) commits must not be undone."""
    ino = make_file(store, bytes(CS))
    journal = Journal(store, dead_holder)
    seq = journal.append(ino, [(0, b"old")], CS, 1)
    with journal.committing(ino, [0], covers=seq, includes=seq):
        store.write_chunks(ino, {0: b"old" + bytes(CS - 3)}, size=None)
    store.write_chunks(ino, {0: b"new" + bytes(CS - 3)}, size=None)
    crash(journal)
    report = recover(store)
    assert (report.replayed, report.dropped) == (0, 0)
    assert store.read(ino, 0, 3) == b"new"


def test_dropped_writes_stay_dropped(store: Store, dead_holder: Holder) -> None:
    """A swap file's contents dropped at its last close, or an O_TRUNC: the writer says its
    sets are covered, and its next commit (the hole punch, the truncate) records that."""
    ino = make_file(store, b"s" * CS)
    journal = Journal(store, dead_holder)
    journal.append(ino, [(0, b"swapped out")], CS, 1)
    journal.dropped(ino, journal.newest_set(ino))
    store.truncate(ino, 0)
    crash(journal)
    recover(store)
    assert store.getattr(ino).size == 0


def test_dropped_writes_keep_their_records_until_a_commit_says_so(store: Store,
                                                                 dead_holder: Holder) -> None:
    """Writes dropped in memory (an O_TRUNC) whose commit never came (the truncation failed,
    or the crash came first): the ring must not start a new lap over their set, which the
    store's mark still names, and a recovery gives the file back what the fsync acknowledged."""
    ino = make_file(store, b"a" * 10)
    journal = Journal(store, dead_holder)
    journal.append(ino, [(0, b"fsynced")], 10, 1)
    journal.dropped(ino, journal.newest_set(ino))
    assert not journal.new_lap_if_idle()
    crash(journal)
    assert recover(store).replayed == 1
    assert store.read(ino, 0, 10) == b"fsyncedaaa"


def test_a_new_lap_forgets_the_marks_of_deleted_files(store: Store,
                                                    dead_holder: Holder) -> None:
    """A temporary file fsynced, committed and deleted (SQLite's rollback journal, once per
    transaction): its mark goes at the ring's next lap, not at unmount."""
    kept, temporary = make_file(store, bytes(CS)), store.write_file("tmp", bytes(CS)).ino
    journal = Journal(store, dead_holder)
    for ino in (kept, temporary):
        seq = journal.append(ino, [(0, b"x")], CS, 1)
        with journal.committing(ino, [0], covers=seq, includes=seq):
            store.write_chunks(ino, {0: b"x" + bytes(CS - 1)}, size=None)
    store.unlink(1, b"tmp")
    assert count_marks(store) == 2
    assert journal.new_lap_if_idle()
    assert count_marks(store) == 0  # the kept file has no set in the new lap either
    crash(journal)


def test_a_new_lap_forgets_the_marks_of_kept_files(store: Store, dead_holder: Holder) -> None:
    """Files fsynced, committed and kept (a maildir, a package install): their marks went
    only at unmount, one per file for the mount's life. They go at the ring's next lap, and
    a set of such a file in the new lap is replayed without its old mark."""
    inos = [store.write_file(f"f{i}", bytes(CS)).ino for i in range(3)]
    journal = Journal(store, dead_holder)
    for ino in inos:
        seq = journal.append(ino, [(0, b"x")], CS, 1)
        with journal.committing(ino, [0], covers=seq, includes=seq):
            store.write_chunks(ino, {0: b"x" + bytes(CS - 1)}, size=None)
    assert count_marks(store) == 3
    assert journal.new_lap_if_idle()
    assert count_marks(store) == 0
    journal.append(inos[0], [(1, b"y")], CS, 2)
    crash(journal)
    assert recover(store).replayed == 1
    assert store.read(inos[0], 0, 3) == b"xy\0"


def test_a_deleted_file_and_a_live_journal_are_left_alone(store: Store,
                                                          dead_holder: Holder) -> None:
    ino = make_file(store, b"x")
    journal = Journal(store, dead_holder)
    journal.append(ino, [(0, b"y")], 1, 1)
    crash(journal)
    store.unlink(1, b"f")
    mine = Journal(store, Holder.this_process("this test"))
    mine.append(store.write_file("g", b"g").ino, [(0, b"G")], 1, 1)
    report = recover(store)
    assert (report.journals, report.replayed, report.dropped) == (1, 0, 1)
    assert mine.path.exists()  # alive: never replayed behind its writer's back
    mine.close()


def test_a_clean_unmounts_ring_is_reused_without_its_records(store: Store,
                                                           dead_holder: Holder) -> None:
    ino = make_file(store, b"a" * 10)
    first = Journal(store, Holder.this_process("a mount"))
    first.append(ino, [(0, b"dropped")], 10, 1)
    first.dropped(ino, first.newest_set(ino))  # as discard() does
    store.write_chunks(ino, {0: b"a" * 10}, size=10)  # and the file's next commit
    first.close()
    assert [p.name for p in (store.config.path / JOURNAL_DIR).iterdir()] == ["spare"]
    second = Journal(store, dead_holder)
    assert second.lap == 2
    crash(second)
    # A mount that died while taking a spare leaves it under a name recovery never replays.
    taking = second.path.with_name(f"{dead_holder.pid}-7.taking")
    taking.write_bytes(file_header(1) + encode(1, 1, ino, 0, 10, 1, [(0, b"never")]))
    report = recover(store)
    assert (report.journals, report.replayed, report.dropped) == (1, 0, 0)
    assert store.read(ino, 0, 10) == b"a" * 10
    assert not taking.exists()


def test_records_go_direct_where_the_disk_takes_it_and_buffered_once_it_refuses(
        store: Store, dead_holder: Holder, monkeypatch: pytest.MonkeyPatch) -> None:
    ino = make_file(store, b"a" * 14)
    journal = Journal(store, dead_holder)
    if journal.writer.direct_fd is None:
        pytest.skip("the file system under the test store has no O_DIRECT")
    journal.append(ino, [(0, b"direct")], 14, 1)
    real_pwrite = os.pwrite

    def larger_sectors(fd: int, data: bytes, offset: int) -> int:
        """A disk with 4 KiB logical sectors refuses records aligned to 512 bytes."""
        if fd == journal.writer.direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", larger_sectors)
    journal.append(ino, [(6, b"buffered")], 14, 2)
    assert not journal.writer.direct
    monkeypatch.undo()
    crash(journal)
    assert recover(store).replayed == 2
    assert store.read(ino, 0, 14) == b"directbuffered"


def test_a_replay_takes_the_pool_past_its_quota_rather_than_fail(store: Store,
                                                                dead_holder: Holder) -> None:
    """The mount fsynced 2 MiB into the journal while the pool (1 MiB) was full, and died.
    The bytes were acknowledged: the replay keeps them, and the store stays usable (every
    command replays on open; a failing replay left not even `pool set` working)."""
    ino = make_file(store, b"")
    store.set_quota(1 << 20)
    journal = Journal(store, dead_holder)
    data = os.urandom(2 << 20)
    journal.append(ino, [(0, data)], len(data), 1)
    crash(journal)
    assert recover(store).replayed == 1
    assert store.read(ino, 0, len(data)) == data
    assert fsck.check(store).clean
    store.set_quota(None)


def test_a_killed_writer_that_cannot_finish_dying_counts_as_dead(store: Store) -> None:
    """A mount daemon killed while one of its threads waits inside the kernel (a page lock
    during an inode invalidation) stays a zombie for as long as its dead FUSE connection
    lives. It runs no more code: its journal is replayed like any dead writer's."""
    child = subprocess.Popen(["true"])  # exits, and stays a zombie until reaped below
    try:
        fields = b""
        for _ in range(500):
            raw = Path(f"/proc/{child.pid}/stat").read_bytes()
            fields = raw.rsplit(b")", 1)[1].split()
            if fields[0] == b"Z":
                break
            time.sleep(0.01)
        assert fields[0] == b"Z"
        ino = make_file(store, b"a" * 10)
        journal = Journal(store, Holder(child.pid, int(fields[19]), "a mount"))
        journal.append(ino, [(0, b"fsynced")], 10, 1)
        crash(journal)
        assert recover(store).replayed == 1
        assert store.read(ino, 0, 10) == b"fsyncedaaa"
    finally:
        child.wait()
