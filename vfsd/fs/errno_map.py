"""Core errors as errno values: the one table the mount answers the kernel with."""

from __future__ import annotations

import errno

from vfsd.store import errors

ERRNO: dict[type[errors.StoreError], int] = {
    errors.NotFound: errno.ENOENT,
    errors.Exists: errno.EEXIST,
    errors.NotEmpty: errno.ENOTEMPTY,
    errors.IsADirectory: errno.EISDIR,
    errors.NotADirectory: errno.ENOTDIR,
    errors.InvalidName: errno.EINVAL,
    errors.NameTooLong: errno.ENAMETOOLONG,
    errors.ReadOnly: errno.EROFS,
    errors.FileTooBig: errno.EFBIG,
    errors.NoSpace: errno.ENOSPC,
    errors.InvalidArgument: errno.EINVAL,
    errors.PermissionDenied: errno.EPERM,
    errors.Busy: errno.EBUSY,
    errors.Corrupt: errno.EIO,
    errors.DiskError: errno.EIO,
    errors.NoAttribute: errno.ENODATA,
    errors.NotAStore: errno.EIO,
    errors.FormatMismatch: errno.EIO,
}


def errno_for(error: errors.StoreError) -> int:
    for cls in type(error).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]  # type: ignore[index]
    return errno.EIO
