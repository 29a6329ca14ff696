"""VMware-style VM files on the mount (DESIGN.md "Virtual machines"): the read-only descriptor,
the thin fixed-size flat disk, the ephemeral swap file, and qemu-img reading them."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounting import Mount, wait_for

from vfsd.store import Store

GIB = 1 << 30
SEED = int(os.environ.get("VFSD_TEST_SEED", random.randrange(1 << 32)))
VM_FILES = ["web-flat.vmdk", "web.nvram", "web.vmdk", "web.vmx", "web.vswp"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def show_seed() -> None:
    print(f"random seed {SEED} (rerun with VFSD_TEST_SEED={SEED})")  # shown when a test fails


def create_vm(store: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vfsd", "vm", "create", "web", "--disk", "1G",
                             "--memory", "64M", "--store", str(store)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def expect_errno(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value


def expect_open_errno(code: int, path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError as e:
        assert e.errno == code, e
    else:
        os.close(fd)  # an open file would keep the mount busy at teardown
        pytest.fail(f"open({path.name}, {flags:#o}) succeeded, expected {errno.errorcode[code]}")


def qemu_img(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, f"qemu-img {args}: {result.stdout}{result.stderr}"
    return result


def test_vm_created_before_mounting(store_path: Path, tmp_path: Path):
    create_vm(store_path)
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        web = m.path / "vms" / "web"
        assert sorted(os.listdir(web)) == VM_FILES
        assert (web / "web-flat.vmdk").stat().st_size == GIB
        assert (web / "web-flat.vmdk").stat().st_blocks == 0
        assert (web / "web.vswp").stat().st_size == 64 << 20
    finally:
        m.stop()


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_vm_files_while_mounted(mnt: Path, store_path: Path, tmp_path: Path):
    rng = random.Random(SEED)
    assert os.listdir(mnt) == []
    assert not (mnt / "vms").exists()
    create_vm(store_path)
    web = mnt / "vms" / "web"
    wait_for(lambda: web.is_dir(), 1, "the new VM's directory on the mount")
    assert sorted(os.listdir(web)) == VM_FILES

    # The descriptor: readable; it opens for writing (QEMU's vmdk driver needs that) but
    # refuses every change except to its CID line.
    desc = (web / "web.vmdk").read_text()
    assert 'createType="monolithicFlat"' in desc
    assert 'RW 2097152 FLAT "web-flat.vmdk" 0' in desc
    for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC):
        expect_open_errno(errno.EROFS, web / "web.vmdk", flags)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        fd = os.open(web / "web.vmdk", flags)
        try:
            expect_errno(errno.EROFS, os.write, fd, b'createType="vmfs"\n')
        finally:
            os.close(fd)
    expect_errno(errno.EROFS, os.truncate, web / "web.vmdk", 0)
    assert (web / "web.vmdk").read_text() == desc

    # The flat disk: thin, fixed-size.
    flat = web / "web-flat.vmdk"
    assert flat.stat().st_size == GIB
    assert flat.stat().st_blocks == 0
    du = subprocess.run(["du", "-B1", str(flat)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) == 0
    sector0, last = rng.randbytes(4096), rng.randbytes(4096)
    fd = os.open(flat, os.O_RDWR)
    try:
        assert os.pwrite(fd, sector0, 0) == 4096
        assert os.pwrite(fd, last, GIB - 4096) == 4096
        expect_errno(errno.EFBIG, os.pwrite, fd, b"y", GIB)
        # Across the end: what fits is written and the count is short (as at a file size
        # limit); nothing lands past the end.
        assert os.pwrite(fd, b"y" * 20, GIB - 10) == 10
        last = last[:-10] + b"y" * 10
        expect_errno(errno.EFBIG, os.pwrite, fd, b"y" * 4096, GIB + (1 << 20))
        expect_errno(errno.EFBIG, os.ftruncate, fd, 2 * GIB)
        os.fsync(fd)
        assert os.pread(fd, 4096, 0) == sector0
        assert os.pread(fd, 8192, GIB - 4096) == last  # short read at the end, nothing past it
    finally:
        os.close(fd)
    assert flat.stat().st_size == GIB
    assert 0 < flat.stat().st_blocks * 512 <= 2 * 64 * 1024

    # qemu-img reads the descriptor and its extent through the mount.
    info = json.loads(qemu_img("info", "--output=json", web / "web.vmdk").stdout)
    assert info["format"] == "vmdk" and info["virtual-size"] == GIB
    qemu_img("check", web / "web.vmdk")
    out = tmp_path / "web.qcow2"
    qemu_img("convert", "-O", "qcow2", web / "web.vmdk", out)
    assert json.loads(qemu_img("info", "--output=json", out).stdout)["virtual-size"] == GIB
    qemu_img("compare", web / "web.vmdk", out)  # exit 0: identical, our two sectors included


def test_refused_truncating_open_leaves_no_lease(mnt: Path, store_path: Path):
    """open(O_TRUNC) of a fixed-size disk is refused after the handle was made; the kernel
    then sends no release, so the open itself must give back the lease (else the gateway
    answers 409 and `vm start` refuses the disk until the mount stops)."""
    from vfsd.store import Store

    create_vm(store_path)
    flat = mnt / "vms" / "web" / "web-flat.vmdk"
    wait_for(flat.exists, 1, "the new VM's disk on the mount")
    expect_open_errno(errno.EPERM, flat, os.O_WRONLY | os.O_TRUNC)
    with Store.open(store_path) as s:
        assert s.leases.holder(flat.stat().st_ino) is None
    assert flat.stat().st_size == GIB


def test_refused_truncating_open_keeps_the_disks_unsynced_writes(mnt: Path, store_path: Path):
    """The refusal comes before the cache drops anything: a running VM's writes not yet
    committed stay (the cache once dropped them, then the store refused the truncation)."""
    create_vm(store_path)
    flat = mnt / "vms" / "web" / "web-flat.vmdk"
    wait_for(flat.exists, 1, "the new VM's disk on the mount")
    fd = os.open(flat, os.O_RDWR)
    try:
        os.pwrite(fd, b"guest data", 4096)
        expect_open_errno(errno.EPERM, flat, os.O_WRONLY | os.O_TRUNC)
        os.fsync(fd)
        assert os.pread(fd, 10, 4096) == b"guest data"
    finally:
        os.close(fd)
    with Store.open(store_path) as s:
        ino = s.resolve("vms/web/web-flat.vmdk").ino
        assert s.read(ino, 4096, 10) == b"guest data"


def test_swap_dropped_when_last_writer_closes(mnt: Path, store_path: Path):
    """Swap is usable while the VM runs and dropped when its last writer closes. Several
    rounds, one or two writers each (a VM process and, say, a migration helper)."""
    rng = random.Random(SEED)
    create_vm(store_path)
    swap = mnt / "vms" / "web" / "web.vswp"
    wait_for(swap.exists, 1, "the VM's swap file on the mount")
    problems = []
    for round_no, writers in enumerate([1, 2, 1, 2, 2, 2]):
        offset = rng.randrange(0, 63) << 20
        memory = rng.randbytes(1 << 20)
        fds = [os.open(swap, os.O_RDWR) for _ in range(writers)]
        assert os.pwrite(fds[0], memory, offset) == len(memory)
        assert os.pread(fds[-1], len(memory), offset) == memory
        assert swap.stat().st_blocks * 512 >= len(memory), "in use, the swap holds its pages"
        if writers > 1:
            for fd in fds[:-1]:
                os.close(fd)
            assert os.pread(fds[-1], len(memory), offset) == memory, "dropped, a writer left"
        os.close(fds[-1])

        def stale(offset: int = offset, size: int = len(memory)) -> list[str]:
            with open(swap, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            blocks = swap.stat().st_blocks
            return ([] if data == bytes(size) else ["the data"]) + \
                ([] if blocks == 0 else [f"st_blocks ({blocks})"])

        # RELEASE reaches the daemon just after close() returns; allow for that, but not for
        # a kernel cache left stale until the attribute timeout (1 s).
        start = time.monotonic()
        try:
            wait_for(lambda: not stale(), 0.5, "the swap contents to be dropped")
        except TimeoutError:
            what = stale()
            try:
                wait_for(lambda: not stale(), 3, "the swap contents to be dropped, late")
                when = f"for {time.monotonic() - start:.2f} s"
            except TimeoutError:
                when = "for good"
                open(swap, "r+b").close()  # a writer's close drops it for the next round
            problems.append(f"round {round_no} ({writers} writer(s)): after the last writer "
                            f"closed, {' and '.join(what)} stayed {when}")
        assert swap.stat().st_size == 64 << 20
    assert not problems, "web.vswp was not dropped:\n" + "\n".join(problems)
