"""The pool seen through the mount: statfs shows the quota, writes past it fail with ENOSPC
and leave nothing half-written."""

import errno
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def test_quota_statfs_and_enospc(mount, mnt, store_path):
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "32M",
                    "--store", str(store_path)], check=True, capture_output=True)
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 32 * MiB
    (mnt / "fits").write_bytes(os.urandom(8 * MiB))
    st = os.statvfs(mnt)
    assert 23 * MiB <= st.f_bavail * st.f_frsize <= 24 * MiB + 4096

    with pytest.raises(OSError) as info, open(mnt / "too-big", "wb") as f:
        f.writelines(os.urandom(MiB) for _ in range(64))
        f.flush()
        os.fsync(f.fileno())
    assert info.value.errno == errno.ENOSPC
    # The file that fit is intact and the pool is not overdrawn.
    assert len((mnt / "fits").read_bytes()) == 8 * MiB
    st = os.statvfs(mnt)
    assert st.f_bavail * st.f_frsize >= 0
    subprocess.run([sys.executable, "-m", "vfsd", "pool", "set", "--quota", "none",
                    "--store", str(store_path)], check=True, capture_output=True)
    (mnt / "after").write_bytes(b"space again")
    assert (mnt / "after").read_bytes() == b"space again"
