"""The change log is trimmed (vfsd/store/changelog.py): entries past the retention go, the
newest are always kept, sequence numbers go on from where they were, and gc trims."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from vfsd.store import Store, changelog, gc


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    return new_store()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_old_entries_go_and_the_newest_stay(store: Store) -> None:
    for i in range(30):
        store.write_file(f"f{i}", b"x")
    last = store.last_change()
    assert len(store.changes_since(0)) == last > 30
    # Within the retention nothing goes, however many there are.
    assert changelog.trim(store.env, now_ms(), retain_ms=60_000, keep_newest=1) == 0
    # Past it, all but the newest `keep_newest`.
    trimmed = changelog.trim(store.env, now_ms() + 1, retain_ms=0, keep_newest=5)
    assert trimmed == last - 5
    assert [c.seq for c in store.changes_since(0)] == list(range(last - 4, last + 1))
    assert changelog.trim(store.env, now_ms() + 1, retain_ms=0, keep_newest=5) == 0
    # Sequence numbers continue: a tail reader's cursor stays meaningful.
    store.write_file("after", b"y")
    assert store.changes_since(last)[0].seq == last + 1


def test_trim_works_in_batches(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(changelog, "TRIM_BATCH", 7)
    for i in range(40):
        store.write_file(f"f{i}", b"x")
    last = store.last_change()
    assert changelog.trim(store.env, now_ms() + 1, retain_ms=0, keep_newest=1) == last - 1
    assert [c.seq for c in store.changes_since(0)] == [last]


def test_the_log_is_never_emptied(store: Store) -> None:
    with pytest.raises(ValueError):
        changelog.trim(store.env, now_ms(), retain_ms=0, keep_newest=0)


def test_gc_trims_what_is_past_the_retention(store: Store, monkeypatch) -> None:
    for i in range(20):
        store.write_file(f"f{i}", b"x")
    last = store.last_change()
    monkeypatch.setattr(changelog, "RETAIN_MS", 0)
    monkeypatch.setattr(changelog, "KEEP_NEWEST", 3)
    time.sleep(0.002)
    report = gc.collect(store)
    assert report.trimmed_changes == last - 3
    assert "trimmed" in report.summary()
