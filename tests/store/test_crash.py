"""kill -9 of a writing process: every write that returned survives, intact, and fsck is clean.

crash_writer.py writes random, repeated (dedup) and zero data to a few files in fresh,
non-overlapping ranges and journals each write before ("I") and after ("C", fsync'd) it
returns. Each round the test starts a writer, kills it with SIGKILL at a random moment, then
checks the store: it opens; every C write in the journal, from this round and all earlier
ones, reads back with its exact hash; the one write that was in flight (an I with no C) is
either wholly there or wholly absent (zeros); every committed whole-object PUT reads back, and
one in flight is either complete or absent; file sizes cover every committed write and no
more than the writes attempted; fsck finds no damage (orphan bytes are allowed). The next round
writes on into the same store.

The test process keeps the store open while the writer runs, like the other front end would,
and writes right after the kill: if the writer died holding LMDB's write lock, the survivor must
get it (a hang here ends in the test's timeout).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vfsd.store import ROOT_INO, Store, fsck
from vfsd.store.errors import NotFound

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")
FILES = ["f0", "f1", "bkt/obj"]  # the last is an object in a bucket (key index)
ROUNDS = 8
MiB = 1 << 20


@dataclass(frozen=True)
class Write:
    committed: bool
    name: str
    offset: int  # -1: a whole-object PUT of a new file `name`
    length: int
    sha256: str

    @property
    def put(self) -> bool:
        return self.offset < 0

    @property
    def end(self) -> int:
        return self.offset + self.length


def read_journal(path: Path) -> list[Write]:
    """Parse the journal, cutting a line torn by the kill (so the next writer appends cleanly)."""
    raw = path.read_bytes() if path.exists() else b""
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    writes = []
    for line in raw.decode().splitlines():
        tag, name, offset, length, digest = line.split()
        writes.append(Write(tag == "C", name, -1 if offset == "put" else int(offset),
                            int(length), digest))
    return writes


def wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready:
            line = proc.stdout.readline()
            assert line == b"ready\n", f"writer said {line!r}; stderr: {proc.stderr.read()!r}"
            return
        assert proc.poll() is None, f"writer died: {proc.stderr.read().decode()}"
    raise AssertionError("the writer did not open the store in time")


def check_store(path: Path, writes: list[Write], round_start: int) -> tuple[int, str]:
    """Assert what must have survived; return (committed writes, what was in flight).

    `writes[round_start:]` are this round's journal lines."""
    committed = {(w.name, w.offset, w.length, w.sha256) for w in writes if w.committed}
    pending = [w for w in writes
               if not w.committed and (w.name, w.offset, w.length, w.sha256) not in committed]
    # In this round only the write the kill interrupted may lack its C line: the last intent.
    this_round = [w for w in pending if w in writes[round_start:]]
    assert len(this_round) <= 1, this_round
    if this_round:
        assert this_round[0] == [w for w in writes if not w.committed][-1]
    with Store.open(path) as store:
        inos = {name: store.resolve(name).ino for name in FILES}
        for w in writes:
            if not w.committed:
                continue
            if w.put:
                got = store.read_file(w.name)
            else:
                got = bytes(store.read(inos[w.name], w.offset, w.length))
            assert len(got) == w.length, f"{w}: read {len(got)} bytes"
            assert hashlib.sha256(got).hexdigest() == w.sha256, f"{w}: contents differ"
        for w in pending:  # one write is one transaction: all of it or none of it (every round)
            if w.put:
                try:
                    got = store.read_file(w.name)
                except NotFound:
                    continue
                assert hashlib.sha256(got).hexdigest() == w.sha256, f"{w}: partly visible"
                continue
            got = bytes(store.read(inos[w.name], w.offset, w.length)).ljust(w.length, b"\0")
            assert (hashlib.sha256(got).hexdigest() == w.sha256
                    or got == bytes(w.length)), f"{w}: partly written"
        for name in FILES:
            size = store.getattr(inos[name]).size
            ends = [w.end for w in writes if w.name == name and w.committed]
            assert size >= max(ends, default=0), f"{name}: size {size} lost a committed write"
            attempted = [w.end for w in writes if w.name == name]
            assert size <= max(attempted, default=0), f"{name}: size {size} beyond any write"
        report = fsck.check(store)
        assert report.clean, "fsck after kill -9:\n" + "\n".join(report.damage)
    in_flight = [("a PUT" if w.put else "a write") for w in pending if w in writes[round_start:]]
    return len(committed), (in_flight or ["nothing"])[0]


@pytest.mark.timeout(180)
def test_sigkill_keeps_every_returned_write(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}")  # shown on failure: the kill moments and the writers' data
    rng = random.Random(seed)
    path, journal = tmp_path / "store", tmp_path / "journal"
    with Store.init(path) as store:
        bucket = store.mkdir(ROOT_INO, b"bkt")
        store.create(ROOT_INO, b"f0")
        store.create(ROOT_INO, b"f1")
        store.create(bucket.ino, b"obj")
        survivor_ino = store.create(ROOT_INO, b"survivor").ino
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = 0
    survivors: list[tuple[int, bytes]] = []
    for round_no in range(ROUNDS):
        writes = read_journal(journal)
        round_start = len(writes)
        start = {name: max([w.end for w in writes if w.name == name and not w.put], default=0)
                 for name in FILES}
        survivor_data = rng.randbytes(rng.randrange(1, 200_000))
        with Store.open(path) as survivor:
            proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(path), str(journal), str(seed + round_no),
                 json.dumps(start)],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                wait_ready(proc, timeout=60)
                time.sleep(rng.uniform(0.2, 1.5))  # the kill lands at a random moment
                assert proc.poll() is None, f"writer exited: {proc.stderr.read().decode()}"
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
                proc.stderr.close()
            survivor.write(survivor_ino, round_no * MiB, survivor_data)
            assert bytes(survivor.read(survivor_ino, round_no * MiB, MiB)) == survivor_data
        writes = read_journal(journal)
        committed, in_flight = check_store(path, writes, round_start)
        survivors.append((round_no * MiB, survivor_data))
        with Store.open(path) as store:
            for at, data in survivors:
                assert bytes(store.read(survivor_ino, at, len(data))) == data
        print(f"round {round_no}: {committed - before} writes committed, {in_flight} in flight")
        assert committed > before, f"round {round_no} (seed {seed}) committed no write"
        before = committed
