"""Snapshots and clones of VMs and volumes (DESIGN.md, "Snapshots, clones, copies").

A snapshot of VM `web` is `vms/web/.snapshots/SNAP/`: a copy of every file of the VM but its
swap, made by copying chunk maps (one reference more per chunk, no body read or written). The
copies and their directories carry InodeFlags.READONLY, so the mount answers EROFS; the copied
descriptor names its extent by a relative file name, so inside the snapshot directory it
points at the snapshot's own flat copy and `qemu-img info` of it works. A volume's snapshots
live in `volumes/.snapshots/VOL/SNAP/`.

A clone is the same copy into a new VM (or volume), with its descriptors and settings
generated for the new name, a fresh empty swap and the firmware variables copied.

Every public call is one LMDB write transaction (small descriptor/settings bodies are staged
before it): after a crash the snapshot, clone, revert or removal is there entirely or not at
all. Flushing a running VM's dirty data is the caller's job (the mount's write-back cache); a
`flush` callback, if given, is called with the inodes to flush before the transaction.
"""

from __future__ import annotations

import builtins
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import changelog, namespace
from .chunks import copy_chunks
from .env import Tx
from .errors import Busy, Exists, InvalidArgument, NotFound
from .names import check_name
from .records import ROOT_INO, ChangeOp, Inode, InodeFlags
from .store import Store
from .vmdk import descriptor, parse_extent
from .vms import (
    ATTACHED,
    DESCRIPTOR_FLAGS,
    DISK_FLAGS,
    FILE_MODE,
    VMS,
    VOLUMES,
    VmInfo,
    Vms,
    VolumeInfo,
    check_vm_name,
)
from .vmx import VmSettings

SNAPSHOTS = b".snapshots"
CREATED_XATTR = b"vfsd.snapshot.created"  # ns since the epoch, u64; internal (hidden) xattr
SNAP_DIR_MODE = stat.S_IFDIR | 0o555
SNAP_FILE_FLAGS = InodeFlags.READONLY | InodeFlags.VM_FILE
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    created_ns: int
    size: int  # apparent bytes of the snapshot's files (what a full copy would take)
    stored: int  # bytes of chunk bodies they reference (before dedup with the live VM)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "created": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_ns / 1e9)),
            "created_ns": self.created_ns, "size": self.size, "stored": self.stored}


def check_snapshot_name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) <= 200:  # within NAME_MAX: check_name's own limit would name 255
        check_name(raw)
    if raw.startswith(b".") or not name.isprintable() or len(raw) > 200:
        raise InvalidArgument(
            f"invalid snapshot name {name!r}: no leading '.', no control characters, "
            "200 bytes at most")
    return raw


class Snapshots:
    def __init__(self, store: Store):
        self.store = store
        self.origin = store.origin
        self.vms = Vms(store)

    # --- helpers inside a transaction ----------------------------------------------------

    def _entries(self, tx: Tx, directory: Inode) -> dict[str, Inode]:
        return {e.name.decode(errors="surrogateescape"): namespace.get_inode(tx, e.ino)
                for e in namespace.readdir(tx, directory.ino, 0, 1 << 62)}

    def _make_dir(self, tx: Tx, parent: Inode, name: bytes, flags: InodeFlags) -> Inode:
        """mkdir that ignores the parent's READONLY flag (the core fills read-only trees)."""
        check_name(name)
        if namespace.lookup(tx, parent.ino, name) is not None:
            raise Exists(f"{name.decode(errors='replace')} exists")
        child = namespace.new_inode(tx, SNAP_DIR_MODE if flags & InodeFlags.READONLY
                                    else stat.S_IFDIR | 0o755, 0, 0, parent=parent.ino,
                                    name=name, flags=flags)
        namespace.add_entry(tx, self.origin, namespace.get_inode(tx, parent.ino), name, child)
        return child

    def _snapshots_dir(self, tx: Tx, parent: Inode, create: bool) -> Inode | None:
        entry = namespace.lookup(tx, parent.ino, SNAPSHOTS)
        if entry is not None:
            return namespace.get_inode(tx, entry.ino)
        if not create:
            return None
        return self._make_dir(tx, parent, SNAPSHOTS, InodeFlags.READONLY)

    def _copy_file(self, tx: Tx, parent: Inode, name: str, src: Inode,
                   flags: InodeFlags) -> Inode:
        """A new file `parent/name` sharing `src`'s chunks (one more reference each)."""
        raw = name.encode(errors="surrogateescape")
        check_name(raw)
        if namespace.lookup(tx, parent.ino, raw) is not None:
            raise Exists(f"{name} exists")
        mode = stat.S_IFREG | stat.S_IMODE(src.mode or FILE_MODE)
        child = namespace.new_inode(tx, mode, src.uid, src.gid, parent=parent.ino, flags=flags)
        child.stored = copy_chunks(tx, src.ino, child.ino)
        child.size = src.size
        child.mtime_ns = src.mtime_ns
        namespace.put_inode(tx, child)
        namespace.add_entry(tx, self.origin, namespace.get_inode(tx, parent.ino), raw, child)
        return child

    def _replace_map(self, tx: Tx, dst: Inode, src: Inode) -> None:
        """Make `dst` hold exactly `src`'s chunks and size (revert)."""
        dst.stored = copy_chunks(tx, src.ino, dst.ino)
        dst.size = src.size
        dst.mtime_ns = dst.ctime_ns = time.time_ns()
        namespace.put_inode(tx, dst)
        changelog.record(tx, self.origin, ChangeOp.DATA, dst.ino)

    def _snapshot_dir(self, tx: Tx, owner: Inode, key: bytes, snap: str) -> Inode:
        """`.snapshots/[key/]SNAP` below `owner` (a VM directory, or `volumes/`)."""
        raw = check_snapshot_name(snap)
        snaps = self._snapshots_dir(tx, owner, create=False)
        if snaps is not None and key:
            entry = namespace.lookup(tx, snaps.ino, key)
            snaps = namespace.get_inode(tx, entry.ino) if entry else None
        entry = namespace.lookup(tx, snaps.ino, raw) if snaps else None
        if entry is None:
            raise NotFound(f"no snapshot named {snap}")
        return namespace.get_inode(tx, entry.ino)

    def _new_snapshot_dir(self, tx: Tx, owner: Inode, key: bytes, snap: str) -> Inode:
        raw = check_snapshot_name(snap)
        snaps = self._snapshots_dir(tx, owner, create=True)
        assert snaps is not None
        if key:
            entry = namespace.lookup(tx, snaps.ino, key)
            snaps = (namespace.get_inode(tx, entry.ino) if entry
                     else self._make_dir(tx, snaps, key, InodeFlags.READONLY))
        if namespace.lookup(tx, snaps.ino, raw) is not None:
            raise Exists(f"snapshot {snap} already exists")
        snap_dir = self._make_dir(tx, snaps, raw, InodeFlags.READONLY)
        tx.put(tx.db.xattrs, namespace.xattr_key(snap_dir.ino, CREATED_XATTR),
               _U64.pack(time.time_ns()))
        return snap_dir

    def _list(self, tx: Tx, owner: Inode, key: bytes) -> builtins.list[SnapshotInfo]:
        snaps = self._snapshots_dir(tx, owner, create=False)
        if snaps is not None and key:
            entry = namespace.lookup(tx, snaps.ino, key)
            snaps = namespace.get_inode(tx, entry.ino) if entry else None
        if snaps is None:
            return []
        out: builtins.list[SnapshotInfo] = []
        for name, snap_dir in self._entries(tx, snaps).items():
            if not snap_dir.is_dir:
                continue
            raw = tx.get(tx.db.xattrs, namespace.xattr_key(snap_dir.ino, CREATED_XATTR))
            created = _U64.unpack(raw)[0] if raw else snap_dir.ctime_ns
            files = [f for f in self._entries(tx, snap_dir).values() if f.is_file]
            out.append(SnapshotInfo(name, created, sum(f.size for f in files),
                                    sum(f.stored for f in files)))
        return sorted(out, key=lambda s: (s.created_ns, s.name))

    def _remove(self, tx: Tx, owner: Inode, key: bytes, snap: str) -> None:
        snap_dir = self._snapshot_dir(tx, owner, key, snap)
        parent = namespace.get_inode(tx, snap_dir.parent)
        namespace.remove_tree(tx, self.origin, parent, snap_dir.name, self.store.opens.held)
        if key and not namespace.readdir(tx, parent.ino, 0, 1):
            # the volume's last snapshot: drop volumes/.snapshots/VOL too
            namespace.remove_tree(tx, self.origin, namespace.get_inode(tx, parent.parent), key)

    # --- VMs -----------------------------------------------------------------------------

    def vm_inodes(self, vm: str) -> builtins.list[int]:
        """The inodes a snapshot of `vm` copies: what the mount must flush before `create`."""
        with self.store.env.read() as tx:
            vm_dir = self.vms._vm_dir(tx, vm)
            return [i.ino for n, i in self._entries(tx, vm_dir).items()
                    if i.is_file and not i.flags & InodeFlags.EPHEMERAL]

    def create(self, vm: str, snap: str,
               flush: Callable[[builtins.list[int]], None] | None = None) -> SnapshotInfo:
        """Snapshot every file of `vm` but its swap into `vms/VM/.snapshots/SNAP/`.

        One write transaction: chunk maps are copied by reference (O(chunks) index updates, no
        body I/O). `flush(inodes)`, if given, runs first, outside the transaction (the mount
        writes back the VM's dirty chunks there). After a crash the snapshot is complete or
        absent."""
        check_vm_name(vm)
        check_snapshot_name(snap)
        if flush is not None:
            flush(self.vm_inodes(vm))
        with self.store.env.write() as tx:
            vm_dir = self.vms._vm_dir(tx, vm)
            files = {n: i for n, i in self._entries(tx, vm_dir).items()
                     if i.is_file and not i.flags & InodeFlags.EPHEMERAL}
            snap_dir = self._new_snapshot_dir(tx, vm_dir, b"", snap)
            for name, inode in files.items():
                self._copy_file(tx, snap_dir, name, inode, SNAP_FILE_FLAGS)
        return self.show(vm, snap)

    def show(self, vm: str, snap: str) -> SnapshotInfo:
        for info in self.list(vm):
            if info.name == snap:
                return info
        raise NotFound(f"VM {vm} has no snapshot named {snap}")

    def list(self, vm: str) -> builtins.list[SnapshotInfo]:
        """The VM's snapshots, oldest first (one read transaction)."""
        with self.store.env.read() as tx:
            return self._list(tx, self.vms._vm_dir(tx, vm), b"")

    def remove(self, vm: str, snap: str) -> None:
        """Delete a snapshot: one write transaction dropping one reference per chunk. Clones
        made from it keep their own references and stay intact. Bodies no longer referenced
        wait for gc."""
        with self.store.env.write() as tx:
            self._remove(tx, self.vms._vm_dir(tx, vm), b"", snap)

    def revert(self, vm: str, snap: str) -> builtins.list[str]:
        """Give the VM's files the snapshot's contents and sizes (disks, descriptors, nvram);
        the .vmx stays, the swap is untouched. Refused with Busy while any file of the VM is
        leased (a running VM). One write transaction: after a crash every file is reverted or
        none. Returns the names of the reverted files; snapshot files whose name no longer
        exists in the VM (a detached volume) are skipped."""
        with self.store.env.read() as tx:
            vm_dir = self.vms._vm_dir(tx, vm)
            current = [i for i in self._entries(tx, vm_dir).values() if i.is_file]
        self.vms._check_not_written(current, f"VM {vm}")
        with self.store.env.write() as tx:
            vm_dir = self.vms._vm_dir(tx, vm)
            snap_dir = self._snapshot_dir(tx, vm_dir, b"", snap)
            live = self._entries(tx, vm_dir)
            reverted = []
            for name, src in self._entries(tx, snap_dir).items():
                dst = live.get(name)
                if (dst is None or not dst.is_file or name.endswith(".vmx")
                        or dst.flags & InodeFlags.EPHEMERAL):
                    continue
                self._replace_map(tx, dst, src)
                reverted.append(name)
        return sorted(reverted)

    def clone(self, src: str, dst: str, snapshot: str | None = None) -> VmInfo:
        """A new VM `dst` from `src` (or from its snapshot `snapshot`): each disk of the source
        (attached volumes included) becomes an instance disk of the clone, `dst.vmdk` for slot
        0 and `dst_N.vmdk` for slot N, sharing the source's chunks; descriptors and the .vmx are
        generated for the new names, the swap is fresh and empty, the nvram is copied. One
        write transaction (after a crash the clone exists entirely or not at all)."""
        raw_dst = check_vm_name(dst)
        with self.store.env.read() as tx:
            settings, plan = self._clone_plan(tx, src, snapshot)
        new_disks = [dst if slot == 0 else f"{dst}_{slot}" for slot in range(len(plan))]
        new_settings = VmSettings(dst, settings.memory, settings.firmware, settings.vcpus,
                                  [f"{d}.vmdk" for d in new_disks])
        data = self.store.data
        staged_vmx = data.stage_bytes(new_settings.render())
        staged_descs = [data.stage_bytes(descriptor(f"{d}-flat.vmdk", size))
                        for d, (_desc, _extent, size) in zip(new_disks, plan)]
        with self.store.env.write() as tx:
            again_settings, again = self._clone_plan(tx, src, snapshot)
            if again != plan or again_settings != settings:
                raise Busy(f"VM {src} changed meanwhile; try again")
            source = self._clone_source(tx, src, snapshot)
            vms = self.vms._top(tx, VMS)
            if namespace.lookup(tx, vms.ino, raw_dst) is not None:
                raise Exists(f"VM {dst} already exists")
            vm_dir = namespace.make(tx, self.origin, vms.ino, raw_dst, stat.S_IFDIR | 0o755, 0, 0)
            for name, (_desc, extent_name, size), staged in zip(new_disks, plan, staged_descs):
                self.vms._new_file(tx, vm_dir, f"{name}.vmdk", DESCRIPTOR_FLAGS,
                                   len(descriptor(f"{name}-flat.vmdk", size)), staged)
                self._copy_file(tx, vm_dir, f"{name}-flat.vmdk", source[extent_name],
                                DISK_FLAGS)
            self.vms._new_file(tx, vm_dir, f"{dst}.vswp", DISK_FLAGS | InodeFlags.EPHEMERAL,
                               settings.memory)
            nvram = source.get(f"{src}.nvram")
            if nvram is not None:
                self._copy_file(tx, vm_dir, f"{dst}.nvram", nvram, DISK_FLAGS)
            self.vms._new_file(tx, vm_dir, f"{dst}.vmx", InodeFlags.VM_FILE,
                               len(new_settings.render()), staged_vmx)
        return self.vms.show(dst)

    def _clone_source(self, tx: Tx, src: str, snapshot: str | None) -> dict[str, Inode]:
        vm_dir = self.vms._vm_dir(tx, src)
        where = vm_dir if snapshot is None else self._snapshot_dir(tx, vm_dir, b"", snapshot)
        return self._entries(tx, where)

    def _clone_plan(self, tx: Tx, src: str, snapshot: str | None
                    ) -> tuple[VmSettings, builtins.list[tuple[str, str, int]]]:
        """The source's settings and (descriptor, extent, size) per disk slot."""
        files = self._clone_source(tx, src, snapshot)
        vmx = files.get(f"{src}.vmx")
        if vmx is None:
            raise NotFound(f"VM {src} has no {src}.vmx")
        settings = VmSettings.parse(self.vms._read_small(tx, vmx))
        plan: builtins.list[tuple[str, str, int]] = []
        for disk in settings.disks:
            desc = files.get(disk)
            if desc is None:
                raise NotFound(f"VM {src} lists disk {disk}, which is missing")
            extent_name, size = parse_extent(self.vms._read_small(tx, desc))
            if extent_name not in files:
                raise NotFound(f"disk {disk} of VM {src} names a missing extent {extent_name}")
            plan.append((disk, extent_name, size))
        return settings, plan

    # --- volumes -------------------------------------------------------------------------

    def _volumes(self, tx: Tx) -> Inode:
        entry = namespace.lookup(tx, ROOT_INO, VOLUMES)
        if entry is None:
            raise NotFound("there are no volumes")
        return namespace.get_inode(tx, entry.ino)

    def create_volume_snapshot(self, volume: str, snap: str,
                               flush: Callable[[builtins.list[int]], None] | None = None
                               ) -> SnapshotInfo:
        """Snapshot `volumes/VOL.vmdk` + flat into `volumes/.snapshots/VOL/SNAP/`; one write
        transaction, as `create`."""
        raw = check_vm_name(volume)
        check_snapshot_name(snap)
        if flush is not None:
            with self.store.env.read() as tx:
                flush([self.vms._volume_extent(tx, volume)[1].ino])
        with self.store.env.write() as tx:
            vol_dir, extent = self.vms._volume_extent(tx, volume)
            desc = self.vms._child(tx, vol_dir, f"{volume}.vmdk")
            assert desc is not None
            snap_dir = self._new_snapshot_dir(tx, vol_dir, raw, snap)
            self._copy_file(tx, snap_dir, f"{volume}.vmdk", desc, SNAP_FILE_FLAGS)
            self._copy_file(tx, snap_dir, f"{volume}-flat.vmdk", extent, SNAP_FILE_FLAGS)
        return self.show_volume_snapshot(volume, snap)

    def show_volume_snapshot(self, volume: str, snap: str) -> SnapshotInfo:
        for info in self.list_volume_snapshots(volume):
            if info.name == snap:
                return info
        raise NotFound(f"volume {volume} has no snapshot named {snap}")

    def list_volume_snapshots(self, volume: str) -> builtins.list[SnapshotInfo]:
        """The volume's snapshots, oldest first; they outlive the volume (one read
        transaction). NotFound if there is neither the volume nor a snapshot of it."""
        raw = check_vm_name(volume)
        with self.store.env.read() as tx:
            found = self._list(tx, self._volumes(tx), raw)
            if not found:
                self.vms._volume_extent(tx, volume)
            return found

    def remove_volume_snapshot(self, volume: str, snap: str) -> None:
        """One write transaction; the volume itself need not exist any more."""
        raw = check_vm_name(volume)
        with self.store.env.write() as tx:
            self._remove(tx, self._volumes(tx), raw, snap)

    def revert_volume(self, volume: str, snap: str) -> None:
        """Give the volume the snapshot's contents and size; Busy while it is leased (in use by
        a running VM). One write transaction."""
        raw = check_vm_name(volume)
        with self.store.env.read() as tx:
            _vol_dir, extent = self.vms._volume_extent(tx, volume)
        self.vms._check_not_written([extent], f"volume {volume}")
        with self.store.env.write() as tx:
            vol_dir, extent = self.vms._volume_extent(tx, volume)
            desc = self.vms._child(tx, vol_dir, f"{volume}.vmdk")
            assert desc is not None
            snap_files = self._entries(tx, self._snapshot_dir(tx, vol_dir, raw, snap))
            self._replace_map(tx, extent, snap_files[f"{volume}-flat.vmdk"])
            self._replace_map(tx, desc, snap_files[f"{volume}.vmdk"])

    def clone_volume(self, src: str, dst: str, snapshot: str | None = None) -> VolumeInfo:
        """A new, detached volume `dst` sharing the chunks of `src` (or of its snapshot), with a
        descriptor generated for the new name. One write transaction."""
        raw_src = check_vm_name(src)
        raw_dst = check_vm_name(dst)
        with self.store.env.read() as tx:
            size = self._volume_source(tx, raw_src, src, snapshot).size
        desc_bytes = descriptor(f"{dst}-flat.vmdk", size)
        staged = self.store.data.stage_bytes(desc_bytes)
        with self.store.env.write() as tx:
            source = self._volume_source(tx, raw_src, src, snapshot)
            if source.size != size:
                raise Busy(f"volume {src} changed meanwhile; try again")
            vol_dir = self._volumes(tx)
            for name in (raw_dst + b".vmdk", raw_dst + b"-flat.vmdk"):
                if namespace.lookup(tx, vol_dir.ino, name) is not None:
                    raise Exists(f"volume {dst} already exists")
            self.vms._new_file(tx, vol_dir, f"{dst}.vmdk", DESCRIPTOR_FLAGS, len(desc_bytes),
                               staged)
            copy = self._copy_file(tx, vol_dir, f"{dst}-flat.vmdk", source, DISK_FLAGS)
            tx.delete(tx.db.xattrs, namespace.xattr_key(copy.ino, ATTACHED))
        return self.vms.show_volume(dst)

    def _volume_source(self, tx: Tx, raw: bytes, name: str, snapshot: str | None) -> Inode:
        if snapshot is None:
            return self.vms._volume_extent(tx, name)[1]
        snap_dir = self._snapshot_dir(tx, self._volumes(tx), raw, snapshot)
        extent = self._entries(tx, snap_dir).get(f"{name}-flat.vmdk")
        if extent is None:
            raise NotFound(f"snapshot {snapshot} of volume {name} has no extent")
        return extent
