"""The VMDK descriptor on the mount: read-only to people, but QEMU may rewrite its CID."""

import errno
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def vm(store_path):
    subprocess.run([sys.executable, "-m", "vfsd", "vm", "create", "web", "--disk", "1G",
                    "--memory", "64M", "--store", str(store_path)], check=True,
                   capture_output=True)


def test_people_cannot_change_the_descriptor(vm, mnt):
    descriptor = mnt / "vms" / "web" / "web.vmdk"
    original = descriptor.read_bytes()
    for mode in ("ab", "wb"):
        with pytest.raises(OSError) as info, open(descriptor, mode) as f:
            f.write(b"createType=\"twoGbMaxExtentSparse\"\n")
        assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.truncate(descriptor, 10)
    assert info.value.errno == errno.EROFS
    fd = os.open(descriptor, os.O_RDWR)  # same length, another extent name: refused
    try:
        with pytest.raises(OSError) as info:
            os.pwrite(fd, original.replace(b"web-flat.vmdk", b"xyz-flat.vmdk"), 0)
        assert info.value.errno == errno.EROFS
    finally:
        os.close(fd)
    assert descriptor.read_bytes() == original
