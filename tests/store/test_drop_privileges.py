"""Store.drop_privileges: what the mount asks on write, truncate and chown."""

from __future__ import annotations

import stat

from vfsd.store import InodeFlags, namespace


def test_drops_setuid_and_capabilities_but_leaves_a_read_only_file_alone(new_store) -> None:
    store = new_store()
    ino = store.write_file("tool", b"#!/bin/sh\n").ino
    store.setattr(ino, mode=0o4755)
    store.set_xattr(ino, b"security.capability", b"\x01\x00\x00\x02" + bytes(16))
    assert store.drop_privileges(ino)
    assert stat.S_IMODE(store.getattr(ino).mode) == 0o755
    assert b"security.capability" not in store.list_xattrs(ino)
    assert not store.drop_privileges(ino)  # nothing left to drop

    store.setattr(ino, mode=0o4755)
    with store.env.write() as tx:  # as a snapshot's files are
        inode = namespace.get_inode(tx, ino)
        inode.flags |= InodeFlags.READONLY
        namespace.put_inode(tx, inode)
    assert not store.drop_privileges(ino)
    assert stat.S_IMODE(store.getattr(ino).mode) == 0o4755
