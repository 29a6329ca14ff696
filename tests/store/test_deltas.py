"""Page deltas (vfsd/store/deltas.py): a chunk flushed in a few whole pages over a full stored
body keeps that body and stores only the pages. Every operation of the core must read such a
chunk as the bytes written, keep reference counts exact (fsck), and free both records."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfsd.store import Store, deltas, fsck, repair
from vfsd.store.chunks import LOGICAL, PHYSICAL
from vfsd.store.errors import Corrupt
from vfsd.store.records import chunk_key

CS = 65536
PAGE = deltas.PAGE


def slot_length(store: Store, ino: int, index: int) -> int | None:
    with store.env.read() as tx:
        raw = tx.get(tx.db.chunkmap, chunk_key(ino, index))
        return None if raw is None else len(raw)


def counters(store: Store) -> tuple[int, int]:
    with store.env.read() as tx:
        return tx.counter(PHYSICAL), tx.counter(LOGICAL)


def laid_out(store: Store, chunks: int) -> tuple[int, bytearray]:
    """A file of `chunks` full chunks of random bytes, and the model of its contents."""
    data = bytearray(os.urandom(chunks * CS))
    inode = store.write_file("f", bytes(data))
    return inode.ino, data


def flush_pages(store: Store, ino: int, model: bytearray, index: int, pages: list[int]) -> None:
    writes = []
    for page in pages:
        body = os.urandom(PAGE)
        writes.append((page * PAGE, body))
        at = index * CS + page * PAGE
        model[at:at + PAGE] = body
    store.flush_chunks(ino, {}, {index: writes}, size=None)


def test_a_few_whole_pages_become_a_delta_over_the_stored_body(new_store, probe) -> None:
    store = new_store()
    ino, model = laid_out(store, 3)
    segments_before = probe.segment_bytes(store)
    flush_pages(store, ino, model, 1, [0, 5])
    assert slot_length(store, ino, 1) == 2 * deltas.DIGEST
    # Two pages and a bitmap reached the disk, not a chunk.
    assert probe.segment_bytes(store) - segments_before < 3 * PAGE
    assert store.read(ino, 0, 3 * CS) == model
    # The next partial write merges into a new delta over the same body: still two records.
    flush_pages(store, ino, model, 1, [5, 9])
    assert slot_length(store, ino, 1) == 2 * deltas.DIGEST
    assert probe.chunk_count(store) == 4  # three bodies and one delta: the old delta is gone
    assert store.read(ino, CS - 100, CS + 200) == model[CS - 100:2 * CS + 100]
    delta = deltas.encode({page: bytes(PAGE) for page in (0, 5, 9)}, CS)
    assert store.getattr(ino).stored == 3 * CS + len(delta)  # the bodies, the pages, a bitmap
    probe.fsck_clean(store)


def test_past_a_quarter_of_the_pages_the_chunk_is_rewritten_whole(new_store, probe) -> None:
    store = new_store()
    ino, model = laid_out(store, 1)
    limit = deltas.max_pages(CS)
    flush_pages(store, ino, model, 0, list(range(limit)))
    assert slot_length(store, ino, 0) == 2 * deltas.DIGEST
    flush_pages(store, ino, model, 0, [limit])
    assert slot_length(store, ino, 0) == deltas.DIGEST
    assert store.read(ino, 0, CS) == model
    assert probe.chunk_count(store) == 1  # the old body and delta were both released
    probe.fsck_clean(store)


@pytest.mark.parametrize("case", ["unaligned", "hole", "short body"])
def test_no_delta_where_the_rest_of_a_page_or_the_base_is_missing(new_store, probe,
                                                                   case) -> None:
    store = new_store()
    if case == "short body":
        model = bytearray(os.urandom(CS + 1000))  # the second chunk's body is short
        ino = store.write_file("f", bytes(model)).ino
        index, writes = 1, [(0, os.urandom(PAGE))]
    else:
        ino, model = laid_out(store, 2)
        if case == "hole":
            store.punch_hole(ino, CS, CS)
            model[CS:] = bytes(CS)
        index = 1
        writes = [(100, os.urandom(PAGE))] if case == "unaligned" else [(0, os.urandom(PAGE))]
    for start, body in writes:
        at = index * CS + start
        model[at:at + len(body)] = body
    store.flush_chunks(ino, {}, {index: writes}, size=None, grow_to=len(model))
    assert slot_length(store, ino, index) == deltas.DIGEST
    assert store.read(ino, 0, 2 * CS) == model[:2 * CS]
    probe.fsck_clean(store)


def test_every_core_operation_reads_and_frees_a_layered_chunk(new_store, probe) -> None:
    store = new_store()
    ino, model = laid_out(store, 4)
    for index in range(4):
        flush_pages(store, ino, model, index, [1, 14])
    # A copy shares both records of each chunk; a snapshot-style clone too.
    copy = store.write_file("copy", b"")
    assert store.copy_range(ino, 0, copy.ino, 0, 4 * CS) == 4 * CS
    assert slot_length(store, copy.ino, 2) == 2 * deltas.DIGEST
    assert store.read(copy.ino, 0, 4 * CS) == model
    # pwrite through the core, a hole punched across an edge, a truncate inside a chunk.
    store.write(ino, CS + 4000, b"w" * 300)
    model[CS + 4000:CS + 4300] = b"w" * 300
    store.punch_hole(ino, 2 * CS + 6000, 3000)
    model[2 * CS + 6000:2 * CS + 9000] = bytes(3000)
    store.truncate(ino, 3 * CS + 5000)
    del model[3 * CS + 5000:]
    store.truncate(ino, 4 * CS)
    model += bytes(4 * CS - len(model))
    assert store.read(ino, 0, 4 * CS) == model
    assert slot_length(store, ino, 0) == 2 * deltas.DIGEST  # untouched: still layered
    probe.fsck_clean(store)
    store.unlink(1, b"f")
    store.unlink(1, b"copy")
    assert probe.chunk_count(store) == 0
    assert counters(store) == (0, 0)
    probe.fsck_clean(store)


def test_a_layered_chunk_is_gathered_from_the_page_cache(new_store) -> None:
    store = new_store()
    ino, model = laid_out(store, 2)
    flush_pages(store, ino, model, 0, [0, 3, 15])
    data, _size, locations = store.read_located(ino, 0, 2 * CS)  # reads pull the records in
    assert data == model
    pieces = store.data.views_cached(10, 2 * CS - 7, locations)
    assert pieces is not None
    assert b"".join(pieces) == model[10:2 * CS - 7]
    # The delta's pages come from the delta record, the rest from the base: several pieces.
    assert len(pieces) > 2


def test_a_malformed_delta_is_refused() -> None:
    body = deltas.encode({2: b"a" * PAGE}, CS)
    assert set(deltas.decode(body, CS)) == {2}
    with pytest.raises(Corrupt):
        deltas.decode(body + b"x", CS)
    with pytest.raises(Corrupt):
        deltas.split(b"x" * 40)


pages = st.lists(st.integers(0, CS // PAGE - 1), min_size=1, max_size=6, unique=True)
operations = st.lists(st.one_of(
    st.tuples(st.just("pages"), st.integers(0, 2), pages),
    st.tuples(st.just("bytes"), st.integers(0, 3 * CS - 1), st.integers(1, 9000)),
    st.tuples(st.just("punch"), st.integers(0, 3 * CS - 1), st.integers(1, 2 * CS)),
    st.tuples(st.just("truncate"), st.integers(0, 3 * CS), st.just(0)),
), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations, st.integers(0, 2**32))
def test_layered_chunks_read_as_a_model_through_any_operations(new_store, probe, ops,
                                                               seed) -> None:
    rng = random.Random(seed)
    store = new_store()
    ino, model = laid_out(store, 3)
    for op, a, b in ops:
        if op == "pages":
            if a * CS < len(model):
                writes = []
                for page in sorted(b):
                    body = rng.randbytes(PAGE)
                    writes.append((page * PAGE, body))
                    at = a * CS + page * PAGE
                    if len(model) < at + PAGE:
                        model += bytes(at + PAGE - len(model))
                    model[at:at + PAGE] = body
                store.flush_chunks(ino, {}, {a: writes}, size=None, grow_to=len(model))
        elif op == "bytes":
            body = rng.randbytes(b)
            store.write(ino, a, body)
            if len(model) < a:
                model += bytes(a - len(model))
            model[a:a + b] = body
        elif op == "punch":
            store.punch_hole(ino, a, b)
            end = min(a + b, len(model))
            if a < end:
                model[a:end] = bytes(end - a)
        else:
            store.truncate(ino, a)
            model = model[:a] + bytes(max(0, a - len(model)))
        assert store.getattr(ino).size == len(model)
        assert store.read(ino, 0, len(model) + 10) == model
    probe.fsck_clean(store)
    store.close()


def test_repair_finds_a_lost_delta_in_its_segment(new_store, probe) -> None:
    store = new_store()
    ino, model = laid_out(store, 2)
    flush_pages(store, ino, model, 1, [2, 7])
    with store.env.read() as tx:
        delta = deltas.split(tx.get(tx.db.chunkmap, chunk_key(ino, 1)))[1]
    assert delta is not None
    with store.env.write() as tx:
        tx.delete(tx.db.chunks, delta)  # the index lost the entry; the record is intact
    assert not fsck.check(store).clean
    repair.repair(store, grace=0)
    assert slot_length(store, ino, 1) == 2 * deltas.DIGEST
    assert store.read(ino, 0, 2 * CS) == model
    probe.fsck_clean(store)
