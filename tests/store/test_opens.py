"""Which processes have a file open (vfsd/store/opens.py): another process's hold is seen,
one's own is counted, a holder that dies holds nothing, and a hold taken while a file is
being freed keeps it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vfsd.store import ROOT_INO
from vfsd.store.errors import Exists, NotFound
from vfsd.store.opens import Opens

HOLDER = """
import sys, time
from pathlib import Path
from vfsd.store.opens import Opens
opens = Opens(Path(sys.argv[1]))
for ino in map(int, sys.argv[2:]):
    opens.hold(ino)
print("held", flush=True)
time.sleep(60)
"""


def test_holds_of_other_processes_are_seen_and_die_with_them(tmp_path: Path) -> None:
    mine = Opens(tmp_path / "run")
    mine.hold(7)
    assert not mine.held_elsewhere(7)  # one's own hold is not "elsewhere"
    big = (1 << 62) + 5  # inode numbers are 64-bit
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), "7", "9",
                              str(big)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        assert mine.held_elsewhere(7) and mine.held_elsewhere(9) and mine.held_elsewhere(big)
        assert not mine.held_elsewhere(8) and not mine.held_elsewhere(10)
        mine.release(7)
        assert mine.held_elsewhere(7)  # theirs stays
        other.send_signal(signal.SIGKILL)
        other.wait()
        assert not mine.held_elsewhere(7) and not mine.held_elsewhere(big)
    finally:
        if other.poll() is None:
            other.kill()
        mine.close()


def test_holds_of_this_process_are_counted(tmp_path: Path) -> None:
    # Two GETs of one object in a gateway process, or a mount's open file during its own
    # gc pass: held until the last holder lets go.
    opens = Opens(tmp_path / "run")
    try:
        opens.hold(3)
        opens.hold(3)
        opens.release(3)
        assert opens.held(3) and not opens.held_elsewhere(3)
        opens.release(3)
        assert not opens.held(3)
        opens.release(3)  # one release too many changes nothing
        assert not opens.held(3)
    finally:
        opens.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("freeing", ["release_orphan", "purge_orphans", "unlink", "rename over"])
def test_an_open_taken_while_a_file_is_being_freed_keeps_it(new_store, freeing) -> None:
    """The mount frees a file in a worker thread while its event loop goes on opening files:
    an open of the same inode (the kernel still names it) took its hold after the free was
    decided but before the free committed, found the inode, and its reads then answered
    ENOENT (a CI run: 2 of 5,925 opens while PUTs replaced a file two readers kept
    opening). Whether the file is open is now asked inside the freeing transaction, which no
    new hold can pass. Here the writer lock, held by the test, stops the freeing call at its
    transaction, and the hold is taken meanwhile (the sleep lets a call that asked before
    its transaction, as before, do so)."""
    store = new_store()
    f = store.create(ROOT_INO, b"f")
    store.write(f.ino, 0, b"kept" * 1000)
    if freeing in ("release_orphan", "purge_orphans"):
        store.unlink(ROOT_INO, b"f", still_open=True)  # parked; its last holder just closed
    elif freeing == "rename over":
        store.create(ROOT_INO, b"g")
    free = {
        "release_orphan": lambda: store.release_orphan(f.ino),
        "purge_orphans": store.purge_orphans,
        "unlink": lambda: store.unlink(ROOT_INO, b"f"),
        "rename over": lambda: store.rename(ROOT_INO, b"g", ROOT_INO, b"f"),
    }[freeing]
    writer = store.env.lmdb.begin(write=True)
    freer = threading.Thread(target=free)
    try:
        freer.start()
        time.sleep(0.3)
        assert store.opens.try_hold(f.ino)  # the new open
    finally:
        writer.abort()
        freer.join()
    assert bytes(store.read(f.ino, 0, 4000)) == b"kept" * 1000
    store.opens.release(f.ino)  # its last close
    store.release_orphan(f.ino)
    with pytest.raises(NotFound):
        store.getattr(f.ino)


@pytest.mark.timeout(60)
def test_a_file_created_held_is_parked_by_a_delete_until_let_go(new_store) -> None:
    """The mount creates a file and then opens a handle on it, a thread hop later: held from
    before its commit (`create(hold=True)`), it cannot be freed by a DELETE from the gateway
    in between. A create that fails holds nothing."""
    store = new_store()
    f = store.create(ROOT_INO, b"f", hold=True)
    store.write(f.ino, 0, b"new")
    store.unlink(ROOT_INO, b"f")  # as a DELETE through the gateway would
    assert bytes(store.read(f.ino, 0, 3)) == b"new"
    store.opens.release(f.ino)
    store.release_orphan(f.ino)
    with pytest.raises(NotFound):
        store.getattr(f.ino)
    g = store.create(ROOT_INO, b"g")
    with pytest.raises(Exists):
        store.create(ROOT_INO, b"g", hold=True)
    assert not store.opens.held(g.ino)
