"""Swap dies with the VM even when the mount dies first: guest RAM is mapped from NAME.vswp,
the guest fills it, the vfsd daemon is SIGKILLed while the VM runs (QEMU after it), and the
next mount must not keep the dead VM's memory. Before the fix nothing ever dropped it: the
last close that punches the swap never came, and 100+ MiB of guest memory stayed stored
until the VM's next clean stop (a QA pass: 116-143 MiB of 192 after each kill)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mounting import Mount, fsck, wait_for
from qemu_guest import Guest, GuestRun
from vmtools import VM

pytestmark = pytest.mark.timeout(240)

MEMORY = 256 << 20

FILL_MEMORY = """
waitdev /dev/vda
dd if=/dev/urandom of=/tmp/fill bs=1M count=96 2>/dev/null
mark FILLED
sleep 1000
"""


def test_a_vm_whose_mount_is_killed_leaves_no_swap_behind(guest: Guest, mount: Mount,
                                                         vm_dir: Path, tmp_path: Path):
    vswp = vm_dir / f"{VM}.vswp"
    with GuestRun(guest, tmp_path / "guest", FILL_MEMORY, vm_dir, VM,
                  [Path(f"{VM}-flat.vmdk")], label="swap", memory=MEMORY,
                  memory_file=Path(f"{VM}.vswp")) as run:
        run.wait_for("FILLED", timeout=180)
        # Timed commits store the guest's memory as the kernel writes the mapping back.
        wait_for(lambda: vswp.stat().st_blocks * 512 > 32 << 20, 60, "swap data stored")
        mount.kill()  # the daemon first: QEMU's exit would close the swap and drop it
        run.kill()
    mount.stop()
    mount.start()
    assert os.stat(vswp).st_blocks == 0
    assert os.stat(vswp).st_size == MEMORY
    with open(vswp, "rb") as f:
        assert f.read(8 << 20) == bytes(8 << 20)
    mount.stop()
    fsck(mount.store)
