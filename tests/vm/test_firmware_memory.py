"""A UEFI VM run from its own files on the mount: OVMF's variables in NAME.nvram as pflash unit 1
(written by the firmware, fixed size, kept across remounts) and guest RAM mapped from NAME.vswp
(shared file mapping on FUSE), whose contents are dropped once QEMU lets go of it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from mounting import Mount, wait_for
from qemu_guest import Guest, GuestRun
from vmtools import create_vm

from vfsd.qemu import OVMF_DIR

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not (OVMF_DIR / "OVMF_CODE_4M.fd").exists(), reason="needs ovmf"),
]

EFI_VM = "efi"
MEMORY = 256 << 20

CHECK_UEFI = """
set -e
[ -d /sys/firmware/efi ]
mark UEFI $(cat /sys/firmware/efi/fw_platform_size)-bit
mark MEMORY $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB
"""


@pytest.fixture
def store_path(store_path: Path) -> Path:
    create_vm(store_path, disk="64M", memory="256M", name=EFI_VM, firmware="uefi")
    return store_path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_uefi_nvram_and_swap_backed_memory(guest: Guest, mount: Mount, tmp_path: Path):
    vm_dir = mount.path / "vms" / EFI_VM
    nvram, vswp = vm_dir / f"{EFI_VM}.nvram", vm_dir / f"{EFI_VM}.vswp"
    nvram_size, fresh_vars = nvram.stat().st_size, digest(nvram)
    assert vswp.stat().st_size == MEMORY

    with GuestRun(guest, tmp_path / "guest", CHECK_UEFI, vm_dir, EFI_VM,
                  [Path(f"{EFI_VM}-flat.vmdk")], label="uefi", firmware="uefi",
                  memory=MEMORY, memory_file=Path(f"{EFI_VM}.vswp")) as run:
        run.wait_for("READY", timeout=150)
        assert run.proc is not None
        maps = Path(f"/proc/{run.proc.pid}/maps").read_text()
        assert str(vswp) in maps, "guest RAM is not mapped from the .vswp file"
        run.finish(timeout=150)
    print(f"UEFI boot: ready {run.time_of('READY'):.1f} s")
    assert run.markers("UEFI") == ["64-bit"], run.describe()

    # OVMF wrote its variables (boot entries, …) through pflash into NAME.nvram.
    assert nvram.stat().st_size == nvram_size
    written_vars = digest(nvram)
    assert written_vars != fresh_vars
    mount.stop()
    mount.start()
    assert digest(nvram) == written_vars

    # Swap is ephemeral: with QEMU gone, nothing of the guest's memory stays stored.
    wait_for(lambda: vswp.stat().st_blocks == 0, 30, "the swap file's chunks to be dropped")
    with open(vswp, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
    assert os.stat(vswp).st_size == MEMORY
