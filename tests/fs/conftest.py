"""A real FUSE mount of a fresh store for each test, always unmounted afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from mounting import Mount, wait_for

from vfsd.store import Store

__all__ = ["Mount", "wait_for"]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    Store.init(path).close()
    return path


@pytest.fixture
def mount(store_path: Path, tmp_path: Path):
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def mnt(mount: Mount) -> Path:
    return mount.path
