"""Thin provisioning end to end without TRIM: a guest writing zeros over its data frees the
store's space (QEMU's detect-zeroes=unmap turns them into discards, and the store's own zero
detection would catch any that slip through). The guest writes through the VMDK descriptor,
read-write, which QEMU's vmdk driver opens O_RDWR and updates (its CID line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qemu_guest import Guest, run_guest
from vmtools import VM

pytestmark = pytest.mark.timeout(240)
MIB = 1 << 20

WRITE_THEN_ZERO = """
set -e
waitdev /dev/vda
dd if=/dev/urandom of=/dev/vda bs=1M count=16 oflag=direct 2>/dev/null
sync
mark WRITTEN
dd if=/dev/zero of=/dev/vda bs=1M count=16 oflag=direct 2>/dev/null
sync
mark ZEROED
"""


def test_zero_writes_in_the_guest_free_space(guest: Guest, vm_dir: Path, tmp_path: Path):
    flat = vm_dir / f"{VM}-flat.vmdk"
    assert flat.stat().st_blocks == 0
    run = run_guest(guest, tmp_path / "guest", WRITE_THEN_ZERO, vm_dir, VM,
                    [Path(f"{VM}.vmdk")], label="zeros", cache="none", discard="unmap",
                    detect_zeroes="unmap", timeout=120)
    assert run.markers("WRITTEN") and run.markers("ZEROED"), run.describe()
    # Every chunk the guest filled and then zeroed is a hole again.
    assert flat.stat().st_blocks * 512 < MIB, flat.stat().st_blocks * 512
    with open(flat, "rb") as f:
        assert f.read(16 * MIB) == bytes(16 * MIB)
