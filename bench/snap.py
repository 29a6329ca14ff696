"""Snapshots, clones and gc of fully written VM disks, against `cp` of the same bytes.

    python bench/snap.py [--dir DIR] [--size 256M,1G]

For each size: make a VM whose disk is fully written with unique random chunks, then time
  snapshot   Snapshots.create (chunk-map copy, one transaction)
  clone      Snapshots.clone of the live VM (chunk-map copy + generated descriptor/vmx)
  revert     Snapshots.revert to the snapshot
  remove     Snapshots.remove of the snapshot
  cp         `cp` of a plain file of the same size on the same file system, then fsync
and, after removing the clone and rewriting 3 of every 4 MiB of the disk (segments ~75% dead),
  gc         gc.collect passes (grace 0) until nothing waits: MB/s of segment bytes reclaimed,
             with the live bytes it had to move.
Snapshot and clone should cost a flat, small time per GiB (index updates, no body I/O), far
below cp. The store lives in a temporary directory on the file system of --dir (default: the
current directory), removed at the end. Always exits 0: benchmarks report, tests check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfsd.store import Store, gc
from vfsd.store.snapshots import Snapshots
from vfsd.store.vms import Vms

MB, MiB, GiB = 1_000_000, 1 << 20, 1 << 30
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
BLOCK = 4 * MiB


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in UNITS and not text[-1:].isdigit() else ""
    try:
        value = int(float(text[: len(text) - len(unit)]) * UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < BLOCK or value % BLOCK:
        raise argparse.ArgumentTypeError("sizes must be positive multiples of 4M")
    return value


def sizes_arg(text: str) -> list[int]:
    return [parse_size(t) for t in text.split(",") if t.strip()]


def fill(store: Store, ino: int, size: int, plain: Path) -> float:
    """Write unique random chunks into the disk and the same bytes into a plain file."""
    start = time.perf_counter()
    cs = store.chunk_size
    with open(plain, "wb") as f:
        for at in range(0, size, BLOCK):
            block = os.urandom(BLOCK)
            store.write_chunks(ino, {(at + i) // cs: memoryview(block)[i:i + cs]
                                     for i in range(0, BLOCK, cs)}, size=size)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cp(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", "--reflink=never", "--sparse=never", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def run_size(work: Path, size: int) -> dict[str, float]:
    path = work / f"store-{size}"
    plain = work / f"plain-{size}"
    out: dict[str, float] = {"size": size}
    store = Store.init(path)
    try:
        Vms(store).create("vm", size, 64 * MiB)
        flat = store.resolve("vms/vm/vm-flat.vmdk").ino
        out["fill"] = fill(store, flat, size, plain)
        snaps = Snapshots(store)
        physical = store.physical_bytes()
        out["snapshot"] = timed(lambda: snaps.create("vm", "s1"))
        out["clone"] = timed(lambda: snaps.clone("vm", "vm2"))
        out["clone_extra"] = (store.physical_bytes() - physical) / size
        store.write(flat, 0, b"x" * 4096)
        out["revert"] = timed(lambda: snaps.revert("vm", "s1"))
        out["remove"] = timed(lambda: snaps.remove("vm", "s1"))
        out["cp"] = cp(plain, work / f"copy-{size}")
        os.unlink(work / f"copy-{size}")
        os.unlink(plain)
        # gc: drop the clone, rewrite 3 of every 4 MiB of the disk: old segments ~75% dead
        Vms(store).remove("vm2")
        cs = store.chunk_size
        for at in range(0, size, 4 * BLOCK):
            for k in range(3):
                block = os.urandom(BLOCK)
                base = at + k * BLOCK
                store.write_chunks(flat, {(base + i) // cs: memoryview(block)[i:i + cs]
                                          for i in range(0, BLOCK, cs)}, size=size)
    finally:
        store.close()
    with Store.open(path) as store:  # a new process's view: the old segments are unowned
        before = sum(e.stat().st_size for e in os.scandir(store.config.segments_dir))
        start = time.perf_counter()
        moved = freed = 0
        for _pass in range(4):
            report = gc.collect(store, grace=0)
            moved += report.moved_bytes
            freed += report.freed_bytes
            if not report.waiting:
                break
        out["gc"] = time.perf_counter() - start
        after = sum(e.stat().st_size for e in os.scandir(store.config.segments_dir))
        out["gc_freed"], out["gc_moved"], out["gc_net"] = freed, moved, before - after
    shutil.rmtree(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(),
                        help="file system to measure on (default: the current directory)")
    parser.add_argument("--size", type=sizes_arg, default=sizes_arg("256M,1G"),
                        help="comma-separated disk sizes (default 256M,1G; try 1G,4G)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vfsd-bench-snap-", dir=args.dir))
    rows = []
    try:
        for size in args.size:
            rows.append(run_size(work, size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"fully written disks, 64 KiB chunks, on {args.dir}")
    head = (f"{'disk':>6} {'fill s':>7} {'snap s':>7} {'snap s/GiB':>10} {'clone s':>8} "
            f"{'clone s/GiB':>11} {'revert s':>8} {'remove s':>8} {'cp s':>6} {'cp/snap':>8} "
            f"{'clone +phys':>11} {'gc freed MB':>11} {'gc moved MB':>11} {'gc s':>6} "
            f"{'gc MB/s':>8}")
    print(head)
    for r in rows:
        gib = r["size"] / GiB
        print(f"{r['size'] // MiB:>5}M {r['fill']:>7.2f} {r['snapshot']:>7.3f} "
              f"{r['snapshot'] / gib:>10.3f} {r['clone']:>8.3f} {r['clone'] / gib:>11.3f} "
              f"{r['revert']:>8.3f} {r['remove']:>8.3f} {r['cp']:>6.2f} "
              f"{r['cp'] / r['snapshot']:>7.1f}x {r['clone_extra']:>10.4%} "
              f"{r['gc_freed'] / MB:>11.0f} {r['gc_moved'] / MB:>11.0f} {r['gc']:>6.2f} "
              f"{r['gc_freed'] / MB / r['gc'] if r['gc'] else 0:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
