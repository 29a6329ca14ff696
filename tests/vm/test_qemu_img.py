"""QEMU's own image tools on a VM's files on the mount: the descriptor is a valid monolithicFlat
VMDK of the right size, and QEMU's vmdk driver can read it, convert it, and write through it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from vmtools import VM

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)"),
]

DISK = 512 << 20  # conftest.create_vm's --disk


def qemu(tool: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([tool, *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=60)


def qemu_img(*args: object) -> str:
    result = qemu("qemu-img", *args)
    assert result.returncode == 0, f"qemu-img {args}: {result.stdout}{result.stderr}"
    return result.stdout


def test_qemu_img_info_check_convert(vm_dir: Path, tmp_path: Path):
    descriptor, flat = vm_dir / f"{VM}.vmdk", vm_dir / f"{VM}-flat.vmdk"
    # Some data at both ends and in the middle, so convert and compare see more than holes.
    pattern = os.urandom(192 << 10)
    with open(flat, "r+b") as f:
        for offset in (0, DISK // 2 + 4096, DISK - len(pattern)):
            f.seek(offset)
            f.write(pattern)

    info = json.loads(qemu_img("info", "--output=json", descriptor))
    assert info["format"] == "vmdk"
    assert info["virtual-size"] == DISK
    assert info["format-specific"]["data"]["create-type"] == "monolithicFlat"
    assert [Path(e["filename"]).name for e in info["format-specific"]["data"]["extents"]] == [
        f"{VM}-flat.vmdk"]
    qemu_img("check", descriptor)

    out = tmp_path / "web.qcow2"
    qemu_img("convert", "-O", "qcow2", descriptor, out)
    assert json.loads(qemu_img("info", "--output=json", out))["virtual-size"] == DISK
    qemu_img("compare", descriptor, out)  # exit 0: identical contents
    qemu_img("compare", "-f", "raw", "-F", "qcow2", flat, out)


def test_qemu_writes_through_the_descriptor(vm_dir: Path):
    descriptor, flat = vm_dir / f"{VM}.vmdk", vm_dir / f"{VM}-flat.vmdk"
    before = descriptor.read_bytes()
    result = qemu("qemu-io", "-f", "vmdk", "-c", "write -P 0xab 1M 64k", descriptor)
    assert result.returncode == 0 and "wrote 65536/65536" in result.stdout, (
        result.stdout + result.stderr)
    with open(flat, "rb") as f:
        f.seek(1 << 20)
        assert f.read(65536) == b"\xab" * 65536
    info = json.loads(qemu_img("info", "--output=json", descriptor))
    assert info["format"] == "vmdk" and info["virtual-size"] == DISK
    after = descriptor.read_bytes()
    assert after != before and b"CID=fffffffe" not in after  # QEMU rewrote only the CID
