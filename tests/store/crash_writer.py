"""The victim of test_crash.py: writes to a store until it is killed with SIGKILL.

    python crash_writer.py STORE JOURNAL SEED START_JSON

START_JSON maps file names (in the root directory) to the offset where this round begins. Each
write goes to a fresh range after the previous one (sometimes leaving a gap, sometimes sharing
a chunk with it), so no two writes ever overlap. For each write the journal gets

    I name offset length sha256    before store.write() (intent: this range may or may not land)
    C name offset length sha256    after store.write() returned, then fsync (committed)

so every C line names a write the store promised was durable. About one call in four is instead
a whole-object PUT (`write_file`) of a new object `bkt/put-SEED-N`, journaled the same way with
the offset field "put". Prints "ready" once open.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys

from vfsd.store import Store


def contents(rng: random.Random, length: int, blocks: list[bytes]) -> bytes:
    kind = rng.random()
    if kind < 0.6:
        return rng.randbytes(length)
    if kind < 0.8:  # repeated blocks: dedup against earlier writes and within this one
        block = blocks[rng.randrange(len(blocks))]
        return (block * (length // len(block) + 1))[:length]
    if kind < 0.9:
        return bytes(length)  # zeros: stores nothing
    buf = bytearray(length)
    buf[rng.randrange(length)] = 1
    return bytes(buf)


def main(store_path: str, journal_path: str, seed: int, start: dict[str, int]) -> None:
    rng = random.Random(seed)
    store = Store.open(store_path)
    cs = store.chunk_size
    blocks = [random.Random(k).randbytes(cs) for k in range(4)]
    inos = {name: store.resolve(name).ino for name in start}
    next_offset = dict(start)
    journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    for n in range(1 << 62):
        if rng.random() < 0.25:
            name = f"bkt/put-{seed}-{n}"
            data = contents(rng, rng.randrange(1, 16 * cs), blocks)
            line = f"{name} put {len(data)} {hashlib.sha256(data).hexdigest()}\n"
            os.write(journal, ("I " + line).encode())
            store.write_file(name, data)
            os.write(journal, ("C " + line).encode())
            os.fsync(journal)
            continue
        name = rng.choice(sorted(inos))
        gap = rng.choice([0, 0, 0, rng.randrange(1, cs), rng.randrange(cs, 8 * cs)])
        offset = next_offset[name] + gap
        if rng.random() < 0.3:
            offset += -offset % cs  # chunk-aligned starts, so repeated blocks dedup
        length = rng.choice([rng.randrange(1, 512), rng.randrange(1, cs + 1),
                             rng.randrange(cs, 5 * cs), 2 * cs])
        data = contents(rng, length, blocks)
        line = f"{name} {offset} {length} {hashlib.sha256(data).hexdigest()}\n"
        next_offset[name] = offset + length
        os.write(journal, ("I " + line).encode())
        store.write(inos[name], offset, data)
        os.write(journal, ("C " + line).encode())
        os.fsync(journal)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
