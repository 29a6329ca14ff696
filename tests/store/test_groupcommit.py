"""Group commit (vfsd/store/groupcommit.py): concurrent write transactions share commits, yet
each call keeps its own outcome — committed and visible, or undone with its own exception."""

from __future__ import annotations

import threading

import pytest

from vfsd.store import fsck
from vfsd.store.groupcommit import GroupCommit
from vfsd.store.objects import Objects

pytestmark = pytest.mark.timeout(120)


def test_concurrent_puts_all_land_and_share_commits(new_store):
    store = new_store()
    objects = Objects(store)
    objects.create_bucket("bucket")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(25):
                body = f"writer {n} object {i} ".encode() * (1000 + i)
                info = objects.put_object("bucket", f"w{n}/o{i}".encode(), [body])
                assert info.size == len(body)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for n in range(8):
        for i in range(25):
            body = f"writer {n} object {i} ".encode() * (1000 + i)
            info = objects.head_object("bucket", f"w{n}/o{i}".encode())
            assert bytes(objects.read(info.ino, info.version, 0, info.size)) == body
    assert objects.group.calls == 200
    # Eight writers racing for one writer lock must have shared some commits.
    assert objects.group.commits < objects.group.calls
    report = fsck.check(store)
    assert report.clean, report.damage


def test_a_failing_call_is_undone_alone(new_store):
    store = new_store()
    objects = Objects(store)
    objects.create_bucket("bucket")
    group = GroupCommit(store.env)
    release = threading.Event()
    results: dict[str, object] = {}

    def slow(tx):  # holds the first batch open so the next three queue up behind it
        release.wait(10)
        tx.put(tx.db.meta, b"test-slow", b"1")
        return "slow"

    def good(name):
        def fn(tx):
            tx.put(tx.db.meta, b"test-" + name.encode(), b"1")
            return name
        return fn

    def bad(tx):
        tx.put(tx.db.meta, b"test-bad", b"1")
        raise ValueError("refused")

    def call(name, fn):
        try:
            results[name] = group.run(fn)
        except ValueError as e:
            results[name] = e

    first = threading.Thread(target=call, args=("slow", slow))
    first.start()
    while not group._busy:
        pass
    others = [threading.Thread(target=call, args=(n, f))
              for n, f in (("a", good("a")), ("bad", bad), ("b", good("b")))]
    for t in others:
        t.start()
    while len(group._queue) < 3:
        pass
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert results["slow"] == "slow" and results["a"] == "a" and results["b"] == "b"
    assert isinstance(results["bad"], ValueError)
    assert group.commits == 2 and group.calls == 3  # slow alone; then a and b together
    with store.env.read() as tx:
        assert tx.get(tx.db.meta, b"test-a") == b"1"
        assert tx.get(tx.db.meta, b"test-b") == b"1"
        assert tx.get(tx.db.meta, b"test-bad") is None
