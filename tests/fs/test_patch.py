"""Partly written chunks (vfsd/fs/writeback.py, Patch) against a model: a bytearray written
in place. Pieces are kept as written and merged past Patch.MAX_PIECES; every view of the
patch must read as the model does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vfsd.fs.patch import Patch, stacked

CS = 4096  # a small chunk keeps the examples readable; nothing depends on 64 KiB

writes = st.lists(
    st.tuples(st.integers(0, CS - 1), st.integers(1, 700), st.integers(1, 255)),
    min_size=1, max_size=60,
)


def apply(writes_: list[tuple[int, int, int]], patch: Patch, model: bytearray,
          written: bytearray) -> None:
    for lo, length, byte in writes_:
        hi = min(lo + length, CS)
        patch.put(lo, bytes([byte]) * (hi - lo))
        model[lo:hi] = bytes([byte]) * (hi - lo)
        written[lo:hi] = b"\x01" * (hi - lo)


@settings(max_examples=300, deadline=None)
@given(writes, st.binary(min_size=0, max_size=CS))
def test_a_patch_reads_as_the_writes_laid_on_its_base(writes_, base) -> None:
    patch, written = Patch(), bytearray(CS)
    model = bytearray(base) + bytearray(CS - len(base))
    apply(writes_, patch, model, written)
    assert len(patch.pieces) <= Patch.MAX_PIECES + 1
    # The ranges are exactly the written bytes.
    covered = bytearray(CS)
    for a, b in patch.ranges:
        covered[a:b] = b"\x01" * (b - a)
    assert covered == written
    # onto(): the base under the patch, zeros past the base's end.
    end = patch.ranges[-1][1]
    assert patch.onto(base) == model[:max(len(base), end)]
    body = bytearray(base)  # laid_on(): the same, in the caller's buffer
    assert patch.laid_on(body) is body and body == model[:max(len(base), end)]
    # overlay(): only written bytes are copied, into any window.
    out = bytearray(b"\xee" * CS)
    patch.overlay(out, 100, CS - 50, 7)
    for i in range(100, CS - 50):
        expect = model[i] if written[i] else 0xEE
        assert out[7 + i - 100] == expect
    if patch.covers(0, CS):
        assert patch.data == model


@settings(max_examples=100, deadline=None)
@given(writes, writes)
def test_a_newer_patch_stacked_on_an_older_one_wins(older, newer) -> None:
    below, above, written = Patch(), Patch(), bytearray(CS)
    model = bytearray(CS)
    apply(older, below, model, written)
    apply(newer, above, model, written)
    result = stacked(below, above)
    assert result.onto(b"") == model[:result.ranges[-1][1]]
