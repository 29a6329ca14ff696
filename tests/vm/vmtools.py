"""Helpers shared by the VM tests (imported by name: a module named `conftest` is ambiguous
when several test directories have one)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
VM = "web"


def host_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path, f"{name} is missing on the host"
    return path



def create_vm(store: Path, disk: str = "512M", memory: str = "256M", name: str = VM,
              firmware: str = "bios") -> None:
    result = subprocess.run([sys.executable, "-m", "vfsd", "vm", "create", name, "--disk", disk,
                             "--memory", memory, "--firmware", firmware, "--store", str(store)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr



def mkfs_ext4(path: Path) -> None:
    """Format a disk file on the host, the way the issue says a flat extent is prepared."""
    result = subprocess.run([host_tool("mkfs.ext4"), "-F", "-q", "-L", "vfsd-test", str(path)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr



def e2fsck(image: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([host_tool("e2fsck"), *flags, str(image)], check=False,
                          capture_output=True, text=True, timeout=120)



def debugfs_dump(image: Path, names: list[str], into: Path) -> dict[str, bytes]:
    """Copy files out of an ext4 image with debugfs (a file on FUSE cannot be loop-mounted
    here); a name debugfs cannot find is missing from the result."""
    into.mkdir(exist_ok=True)
    commands = "".join(f"dump /{name} {into / name.replace('/', '_')}\n" for name in names)
    result = subprocess.run([host_tool("debugfs"), "-f", "-", str(image)], input=commands,
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {name: (into / name.replace("/", "_")).read_bytes() for name in names
            if (into / name.replace("/", "_")).exists()}
