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
from vmtools import QEMU, REPO, VM, create_vm

from vfsd.store import Store


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
