"""A writer for the crash tests: random pwrite/ftruncate batches, each ended by fsync, journaled.

    python journaled_writer.py MOUNT JOURNAL SEED MAX_SIZE FILE...

For each batch it appends to JOURNAL (a file on a real disk, not on the mount) one line
`{"batch": n, "file": name, "ops": [...]}` *before* touching the file, then runs the ops, fsyncs
the file, and only after fsync returned appends `{"done": n}`. An op is `["w", offset, length,
seed]` (the bytes are `random.Random(seed).randbytes(length)`) or `["t", size]`. The test replays
the journal: a done batch must be on disk exactly; the one batch in flight when the daemon died
may be there in part. The writer runs until the mount goes away (any OSError), then exits 0.
"""

from __future__ import annotations

import json
import os
import random
import sys

CHUNK = 64 * 1024


def data_for(op: list) -> bytes:
    return random.Random(op[3]).randbytes(op[2])


def random_op(rng: random.Random, max_size: int) -> list:
    if rng.random() < 0.06:
        return ["t", rng.randrange(0, max_size)]
    if rng.random() < 0.3:  # whole chunks: the zero-copy path of the write-back cache
        offset = rng.randrange(0, max_size // CHUNK) * CHUNK
        length = rng.choice([1, 2, 4]) * CHUNK
    else:  # anywhere, any length: read-modify-write of partial chunks
        offset = rng.randrange(0, max_size)
        length = rng.randint(1, 3 * CHUNK)
    return ["w", offset, length, rng.getrandbits(64)]


def main() -> int:
    mount, journal_path, seed, max_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    names = sys.argv[5:]
    rng = random.Random(seed)
    journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fds = {name: os.open(os.path.join(mount, name), os.O_RDWR) for name in names}
        batch = 0
        while True:
            batch += 1
            name = rng.choice(names)
            ops = [random_op(rng, max_size) for _ in range(rng.randint(1, 4))]
            os.write(journal, (json.dumps({"batch": batch, "file": name, "ops": ops}) + "\n").encode())
            fd = fds[name]
            for op in ops:
                if op[0] == "w":
                    data = data_for(op)
                    if os.pwrite(fd, data, op[1]) != len(data):
                        print(f"short write in batch {batch}", file=sys.stderr)
                        return 1
                else:
                    os.ftruncate(fd, op[1])
            os.fsync(fd)
            os.write(journal, (json.dumps({"done": batch}) + "\n").encode())
    except OSError as e:
        print(f"writer stopped: {e}", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
