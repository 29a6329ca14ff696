"""Live migration on shared storage: two QEMU processes on this host open the same VM disk on
the mount. The source's guest appends numbered records to its disk, each one fsync'd; the
destination waits with `-incoming unix:…`; QMP `migrate` moves the running guest, which goes
on appending on the destination and powers off there. The records on disk are then contiguous:
no gap, no torn or foreign record.

No `file.locking=off` and no `share-rw=on` is needed: the destination opens the image inactive
(it takes no write lock while incoming) and QEMU hands the image over at the switch-over (the
source flushes and drops its locks, the destination takes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from qemu_guest import Guest, GuestRun
from vmtools import VM

qmp = pytest.importorskip("qemu.qmp", reason="needs the qemu.qmp package (pip install qemu.qmp)")

pytestmark = pytest.mark.timeout(300)

MEMORY = 128 << 20
RECORDS = 500  # in all; the source writes about MIGRATE_AT of them
MIGRATE_AT = 100
SECTOR = 512

# One record per sector: "VFSDREC <n>" padded with NULs, written O_DIRECT and fsync'd.
APPEND = f"""
set -e
waitdev /dev/vda
i=0
while [ $i -lt {RECORDS} ]; do
    printf 'VFSDREC %08d\\n' $i | dd of=/dev/vda bs={SECTOR} seek=$i conv=sync,notrunc,fsync \\
        oflag=direct 2>/dev/null
    if [ $((i % 10)) = 0 ]; then mark REC $i; fi
    i=$((i + 1))
done
mark DONE $i
"""


async def _migrate(source_qmp: Path, dest_qmp: Path, uri: str, timeout: float) -> dict:
    src, dst = qmp.QMPClient("source"), qmp.QMPClient("destination")
    await src.connect(str(source_qmp))
    await dst.connect(str(dest_qmp))
    try:
        assert (await dst.execute("query-status"))["status"] == "inmigrate"
        await src.execute("migrate", {"uri": uri})
        deadline = time.monotonic() + timeout
        while True:
            state = await src.execute("query-migrate")
            if state.get("status") in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"migration still {state} after {timeout} s"
            await asyncio.sleep(0.1)
        for _ in range(100):  # the destination resumes right after completion
            if (await dst.execute("query-status"))["status"] == "running":
                break
            await asyncio.sleep(0.05)
        state["source_status"] = (await src.execute("query-status"))["status"]
        state["destination_status"] = (await dst.execute("query-status"))["status"]
        # QEMU may close the socket before its reply to `quit` is read: the race shows as
        # EOFError or ExecInterruptedError, here or from disconnect.
        with contextlib.suppress(EOFError, qmp.ExecInterruptedError):
            await src.execute("quit")
        return state
    finally:
        for client in (src, dst):
            with contextlib.suppress(EOFError, qmp.QMPError):
                await client.disconnect()


def wait_for_qmp(path: Path, run: GuestRun, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert run.proc is not None and run.proc.poll() is None, run.describe()
        assert time.monotonic() < deadline, f"no QMP socket {path}"
        time.sleep(0.05)


def records(flat: Path, count: int) -> list[int]:
    """The record numbers in the first `count` + 8 sectors, in order (None for a bad one)."""
    data = flat.read_bytes()[: (count + 8) * SECTOR]
    found = []
    for i in range(0, len(data), SECTOR):
        sector = data[i:i + SECTOR]
        if sector == bytes(SECTOR):
            break
        text = sector.rstrip(b"\0")
        ok = text.startswith(b"VFSDREC ") and text.endswith(b"\n") and len(text) == 17
        found.append(int(text[8:16]) if ok else None)
    return found


def test_live_migration_on_shared_storage(guest: Guest, vm_dir: Path, tmp_path: Path):
    work = tmp_path / "guest"
    disks = [Path(f"{VM}-flat.vmdk")]
    common = {"memory": MEMORY, "cache": "none"}
    source = GuestRun(guest, work, APPEND, vm_dir, VM, disks, label="source",
                      qmp_socket=tmp_path / "source.qmp", **common)
    dest = GuestRun(guest, work, APPEND, vm_dir, VM, disks, label="destination",
                    qmp_socket=tmp_path / "dest.qmp", **common)
    incoming = tmp_path / "migration.sock"
    dest.args += ["-incoming", f"unix:{incoming}"]
    with source, dest:
        wait_for_qmp(tmp_path / "source.qmp", source)
        wait_for_qmp(tmp_path / "dest.qmp", dest)
        source.wait_for("REC", 120, count=MIGRATE_AT // 10)
        state = asyncio.run(_migrate(tmp_path / "source.qmp", tmp_path / "dest.qmp",
                                     f"unix:{incoming}", 120))
        assert state["status"] == "completed", state
        assert state["destination_status"] == "running", state
        assert state["source_status"] == "postmigrate", state
        source.proc.wait(timeout=30)  # `quit` ends the source
        on_source = [int(n) for n in source.markers("REC")]

        dest.finish(240)  # the guest carries on, reaches RECORDS and powers off
        on_dest = [int(n) for n in dest.markers("REC")]
        assert dest.markers("DONE") == [str(RECORDS)], dest.describe()
        assert on_dest and on_dest[0] > on_source[-1] - 10 and on_dest[-1] == RECORDS - 10, (
            on_source[-5:], on_dest[:5])
        assert RECORDS - on_dest[0] >= 100, "the destination wrote too few records to tell"
        print(f"migrated after record ~{on_source[-1]} in {state.get('total-time')} ms "
              f"(downtime {state.get('downtime')} ms); destination wrote from ~{on_dest[0]}")

    found = records(vm_dir / f"{VM}-flat.vmdk", RECORDS)
    assert found == list(range(RECORDS)), (
        f"{len(found)} records; first bad at "
        f"{next((i for i, n in enumerate(found) if n != i), None)}")
