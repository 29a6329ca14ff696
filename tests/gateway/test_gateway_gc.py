"""A gateway serving a store alone gives back the space of the objects it deletes: it runs
gc passes itself (gateway/app.py), as a mount does."""

from __future__ import annotations

import os
from pathlib import Path

from s3gateway import client, make_store, wait_for

MiB = 1 << 20


def segment_bytes(store: Path) -> int:
    total = 0
    for path in (store / "segments").iterdir():
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # gc deleted it meanwhile
            pass
    return total


def test_deleted_objects_give_their_space_back(tmp_path, gateway_process):
    store = tmp_path / "store"
    keys = make_store(store)
    process = gateway_process(store, "--gc-interval", "0.5")
    s3 = client(process.endpoint, keys)
    s3.create_bucket(Bucket="space")
    # Past one 64 MiB segment: the gateway moves on to a new one, and the old one, no longer
    # its own, may be retired once nothing in it is live.
    for i in range(3):
        s3.put_object(Bucket="space", Key=f"o{i}", Body=os.urandom(24 * MiB))
    written = segment_bytes(store)
    assert written >= 72 * MiB
    for i in range(3):
        s3.delete_object(Bucket="space", Key=f"o{i}")
    wait_for(lambda: segment_bytes(store) < written - 48 * MiB, timeout=30,
             what="the gateway's gc to delete the dead segment")
    assert "event=gc " in process.log()
