"""Disk images in and out of VMs: qcow2, vmdk or raw files converted by qemu-img.

`import_image` creates a VM sized to the image's virtual size and fills its flat extent;
`export_image` writes a VM's disk 0 as a qcow2 or vmdk file. Zero regions stay holes both ways:
nothing is stored for them and nothing is written for them.

With a live mount, qemu-img works on the VM's files on the mount (`-n --target-is-zero`: the
new extent reads as zeros, so qemu-img writes only data). Without one, the image goes through
a sparse temporary raw file whose data regions (SEEK_DATA/SEEK_HOLE) are copied into or out of
the store in 4 MiB pieces; each `Store.write` is durable on return.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vfsd.mounts import find_mountpoint
from vfsd.store import Store
from vfsd.store.errors import Busy, Exists, InvalidArgument, StoreError
from vfsd.store.vms import VmInfo, Vms

QEMU_IMG = "qemu-img"
PIECE = 4 << 20
EXPORT_FORMATS = ("qcow2", "vmdk")
PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class BadImage(InvalidArgument):
    """The file is not a disk image qemu-img can read."""


class ToolMissing(StoreError):
    """qemu-img is not installed."""


class ConvertFailed(StoreError):
    """qemu-img convert failed."""


def format_for(dest: Path | str) -> str:
    """The export format a destination's name asks for: .vmdk is vmdk, anything else qcow2."""
    return "vmdk" if str(dest).lower().endswith(".vmdk") else "qcow2"


def qemu_img() -> str:
    path = shutil.which(QEMU_IMG)
    if path is None:
        raise ToolMissing("qemu-img is not installed: apt-get install qemu-utils")
    return path


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "?"


def image_info(image: Path) -> dict:
    """`qemu-img info --output=json` of a file; BadImage for a file qemu-img cannot read."""
    tool = qemu_img()
    if not image.is_file():
        raise BadImage(f"{image}: no such file")
    result = subprocess.run([tool, "info", "--output=json", str(image)], check=False,
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise BadImage(f"{image}: not a disk image qemu-img can read: "
                       f"{_last_line(result.stderr)}")
    try:
        info = json.loads(result.stdout)
        size = int(info["virtual-size"])
    except (ValueError, KeyError, TypeError):
        raise BadImage(f"{image}: qemu-img gave no virtual size") from None
    if size <= 0:
        raise BadImage(f"{image}: an empty image (virtual size 0)")
    return info


def _bar(total: int, label: str, progress: bool, unit: str = "B"):
    from tqdm import tqdm

    # disable=None: no bar unless stderr is a terminal.
    percent = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"
    return tqdm(total=total, desc=label, unit=unit, unit_scale=unit == "B", file=sys.stderr,
                disable=None if progress else True, leave=False,
                bar_format=percent if unit == "%" else None)


def _convert(args: list[str], label: str, progress: bool) -> None:
    """Run `qemu-img convert ARGS`, its -p progress shown as a bar; ConvertFailed on error."""
    show = progress and sys.stderr.isatty()
    command = [qemu_img(), "convert", *(["-p"] if show else []), *args]
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        with _bar(100, label, show, unit="%") as bar:
            buffer = b""
            while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
                buffer = (buffer + chunk)[-256:]
                found = PROGRESS.findall(buffer)
                if found:
                    bar.update(float(found[-1]) - bar.n)
        stderr = proc.stderr.read().decode(errors="replace")
        status = proc.wait()
    if status != 0:
        raise ConvertFailed(f"qemu-img convert failed: {_last_line(stderr)}")


def _wait_visible(path: Path, timeout: float = 10.0) -> None:
    """A file the core just created shows on the mount once the daemon has seen the change
    (its change-log poll, <= 100 ms; a cached negative lookup lasts until then)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise StoreError(f"{path} did not appear on the mount within {timeout:.0f} s")
        time.sleep(0.02)


def _data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data region of an open sparse file."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        offset = end


def _store_regions(store: Store, ino: int, size: int) -> Iterator[tuple[int, int]]:
    offset = 0
    while offset < size:
        start = store.seek(ino, offset, data=True)
        if start is None:
            return
        end = store.seek(ino, start, data=False)
        end = size if end is None else min(end, size)
        yield start, end - start
        offset = end


def _pieces(regions: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    for start, length in regions:
        for offset in range(start, start + length, PIECE):
            yield offset, min(PIECE, start + length - offset)


def import_image(store: Store, name: str, image_path: Path | str, memory: int,
                 firmware: str = "bios", progress: bool = True, *,
                 uefi_vars: bytes | None = None) -> VmInfo:
    """Create VM `name` with one disk holding the image's contents (qcow2, vmdk, raw, …).

    The VM is created first (one transaction); if filling its disk fails, it is removed again,
    so a failed import leaves nothing behind. Zero regions of the image stay holes.
    """
    image = Path(image_path)
    info = image_info(image)
    vms = Vms(store)
    if name in vms.names():
        raise Exists(f"VM {name} already exists")
    created = vms.create(name, int(info["virtual-size"]), memory, firmware, uefi_vars)
    extent = created.disks[0].extent
    try:
        mountpoint = find_mountpoint(store.config.path)
        if mountpoint is not None:
            flat = mountpoint / "vms" / name / extent
            _wait_visible(flat)
            _convert(["-n", "--target-is-zero", "-f", info["format"], "-O", "raw",
                      str(image), str(flat)], f"import {name}", progress)
        else:
            _import_unmounted(store, name, extent, image, info["format"], progress)
    except BaseException:
        try:
            vms.remove(name)
        except StoreError:
            pass
        raise
    return vms.show(name)


def _import_unmounted(store: Store, name: str, extent: str, image: Path, fmt: str,
                      progress: bool) -> None:
    ino = store.resolve(f"vms/{name}/{extent}").ino
    with tempfile.TemporaryDirectory(prefix="vfsd-import-") as tmp:
        raw = Path(tmp) / "disk.raw"
        _convert(["-f", fmt, "-O", "raw", "-S", "64k", str(image), str(raw)],
                 f"convert {image.name}", progress)
        fd = os.open(raw, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            regions = list(_data_regions(fd, size))
            with _bar(sum(n for _o, n in regions), f"import {name}", progress) as bar:
                for offset, length in _pieces(regions):
                    store.write(ino, offset, os.pread(fd, length, offset))
                    bar.update(length)
        finally:
            os.close(fd)


def export_image(store: Store, name: str, dest: Path | str, fmt: str = "qcow2",
                 progress: bool = True) -> Path:
    """Write VM `name`'s disk 0 to `dest` as qcow2 or vmdk (qemu-img's default subformat,
    monolithicSparse). Refused while the disk is open for writing (a running VM)."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidArgument(f"unknown image format {fmt!r}: use {' or '.join(EXPORT_FORMATS)}")
    dest = Path(dest)
    if dest.exists():
        raise Exists(f"{dest} already exists; remove it first")
    qemu_img()
    extent = Vms(store).show(name).disks[0].extent
    inode = store.resolve(f"vms/{name}/{extent}")
    holder = store.leases.settled_holder(inode.ino)
    if holder is not None:
        raise Busy(f"VM {name}'s disk is open for writing by {holder.kind} (pid {holder.pid}): "
                   "stop the VM first")
    target = ["-O", fmt, str(dest)]
    try:
        mountpoint = find_mountpoint(store.config.path)
        if mountpoint is not None:
            _convert(["-f", "raw", str(mountpoint / "vms" / name / extent), *target],
                     f"export {name}", progress)
            return dest
        with tempfile.TemporaryDirectory(prefix="vfsd-export-") as tmp:
            raw = Path(tmp) / "disk.raw"
            _export_raw(store, inode.ino, inode.size, raw, name, progress)
            _convert(["-f", "raw", str(raw), *target], f"convert {name}", progress)
        return dest
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _export_raw(store: Store, ino: int, size: int, raw: Path, name: str,
                progress: bool) -> None:
    regions = list(_store_regions(store, ino, size))
    try:
        with open(raw, "wb") as f:
            f.truncate(size)
            with _bar(sum(n for _o, n in regions), f"export {name}", progress) as bar:
                for offset, length in _pieces(regions):
                    data = store.read(ino, offset, length)
                    os.pwrite(f.fileno(), data, offset)
                    bar.update(length)
    except OSError as e:
        # Bare, "File too large" (a disk past ext4's 16 TiB) or ENOSPC would not say where.
        raise OSError(e.errno, f"{e.strerror} in the temporary raw copy of VM {name}'s "
                      f"{size}-byte disk (with the store mounted, export reads the disk "
                      "through the mount instead)", str(raw)) from None
