"""QEMU command lines for vfsd VMs: QEMU opens the VM's own files on the mount, never a copy.

A VM directory holds `NAME.vmdk` (a monolithicFlat descriptor QEMU reads with format=vmdk),
`NAME-flat.vmdk` (the raw extent, usable directly with format=raw), `NAME.nvram` (OVMF's
variable store, pflash unit 1) and `NAME.vswp`. This module only builds argument lists and
probes the host; it starts nothing that outlives a call and imports no async framework.

Acceleration: `/dev/kvm` can exist and even answer KVM_CREATE_VM, KVM_RUN and `qemu -accel kvm
-M none` while guests run thousands of times slower than under TCG (measured on our 2-vCPU
build machines: the CPU flags show no vmx/svm, a kernel boot under `-accel kvm` "hangs" in its
decompressor). `probe_kvm` therefore times a real guest loop, bounded by a timeout, and
`choose_accel("auto")` picks TCG unless that probe passes.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

QEMU = "qemu-system-x86_64"
OVMF_DIR = Path("/usr/share/OVMF")
# OVMF code images by the size of the variable store they pair with (a mismatch fails to boot).
OVMF_CODE_FOR_VARS_SIZE = {540672: "OVMF_CODE_4M.fd", 131072: "OVMF_CODE.fd"}

ACCELS = ("kvm", "tcg")
CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")
DISCARD_MODES = ("unmap", "ignore")
DETECT_ZEROES = ("off", "on", "unmap")
INTERFACES = ("virtio", "virtio-scsi", "ahci", "ide")
FIRMWARES = ("bios", "uefi")
MIB = 1024 * 1024

# The KVM probe's guest: a 64 KiB BIOS image whose reset vector (0xFFFF0) counts ECX down from
# PROBE_LOOPS in real mode, then writes 0x2a to an isa-debug-exit port: QEMU exits with status
# (0x2a << 1) | 1 = 85. Working KVM runs the loop in ~10 ms, TCG in ~0.1 s; the broken /dev/kvm
# described above needs minutes.
PROBE_LOOPS = 20_000_000
PROBE_EXIT_PORT = 0xF4
PROBE_EXIT_STATUS = (0x2A << 1) | 1


def probe_rom(loops: int = PROBE_LOOPS) -> bytes:
    code = (b"\x66\xb9" + struct.pack("<I", loops)  # mov ecx, loops
            + b"\x66\x49"                               # dec ecx
            + b"\x75\xfc"                               # jnz dec
            + b"\xb0\x2a"                               # mov al, 0x2a
            + bytes([0xE6, PROBE_EXIT_PORT])            # out PROBE_EXIT_PORT, al
            + b"\xf4")                                  # hlt
    rom = bytearray(b"\xf4" * 65536)
    rom[0xFFF0:0xFFF0 + len(code)] = code
    return bytes(rom)


def cpu_has_virtualization(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the CPU flags show VT-x (vmx) or AMD-V (svm)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.partition(":")[2].split()
            return "vmx" in flags or "svm" in flags
    return False


def run_probe_guest(accel: str, timeout: float, qemu: str = QEMU,
                    loops: int = PROBE_LOOPS) -> bool:
    """Run the probe ROM under `accel`; True if QEMU finished it within `timeout` seconds.

    On expiry QEMU is SIGKILLed and reaped, so nothing is left running.
    """
    with tempfile.TemporaryDirectory(prefix="vfsd-kvm-probe-") as tmp:
        rom = Path(tmp) / "probe.rom"
        rom.write_bytes(probe_rom(loops))
        try:
            proc = subprocess.Popen(
                [qemu, "-accel", accel, "-M", "pc", "-m", "16", "-nodefaults",
                 "-no-user-config", "-display", "none", "-serial", "none", "-monitor", "none",
                 "-bios", str(rom),
                 "-device", f"isa-debug-exit,iobase={PROBE_EXIT_PORT:#x},iosize=0x04"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        try:
            return proc.wait(timeout=timeout) == PROBE_EXIT_STATUS
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False


def probe_kvm(timeout: float = 3.0, qemu: str = QEMU) -> bool:
    """Can QEMU use KVM here at useful speed? Bounded by `timeout` seconds; never hangs.

    False without an accessible /dev/kvm, without vmx/svm in the CPU flags (answered at once),
    or when a tiny real-mode guest loop under `-accel kvm` does not finish in time.
    """
    if shutil.which(qemu) is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if not cpu_has_virtualization():
        return False
    return run_probe_guest("kvm", timeout, qemu)


def choose_accel(requested: str = "auto", probe: Callable[[], bool] = probe_kvm) -> str:
    """"kvm" or "tcg": "auto" probes (bounded), an explicit choice is returned as is."""
    if requested == "auto":
        return "kvm" if probe() else "tcg"
    if requested in ACCELS:
        return requested
    raise ValueError(f"unknown accelerator {requested!r}: use auto, kvm or tcg")


def disk_format(path: Path) -> str:
    """QEMU's format for a disk file: descriptors are vmdk, `-flat` extents and images raw."""
    name = path.name
    if name.endswith("-flat.vmdk"):
        return "raw"
    if name.endswith(".vmdk"):
        return "vmdk"
    if name.endswith(".qcow2"):
        return "qcow2"
    return "raw"


def ovmf_code(nvram: Path, ovmf_dir: Path = OVMF_DIR) -> Path:
    """The read-only OVMF code image that matches a variable store's size."""
    size = nvram.stat().st_size
    name = OVMF_CODE_FOR_VARS_SIZE.get(size)
    if name is None:
        raise ValueError(f"{nvram}: {size} bytes is not an OVMF variable store "
                         f"(expected one of {sorted(OVMF_CODE_FOR_VARS_SIZE)})")
    code = ovmf_dir / name
    if not code.exists():
        raise FileNotFoundError(f"{code} is missing: apt-get install ovmf")
    return code


def option_value(value: object) -> str:
    """A value inside a QEMU `key=value,…` option: commas are doubled."""
    return str(value).replace(",", ",,")


def _choice(what: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")
    return value


def qemu_command(
    vm_dir: Path,
    name: str,
    memory_bytes: int,
    disks: Sequence[Path],
    firmware: str = "bios",
    nvram: Path | None = None,
    accel: str = "tcg",
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    cache: str = "none",
    discard: str = "unmap",
    detect_zeroes: str | None = None,
    serial: str | Path | None = "stdio",
    qmp_socket: Path | None = None,
    extra: Sequence[str] = (),
    *,
    interface: str | Sequence[str] = "virtio",
    formats: Sequence[str | None] | None = None,
    read_only: bool = False,
    vcpus: int = 1,
    machine: str = "q35",
    memory_file: Path | None = None,
    no_reboot: bool = False,
    qemu: str = QEMU,
) -> list[str]:
    """The QEMU argument list that runs VM `name` from its files in `vm_dir`.

    `disks` (relative paths are inside `vm_dir`) are attached in order on `interface` (one
    for all, or one per disk: virtio, virtio-scsi, ahci, ide); each one's format comes from its
    name (NAME.vmdk: vmdk, NAME-flat.vmdk: raw; see `disk_format`) unless `formats` gives it.
    `cache="none"` opens them with O_DIRECT; `read_only` attaches them all read-only (QEMU
    allows that on virtio and virtio-scsi only: ide-hd refuses a read-only drive).
    `firmware="uefi"` maps the matching OVMF code read-only as pflash unit 0 and `nvram`
    (default NAME.nvram) as unit 1. `serial` is "stdio", "none", None (no serial port) or a
    file path the console is written to. `memory_file` backs guest RAM with a shared file
    mapping (e.g. NAME.vswp). `accel` must already be resolved ("kvm" or "tcg"; see
    `choose_accel`).

    A writable format=vmdk disk needs a writable descriptor: QEMU's vmdk driver opens it
    O_RDWR and rewrites its CID= line (padding the file to 512 bytes) on the first write after
    each open. Where the descriptor is read-only, attach NAME-flat.vmdk (format=raw) instead.
    """
    vm_dir = Path(vm_dir)
    _choice("accelerator", accel, ACCELS)
    _choice("cache mode", cache, CACHE_MODES)
    _choice("discard mode", discard, DISCARD_MODES)
    _choice("firmware", firmware, FIRMWARES)
    interfaces = [interface] * len(disks) if isinstance(interface, str) else list(interface)
    if len(interfaces) != len(disks):
        raise ValueError("interface must be one name or one per disk")
    for kind in interfaces:
        _choice("disk interface", kind, INTERFACES)
    if detect_zeroes is not None:
        _choice("detect-zeroes mode", detect_zeroes, DETECT_ZEROES)
        if detect_zeroes == "unmap" and discard != "unmap":
            raise ValueError("detect_zeroes='unmap' needs discard='unmap'")
    if memory_bytes <= 0 or vcpus <= 0:
        raise ValueError("memory and vcpus must be positive")
    if formats is not None and len(formats) != len(disks):
        raise ValueError("formats must give one entry per disk")
    if (initrd is not None or append is not None) and kernel is None:
        raise ValueError("initrd and append need a kernel")

    memory_mib = -(-memory_bytes // MIB)
    args = [qemu, "-name", option_value(name), "-machine", f"{machine},accel={accel}",
            "-m", f"{memory_mib}M", "-smp", str(vcpus),
            "-nodefaults", "-no-user-config", "-display", "none"]
    if accel == "kvm":
        args += ["-cpu", "host"]
    if memory_file is not None:
        args += ["-object", (f"memory-backend-file,id=ram0,size={memory_mib}M,"
                             f"mem-path={option_value(vm_dir / memory_file)},share=on"),
                 "-machine", "memory-backend=ram0"]

    if firmware == "uefi":
        nvram_path = vm_dir / (nvram if nvram is not None else f"{name}.nvram")
        args += ["-drive", (f"if=pflash,format=raw,unit=0,readonly=on,"
                            f"file={option_value(ovmf_code(nvram_path))}"),
                 "-drive", f"if=pflash,format=raw,unit=1,file={option_value(nvram_path)}"]

    if kernel is not None:
        args += ["-kernel", str(kernel)]
        if initrd is not None:
            args += ["-initrd", str(initrd)]
        if append is not None:
            args += ["-append", append]

    if "virtio-scsi" in interfaces:
        args += ["-device", "virtio-scsi-pci,id=scsi0"]
    if "ahci" in interfaces:
        args += ["-device", "ahci,id=ahci0"]
    slots = dict.fromkeys(INTERFACES, 0)
    for i, (disk, kind) in enumerate(zip(disks, interfaces)):
        path = vm_dir / disk
        fmt = (formats[i] if formats is not None else None) or disk_format(path)
        drive = [f"if=none,id=disk{i},file={option_value(path)},format={fmt}",
                 f"cache={cache}", f"discard={discard}"]
        if detect_zeroes is not None:
            drive.append(f"detect-zeroes={detect_zeroes}")
        if read_only:
            drive.append("readonly=on")
        args += ["-drive", ",".join(drive)]
        boot = f",bootindex={i}" if kernel is None else ""
        slot, slots[kind] = slots[kind], slots[kind] + 1
        if kind == "virtio":
            device = "virtio-blk-pci"
        elif kind == "virtio-scsi":
            device = f"scsi-hd,bus=scsi0.0,scsi-id=0,lun={slot}"
        elif kind == "ahci":
            device = f"ide-hd,bus=ahci0.{slot}"
        elif machine.startswith("q35"):  # ide on q35: the machine's own AHCI ports
            device = f"ide-hd,bus=ide.{slot}"
        else:  # ide on pc: PIIX, two buses of two units
            device = f"ide-hd,bus=ide.{slot // 2},unit={slot % 2}"
        args += ["-device", f"{device},drive=disk{i}{boot}"]

    if serial is None:
        pass
    elif serial in ("stdio", "none"):
        args += ["-serial", str(serial)]
    else:
        args += ["-chardev", f"file,id=console0,path={option_value(serial)}",
                 "-serial", "chardev:console0"]
    if qmp_socket is not None:
        args += ["-qmp", f"unix:{option_value(qmp_socket)},server=on,wait=off"]
    if no_reboot:
        args.append("-no-reboot")
    args += list(extra)
    return args
