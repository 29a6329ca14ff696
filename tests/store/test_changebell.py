"""The change bell (vfsd/store/changebell.py): a commit that records changes in another
process wakes the mount's listener; one that records none does not; one listener a store."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

import pytest

from vfsd.store import changebell

COMMIT = """
import sys
from vfsd.store import Store
with Store.open(sys.argv[1]) as store:
    if sys.argv[2] == "change":
        store.write_file("bucket/key", b"bytes")
    else:
        store.pool_usage()  # reads only
"""


def _rang(listener, timeout: float) -> bool:
    readable, _w, _x = select.select([listener], [], [], timeout)
    changebell.drain(listener)
    return bool(readable)


def _commit_elsewhere(store_path: Path, what: str) -> None:
    subprocess.run([sys.executable, "-c", COMMIT, str(store_path), what], check=True,
                   timeout=60)


def test_a_change_committed_elsewhere_rings_the_listener(new_store) -> None:
    store = new_store()
    listener = changebell.listen(store.config.path)
    try:
        _rang(listener, 0)  # this process's own setup
        _commit_elsewhere(store.config.path, "read")
        assert not _rang(listener, 0.2)
        _commit_elsewhere(store.config.path, "change")
        assert _rang(listener, 5)
        store.write_file("mine", b"x")  # a store rings for its own commits, unless a mount
        assert _rang(listener, 5)       # (which listens) turns that off: see fs/invalidate.py
    finally:
        listener.close()


def test_one_listener_per_store_its_own_rings_only(new_store) -> None:
    store, other = new_store(), new_store()
    first = changebell.listen(store.config.path)
    try:
        with pytest.raises(OSError):  # a second mount of the store polls instead
            changebell.listen(store.config.path)
        second = changebell.listen(other.config.path)
        _rang(first, 0)
        changebell.Bell(other.config.path).ring()
        assert _rang(second, 5) and not _rang(first, 0.2)
        second.close()
    finally:
        first.close()
    changebell.listen(store.config.path).close()  # free again once closed: no file left over
