"""Verbs on VMs, their snapshots and clones, and volumes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfsd.sizes import format_size
from vfsd.store import Store, StoreError
from vfsd.store.snapshots import Snapshots, check_snapshot_name
from vfsd.store.vms import VmInfo, Vms

from .common import emit, open_store, store_path

OVMF_VARS = (Path("/usr/share/OVMF/OVMF_VARS_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd"))


def describe_vm(info: VmInfo, state: str | None = None) -> str:
    lines = [f"VM {info.name}: memory {format_size(info.memory)}, firmware {info.firmware}"
             + (f", {state}" if state else "")]
    for disk in info.disks:
        kind = f"volume {disk.volume}" if disk.volume else "instance disk"
        lines.append(f"  {disk.descriptor:24} {format_size(disk.size):>10} "
                     f"({format_size(disk.physical)} used)  {kind}")
    return "\n".join(lines)


def read_uefi_vars() -> bytes | None:
    for path in OVMF_VARS:
        if path.exists():
            return path.read_bytes()
    return None


def cmd_vm_create(args: argparse.Namespace) -> int:
    uefi_vars = read_uefi_vars() if args.firmware == "uefi" else None
    if args.firmware == "uefi" and uefi_vars is None:
        raise StoreError("--firmware uefi needs OVMF's variable store: apt-get install ovmf")
    with open_store(args) as store:
        info = Vms(store).create(args.name, args.disk, args.memory, args.firmware, uefi_vars)
    emit(args, info.as_dict(), describe_vm(info))
    return 0


def cmd_vm_ls(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    rows: list[tuple[dict[str, Any], str]] = []
    with open_store(args) as store:
        vms = Vms(store)
        for name in vms.names():
            try:
                info = vms.show(name)
            except StoreError as e:
                # A directory under vms/ that is not (or no longer) a whole VM, made or broken
                # through the mount: list it as such, and keep listing the others.
                rows.append(({"name": name, "error": str(e)}, f"{name:24} (broken: {e})"))
                continue
            disk = format_size(sum(d.size for d in info.disks))
            state = vmctl.state(store, name)
            line = (f"{info.name:24} {state:10} {format_size(info.memory):>10} memory  "
                    f"{disk:>10} disk  {info.firmware}")
            rows.append(({**info.as_dict(), "state": state}, line))
    emit(args, [row for row, _ in rows], "\n".join(text for _, text in rows) or "no VMs")
    return 0


def cmd_vm_show(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    with open_store(args) as store:
        info = Vms(store).show(args.name)
        state = vmctl.state(store, args.name)
    emit(args, {**info.as_dict(), "state": state}, describe_vm(info, state))
    return 0


def cmd_vm_rm(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    with open_store(args) as store:
        pid = vmctl.VmRuntime.of(store, args.name).running_pid()
        if pid is not None:
            raise StoreError(f"VM {args.name} is running (QEMU pid {pid}); "
                             f"`vfsd vm stop {args.name}` first")
        Vms(store).remove(args.name)
    print(f"removed VM {args.name}")
    return 0


def cmd_vm_resize(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        info = Vms(store).resize(args.name, args.disk)
    emit(args, info.as_dict(), describe_vm(info))
    return 0


def cmd_vm_import(args: argparse.Namespace) -> int:
    from vfsd import vmimage

    uefi_vars = read_uefi_vars() if args.firmware == "uefi" else None
    if args.firmware == "uefi" and uefi_vars is None:
        raise StoreError("--firmware uefi needs OVMF's variable store: apt-get install ovmf")
    with open_store(args) as store:
        info = vmimage.import_image(store, args.name, Path(args.image), args.memory,
                                    args.firmware, progress=True, uefi_vars=uefi_vars)
    emit(args, info.as_dict(), describe_vm(info))
    return 0


def cmd_vm_export(args: argparse.Namespace) -> int:
    from vfsd import vmimage

    dest = Path(args.dest)
    fmt = args.format or vmimage.format_for(dest)
    with open_store(args) as store:
        vmimage.export_image(store, args.name, dest, fmt, progress=True)
    print(f"exported VM {args.name}'s disk to {dest} ({fmt})")
    return 0


def cmd_vm_qemu_args(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    with open_store(args) as store:
        print(vmctl.shell_command(vmctl.command(store, args.name, args.accel, args.console,
                                                args.kernel, args.initrd, args.append)))
    return 0


def cmd_vm_start(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    with open_store(args) as store:
        result = vmctl.start(store, args.name, args.accel, args.console, args.kernel,
                             args.initrd, args.append)
    if args.console:
        return result
    print(f"started VM {args.name} (QEMU pid {result}); console: "
          f"{store_path(args) / 'run' / 'vms' / (args.name + '.console')}")
    return 0


def cmd_vm_stop(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    with open_store(args) as store:
        how = vmctl.stop(store, args.name, args.timeout)
    if how == "powered-off":
        print(f"stopped VM {args.name}")
    else:
        # A guest that ignores ACPI (or is still shutting down) loses what it had not yet
        # written to its disk: say so rather than report a clean stop.
        signal_name = "SIGTERM" if how == "terminated" else "SIGKILL"
        print(f"stopped VM {args.name}: the guest did not power off within "
              f"{args.timeout:g} s, so QEMU was stopped with {signal_name}")
        print("warning: writes the guest had not yet sent to its disk (its page cache) are "
              "lost; what reached the disk is kept. A guest that ignores the ACPI power "
              "button needs a shutdown from inside; a slow one, a longer --timeout")
    return 0


def flush_through_mount(store: Store, paths: list[str]) -> None:
    """fsync the files through the store's live mount, if any: the daemon then commits their
    dirty data, so a snapshot taken next is crash-consistent with what the guest wrote."""
    from vfsd.mounts import find_mountpoint

    mountpoint = find_mountpoint(store.config.path)
    if mountpoint is None:
        return
    for path in paths:
        try:
            fd = os.open(mountpoint / path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def vm_file_paths(store: Store, vm: str) -> list[str]:
    vm_dir = store.resolve(f"vms/{vm}")
    return [f"vms/{vm}/{e.name.decode()}" for e in store.readdir(vm_dir.ino, 0, 1 << 20)
            if not e.name.startswith(b".")]


def describe_snapshots(infos: list) -> str:
    return "\n".join(f"{i.name:24} {format_size(i.size):>10} ({format_size(i.stored)} stored)"
                     for i in infos) or "no snapshots"


@dataclass(frozen=True)
class SnapshotKind:
    """How the snapshot verbs address a VM or a volume: one set of commands serves both."""

    noun: str
    create: str  # the Snapshots methods
    list: str
    revert: str
    remove: str
    clone: str
    files: Callable[[Store, str], list[str]]  # paths to flush through the mount first
    describe: Callable[[Any], str]  # a clone's one-screen description


SNAPSHOT_KINDS = {
    "vm": SnapshotKind("VM", "create", "list", "revert", "remove", "clone",
                       vm_file_paths, describe_vm),
    "volume": SnapshotKind("volume", "create_volume_snapshot", "list_volume_snapshots",
                           "revert_volume", "remove_volume_snapshot", "clone_volume",
                           lambda store, name: [f"volumes/{name}-flat.vmdk"],
                           lambda info: f"volume {info.name}: {format_size(info.size)}"),
}


def cmd_snapshot(args: argparse.Namespace) -> int:
    kind = SNAPSHOT_KINDS[args.kind]
    check_snapshot_name(args.snap)
    with open_store(args) as store:
        # Named before the mount is asked to flush its files, so the error names the VM.
        Vms(store).show(args.name) if args.kind == "vm" else Vms(store).show_volume(args.name)
        flush_through_mount(store, kind.files(store, args.name))
        info = getattr(Snapshots(store), kind.create)(args.name, args.snap)
    emit(args, info.as_dict(), f"snapshot {args.snap} of {kind.noun} {args.name}: "
                               f"{format_size(info.size)}")
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    kind = SNAPSHOT_KINDS[args.kind]
    with open_store(args) as store:
        infos = getattr(Snapshots(store), kind.list)(args.name)
    emit(args, [i.as_dict() for i in infos], describe_snapshots(infos))
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    kind = SNAPSHOT_KINDS[args.kind]
    with open_store(args) as store:
        getattr(Snapshots(store), kind.revert)(args.name, args.snap)
    print(f"reverted {kind.noun} {args.name} to snapshot {args.snap}")
    return 0


def cmd_snapshot_rm(args: argparse.Namespace) -> int:
    kind = SNAPSHOT_KINDS[args.kind]
    with open_store(args) as store:
        getattr(Snapshots(store), kind.remove)(args.name, args.snap)
    print(f"removed snapshot {args.snap} of {kind.noun} {args.name}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    kind = SNAPSHOT_KINDS[args.kind]
    with open_store(args) as store:
        if args.snapshot is None:
            flush_through_mount(store, kind.files(store, args.src))
        info = getattr(Snapshots(store), kind.clone)(args.src, args.dst, args.snapshot)
    emit(args, info.as_dict(), kind.describe(info))
    return 0


def cmd_volume_create(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        info = Vms(store).create_volume(args.name, args.size)
    emit(args, info.as_dict(), f"volume {info.name}: {format_size(info.size)}")
    return 0


def cmd_volume_resize(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        info = Vms(store).resize_volume(args.name, args.size)
    emit(args, info.as_dict(), f"volume {info.name}: {format_size(info.size)}")
    return 0


def cmd_volume_ls(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        vms = Vms(store)
        infos = [vms.show_volume(name) for name in vms.volume_names()]
    text = "\n".join(
        f"{v.name:24} {format_size(v.size):>10} ({format_size(v.physical)} used)  "
        + (f"attached to {v.attached_to}" if v.attached_to else "detached") for v in infos
    ) or "no volumes"
    emit(args, [v.as_dict() for v in infos], text)
    return 0


def cmd_volume_attach(args: argparse.Namespace) -> int:
    from vfsd import vmctl

    with open_store(args) as store:
        Vms(store).attach(args.name, args.vm)
        running = vmctl.state(store, args.vm) != "stopped"
    # QEMU's disks are fixed when it starts: no hot-plug here.
    later = f" (VM {args.vm} runs: its guest sees the volume from its next start)"
    print(f"attached volume {args.name} to VM {args.vm}" + (later if running else ""))
    return 0


def cmd_volume_detach(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        vm = Vms(store).detach(args.name)
    print(f"detached volume {args.name} from VM {vm}")
    return 0


def cmd_volume_rm(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        Vms(store).remove_volume(args.name)
    print(f"removed volume {args.name}")
    return 0
