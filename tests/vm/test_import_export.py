"""Disk images in and out of VMs (vfsd/vmimage.py), mounted and unmounted: a qcow2 with data at
a few offsets and large zero areas becomes a VM whose disk stores about the data alone and reads
the same bytes; exporting it to qcow2 and vmdk gives images `qemu-img compare` finds equal."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs"))
from mounting import Mount  # tests/fs/mounting.py

from vfsd import vmimage
from vfsd.store import Store
from vfsd.store.errors import Busy, Exists, StoreError

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)"),
]

SIZE = 1 << 30
MEMORY = 256 << 20
# (offset, length): unaligned starts, a chunk-straddling run, one at the very end.
PIECES = [(0, 1 << 20), (100 << 20 | 4096, 3 << 20), (517 << 20 | 12345, 200_000),
          (SIZE - (2 << 20), 2 << 20)]
DATA = sum(n for _o, n in PIECES)


def qemu_img(*args: object) -> str:
    result = subprocess.run(["qemu-img", *map(str, args)], check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"qemu-img {args}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    """A qcow2 image and the raw file it was made from (the expected bytes)."""
    directory = tmp_path_factory.mktemp("image")
    raw, qcow2 = directory / "src.raw", directory / "src.qcow2"
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        for offset, length in PIECES:
            os.pwrite(f.fileno(), os.urandom(length), offset)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
    return raw, qcow2


@pytest.fixture
def store(tmp_path: Path):
    path = tmp_path / "store"
    with Store.init(path) as s:
        yield s


@pytest.fixture(params=["mounted", "unmounted"])
def mode(request, store: Store, tmp_path: Path):
    if request.param == "unmounted":
        yield None
        return
    m = Mount(store.config.path, tmp_path / "mnt").start()
    try:
        yield m
    finally:
        m.stop()


def flat_bytes_equal(store: Store, name: str, expected: Path) -> None:
    ino = store.resolve(f"vms/{name}/{name}-flat.vmdk").ino
    with open(expected, "rb") as f:
        for offset in range(0, SIZE, 16 << 20):
            want = f.read(16 << 20)
            assert bytes(store.read(ino, offset, len(want))) == want, f"differs near {offset}"


def test_import_then_export(source, store: Store, mode, tmp_path: Path):
    raw, qcow2 = source
    info = vmimage.import_image(store, "web", qcow2, MEMORY, "bios", progress=False)
    assert info.disks[0].size == SIZE
    # Thin: the zero areas stayed holes. Stored is whole 64 KiB chunks around each piece.
    physical = info.disks[0].physical
    assert DATA <= physical <= DATA + len(PIECES) * 2 * 65536, (physical, DATA)
    if mode is not None:  # let the mount's view settle before reading through the core
        qemu_img("compare", "-f", "raw", "-F", "raw", raw,
                 mode.path / "vms" / "web" / "web-flat.vmdk")
    flat_bytes_equal(store, "web", raw)

    if mode is not None:  # a disk open for writing (a running VM) is not exported
        with (open(mode.path / "vms" / "web" / "web-flat.vmdk", "r+b"),
              pytest.raises(Busy) as busy):
            vmimage.export_image(store, "web", tmp_path / "busy.qcow2", progress=False)
        assert "stop the VM" in str(busy.value) and not (tmp_path / "busy.qcow2").exists()

    for fmt in ("qcow2", "vmdk"):
        out = tmp_path / f"out.{fmt}"
        assert vmimage.export_image(store, "web", out, fmt, progress=False) == out
        image = json.loads(qemu_img("info", "--output=json", out))
        assert image["format"] == fmt and image["virtual-size"] == SIZE
        qemu_img("compare", "-f", fmt, "-F", "qcow2", out, qcow2)
        # The export is sparse as well: about the data, not the virtual size.
        assert out.stat().st_blocks * 512 < DATA + (16 << 20), (fmt, out.stat().st_blocks)


@pytest.mark.parametrize("fmt", ["raw", "vmdk"])
def test_import_raw_and_vmdk(source, store: Store, mode, tmp_path: Path, fmt: str):
    raw, qcow2 = source
    image = raw
    if fmt != "raw":
        image = tmp_path / f"src.{fmt}"
        qemu_img("convert", "-f", "qcow2", "-O", fmt, qcow2, image)
    info = vmimage.import_image(store, "db", image, MEMORY, progress=False)
    assert info.disks[0].size == SIZE and info.disks[0].physical < DATA + (1 << 20)
    flat_bytes_equal(store, "db", raw)


def test_format_for():
    assert vmimage.format_for("a/b.VMDK") == "vmdk"
    assert vmimage.format_for("b.qcow2") == vmimage.format_for("b.img") == "qcow2"


def test_import_errors_are_one_line(source, store: Store, tmp_path: Path, monkeypatch):
    _raw, qcow2 = source
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"QFI\xfb" + b"\xff" * 600)  # a qcow2 magic with a broken header
    with pytest.raises(vmimage.BadImage) as bad:
        vmimage.import_image(store, "web", junk, MEMORY, "bios", progress=False)
    assert "\n" not in str(bad.value) and "junk.qcow2" in str(bad.value)
    with pytest.raises(vmimage.BadImage):
        vmimage.import_image(store, "web", tmp_path / "missing.qcow2", MEMORY, progress=False)
    assert "web" not in vmimage.Vms(store).names()  # a failed import leaves no VM

    vmimage.Vms(store).create("web", 1 << 20, MEMORY)
    with pytest.raises(Exists) as exists:
        vmimage.import_image(store, "web", qcow2, MEMORY, progress=False)
    assert "\n" not in str(exists.value)
    assert vmimage.Vms(store).show("web").disks[0].size == 1 << 20  # untouched

    with pytest.raises(Exists):
        vmimage.export_image(store, "web", qcow2, "qcow2", progress=False)
    with pytest.raises(StoreError):
        vmimage.export_image(store, "web", tmp_path / "x.vdi", "vdi", progress=False)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(vmimage.ToolMissing) as missing:
        vmimage.import_image(store, "db", qcow2, MEMORY, progress=False)
    assert "qemu-utils" in str(missing.value) and "\n" not in str(missing.value)
    assert "db" not in vmimage.Vms(store).names()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal(source, store: Store, monkeypatch):
    """On a terminal, qemu-img's -p output becomes a tqdm bar, and so does the copy into the
    store; elsewhere (the other tests) nothing is printed."""
    _raw, qcow2 = source
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    slow_bar = vmimage._bar

    def eager_bar(*args, **kwargs):  # draw on every update, not ten times a second
        bar = slow_bar(*args, **kwargs)
        bar.mininterval, bar.miniters, bar.dynamic_miniters = 0, 1, False
        return bar

    monkeypatch.setattr(vmimage, "_bar", eager_bar)
    vmimage.import_image(store, "web", qcow2, MEMORY, progress=True)
    text = terminal.getvalue()
    assert "convert src.qcow2: 100%" in text, text[-500:]
    assert "import web" in text and "6.62M/6.62M" in text, text[-500:]
