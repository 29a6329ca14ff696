"""Real QEMU against a real mount: the test guest (built once per cache) and a VM on a store.

The guest is built by scripts/build-test-guest into $VFSD_GUEST_CACHE (default
~/.cache/vfsd-test-guest); the first build downloads the kernel package (~70 MB) and takes
~15 s, later sessions reuse it. Tests skip only when qemu-system-x86_64 is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs"))
from mounting import Mount  # tests/fs/mounting.py
from qemu_guest import Guest

from vfsd.store import Store

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
VM = "web"


@pytest.fixture(scope="session")
def guest() -> Guest:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    cache = Path(os.environ.get("VFSD_GUEST_CACHE")
                 or Path.home() / ".cache" / "vfsd-test-guest")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build-test-guest"),
                             str(cache)], check=False, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"scripts/build-test-guest failed:\n{result.stderr}"
    return Guest(kernel=cache / "vmlinuz", initrd=cache / "initrd.gz")


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


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    Store.init(path).close()
    create_vm(path)
    return path


@pytest.fixture
def mount(store_path: Path, tmp_path: Path):
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def vm_dir(mount: Mount) -> Path:
    return mount.path / "vms" / VM


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
