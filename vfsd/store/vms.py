"""VMs and volumes as VMware-style files (DESIGN.md, "Virtual machines").

`vms/NAME/` holds NAME.vmdk (descriptor, read-only), NAME-flat.vmdk (the thin, fixed-size disk),
NAME.vswp (swap, ephemeral), NAME.nvram (firmware variables) and NAME.vmx (settings). A volume is
`volumes/NAME.vmdk` + `NAME-flat.vmdk`; attaching hard-links both into the VM's directory, so
the VM's disk and the volume are one inode. Each operation is one transaction, with any file
bodies staged before it.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from . import namespace
from .chunks import chunk_map
from .env import Tx
from .errors import Busy, Exists, InvalidArgument, NotFound, PermissionDenied
from .leases import Holder
from .names import check_name
from .records import ROOT_INO, Inode, InodeFlags
from .store import MAX_FILE_SIZE, Store
from .vmdk import SECTOR, descriptor, parse_extent
from .vmx import VmSettings

VMS = b"vms"
VOLUMES = b"volumes"
ATTACHED = b"vfsd.attached"  # xattr on a volume's flat extent: the VM it is attached to
BIOS_NVRAM_SIZE = 8684  # what VMware gives a BIOS VM
FIRMWARES = ("bios", "uefi")
FILE_MODE = stat.S_IFREG | 0o644
DISK_FLAGS = InodeFlags.FIXED_SIZE | InodeFlags.VM_FILE
DESCRIPTOR_FLAGS = InodeFlags.READONLY | InodeFlags.VM_FILE | InodeFlags.DESCRIPTOR


@dataclass
class DiskInfo:
    descriptor: str
    extent: str
    size: int
    physical: int
    volume: str | None = None


@dataclass
class VmInfo:
    name: str
    memory: int
    firmware: str
    disks: list[DiskInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "memory": self.memory, "firmware": self.firmware,
            "disks": [vars(d) for d in self.disks],
        }


@dataclass
class VolumeInfo:
    name: str
    size: int
    physical: int
    attached_to: str | None

    def as_dict(self) -> dict[str, object]:
        return vars(self)


def check_vm_name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) > 200:  # leaves room for the suffixes of the files named after it
        raise InvalidArgument(f"name {name[:40]!r}… is too long ({len(raw)} bytes; "
                              "200 at most)")
    check_name(raw)
    if raw.startswith(b".") or not name.isprintable():
        raise InvalidArgument(f"invalid name {name!r}: no leading '.', no control characters")
    return raw


MAX_DISK_SIZE = (1 << 63) - SECTOR  # a whole number of sectors within Linux's off_t

def check_disk_size(size: int) -> int:
    if size <= 0:
        raise InvalidArgument("a disk size must be positive")
    if size > MAX_DISK_SIZE:
        raise InvalidArgument("a disk can be at most 8 EiB minus one sector (the largest "
                              "file Linux can hold)")
    return (size + SECTOR - 1) // SECTOR * SECTOR


class Vms:
    def __init__(self, store: Store):
        self.store = store
        self.origin = store.origin

    # --- helpers inside a transaction ----------------------------------------------------

    def _top(self, tx: Tx, name: bytes) -> Inode:
        entry = namespace.lookup(tx, ROOT_INO, name)
        if entry is not None:
            return namespace.get_inode(tx, entry.ino)
        return namespace.make(tx, self.origin, ROOT_INO, name, stat.S_IFDIR | 0o755, 0, 0)

    def _vm_dir(self, tx: Tx, name: str) -> Inode:
        raw = check_vm_name(name)
        vms = namespace.lookup(tx, ROOT_INO, VMS)
        entry = namespace.lookup(tx, vms.ino, raw) if vms else None
        if entry is None:
            raise NotFound(f"no VM named {name}")
        return namespace.get_inode(tx, entry.ino)

    def _child(self, tx: Tx, parent: Inode, name: str) -> Inode | None:
        entry = namespace.lookup(tx, parent.ino, name.encode())
        return namespace.get_inode(tx, entry.ino) if entry else None

    def _new_file(self, tx: Tx, parent: Inode, name: str, flags: InodeFlags, size: int,
                  staged: list | None = None) -> Inode:
        inode = namespace.make(tx, self.origin, parent.ino, name.encode(), FILE_MODE, 0, 0,
                               flags=flags)
        return self.store.data.install(tx, inode.ino, staged or [], size)

    def _physical(self, tx: Tx, ino: int) -> int:
        total = 0
        for _index, digest in chunk_map(tx, ino):
            raw = tx.get(tx.db.chunks, digest)
            total += int.from_bytes(raw[16:20], "big") if raw else 0
        return total

    def _settings(self, tx: Tx, vm_dir: Inode, name: str) -> VmSettings:
        vmx = self._child(tx, vm_dir, f"{name}.vmx")
        if vmx is None:
            raise NotFound(f"VM {name} has no {name}.vmx")
        return VmSettings.parse(bytes(self._read_small(tx, vmx)))

    def _read_small(self, tx: Tx, inode: Inode) -> bytes:
        # Settings and descriptors fit in a chunk or two; read them inside the transaction so
        # a reader sees the same version the transaction is changing.
        out = bytearray(inode.size)
        cs = self.store.chunk_size
        for index, location in self.store.data._locations(tx, inode.ino, 0, 1 << 62).items():
            body = self.store.segments.read(location)
            out[index * cs: index * cs + len(body)] = body
        return bytes(out)

    def _write_settings(self, tx: Tx, vm_dir: Inode, settings: VmSettings,
                        staged: list) -> None:
        vmx = self._child(tx, vm_dir, f"{settings.name}.vmx")
        assert vmx is not None
        self.store.data.install(tx, vmx.ino, staged, len(settings.render()))

    # --- VMs -----------------------------------------------------------------------------

    def create(self, name: str, disk_size: int, memory: int, firmware: str = "bios",
               uefi_vars: bytes | None = None) -> VmInfo:
        raw = check_vm_name(name)
        disk_size = check_disk_size(disk_size)
        if memory <= 0 or memory % (1024 * 1024):
            raise InvalidArgument("memory must be a positive whole number of MiB")
        if memory > MAX_DISK_SIZE:  # it is the size of the swap file
            raise InvalidArgument("memory can be at most 8 EiB minus one sector")
        if firmware not in FIRMWARES:
            raise InvalidArgument(f"firmware must be one of {', '.join(FIRMWARES)}")
        if firmware == "uefi" and not uefi_vars:
            raise InvalidArgument("--firmware uefi needs OVMF's variable store (apt install ovmf)")
        nvram = uefi_vars if firmware == "uefi" else bytes(BIOS_NVRAM_SIZE)
        assert nvram is not None
        settings = VmSettings(name, memory, firmware, disks=[f"{name}.vmdk"])
        data = self.store.data
        desc = descriptor(f"{name}-flat.vmdk", disk_size)
        staged_desc, staged_vmx = data.stage_bytes(desc), data.stage_bytes(settings.render())
        staged_nvram = data.stage_bytes(nvram)
        with self.store.env.write() as tx:
            vms = self._top(tx, VMS)
            if namespace.lookup(tx, vms.ino, raw) is not None:
                raise Exists(f"VM {name} already exists")
            vm_dir = namespace.make(tx, self.origin, vms.ino, raw, stat.S_IFDIR | 0o755, 0, 0)
            self._new_file(tx, vm_dir, f"{name}.vmdk", DESCRIPTOR_FLAGS, len(desc), staged_desc)
            self._new_file(tx, vm_dir, f"{name}-flat.vmdk", DISK_FLAGS, disk_size)
            self._new_file(tx, vm_dir, f"{name}.vswp", DISK_FLAGS | InodeFlags.EPHEMERAL, memory)
            self._new_file(tx, vm_dir, f"{name}.nvram", DISK_FLAGS, len(nvram), staged_nvram)
            self._new_file(tx, vm_dir, f"{name}.vmx", InodeFlags.VM_FILE,
                           len(settings.render()), staged_vmx)
        return self.show(name)

    def names(self) -> list[str]:
        with self.store.env.read() as tx:
            vms = namespace.lookup(tx, ROOT_INO, VMS)
            if vms is None:
                return []
            return sorted(e.name.decode(errors="replace")
                          for e in namespace.readdir(tx, vms.ino, 0, 1 << 62)
                          if stat.S_ISDIR(e.mode_type))

    def drop_abandoned_swap(self, holder: Holder) -> int:
        """Empty every VM's swap file that holds data and that no live process has open for
        writing; returns how many. Swap dies with its VM at the last writer's close (the
        mount punches it then), but a mount killed while its VM ran never gets that close,
        and the dead VM's memory stayed stored until the VM's next clean stop. The mount
        calls this at start, after the journal recovery. Each swap is leased to `holder`
        while it is punched (one transaction), so a VM started meanwhile through another
        mount cannot map it half emptied."""
        dropped = 0
        for name in self.names():
            try:
                swap = self.store.resolve(f"{VMS.decode()}/{name}/{name}.vswp")
            except NotFound:
                continue
            if not swap.flags & InodeFlags.EPHEMERAL or not swap.stored:
                continue
            try:
                self.store.leases.acquire(swap.ino, holder)
            except Busy:
                continue  # a running VM's: its last close drops it
            try:
                self.store.punch_hole(swap.ino, 0, MAX_FILE_SIZE)  # cut at the file's size
                dropped += 1
            finally:
                self.store.leases.release(swap.ino, holder)
        return dropped

    def show(self, name: str) -> VmInfo:
        with self.store.env.read() as tx:
            vm_dir = self._vm_dir(tx, name)
            settings = self._settings(tx, vm_dir, name)
            info = VmInfo(name, settings.memory, settings.firmware)
            for disk in settings.disks:
                desc = self._child(tx, vm_dir, disk)
                if desc is None:
                    continue
                extent_name, _size = parse_extent(self._read_small(tx, desc))
                extent = self._child(tx, vm_dir, extent_name)
                if extent is None:
                    continue
                volume = tx.get(tx.db.xattrs, namespace.xattr_key(extent.ino, ATTACHED))
                info.disks.append(DiskInfo(
                    disk, extent_name, extent.size, self._physical(tx, extent.ino),
                    disk[: -len(".vmdk")] if volume else None,
                ))
            return info

    def remove(self, name: str) -> None:
        """Delete a VM and its instance storage; attached volumes are detached and kept.
        Refused while any of its files is open for writing (a running VM, a copy into it)."""
        with self.store.env.read() as tx:
            vm_dir = self._vm_dir(tx, name)
            files = [namespace.get_inode(tx, entry.ino)
                     for entry in namespace.readdir(tx, vm_dir.ino, 0, 1 << 62)]
        self._check_not_written(files, f"VM {name}")
        with self.store.env.write() as tx:
            vm_dir = self._vm_dir(tx, name)
            # Attached volumes by what the directory holds, not by the .vmx: a VM whose
            # settings were deleted or renamed on the mount can still be removed.
            for entry in namespace.readdir(tx, vm_dir.ino, 0, 1 << 62):
                if not entry.name.endswith(b"-flat.vmdk"):
                    continue
                extent = namespace.get_inode(tx, entry.ino)
                if tx.get(tx.db.xattrs, namespace.xattr_key(extent.ino, ATTACHED)):
                    volume = entry.name[: -len(b"-flat.vmdk")].decode(errors="surrogateescape")
                    self._unlink_volume(tx, vm_dir, volume, extent)
            vms = namespace.get_inode(tx, vm_dir.parent)
            namespace.remove_tree(tx, self.origin, vms, name.encode(), self.store.opens.held)

    def resize(self, name: str, disk_size: int) -> VmInfo:
        """Grow disk 0 (the descriptor is regenerated); shrinking would lose data: refused,
        as is a VM that runs (QEMU holds the disk's old size)."""
        self._grow(lambda tx: self._vm_dir(tx, name), name, f"VM {name}", disk_size)
        return self.show(name)

    def resize_volume(self, name: str, size: int) -> VolumeInfo:
        """Grow a volume, as `resize` a VM's disk (refused while a running VM has it)."""
        self._grow(lambda tx: self._volume_extent(tx, name)[0], name, f"volume {name}", size)
        return self.show_volume(name)

    def _grow(self, directory_of: Callable[[Tx], Inode], base: str, what: str,
              disk_size: int) -> None:
        """Grow the disk `base`-flat.vmdk in the directory and regenerate `base`.vmdk."""
        disk_size = check_disk_size(disk_size)
        desc = descriptor(f"{base}-flat.vmdk", disk_size)
        staged = self.store.data.stage_bytes(desc)
        with self.store.env.read() as tx:
            extent = self._child(tx, directory_of(tx), f"{base}-flat.vmdk")
        if extent is not None:
            # The mount writing it back would undo the new size under the guest (QA pass).
            self._check_not_written([extent], what)
        with self.store.env.write() as tx:
            directory = directory_of(tx)
            extent = self._child(tx, directory, f"{base}-flat.vmdk")
            descriptor_inode = self._child(tx, directory, f"{base}.vmdk")
            if extent is None or descriptor_inode is None:
                raise NotFound(f"{what} has no disk {base}.vmdk")
            if disk_size < extent.size:
                raise PermissionDenied(
                    f"shrinking {what}'s disk from {extent.size} to {disk_size} bytes would "
                    "lose data; only growing is supported")
            extent.size = disk_size
            namespace.put_inode(tx, extent)
            self.store.data.install(tx, descriptor_inode.ino, staged, len(desc))

    # --- volumes -------------------------------------------------------------------------

    def create_volume(self, name: str, size: int) -> VolumeInfo:
        raw = check_vm_name(name)
        size = check_disk_size(size)
        desc = descriptor(f"{name}-flat.vmdk", size)
        staged = self.store.data.stage_bytes(desc)
        with self.store.env.write() as tx:
            volumes = self._top(tx, VOLUMES)
            if namespace.lookup(tx, volumes.ino, raw + b".vmdk") is not None:
                raise Exists(f"volume {name} already exists")
            if namespace.lookup(tx, volumes.ino, raw + b"-flat.vmdk") is not None:
                raise Exists(f"volumes/{name}-flat.vmdk already exists")
            snapshots = namespace.lookup(tx, volumes.ino, b".snapshots")
            if snapshots is not None and namespace.lookup(tx, snapshots.ino, raw) is not None:
                # They outlive their volume on purpose (clone from them later), but a new
                # volume of that name would take them as its own: revert would swap in an
                # unrelated, maybe smaller, disk.
                raise Exists(f"snapshots of an earlier volume {name} still exist (vfsd volume "
                             f"snapshots {name}); remove them or choose another name")
            self._new_file(tx, volumes, f"{name}.vmdk", DESCRIPTOR_FLAGS, len(desc), staged)
            self._new_file(tx, volumes, f"{name}-flat.vmdk", DISK_FLAGS, size)
        return self.show_volume(name)

    def _volume_extent(self, tx: Tx, name: str) -> tuple[Inode, Inode]:
        check_vm_name(name)
        volumes = namespace.lookup(tx, ROOT_INO, VOLUMES)
        vol_dir = namespace.get_inode(tx, volumes.ino) if volumes else None
        extent = self._child(tx, vol_dir, f"{name}-flat.vmdk") if vol_dir else None
        if vol_dir is None or extent is None or self._child(tx, vol_dir, f"{name}.vmdk") is None:
            raise NotFound(f"no volume named {name}")
        return vol_dir, extent

    def _attached_to(self, tx: Tx, extent: Inode) -> str | None:
        raw = tx.get(tx.db.xattrs, namespace.xattr_key(extent.ino, ATTACHED))
        return raw.decode() if raw else None

    def show_volume(self, name: str) -> VolumeInfo:
        with self.store.env.read() as tx:
            _vol_dir, extent = self._volume_extent(tx, name)
            return VolumeInfo(name, extent.size, self._physical(tx, extent.ino),
                              self._attached_to(tx, extent))

    def volume_names(self) -> list[str]:
        with self.store.env.read() as tx:
            volumes = namespace.lookup(tx, ROOT_INO, VOLUMES)
            if volumes is None:
                return []
            names = [e.name.decode(errors="replace")
                     for e in namespace.readdir(tx, volumes.ino, 0, 1 << 62)]
        return sorted(n[: -len("-flat.vmdk")] for n in names if n.endswith("-flat.vmdk"))

    def attach(self, name: str, vm: str) -> None:
        with self.store.env.read() as tx:
            settings = self._settings(tx, self._vm_dir(tx, vm), vm)
        settings.disks.append(f"{name}.vmdk")
        staged = self.store.data.stage_bytes(settings.render())
        with self.store.env.write() as tx:
            vol_dir, extent = self._volume_extent(tx, name)
            holder = self._attached_to(tx, extent)
            if holder is not None:
                raise Busy(f"volume {name} is attached to VM {holder}; detach it first")
            vm_dir = self._vm_dir(tx, vm)
            for file in (f"{name}.vmdk", f"{name}-flat.vmdk"):
                if self._child(tx, vm_dir, file) is not None:
                    raise Exists(f"VM {vm} already has a file {file}")
            if self._settings(tx, vm_dir, vm).disks != settings.disks[:-1]:
                raise Busy(f"VM {vm}'s settings changed meanwhile; try again")
            desc = self._child(tx, vol_dir, f"{name}.vmdk")
            assert desc is not None
            namespace.link(tx, self.origin, desc.ino, vm_dir.ino, f"{name}.vmdk".encode())
            namespace.link(tx, self.origin, extent.ino, vm_dir.ino, f"{name}-flat.vmdk".encode())
            tx.put(tx.db.xattrs, namespace.xattr_key(extent.ino, ATTACHED), vm.encode())
            self._write_settings(tx, vm_dir, settings, staged)

    def detach(self, name: str) -> str:
        """Unlink a volume from its VM; returns the VM's name."""
        with self.store.env.read() as tx:
            _vol_dir, extent = self._volume_extent(tx, name)
            vm = self._attached_to(tx, extent)
            if vm is None:
                raise InvalidArgument(f"volume {name} is not attached")
            settings = self._settings(tx, self._vm_dir(tx, vm), vm)
        self._check_not_written([extent], f"volume {name}")
        settings.disks = [d for d in settings.disks if d != f"{name}.vmdk"]
        staged = self.store.data.stage_bytes(settings.render())
        with self.store.env.write() as tx:
            _vol_dir, extent = self._volume_extent(tx, name)
            if self._attached_to(tx, extent) != vm:
                raise Busy(f"volume {name} changed meanwhile; try again")
            vm_dir = self._vm_dir(tx, vm)
            self._unlink_volume(tx, vm_dir, name, extent)
            self._write_settings(tx, vm_dir, settings, staged)
        return vm

    def _check_not_written(self, files: list[Inode], what: str) -> None:
        for inode in files:
            holder = self.store.leases.settled_holder(inode.ino)
            if holder is not None:
                raise Busy(f"{what} is open for writing by {holder.kind} (pid {holder.pid}); "
                           "stop it first")

    def _unlink_volume(self, tx: Tx, vm_dir: Inode, name: str, extent: Inode) -> None:
        for file in (f"{name}.vmdk", f"{name}-flat.vmdk"):
            self._unlink(tx, vm_dir, file)
        tx.delete(tx.db.xattrs, namespace.xattr_key(extent.ino, ATTACHED))

    def _unlink(self, tx: Tx, directory: Inode, file: str) -> None:
        """Unlink `file` if it is there; one open somewhere (a GET, a reader on the mount)
        keeps its bytes until its last close."""
        entry = namespace.lookup(tx, directory.ino, file.encode())
        if entry is not None:
            namespace.unlink(tx, self.origin, directory.ino, file.encode(),
                             still_open=not self.store.opens.replacing(tx, entry.ino))

    def remove_volume(self, name: str) -> None:
        with self.store.env.write() as tx:
            vol_dir, extent = self._volume_extent(tx, name)
            holder = self._attached_to(tx, extent)
            if holder is not None:
                raise Busy(f"volume {name} is attached to VM {holder}; detach it first")
            for file in (f"{name}.vmdk", f"{name}-flat.vmdk"):
                self._unlink(tx, vol_dir, file)
