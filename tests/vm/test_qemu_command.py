"""vfsd.qemu without a guest: the command lines it builds and the bounded KVM probe."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vfsd import qemu
from vfsd.qemu import choose_accel, disk_format, probe_kvm, qemu_command, run_probe_guest

pytestmark = pytest.mark.timeout(60)
needs_qemu = pytest.mark.skipif(shutil.which(qemu.QEMU) is None, reason="needs qemu-system-x86")

VM_DIR = Path("/mnt/vfsd/vms/web")


def option(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_disks_use_the_vm_files_directly():
    args = qemu_command(VM_DIR, "web", 256 << 20, [Path("web.vmdk"), Path("web_1-flat.vmdk")],
                        cache="none", discard="unmap", detect_zeroes="unmap", serial=None)
    drives = option(args, "-drive")
    assert drives == [
        (f"if=none,id=disk0,file={VM_DIR}/web.vmdk,format=vmdk,cache=none,discard=unmap,"
         "detect-zeroes=unmap"),
        (f"if=none,id=disk1,file={VM_DIR}/web_1-flat.vmdk,format=raw,cache=none,discard=unmap,"
         "detect-zeroes=unmap"),
    ]
    assert option(args, "-device") == ["virtio-blk-pci,drive=disk0,bootindex=0",
                                       "virtio-blk-pci,drive=disk1,bootindex=1"]
    assert option(args, "-m") == ["256M"]
    assert "-serial" not in args and "-kernel" not in args


def test_formats_interfaces_and_quoting():
    assert [disk_format(Path(n)) for n in ["a.vmdk", "a-flat.vmdk", "a.qcow2", "a.img"]] == [
        "vmdk", "raw", "qcow2", "raw"]
    args = qemu_command(Path("/odd,dir"), "web", 1, [Path("web.vmdk")] * 4, machine="pc",
                        interface=["virtio", "virtio-scsi", "ahci", "ide"], read_only=True,
                        kernel=Path("/k"), initrd=Path("/i"), append="console=ttyS0",
                        serial=Path("/log,1"), qmp_socket=Path("/q.sock"), no_reboot=True)
    assert all("file=/odd,,dir/web.vmdk" in d and d.endswith("readonly=on")
               for d in option(args, "-drive"))
    assert option(args, "-device") == [
        "virtio-scsi-pci,id=scsi0", "ahci,id=ahci0",
        "virtio-blk-pci,drive=disk0", "scsi-hd,bus=scsi0.0,scsi-id=0,lun=0,drive=disk1",
        "ide-hd,bus=ahci0.0,drive=disk2", "ide-hd,bus=ide.0,unit=0,drive=disk3"]
    assert option(args, "-m") == ["1M"]
    assert option(args, "-chardev") == ["file,id=console0,path=/log,,1"]
    assert option(args, "-qmp") == ["unix:/q.sock,server=on,wait=off"]
    assert option(args, "-append") == ["console=ttyS0"] and "-no-reboot" in args


def test_uefi_maps_ovmf_code_read_only_and_the_vm_nvram(tmp_path: Path):
    if not (qemu.OVMF_DIR / "OVMF_CODE_4M.fd").exists():
        pytest.skip("needs ovmf")
    (tmp_path / "web.nvram").write_bytes(bytes(540672))
    args = qemu_command(tmp_path, "web", 1 << 30, [], firmware="uefi", accel="kvm")
    assert option(args, "-drive") == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={qemu.OVMF_DIR}/OVMF_CODE_4M.fd",
        f"if=pflash,format=raw,unit=1,file={tmp_path}/web.nvram"]
    assert option(args, "-machine") == ["q35,accel=kvm"] and option(args, "-cpu") == ["host"]
    (tmp_path / "web.nvram").write_bytes(bytes(8684))  # a BIOS VM's nvram: not OVMF's
    with pytest.raises(ValueError, match="not an OVMF variable store"):
        qemu_command(tmp_path, "web", 1 << 30, [], firmware="uefi")


@pytest.mark.parametrize("options, message", [
    ({"accel": "auto"}, "accelerator"),
    ({"cache": "sometimes"}, "cache mode"),
    ({"discard": "ignore", "detect_zeroes": "unmap"}, "needs discard"),
    ({"interface": "floppy"}, "disk interface"),
    ({"append": "quiet"}, "need a kernel"),
])
def test_bad_options_are_refused(options: dict, message: str):
    with pytest.raises(ValueError, match=message):
        qemu_command(VM_DIR, "web", 1 << 30, [Path("web.vmdk")], **options)


def test_choose_accel():
    assert choose_accel("auto", probe=lambda: True) == "kvm"
    assert choose_accel("auto", probe=lambda: False) == "tcg"
    assert choose_accel("kvm", probe=lambda: 1 / 0) == "kvm"
    assert choose_accel("tcg") == "tcg"
    with pytest.raises(ValueError):
        choose_accel("hvf")


def qemu_processes() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "vfsd-kvm-probe"], check=False, capture_output=True,
                         text=True)
    return set(out.stdout.split())


@needs_qemu
def test_probe_is_bounded_and_leaves_nothing_running():
    start = time.monotonic()
    result = probe_kvm(timeout=2.0)
    assert time.monotonic() - start < 4.0
    assert isinstance(result, bool)
    if not qemu.cpu_has_virtualization():
        assert result is False  # this machine class: /dev/kvm present but useless
    # The probe guest itself: TCG finishes a short loop; a loop far longer than the timeout
    # is cut off, and the QEMU running it is killed and reaped.
    assert run_probe_guest("tcg", timeout=20.0, loops=1000)
    start = time.monotonic()
    assert not run_probe_guest("tcg", timeout=0.5, loops=0xFFFFFFFF)
    assert time.monotonic() - start < 3.0
    assert not qemu_processes()


def test_qemu_module_is_pure_python():
    """vfsd.qemu builds argument lists; it must not drag an async framework or the mount in."""
    import ast

    tree = ast.parse(Path(qemu.__file__).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert not {n for n in names
                if n.split(".")[0] in ("trio", "pyfuse3", "aiohttp", "lmdb", "gateway")
                or n.startswith("vfsd.fs")}
