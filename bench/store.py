"""Core store throughput against a plain file on the same file system, in one run.

    python bench/store.py [--dir DIR] [--size 256M] [--block 4M]

Workloads (each written with `Store.write`, durable per call, one call per block):

  (a) unique   random bytes into a new file
  (b) dup      the same bytes again into a second file (every chunk deduplicates)
  (c) zeros    zero bytes into a third file (no chunk is stored)
  (d) read     file (a) read back after re-opening the store, page cache dropped if allowed

Each beside a baseline on a plain file in the same directory: os.write + os.fdatasync per
block for writes, os.pread per block for reads. The store lives in a temporary directory on
the file system of --dir (default: the current directory, not tmpfs: the point is the disk),
removed at the end. Random data is generated up front so generation is not timed.

Targets (DESIGN.md-derived): unique write >= 40% of plain write, zeros >= 3x the unique-data
rate, reads >= 50% of plain reads. Always exits 0: benchmarks report, tests check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfsd.store import ROOT_INO, Store

MB = 1_000_000
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in UNITS and not text[-1:].isdigit() else ""
    try:
        value = int(float(text[: len(text) - len(unit)]) * UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return value


def fs_type(path: Path) -> str:
    """The mount type of the file system holding `path` (longest matching mount point)."""
    path = path.resolve()
    best, kind = "", "?"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(
                        mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def drop_caches() -> bool:
    """Write back and drop the page cache; False if this process may not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def blocks(total: int, block: int):
    for offset in range(0, total, block):
        yield offset, min(block, total - offset)


# --- plain-file baselines ------------------------------------------------------------------

def plain_write(path: Path, data: memoryview, block: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for offset, n in blocks(len(data), block):
            view = data[offset:offset + n]
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def plain_read(path: Path, data: memoryview, block: int) -> tuple[float, bool]:
    fd = os.open(path, os.O_RDONLY)
    elapsed, ok = 0.0, True
    try:
        for offset, n in blocks(len(data), block):
            t0 = time.perf_counter()
            got = os.pread(fd, n, offset)
            elapsed += time.perf_counter() - t0
            ok = ok and got == data[offset:offset + n].tobytes()
        return elapsed, ok
    finally:
        os.close(fd)


# --- the store -----------------------------------------------------------------------------

def store_write(store: Store, name: bytes, data: memoryview, block: int) -> float:
    ino = store.create(ROOT_INO, name).ino
    t0 = time.perf_counter()
    for offset, n in blocks(len(data), block):
        store.write(ino, offset, data[offset:offset + n])
    return time.perf_counter() - t0


def store_read(store: Store, name: bytes, data: memoryview, block: int) -> tuple[float, bool]:
    ino = store.lookup(ROOT_INO, name).ino
    elapsed, ok = 0.0, True
    for offset, n in blocks(len(data), block):
        t0 = time.perf_counter()
        got = store.read(ino, offset, n)
        elapsed += time.perf_counter() - t0
        # memoryview == compares byte by byte in Python's slow path; compare bytes (untimed)
        ok = ok and len(got) == n and bytes(got) == data[offset:offset + n].tobytes()
    return elapsed, ok


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else float("inf")


def run_round(work: Path, random_data: memoryview, zero_data: memoryview, block: int
              ) -> tuple[dict[str, tuple[float, float]], list[str], bool]:
    """One pass of every workload in a fresh store: {workload: (vfsd s, plain s)}, notes,
    whether the page cache could be dropped before the reads."""
    size = len(random_data)
    times: dict[str, tuple[float, float]] = {}
    notes: list[str] = []
    store_dir = work / "store"
    store = Store.init(store_dir)
    try:
        # (a) unique random data
        plain_s = plain_write(work / "plain-unique", random_data, block)
        times["write unique"] = (store_write(store, b"unique", random_data, block), plain_s)
        phys_unique = store.physical_bytes()

        # (b) the same bytes again, into a second file: every chunk is a dedup hit
        plain_s = plain_write(work / "plain-dup", random_data, block)
        times["write duplicate"] = (store_write(store, b"dup", random_data, block), plain_s)
        phys_dup = store.physical_bytes()

        # (c) zeros: holes, nothing stored
        plain_s = plain_write(work / "plain-zeros", zero_data, block)
        times["write zeros"] = (store_write(store, b"zeros", zero_data, block), plain_s)
        phys_zeros = store.physical_bytes()
    finally:
        store.close()
    if phys_unique < size or phys_dup != phys_unique or phys_zeros != phys_unique:
        notes.append(f"UNEXPECTED physical bytes: {phys_unique} after unique, {phys_dup} "
                     f"after dup, {phys_zeros} after zeros (want >= {size}, then unchanged)")

    # (d) reads of (a): plain file and store (re-opened), each after dropping the page cache
    cold = drop_caches()
    plain_s, plain_ok = plain_read(work / "plain-unique", random_data, block)
    drop_caches()
    store = Store.open(store_dir)
    try:
        vfsd_s, vfsd_ok = store_read(store, b"unique", random_data, block)
    finally:
        store.close()
    times["read"] = (vfsd_s, plain_s)
    if not (plain_ok and vfsd_ok):
        notes.append(f"READ MISMATCH: plain ok={plain_ok}, vfsd ok={vfsd_ok}")
    return times, notes, cold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(),
                        help="where to make the temporary store (default: current directory)")
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"),
                        help="bytes per workload (default 256M)")
    parser.add_argument("--block", type=parse_size, default=parse_size("4M"),
                        help="bytes per write/read call (default 4M)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="passes over all workloads, each in a fresh store; the table "
                             "shows medians (default 5)")
    args = parser.parse_args(argv)
    size, block, rounds = args.size, args.block, max(1, args.rounds)

    args.dir.mkdir(parents=True, exist_ok=True)
    kind = fs_type(args.dir)
    work = Path(tempfile.mkdtemp(prefix=".vfsd-bench-", dir=args.dir))
    print(f"vfsd core store bench: {size / (1 << 20):g} MiB per workload, "
          f"{block / (1 << 10):g} KiB per call, {rounds} round(s), in {work} ({kind})")
    if kind in ("tmpfs", "ramfs"):
        print("warning: this directory is in memory; the figures say nothing about the disk")
    if os.environ.get("GLIBC_TUNABLES"):
        print(f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")

    t0 = time.perf_counter()
    random_data = memoryview(os.urandom(size))
    zero_data = memoryview(bytes(size))
    print(f"generated {size / (1 << 20):g} MiB of random data in "
          f"{time.perf_counter() - t0:.1f} s (not timed)")

    results: dict[str, list[tuple[float, float]]] = {}
    notes: list[str] = []
    all_cold = True
    try:
        for r in range(rounds):
            round_dir = work / f"round{r}"
            round_dir.mkdir()
            try:
                times, round_notes, cold = run_round(round_dir, random_data, zero_data, block)
            finally:
                shutil.rmtree(round_dir, ignore_errors=True)
            all_cold = all_cold and cold
            notes += [f"round {r + 1}: {n}" for n in round_notes]
            for name, (vfsd_s, plain_s) in times.items():
                results.setdefault(name, []).append((rate(size, vfsd_s), rate(size, plain_s)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: (statistics.median(v for v, _ in runs), statistics.median(p for _, p in runs))
               for name, runs in results.items()}
    read_label = ("read (in memory)" if kind in ("tmpfs", "ramfs")
                  else "read (cold cache)" if all_cold else "read (warm cache)")
    print()
    print(f"{'workload':<18} {'vfsd MB/s':>10} {'plain MB/s':>11} {'ratio':>6}   vfsd range")
    for name, (vfsd, plain) in medians.items():
        lo = min(v for v, _ in results[name])
        hi = max(v for v, _ in results[name])
        label = read_label if name == "read" else name
        print(f"{label:<18} {vfsd:>10.1f} {plain:>11.1f} {vfsd / plain:>6.2f}   {lo:.0f}-{hi:.0f}")
    print(f"(medians of {rounds} round(s); MB = 10^6 bytes; plain file = os.write + "
          f"os.fdatasync / os.pread per {block / (1 << 10):g} KiB block)")
    if not notes:
        notes.append("checked: physical bytes = the unique data only (dedup and holes work); "
                     "reads return what was written")
    if not all_cold:
        notes.append("could not drop the page cache (needs root): reads are from a warm cache")
    for note in notes:
        print(note)

    unique, unique_plain = medians["write unique"]
    zeros, _ = medians["write zeros"]
    read, read_plain = medians["read"]
    checks = [
        ("unique write >= 0.40 x plain write", unique / unique_plain, 0.40),
        ("zeros write >= 3 x unique write", zeros / unique, 3.0),
        ("read >= 0.50 x plain read", read / read_plain, 0.50),
    ]
    print()
    for text, value, target in checks:
        print(f"{'PASS' if value >= target else 'MISS'}  {text:<36} ({value:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
