"""The synchronous core: the only package that touches LMDB and segment files."""

from .errors import StoreError
from .records import ROOT_INO, DirEntry, Inode, InodeFlags
from .store import Store

__all__ = ["ROOT_INO", "DirEntry", "Inode", "InodeFlags", "Store", "StoreError"]
