"""The tree: inodes, directory entries, symlinks, xattrs and the S3 key index kept in step.

Every function here works inside a caller's write (or read) transaction and records what it
changed in the change log, so a front end that sees the commit also sees the change.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Mapping

from . import changelog
from .chunks import drop_chunks_from
from .env import U64, Tx
from .errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    ReadOnly,
)
from .hlc import tick
from .names import check_name, is_bucket_name
from .records import (
    DIRENT,
    ORPHAN,
    ROOT_INO,
    ChangeOp,
    DirEntry,
    Inode,
    InodeFlags,
    dirent_key,
    ino_key,
)

NEXT_INO = b"next_ino"
NEXT_COOKIE = b"next_cookie"
DIR_MARKERS = b"dir_markers"  # meta: set once empty directories are in the key index
MAX_INDEX_KEY = 511  # LMDB's key size limit: 8 bytes of bucket inode + the object key
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def get_inode(tx: Tx, ino: int) -> Inode:
    raw = tx.get(tx.db.inodes, ino_key(ino))
    if raw is None:
        raise NotFound(f"no inode {ino}")
    return Inode.unpack(ino, raw)


def put_inode(tx: Tx, inode: Inode) -> None:
    inode.version = tick(tx)
    tx.put(tx.db.inodes, ino_key(inode.ino), inode.pack())
    tx.stored_inodes.add(inode.ino)
    if tx.inode_hook is not None:
        tx.inode_hook(tx, inode)


def get_dir(tx: Tx, ino: int) -> Inode:
    inode = get_inode(tx, ino)
    if not inode.is_dir:
        raise NotADirectory(f"inode {ino} is not a directory")
    return inode


def ensure_root(tx: Tx) -> None:
    if tx.get(tx.db.inodes, ino_key(ROOT_INO)) is None:
        now = time.time_ns()
        root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, nlink=2, atime_ns=now, mtime_ns=now,
                     ctime_ns=now, parent=ROOT_INO)
        put_inode(tx, root)
        tx.put(tx.db.meta, NEXT_INO, U64.pack(ROOT_INO + 1))
        tx.put(tx.db.meta, DIR_MARKERS, b"1")
    elif tx.get(tx.db.meta, DIR_MARKERS) is None:
        # A store from before session 10: index every bucket again, once, which keys its
        # empty directories (the files' keys are there already: put again, unchanged).
        for entry in readdir(tx, ROOT_INO, 0, 1 << 62):
            if stat.S_ISDIR(entry.mode_type) and is_bucket_name(entry.name):
                index_subtree(tx, get_inode(tx, entry.ino), (entry.ino, b""), add=True)
        tx.put(tx.db.meta, DIR_MARKERS, b"1")


def new_inode(tx: Tx, mode: int, uid: int, gid: int, *, parent: int, name: bytes = b"",
              flags: InodeFlags = InodeFlags.NONE, rdev: int = 0) -> Inode:
    now = time.time_ns()
    inode = Inode(
        tx.next_id(NEXT_INO), mode, uid, gid, nlink=2 if stat.S_ISDIR(mode) else 1, rdev=rdev,
        atime_ns=now, mtime_ns=now, ctime_ns=now, parent=parent,
        name=name if stat.S_ISDIR(mode) else b"", flags=flags,
    )
    put_inode(tx, inode)
    return inode


def lookup(tx: Tx, parent: int, name: bytes) -> DirEntry | None:
    raw = tx.get(tx.db.dirents, dirent_key(parent, name))
    if raw is None:
        return None
    ino, cookie, mode_type = DIRENT.unpack(raw)
    return DirEntry(name, ino, cookie, mode_type)


def readdir(tx: Tx, parent: int, after_cookie: int, limit: int,
            before_cookie: int | None = None) -> list[DirEntry]:
    """Entries in cookie order (creation order): a cursor stays valid while entries change.
    `before_cookie` (a `cookie_bound` taken earlier) leaves out entries made since."""
    cursor = tx.cursor(tx.db.dircookies)
    prefix = U64.pack(parent)
    out: list[DirEntry] = []
    if not cursor.set_range(prefix + U64.pack(after_cookie + 1)):
        return out
    stop = prefix + U64.pack(before_cookie) if before_cookie is not None else None
    for key, name in cursor:
        if key[:8] != prefix or len(out) >= limit or (stop is not None and key >= stop):
            break
        entry = lookup(tx, parent, name)
        if entry is not None:
            out.append(entry)
    return out


def cookie_bound(tx: Tx) -> int:
    """Every entry made from now on (a new name, a rename) gets a cookie at least this."""
    raw = tx.get(tx.db.meta, NEXT_COOKIE)
    return U64.unpack(raw)[0] if raw else 1


# --- the S3 key index --------------------------------------------------------------------

def bucket_of(tx: Tx, directory: Inode) -> tuple[int, bytes] | None:
    """(bucket inode, key prefix) of files directly in `directory`, or None outside buckets."""
    parts: list[bytes] = []
    current = directory
    while current.ino != ROOT_INO:
        if current.parent == ROOT_INO:
            if not is_bucket_name(current.name):
                return None
            prefix = b"/".join(reversed(parts))
            return current.ino, prefix + b"/" if parts else b""
        parts.append(current.name)
        current = get_inode(tx, current.parent)
    return None


def _index_file(tx: Tx, where: tuple[int, bytes] | None, name: bytes, ino: int, add: bool) -> None:
    if where is None:
        return
    key = U64.pack(where[0]) + where[1] + name
    if add:
        if len(key) > MAX_INDEX_KEY:
            raise NameTooLong(
                f"a path inside a bucket can be at most {MAX_INDEX_KEY - 8} bytes (it is an S3 "
                f"key); this one is {len(key) - 8}")
        tx.put(tx.db.keys, key, U64.pack(ino))
    else:
        tx.delete(tx.db.keys, key)


def marker_key(where: tuple[int, bytes] | None) -> bytes | None:
    """The key-index key of a directory whose own files sit at `where`: its path with a
    trailing '/' (S3's folder marker); None for a bucket itself, outside buckets, or past
    the index's key limit."""
    if where is None or not where[1]:
        return None
    key = U64.pack(where[0]) + where[1]
    return key if len(key) <= MAX_INDEX_KEY else None


def _mark_empty(tx: Tx, where: tuple[int, bytes] | None, ino: int, empty: bool) -> None:
    """An empty directory in a bucket is an object to S3, as a folder marker ('a/b/', no
    bytes) is: keyed while it is empty, not once it holds anything."""
    key = marker_key(where)
    if key is None:
        return
    if empty:
        tx.put(tx.db.keys, key, U64.pack(ino))
    else:
        tx.delete(tx.db.keys, key)


def index_subtree(tx: Tx, directory: Inode, where: tuple[int, bytes] | None, add: bool) -> None:
    """Add or remove the keys of every file below `directory`, whose own files sit at `where`,
    and the folder markers of its empty directories (itself included)."""
    if where is None:
        return
    empty = True
    for entry in readdir(tx, directory.ino, 0, 1 << 62):
        empty = False
        if stat.S_ISREG(entry.mode_type):
            _index_file(tx, where, entry.name, entry.ino, add)
        elif stat.S_ISDIR(entry.mode_type):
            child = get_inode(tx, entry.ino)
            index_subtree(tx, child, (where[0], where[1] + entry.name + b"/"), add)
    if empty:
        _mark_empty(tx, where, directory.ino, add)


def _dir_location(tx: Tx, directory: Inode) -> tuple[int, bytes] | None:
    """Where `directory`'s own contents are keyed; a bucket itself keys at the empty prefix."""
    return bucket_of(tx, directory)


# --- entries -----------------------------------------------------------------------------

def add_entry(tx: Tx, origin: int, parent: Inode, name: bytes, child: Inode,
              op: ChangeOp = ChangeOp.CREATE) -> None:
    cookie = tx.next_id(NEXT_COOKIE)
    tx.put(tx.db.dirents, dirent_key(parent.ino, name),
           DIRENT.pack(child.ino, cookie, stat.S_IFMT(child.mode)))
    tx.put(tx.db.dircookies, U64.pack(parent.ino) + U64.pack(cookie), name)
    where = _dir_location(tx, parent)
    if child.is_file:
        _index_file(tx, where, name, child.ino, add=True)
    elif child.is_dir:
        index_subtree(tx, child, _child_dir_location(tx, parent, name, child.ino), add=True)
    _mark_empty(tx, where, parent.ino, empty=False)
    now = time.time_ns()
    parent.mtime_ns = parent.ctime_ns = now
    if child.is_dir:
        parent.nlink += 1
    put_inode(tx, parent)
    changelog.record(tx, origin, op, child.ino, parent.ino, name)


def _child_dir_location(tx: Tx, parent: Inode, name: bytes, child: int) -> tuple[int, bytes] | None:
    """Where files inside directory `child`, called `name` in `parent`, are keyed."""
    if parent.ino == ROOT_INO:
        return (child, b"") if is_bucket_name(name) else None
    where = _dir_location(tx, parent)
    return None if where is None else (where[0], where[1] + name + b"/")


def remove_entry(tx: Tx, origin: int, parent: Inode, name: bytes, child: Inode) -> None:
    raw = tx.get(tx.db.dirents, dirent_key(parent.ino, name))
    if raw is None:
        raise NotFound(f"no entry {name!r}")
    _ino, cookie, _mode = DIRENT.unpack(raw)
    tx.delete(tx.db.dirents, dirent_key(parent.ino, name))
    tx.delete(tx.db.dircookies, U64.pack(parent.ino) + U64.pack(cookie))
    where = _dir_location(tx, parent)
    if child.is_file:
        _index_file(tx, where, name, child.ino, add=False)
    elif child.is_dir:
        index_subtree(tx, child, _child_dir_location(tx, parent, name, child.ino), add=False)
    if where is not None and not readdir(tx, parent.ino, 0, 1):
        _mark_empty(tx, where, parent.ino, empty=True)
    now = time.time_ns()
    parent.mtime_ns = parent.ctime_ns = now
    if child.is_dir:
        parent.nlink -= 1
    put_inode(tx, parent)
    changelog.record(tx, origin, ChangeOp.REMOVE, child.ino, parent.ino, name)


def check_writable_dir(parent: Inode) -> None:
    if not parent.is_dir:
        raise NotADirectory(f"inode {parent.ino} is not a directory")
    if parent.flags & InodeFlags.READONLY:
        raise ReadOnly("the directory is read-only")


def make(tx: Tx, origin: int, parent_ino: int, name: bytes, mode: int, uid: int, gid: int,
         *, rdev: int = 0, flags: InodeFlags = InodeFlags.NONE, symlink_target: bytes = b"") -> Inode:
    """Create a file, directory, symlink or special file; EEXIST if the name is taken."""
    check_name(name)
    parent = get_inode(tx, parent_ino)
    check_writable_dir(parent)
    if lookup(tx, parent_ino, name) is not None:
        raise Exists(f"{name.decode(errors='replace')} exists")
    if parent.mode & stat.S_ISGID:
        # A setgid directory hands its group down, and its setgid bit to subdirectories (as
        # Linux's inode_init_owner; the kernel leaves this to a FUSE file system). Not done:
        # clearing a new file's own setgid bit when its creator is outside that group.
        gid = parent.gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    child = new_inode(tx, mode, uid, gid, parent=parent_ino, name=name, flags=flags, rdev=rdev)
    if child.is_symlink:
        child.size = len(symlink_target)
        tx.put(tx.db.symlinks, ino_key(child.ino), symlink_target)
        put_inode(tx, child)
    add_entry(tx, origin, parent, name, child)
    return child


def replace_file(tx: Tx, origin: int, parent: Inode, name: bytes, old: Inode, mode: int,
                 uid: int, gid: int, still_open: bool) -> Inode:
    """A new empty file named `name` in `parent` in place of `old`, as rename(2) of a new file
    over it leaves things, and the name keeps its place in readdir order; `old` loses the
    name (`drop_link`: freed, kept by its other names, or parked while `still_open`). An S3
    PUT over an object comes here: the few steps of `unlink` + `make` that change anything."""
    check_writable_dir(parent)
    entry = lookup(tx, parent.ino, name)
    if entry is None or entry.ino != old.ino:
        raise NotFound(f"{name.decode(errors='replace')} is not {old.ino} any more")
    child = new_inode(tx, mode, uid, gid, parent=parent.ino)
    tx.put(tx.db.dirents, dirent_key(parent.ino, name),
           DIRENT.pack(child.ino, entry.cookie, stat.S_IFMT(mode)))
    _index_file(tx, _dir_location(tx, parent), name, child.ino, add=True)
    parent.mtime_ns = parent.ctime_ns = child.ctime_ns
    put_inode(tx, parent)
    changelog.record(tx, origin, ChangeOp.CREATE, child.ino, parent.ino, name)
    # No name with it: the mount then refreshes only the old inode's attributes (its link
    # count), for the handles that keep it open.
    changelog.record(tx, origin, ChangeOp.REMOVE, old.ino)
    drop_link(tx, old, still_open)
    return child


def link(tx: Tx, origin: int, ino: int, parent_ino: int, name: bytes) -> Inode:
    check_name(name)
    inode = get_inode(tx, ino)
    if inode.is_dir:
        raise PermissionDenied("hard links to directories are not allowed")
    parent = get_inode(tx, parent_ino)
    check_writable_dir(parent)
    if lookup(tx, parent_ino, name) is not None:
        raise Exists(f"{name.decode(errors='replace')} exists")
    inode.nlink += 1
    inode.ctime_ns = time.time_ns()
    put_inode(tx, inode)
    add_entry(tx, origin, parent, name, inode, op=ChangeOp.LINK)
    return inode


def unlink(tx: Tx, origin: int, parent_ino: int, name: bytes, still_open: bool) -> Inode:
    """Remove a non-directory name. At nlink 0 the inode is freed, or parked as an orphan while
    a front end still has it open (it calls `release_orphan` at the last close)."""
    parent = get_inode(tx, parent_ino)
    check_writable_dir(parent)
    entry = lookup(tx, parent_ino, name)
    if entry is None:
        raise NotFound(f"{name.decode(errors='replace')} does not exist")
    child = get_inode(tx, entry.ino)
    if child.is_dir:
        raise IsADirectory(f"{name.decode(errors='replace')} is a directory")
    remove_entry(tx, origin, parent, name, child)
    drop_link(tx, child, still_open)
    return child


def drop_link(tx: Tx, inode: Inode, still_open: bool) -> None:
    inode.nlink -= 1
    inode.ctime_ns = time.time_ns()
    if inode.nlink > 0:
        put_inode(tx, inode)
    elif still_open:
        before = inode.version
        put_inode(tx, inode)
        tx.put(tx.db.orphans, ino_key(inode.ino), ORPHAN.pack(before, inode.version))
    else:
        free_inode(tx, inode)


def set_access_times(tx: Tx, times: dict[int, tuple[int, int]]) -> None:
    """Store access times (ino -> (atime ns, the atime it replaces)) of files that still
    exist and still have the atime it replaces: one set meanwhile (utimensat) wins. Not a
    change: no new version, no change-log entry, so no cache, ETag record or GET in flight
    is disturbed. Read-only files (snapshots) keep theirs."""
    for ino, (atime_ns, replaces) in times.items():
        raw = tx.get(tx.db.inodes, ino_key(ino))
        if raw is None:
            continue
        inode = Inode.unpack(ino, raw)
        if inode.atime_ns == replaces and not inode.flags & InodeFlags.READONLY:
            inode.atime_ns = atime_ns
            tx.put(tx.db.inodes, ino_key(ino), inode.pack())


def same_data(tx: Tx, inode: Inode, version: int) -> bool:
    """Whether `inode` holds what it held at `version`: unchanged, or changed only by losing
    its last name while open (a GET in flight finishes after a DELETE or PUT, as on S3)."""
    if inode.version == version:
        return True
    raw = tx.get(tx.db.orphans, ino_key(inode.ino))
    return raw is not None and len(raw) == ORPHAN.size and ORPHAN.unpack(raw) == (
        version, inode.version)


def free_inode(tx: Tx, inode: Inode) -> None:
    """Drop an unreachable inode and everything it owns (chunk references, xattrs, target)."""
    drop_chunks_from(tx, inode.ino, 0)
    cursor = tx.cursor(tx.db.xattrs)
    prefix = ino_key(inode.ino)
    if cursor.set_range(prefix):
        while cursor.key()[:8] == prefix:
            if not cursor.delete():
                break
    tx.delete(tx.db.symlinks, prefix)
    tx.delete(tx.db.orphans, prefix)
    tx.delete(tx.db.leases, prefix)
    tx.delete(tx.db.inodes, prefix)


def rmdir(tx: Tx, origin: int, parent_ino: int, name: bytes) -> Inode:
    parent = get_inode(tx, parent_ino)
    check_writable_dir(parent)
    entry = lookup(tx, parent_ino, name)
    if entry is None:
        raise NotFound(f"{name.decode(errors='replace')} does not exist")
    child = get_inode(tx, entry.ino)
    if not child.is_dir:
        raise NotADirectory(f"{name.decode(errors='replace')} is not a directory")
    if readdir(tx, child.ino, 0, 1):
        raise NotEmpty(f"{name.decode(errors='replace')} is not empty")
    remove_entry(tx, origin, parent, name, child)
    free_inode(tx, child)
    return child


def remove_tree(tx: Tx, origin: int, parent: Inode, name: bytes,
                held: Callable[[int], bool] | None = None) -> None:
    """Delete `name` and everything below it, read-only flags notwithstanding (`vm rm`).
    Files `held` says are open somewhere are parked as orphans, as unlink parks them."""
    entry = lookup(tx, parent.ino, name)
    if entry is None:
        raise NotFound(f"{name.decode(errors='replace')} does not exist")
    child = get_inode(tx, entry.ino)
    if child.is_dir:
        for sub in readdir(tx, child.ino, 0, 1 << 62):
            remove_tree(tx, origin, child, sub.name, held)
            child = get_inode(tx, child.ino)
    remove_entry(tx, origin, get_inode(tx, parent.ino), name, child)
    if child.is_dir:
        free_inode(tx, child)
    else:
        drop_link(tx, child, still_open=held is not None and held(child.ino))


def is_ancestor(tx: Tx, ancestor: int, ino: int) -> bool:
    current = ino
    while True:
        if current == ancestor:
            return True
        if current == ROOT_INO:
            return False
        current = get_inode(tx, current).parent


def rename(tx: Tx, origin: int, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
           new_name: bytes, flags: int, target_still_open: bool = False) -> None:
    """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, as Linux defines them."""
    check_name(new_name)
    if flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE or flags & ~3:
        raise InvalidArgument("invalid rename flags")
    old_parent = get_inode(tx, old_parent_ino)
    new_parent = get_inode(tx, new_parent_ino)
    check_writable_dir(old_parent)
    check_writable_dir(new_parent)
    src_entry = lookup(tx, old_parent_ino, old_name)
    if src_entry is None:
        raise NotFound(f"{old_name.decode(errors='replace')} does not exist")
    src = get_inode(tx, src_entry.ino)
    dst_entry = lookup(tx, new_parent_ino, new_name)
    dst = get_inode(tx, dst_entry.ino) if dst_entry else None
    if src.is_dir and is_ancestor(tx, src.ino, new_parent_ino):
        raise InvalidArgument("cannot move a directory into itself")
    if flags & RENAME_EXCHANGE:
        if dst is None:
            raise NotFound(f"{new_name.decode(errors='replace')} does not exist")
        if dst.is_dir and is_ancestor(tx, dst.ino, old_parent_ino):
            raise InvalidArgument("cannot move a directory into itself")
        _exchange(tx, origin, old_parent, old_name, src, new_parent, new_name, dst)
        return
    if dst is not None:
        if flags & RENAME_NOREPLACE:
            raise Exists(f"{new_name.decode(errors='replace')} exists")
        if dst.ino == src.ino:
            return  # POSIX: two links to one inode; nothing happens
        if src.is_dir and not dst.is_dir:
            raise NotADirectory(f"{new_name.decode(errors='replace')} is not a directory")
        if not src.is_dir and dst.is_dir:
            raise IsADirectory(f"{new_name.decode(errors='replace')} is a directory")
        if dst.is_dir and readdir(tx, dst.ino, 0, 1):
            raise NotEmpty(f"{new_name.decode(errors='replace')} is not empty")
    remove_entry(tx, origin, old_parent, old_name, src)
    if dst is not None:
        new_parent = get_inode(tx, new_parent_ino)
        remove_entry(tx, origin, new_parent, new_name, dst)
        if dst.is_dir:
            free_inode(tx, dst)
        else:
            drop_link(tx, dst, target_still_open)
    _move_in(tx, origin, src, new_parent_ino, new_name)


def _move_in(tx: Tx, origin: int, inode: Inode, parent_ino: int, name: bytes) -> None:
    parent = get_inode(tx, parent_ino)  # re-read: removing an entry may have changed it
    if inode.is_dir:
        inode.parent, inode.name = parent_ino, name
    inode.ctime_ns = time.time_ns()
    put_inode(tx, inode)
    add_entry(tx, origin, parent, name, inode)


def _exchange(tx: Tx, origin: int, a_parent: Inode, a_name: bytes, a: Inode,
              b_parent: Inode, b_name: bytes, b: Inode) -> None:
    if a.ino == b.ino:
        return
    remove_entry(tx, origin, a_parent, a_name, a)
    b_parent = get_inode(tx, b_parent.ino)
    remove_entry(tx, origin, b_parent, b_name, b)
    _move_in(tx, origin, b, a_parent.ino, a_name)
    _move_in(tx, origin, a, b_parent.ino, b_name)


# --- xattrs ------------------------------------------------------------------------------

def xattr_key(ino: int, name: bytes) -> bytes:
    return ino_key(ino) + name


def list_xattrs(tx: Tx, ino: int) -> list[bytes]:
    cursor = tx.cursor(tx.db.xattrs)
    prefix = ino_key(ino)
    names = []
    if cursor.set_range(prefix):
        for key in cursor.iternext(keys=True, values=False):
            if key[:8] != prefix:
                break
            names.append(bytes(key[8:]))
    return names


def get_xattrs(tx: Tx, ino: int, wanted: Callable[[bytes], bool]) -> dict[bytes, bytes]:
    """The extended attributes of `ino` whose names `wanted` takes, with their values."""
    found = {}
    for name in list_xattrs(tx, ino):
        if wanted(name) and (value := tx.get(tx.db.xattrs, xattr_key(ino, name))) is not None:
            found[name] = value
    return found


def put_xattrs(tx: Tx, ino: int, xattrs: Mapping[bytes, bytes]) -> None:
    for name, value in xattrs.items():
        tx.put(tx.db.xattrs, xattr_key(ino, name), value)


def resolve(tx: Tx, path: bytes) -> Inode:
    """The inode at a '/'-separated path from the root (no symlinks followed)."""
    inode = get_inode(tx, ROOT_INO)
    for part in path.strip(b"/").split(b"/"):
        if not part:
            continue
        if not inode.is_dir:
            raise NotADirectory(f"{part!r}: a path component is not a directory")
        entry = lookup(tx, inode.ino, part)
        if entry is None:
            raise NotFound(f"{path.decode(errors='replace')} does not exist")
        inode = get_inode(tx, entry.ino)
    return inode
