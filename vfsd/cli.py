"""The `vfsd` command: thin verbs over the core. `main(argv) -> int`, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from vfsd import __version__
from vfsd.sizes import format_size, parse_size
from vfsd.store import Store, StoreError, journal
from vfsd.store import fsck as fsck_module
from vfsd.store import stats as stats_module
from vfsd.store import users
from vfsd.store.config import load_config
from vfsd.store.snapshots import Snapshots
from vfsd.store.vms import VmInfo, Vms

T = TypeVar("T")
OVMF_VARS = (Path("/usr/share/OVMF/OVMF_VARS_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd"))
EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGE = 1, 2, 3
DEFAULT_USER = "admin"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (plus a hint) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def duration_arg(text: str) -> float:
    try:
        value = float(text[:-1] if text.endswith("s") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 1s, 0.5)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return value


def store_path(args: argparse.Namespace) -> Path:
    return Path(args.store or os.environ.get("VFSD_STORE") or "./data")


def open_store(args: argparse.Namespace) -> Store:
    store = Store.open(store_path(args))
    try:
        journal.recover(store)  # what a crashed mount fsynced comes before any change made here
    except BaseException:
        store.close()
        raise
    return store


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def tqdm_progress(items: Iterable[T], total: int, label: str) -> Iterable[T]:
    from tqdm import tqdm

    return tqdm(items, total=total, desc=label, unit="", file=sys.stderr, disable=None,
                leave=False)


# --- verbs ---------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    path = store_path(args)
    with Store.init(path, chunk_size=args.chunk_size, quota=args.quota) as store:
        print(f"initialised store {path} (node {store.config.node_id}, "
              f"{format_size(store.chunk_size)} chunks)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        st = stats_module.collect(store)
    lines = [
        f"logical      {format_size(st.logical_bytes)}   (data files reference, before dedup)",
        f"physical     {format_size(st.physical_bytes)}   (unique chunk bodies)",
        f"dedup ratio  {st.dedup_ratio:.2f}",
        f"apparent     {format_size(st.apparent_bytes)}   (sum of file sizes, holes included)",
        f"provisioned  {format_size(st.provisioned_bytes)}   (VM disks and volumes, thin)",
        f"capacity     {format_size(st.capacity_bytes)}"
        + ("   (quota)" if st.quota_bytes else "   (free disk + stored)"),
        f"overcommit   {st.overcommit:.2f}"
        + ("   WARNING: thin disks could outgrow the pool" if st.overcommit > 1 else ""),
        f"chunks       {st.chunks}",
        f"segments     {st.segments} ({format_size(st.segment_bytes)} on disk)",
        f"files        {st.files} in {st.directories} directories",
    ]
    emit(args, st.as_dict(), "\n".join(lines))
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        if args.repair:
            from vfsd.store import repair

            repaired = repair.repair(store, tqdm_progress, grace=args.grace)
            print(repaired.summary())
            if repaired.data_lost:
                for damaged in repaired.damaged:
                    print(f"lost: {damaged.describe()}")
        report = fsck_module.check(store, tqdm_progress)
    for problem in report.damage[:200]:
        print(f"damage: {problem}")
    if len(report.damage) > 200:
        print(f"… and {len(report.damage) - 200} more")
    print(report.summary())
    if args.repair and repaired.data_lost:
        return EXIT_DAMAGE
    return 0 if report.clean else EXIT_DAMAGE


def describe_vm(info: VmInfo) -> str:
    lines = [f"VM {info.name}: memory {format_size(info.memory)}, firmware {info.firmware}"]
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
    with open_store(args) as store:
        vms = Vms(store)
        infos = [vms.show(name) for name in vms.names()]
    text = "\n".join(
        f"{i.name:24} {format_size(i.memory):>10} memory  "
        f"{format_size(sum(d.size for d in i.disks)):>10} disk  {i.firmware}" for i in infos
    ) or "no VMs"
    emit(args, [i.as_dict() for i in infos], text)
    return 0


def cmd_vm_show(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        info = Vms(store).show(args.name)
    emit(args, info.as_dict(), describe_vm(info))
    return 0


def cmd_vm_rm(args: argparse.Namespace) -> int:
    with open_store(args) as store:
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
        vmctl.stop(store, args.name, args.timeout)
    print(f"stopped VM {args.name}")
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
    with open_store(args) as store:
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
    with open_store(args) as store:
        Vms(store).attach(args.name, args.vm)
    print(f"attached volume {args.name} to VM {args.vm}")
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


def _mount_config(args: argparse.Namespace, mountpoint: Path, foreground: bool):
    from vfsd.fs.mount import MountConfig

    return MountConfig(store=store_path(args), mountpoint=mountpoint, foreground=foreground,
                       cache_size=args.cache_size, commit_interval=args.commit_interval,
                       allow_other=args.allow_other)


def cmd_mount(args: argparse.Namespace) -> int:
    from vfsd.fs.mount import mount

    return mount(_mount_config(args, Path(args.mountpoint), args.foreground))


def cmd_up(args: argparse.Namespace) -> int:
    from vfsd.fs.mount import check_mountpoint, mount

    path = store_path(args)
    if not (path / "store.toml").exists():
        Store.init(path).close()
        print(f"initialised store {path}")
    with open_store(args) as store:
        user = next((u for u in users.list_users(store) if u.name == DEFAULT_USER), None)
        if user is None:
            user = users.add(store, DEFAULT_USER)
            print(f"created S3 user {DEFAULT_USER}")
    mnt = Path(args.mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    check_mountpoint(mnt)
    host, port = args.listen
    gateway = subprocess.Popen([sys.executable, "-m", "vfsd", "gateway", "--store", str(path),
                                "--listen", f"{host}:{port}"])
    print(f"S3 endpoint  http://{host}:{port}   access key {user.access_key}   "
          f"secret key {user.secret_key}", flush=True)
    print(f"mounting {path} on {mnt} (Ctrl-C to flush, unmount and stop)", flush=True)
    try:
        return mount(_mount_config(args, mnt, foreground=True))
    finally:
        if gateway.poll() is None:
            gateway.terminate()
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()


def quota_arg(text: str) -> int | None:
    return None if text.lower() in ("none", "off") else size_arg(text)


def cmd_pool_set(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        store.set_quota(args.quota)
        st = stats_module.collect(store)
    limit = format_size(args.quota) if args.quota else "none (the backing disk's free space)"
    print(f"pool quota: {limit}; physical use {format_size(st.physical_bytes)}")
    if st.overcommit > 1:
        print(f"warning: thin disks ({format_size(st.provisioned_bytes)}) could outgrow the pool "
              f"({format_size(st.capacity_bytes)}): overcommit {st.overcommit:.2f}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from vfsd.store import gc

    with open_store(args) as store:
        report = gc.collect(store, grace=args.grace, progress=tqdm_progress)
        if report.waiting and args.wait:
            time.sleep(args.grace)
            later = gc.collect(store, grace=args.grace, progress=tqdm_progress)
            report.deleted += later.deleted
            report.freed_bytes += later.freed_bytes
            report.waiting = later.waiting
    print(report.summary())
    return 0


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        if not sep or not host or not 0 <= int(port) < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r} (use HOST:PORT, e.g. 127.0.0.1:9000)") from None
    return host.strip("[]"), int(port)


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig
    from gateway.server import serve

    load_config(store_path(args))  # one clear line for a missing store, before anything starts
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("vfsd gateway: --tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise StoreError(f"cannot read {path}")
    host, port = args.listen
    metrics_host, metrics_port = args.metrics_listen or ("127.0.0.1", None)
    return serve(GatewayConfig(store=store_path(args), host=host, port=port,
                               region=args.region, tls_cert=args.tls_cert,
                               tls_key=args.tls_key, metrics_host=metrics_host,
                               metrics_port=metrics_port))


def cmd_user_add(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        user = users.add(store, args.name)
    data = {"name": user.name, "access_key": user.access_key, "secret_key": user.secret_key}
    emit(args, data, f"user {user.name}\naccess key  {user.access_key}\n"
                     f"secret key  {user.secret_key}")
    return 0


def cmd_user_ls(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        listed = users.list_users(store)
    emit(args, [{"name": u.name, "access_key": u.access_key, "created": u.created}
                for u in listed],
         "\n".join(f"{u.name:24} {u.access_key}" for u in listed) or "no users")
    return 0


def cmd_user_rm(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        users.remove(store, args.name)
    print(f"removed user {args.name}")
    return 0


# --- the parser ----------------------------------------------------------------------------

def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--store", metavar="PATH",
                        help="the store directory (default: $VFSD_STORE, else ./data)")
    json_flag = Parser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = Parser(
        prog="vfsd",
        description="A deduplicating, thin-provisioned store for VM files, volumes and "
                    "objects, seen as a FUSE file system and as S3.",
        epilog="Every verb has its own --help. Errors print one line and exit non-zero "
               "(1 error, 2 bad usage, 3 fsck found damage).",
    )
    parser.add_argument("--version", action="version", version=f"vfsd {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)

    def verb(sub: argparse._SubParsersAction, name: str, func: Callable[..., int], help: str,
             description: str = "", json: bool = False) -> Parser:
        p = sub.add_parser(name, help=help, description=description or help,
                           parents=[common] + ([json_flag] if json else []))
        p.set_defaults(func=func)
        return p

    p = verb(verbs, "init", cmd_init, "create a new store",
             "Create a store directory: meta/ (the LMDB index), segments/ (chunk bodies) and "
             "store.toml. The chunk size is fixed for the store's life.")
    p.add_argument("--chunk-size", type=size_arg, default=64 * 1024, metavar="SIZE",
                   help="dedup/thin granularity, a power of two from 4K to 4M (default 64K, "
                        "QEMU's cluster size)")
    p.add_argument("--quota", type=size_arg, metavar="SIZE",
                   help="pool capacity (default: the backing disk's free space)")
    verb(verbs, "stats", cmd_stats, "show space use: logical, physical, dedup, thin overcommit",
         json=True)
    p = verb(verbs, "fsck", cmd_fsck, "check every invariant of the store (read-only)",
             "Check that chunk maps, refcounts, segment records (CRC and hash), directory "
             "entries, link counts and the S3 key index agree. Exits 3 if anything is "
             "damaged. With --repair, first rebuild what can be derived from the chunk maps "
             "(refcounts, counters, the S3 key index, directory cookies), re-index chunks "
             "found intact in segments, turn lost chunks into holes (reporting the files), "
             "and reclaim orphan bytes.")
    p.add_argument("--repair", action="store_true", help="repair, then check")
    p.add_argument("--grace", type=duration_arg, default=5.0, metavar="SECONDS",
                   help="with --repair: gc grace period for retired segments (default 5s)")

    vm = verbs.add_parser("vm", help="virtual machines: create, list, show, resize, remove",
                          description="VMs live in vms/NAME/ as VMware-style files: NAME.vmdk "
                          "(descriptor), NAME-flat.vmdk (thin disk), NAME.vswp (swap), "
                          "NAME.nvram (firmware variables) and NAME.vmx (settings).")
    vm_verbs = vm.add_subparsers(dest="vm_verb", metavar="VERB", required=True,
                                 parser_class=Parser)
    vm.set_defaults(kind="vm")  # the snapshot verbs serve VMs and volumes alike
    p = verb(vm_verbs, "create", cmd_vm_create, "create a VM's files", json=True)
    p.add_argument("name")
    p.add_argument("--disk", type=size_arg, required=True, metavar="SIZE",
                   help="virtual disk size, e.g. 20G (thin: costs nothing until written)")
    p.add_argument("--memory", type=size_arg, required=True, metavar="SIZE",
                   help="guest memory, e.g. 2G; also the size of the swap file")
    p.add_argument("--firmware", choices=("bios", "uefi"), default="bios",
                   help="uefi copies OVMF's variable store into NAME.nvram (default bios)")
    verb(vm_verbs, "ls", cmd_vm_ls, "list VMs", json=True)
    p = verb(vm_verbs, "show", cmd_vm_show, "show a VM's settings and disks", json=True)
    p.add_argument("name")
    p = verb(vm_verbs, "rm", cmd_vm_rm, "delete a VM and its instance disks",
             "Delete vms/NAME/ and the VM's own disks. Attached volumes are detached and kept.")
    p.add_argument("name")
    p = verb(vm_verbs, "resize", cmd_vm_resize, "grow a VM's disk", json=True)
    p.add_argument("name")
    p.add_argument("--disk", type=size_arg, required=True, metavar="SIZE",
                   help="the new size; shrinking is refused")

    p = verb(vm_verbs, "import", cmd_vm_import, "create a VM from a disk image",
             "Create a VM from a qcow2, vmdk or raw image: its disk gets the image's virtual "
             "size and zero areas stay holes. Uses qemu-img, through the live mount if there "
             "is one; shows progress on a terminal.", json=True)
    p.add_argument("name")
    p.add_argument("image", help="the image file (qcow2, vmdk, raw, ...)")
    p.add_argument("--memory", type=size_arg, required=True, metavar="SIZE",
                   help="guest memory, e.g. 2G; also the size of the swap file")
    p.add_argument("--firmware", choices=("bios", "uefi"), default="bios",
                   help="uefi copies OVMF's variable store into NAME.nvram (default bios)")
    p = verb(vm_verbs, "export", cmd_vm_export, "write a VM's disk to a qcow2 or vmdk image",
             "Write the VM's first disk to DEST (refused while the VM runs). The format "
             "follows DEST's suffix (.vmdk: vmdk, else qcow2) unless --format says.")
    p.add_argument("name")
    p.add_argument("dest")
    p.add_argument("--format", choices=("qcow2", "vmdk"), help="the image format")

    accel_opts = Parser(add_help=False)
    accel_opts.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                            help="kvm, tcg, or auto: a bounded probe picks kvm only if it "
                                 "really runs guests (default auto)")
    accel_opts.add_argument("--console", action="store_true",
                            help="serial console on this terminal (QEMU runs attached)")
    accel_opts.add_argument("--kernel", type=Path, metavar="FILE",
                            help="boot this kernel directly instead of from the disk")
    accel_opts.add_argument("--initrd", type=Path, metavar="FILE", help="with --kernel")
    accel_opts.add_argument("--append", metavar="CMDLINE", help="with --kernel: its command line")
    p = vm_verbs.add_parser("qemu-args", parents=[common, accel_opts],
                            help="print the QEMU command line `vm start` would run",
                            description="Print the QEMU command that runs the VM from its files "
                            "on the store's live mount (descriptors as vmdk with cache=none "
                            "and discard=unmap, the swap file as an extra disk).")
    p.add_argument("name")
    p.set_defaults(func=cmd_vm_qemu_args)
    p = vm_verbs.add_parser("start", parents=[common, accel_opts], help="start a VM in QEMU",
                            description="Start QEMU on the VM's files on the mount. Refused if "
                            "the VM runs already or its disk is open for writing elsewhere.")
    p.add_argument("name")
    p.set_defaults(func=cmd_vm_start)
    p = verb(vm_verbs, "stop", cmd_vm_stop, "power a VM off (ACPI, then hard after --timeout)")
    p.add_argument("name")
    p.add_argument("--timeout", type=duration_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for the guest to power off (default 30s)")

    p = verb(vm_verbs, "snapshot", cmd_snapshot, "snapshot a VM's files (not its swap)",
             "Copy the chunk maps (no data) of the VM's files, except the swap file, into "
             "vms/NAME/.snapshots/SNAP/, read-only. A mounted VM's dirty data is flushed "
             "first, so the snapshot is crash-consistent.", json=True)
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vm_verbs, "snapshots", cmd_snapshots, "list a VM's snapshots", json=True)
    p.add_argument("name")
    p = verb(vm_verbs, "revert", cmd_revert, "give a stopped VM a snapshot's disks and nvram",
             "Refused while the VM's disks are open for writing (running).")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vm_verbs, "snapshot-rm", cmd_snapshot_rm,
             "delete a snapshot (clones made from it stay intact)")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vm_verbs, "clone", cmd_clone, "make a new VM sharing a VM's (or snapshot's) data",
             "Metadata only: the clone references the same chunks until either side writes. "
             "Attached volumes become instance disks of the clone.", json=True)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--snapshot", metavar="SNAP", help="clone this snapshot of SRC instead")

    volume = verbs.add_parser("volume", help="detachable disks: create, attach, detach, remove",
                              description="Volumes live in volumes/ and outlive the VMs they "
                              "are attached to (a hard link into the VM's directory).")
    vol_verbs = volume.add_subparsers(dest="volume_verb", metavar="VERB", required=True,
                                      parser_class=Parser)
    volume.set_defaults(kind="volume")
    p = verb(vol_verbs, "create", cmd_volume_create, "create a thin volume", json=True)
    p.add_argument("name")
    p.add_argument("--size", type=size_arg, required=True, metavar="SIZE", help="e.g. 10G")
    verb(vol_verbs, "ls", cmd_volume_ls, "list volumes and where they are attached", json=True)
    p = verb(vol_verbs, "attach", cmd_volume_attach, "attach a volume to a VM")
    p.add_argument("name")
    p.add_argument("--vm", required=True, help="the VM to attach it to")
    p = verb(vol_verbs, "detach", cmd_volume_detach, "detach a volume from its VM")
    p.add_argument("name")
    p = verb(vol_verbs, "rm", cmd_volume_rm, "delete a detached volume")
    p.add_argument("name")
    p = verb(vol_verbs, "snapshot", cmd_snapshot, "snapshot a volume (metadata only)",
             json=True)
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vol_verbs, "snapshots", cmd_snapshots, "list a volume's snapshots", json=True)
    p.add_argument("name")
    p = verb(vol_verbs, "revert", cmd_revert, "give a detached volume a snapshot's data")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vol_verbs, "snapshot-rm", cmd_snapshot_rm, "delete a volume snapshot")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vol_verbs, "clone", cmd_clone, "make a new volume sharing a volume's data",
             json=True)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--snapshot", metavar="SNAP", help="clone this snapshot of SRC instead")

    mount_opts = Parser(add_help=False)
    mount_opts.add_argument("--cache-size", type=size_arg, default=256 << 20, metavar="SIZE",
                            help="memory for dirty data before writers wait (default 256M)")
    mount_opts.add_argument("--commit-interval", type=duration_arg, default=1.0,
                            metavar="SECONDS", help="commit dirty data to the store at least "
                            "this often (default 1s); close commits at once, fsync makes "
                            "small writes durable in the fsync journal and large ones by a "
                            "commit")
    mount_opts.add_argument("--allow-other", action="store_true",
                            help="let users other than the mounting one use the mount")
    p = verbs.add_parser("mount", parents=[common, mount_opts], help="mount the store (FUSE)",
                         description="Mount the store as a POSIX file system. Runs as a "
                         "daemon (logging to STORE/vfsd.log) unless --foreground. SIGTERM, "
                         "SIGINT or `fusermount3 -u` flush all dirty data and unmount.")
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground")
    p.set_defaults(func=cmd_mount)
    p = verbs.add_parser("up", parents=[common, mount_opts], help="the main job: init if "
                         "needed, mount in the foreground and serve S3 beside it",
                         description="Initialise the store if missing, create the S3 user "
                         f"{DEFAULT_USER!r} on first run, start the S3 gateway and mount the "
                         "store in the foreground. Ctrl-C flushes, unmounts and stops both.")
    p.add_argument("--mnt", default="./mnt", help="mount point (default ./mnt, created)")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9000),
                   metavar="HOST:PORT", help="the S3 gateway's address (default 127.0.0.1:9000)")
    p.set_defaults(func=cmd_up)
    p = verb(verbs, "gateway", cmd_gateway, "serve the store over S3 (HTTP)",
             "Serve the store as S3: top-level directories are buckets, files are objects. "
             "Requests are signed (SigV4) with keys from `vfsd user add`. Runs until "
             "SIGTERM/SIGINT.")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9000),
                   metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:9000; "
                   "binding beyond loopback must be asked for explicitly)")
    p.add_argument("--region", default="us-east-1", help="the region clients sign for")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this "
                   "certificate (with --tls-key); clients then send aws-chunked bodies")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    p.add_argument("--metrics-listen", type=parse_listen, metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (off by default; unauthenticated, "
                        "keep it private)")
    pool = verbs.add_parser("pool", help="the storage pool: its quota",
                            description="The pool is what the store may use on disk: a quota, "
                            "else the backing file system's free space. Writes past it fail "
                            "with ENOSPC on the mount and a clean S3 error, leaving nothing "
                            "half-written.")
    pool_verbs = pool.add_subparsers(dest="pool_verb", metavar="VERB", required=True,
                                     parser_class=Parser)
    p = verb(pool_verbs, "set", cmd_pool_set, "set or clear the pool's quota")
    p.add_argument("--quota", type=quota_arg, required=True, metavar="SIZE",
                   help="e.g. 500G, or 'none' for the backing disk's free space")
    p = verb(verbs, "gc", cmd_gc, "give back the space of deleted and overwritten data",
             "Retire segments that hold no live chunk, compact mostly-dead ones, and delete "
             "retired segment files once their grace period is over. A mounted store does "
             "this in the background too.")
    p.add_argument("--grace", type=duration_arg, default=5.0, metavar="SECONDS",
                   help="how long a retired segment stays readable (default 5s)")
    p.add_argument("--wait", action="store_true",
                   help="wait out the grace period and delete what this pass retired")

    user = verbs.add_parser("user", help="S3 users: add, list, remove")
    user_verbs = user.add_subparsers(dest="user_verb", metavar="VERB", required=True,
                                     parser_class=Parser)
    p = verb(user_verbs, "add", cmd_user_add, "create a user and print its new key pair",
             json=True)
    p.add_argument("name")
    verb(user_verbs, "ls", cmd_user_ls, "list users (no secrets)", json=True)
    p = verb(user_verbs, "rm", cmd_user_rm, "delete a user")
    p.add_argument("name")
    return parser


def reexec_with_tunables(argv: Sequence[str]) -> None:
    """The daemons need glibc tunables that only apply at process start (DESIGN.md, "Measured
    facts": without them every 1 MiB buffer costs hundreds of page faults; the gateway's GET
    16M went from ~42 to ~57 ops/s with them in bench/s3.py's profile)."""
    from vfsd.fs.mount import GLIBC_TUNABLES

    if os.environ.get("GLIBC_TUNABLES") == GLIBC_TUNABLES or os.environ.get("VFSD_NO_TUNABLES"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
    os.execve(sys.executable, [sys.executable, "-m", "vfsd", *argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.func in (cmd_mount, cmd_up, cmd_gateway):
            reexec_with_tunables(argv)
        return int(args.func(args))
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except StoreError as e:
        print(f"vfsd: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vfsd: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"vfsd: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: one line for the user, the traceback on request
        if os.environ.get("VFSD_DEBUG"):
            traceback.print_exc()
        print(f"vfsd: internal error: {type(e).__name__}: {e} (set VFSD_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
