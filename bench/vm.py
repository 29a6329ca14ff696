"""The test guest on a vfsd mount beside the same guest on tmpfs, in one run.

    python bench/vm.py [--size 256M] [--runs 1] [--dir DIR]

Targets, each booted --runs times (TCG, 1 vCPU, 256 MiB, virtio-blk, cache=none):

  vfsd    VM "bench" in a fresh store (made in a temporary directory on the disk, --dir, default
          beside the repo), mounted with `python -m vfsd mount --foreground`; QEMU opens
          vms/bench/bench-flat.vmdk on the mount
  tmpfs   a sparse raw file of the same size in /dev/shm

The guest (scripts/build-test-guest) gets the target as /dev/vda and a raw file of --size random
bytes on /dev/shm as /dev/vdb, new for each run (the data source, so the guest spends no CPU making
data and vfsd's dedup finds nothing to share). It runs:

  write   dd if=/dev/vdb of=/dev/vda bs=1M iflag=direct oflag=direct, then sync
  read    dd if=/dev/vda of=/dev/null bs=1M iflag=direct

Times are taken on the host from the console markers around each step (polled every 50 ms), so
they include dd's start under TCG; boot is QEMU start to VFSD-READY. The table gives the median
per target and the vfsd/tmpfs ratio (time ratio for boot, throughput ratio for the rest).
Everything is unmounted and removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vm"))
sys.path.insert(0, str(REPO / "tests" / "fs"))

from mounting import Mount  # tests/fs/mounting.py
from qemu_guest import Guest, GuestRun  # tests/vm/qemu_guest.py

MIB = 1 << 20

SCRIPT = """
set -e
waitdev /dev/vda
waitdev /dev/vdb
mark WSTART
dd if=/dev/vdb of=/dev/vda bs=1M count={mib} iflag=direct oflag=direct 2>/dev/null
sync
mark WDONE
dd if=/dev/vda of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null
mark RDONE
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def build_guest() -> Guest:
    cache = Path(os.environ.get("VFSD_GUEST_CACHE")
                 or Path.home() / ".cache" / "vfsd-test-guest")
    subprocess.run([sys.executable, str(REPO / "scripts" / "build-test-guest"), str(cache)],
                   check=True, timeout=600)
    return Guest(cache / "vmlinuz", cache / "initrd.gz")


def boot(guest: Guest, workdir: Path, disk_dir: Path, disk: str, source: Path,
         size: int, label: str) -> dict[str, float]:
    script = SCRIPT.format(mib=size // MIB)
    with GuestRun(guest, workdir, script, disk_dir, "bench", [Path(disk), source],
                  label=label, cache="none", formats=["raw", "raw"]) as run:
        run.finish(600)
    ready, w0, w1, r1 = (run.time_of(word) for word in ("READY", "WSTART", "WDONE", "RDONE"))
    return {"boot": ready, "write": size / MIB / (w1 - w0), "read": size / MIB / (r1 - w1)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=256 * MIB)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=REPO.parent,
                        help="where the store's temporary directory goes (default: beside "
                             "the repo, on the disk)")
    parser.add_argument("--poll-us", type=int, default=None,
                        help="the mount's --poll-us (default: `vfsd mount`'s)")
    args = parser.parse_args(argv)
    if shutil.which("qemu-system-x86_64") is None:
        print("bench/vm.py: qemu-system-x86_64 is not installed", file=sys.stderr)
        return 1
    guest = build_guest()
    size = args.size // MIB * MIB
    disk = size + 64 * MIB

    results: dict[str, list[dict[str, float]]] = {"vfsd": [], "tmpfs": []}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="vfsd-bench-vm-", dir=args.dir)))
        shm = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="vfsd-bench-vm-", dir="/dev/shm")))
        source = shm / "source.raw"
        store = work / "store"
        for command in (["init", "--store", str(store)],
                        ["vm", "create", "bench", "--disk", str(disk), "--memory", "256M",
                         "--store", str(store)]):
            subprocess.run([sys.executable, "-m", "vfsd", *command], check=True,
                           stdout=subprocess.DEVNULL)
        poll = [] if args.poll_us is None else ["--poll-us", str(args.poll_us)]
        mount = Mount(store, work / "mnt", *poll).start()
        stack.callback(mount.stop)
        vm_dir = mount.path / "vms" / "bench"
        tmpfs_disk = shm / "bench-flat.raw"
        for run in range(args.runs):
            # Fresh random data each run: rewriting what the store already holds would only
            # add references (dedup), which is not what a guest writing new data costs.
            with open(source, "wb") as f:
                f.writelines(os.urandom(MIB) for _ in range(size // MIB))
            for target in ("vfsd", "tmpfs"):  # alternate, so load from elsewhere hits both
                if target == "tmpfs":
                    tmpfs_disk.unlink(missing_ok=True)
                    with open(tmpfs_disk, "wb") as f:
                        f.truncate(disk)
                    result = boot(guest, work / "guest", shm, tmpfs_disk.name, source, size,
                                  f"tmpfs-{run}")
                else:
                    result = boot(guest, work / "guest", vm_dir, "bench-flat.vmdk", source,
                                  size, f"vfsd-{run}")
                results[target].append(result)
                print(f"run {run + 1} {target:5}: " + ", ".join(
                    f"{k} {v:.2f}{' s' if k == 'boot' else ' MiB/s'}"
                    for k, v in result.items()), file=sys.stderr, flush=True)

    print(f"\ntest guest, TCG, {size // MIB} MiB O_DIRECT dd, median of {args.runs} run(s)")
    print(f"{'':16}{'vfsd':>14}{'tmpfs':>14}{'vfsd/tmpfs':>12}")
    for key, label, unit in (("boot", "time to READY", "s"), ("write", "seq write 1M", "MiB/s"),
                             ("read", "seq read 1M", "MiB/s")):
        ours = statistics.median(r[key] for r in results["vfsd"])
        base = statistics.median(r[key] for r in results["tmpfs"])
        print(f"{label:16}{f'{ours:.2f} {unit}':>14}{f'{base:.2f} {unit}':>14}"
              f"{ours / base:>11.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
