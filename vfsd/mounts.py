"""Where a store is mounted: each mount daemon registers itself in STORE/run/mounts/.

`vfsd vm start` and `vm qemu-args` need the path QEMU will open; the daemon writes
`<pid>.json` (pid, process start time, mount point) once the mount is up and removes it when
it stops. An entry whose process is gone (kill -9) is ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vfsd.store.leases import process_start_time

MOUNTS_DIR = Path("run") / "mounts"


def register(store: Path, mountpoint: Path) -> Path:
    """Record this process's mount. `mountpoint` must already be absolute: resolving it once
    mounted would stat our own mount before we serve it, a deadlock."""
    entry = store / MOUNTS_DIR / f"{os.getpid()}.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    for other in entry.parent.glob("*.json"):  # those of mounts killed before cleaning up
        if _live(other) is None:
            other.unlink(missing_ok=True)
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(),
                               "start_time": process_start_time(os.getpid()),
                               "mountpoint": str(mountpoint)}))
    tmp.replace(entry)
    return entry


def find_mountpoint(store: Path) -> Path | None:
    """The mount point of a live mount of `store`, or None."""
    directory = store / MOUNTS_DIR
    if not directory.is_dir():
        return None
    for entry in sorted(directory.glob("*.json")):
        mountpoint = _live(entry)
        if mountpoint is not None:
            return mountpoint
        entry.unlink(missing_ok=True)  # a daemon that died without cleaning up
    return None


def _live(entry: Path) -> Path | None:
    """The mount point an entry names if its daemon still runs."""
    try:
        info = json.loads(entry.read_text())
        alive = process_start_time(info["pid"]) == info["start_time"]
        return Path(info["mountpoint"]) if alive else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
