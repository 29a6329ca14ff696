"""The change bell (vfsd/store/changebell.py): a commit that records changes in another
process wakes the mount's listener; one that records none does not; one listener a store,
whose socket a listener that died leaves to the next."""

from __future__ import annotations

import os
import select
import signal
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

LISTENER = """
import sys, time
from pathlib import Path
from vfsd.store.changebell import Listener
listener = Listener(Path(sys.argv[1]))
print("listening", flush=True)
time.sleep(60)
"""


def _rang(listener: changebell.Listener, timeout: float) -> bool:
    readable, _w, _x = select.select([listener], [], [], timeout)
    listener.drain()
    return bool(readable)


def _commit_elsewhere(store_path: Path, what: str) -> None:
    subprocess.run([sys.executable, "-c", COMMIT, str(store_path), what], check=True,
                   timeout=60)


def test_a_change_committed_elsewhere_rings_the_listener(new_store) -> None:
    store = new_store()
    listener = changebell.Listener(store.config.path / "run")
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
    assert not (store.config.path / "run" / changebell.SOCKET_NAME).exists()


def test_one_listener_per_store_its_own_rings_only(new_store) -> None:
    store, other = new_store(), new_store()
    first = changebell.Listener(store.config.path / "run")
    try:
        with pytest.raises(OSError):  # a second mount of the store polls instead
            changebell.Listener(store.config.path / "run")
        second = changebell.Listener(other.config.path / "run")
        _rang(first, 0)
        ringer = changebell.Bell(other.config.path / "run")
        ringer.ring()
        ringer.close()
        assert _rang(second, 5) and not _rang(first, 0.2)
        second.close()
    finally:
        first.close()


def test_a_listener_that_died_leaves_its_place_to_the_next(new_store) -> None:
    store = new_store()
    run = store.config.path / "run"
    dead = subprocess.Popen([sys.executable, "-c", LISTENER, str(run)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert dead.stdout.readline() == "listening\n"
        with pytest.raises(OSError):  # alive: its place is taken
            changebell.Listener(run)
    finally:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        dead.stdout.close()
    assert (run / changebell.SOCKET_NAME).exists()  # left behind by the kill
    listener = changebell.Listener(run)
    try:
        store.bell.ring()
        assert _rang(listener, 5)
    finally:
        listener.close()


def test_a_store_path_longer_than_a_socket_address_works(tmp_path: Path, new_store) -> None:
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    store = new_store(name=str(deep.relative_to(tmp_path) / "store"))
    listener = changebell.Listener(store.config.path / "run")
    try:
        _commit_elsewhere(store.config.path, "change")
        assert _rang(listener, 5)
    finally:
        listener.close()
