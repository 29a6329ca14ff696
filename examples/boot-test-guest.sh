#!/usr/bin/env bash
# Boot a VM whose disk lives in a vfsd store, with QEMU opening the VM's files on the mount.
#
# What it does, in a fresh store under a temp dir that is removed at the end:
#   1. builds the tiny test guest (a Debian kernel + busybox initramfs, cached in
#      ~/.cache/vfsd-test-guest; the first build downloads ~70 MB),
#   2. creates VM "web" (a thin 1 GiB disk) and mounts the store,
#   3. formats the disk as ext4 from the host, through the mount,
#   4. boots the guest with `vfsd vm qemu-args` (the command `vfsd vm start` runs) plus the
#      kernel and initramfs; the guest writes a file on the disk and powers off,
#   5. reads the file back from the host and shows how little space the thin disk takes.
#
# Needs: qemu-system-x86_64, e2fsprogs, fusermount3, and vfsd on PATH (source .venv/bin/activate).
# Runs under TCG (no KVM needed); takes ~20 s.
set -euo pipefail

VFSD=${VFSD:-vfsd}
REPO=$(cd "$(dirname "$0")/.." && pwd)
GUEST=${VFSD_GUEST_CACHE:-$HOME/.cache/vfsd-test-guest}
WORK=$(mktemp -d /tmp/vfsd-example.XXXXXX)
STORE=$WORK/store MNT=$WORK/mnt

cleanup() {   # unmount (the daemon flushes and exits) and remove everything we made
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT"; fi
    for _ in $(seq 100); do   # the daemon deregisters when it has flushed and exited
        compgen -G "$STORE/run/mounts/*.json" >/dev/null || break; sleep 0.1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 "$REPO/scripts/build-test-guest" "$GUEST"

$VFSD init --store "$STORE"
$VFSD vm create web --disk 1G --memory 256M --store "$STORE"
mkdir "$MNT"
$VFSD mount --store "$STORE" "$MNT"          # returns once the mount is up (a daemon)
ls -l "$MNT/vms/web"

# The flat extent is a plain raw disk: host tools work on it directly.
mkfs.ext4 -q -F -L web "$MNT/vms/web/web-flat.vmdk"

# What the guest runs (handed over through fw_cfg; the test guest's /init runs it and then
# powers off). /dev/vda is web.vmdk, /dev/vdb the swap file.
cat >"$WORK/script.sh" <<'GUEST_SCRIPT'
set -e
waitdev /dev/vda
mount -t ext4 /dev/vda /mnt
echo "hello from $(uname -r) on a vfsd disk" >/mnt/hello.txt
sync
GUEST_SCRIPT

# `vfsd vm qemu-args` prints QEMU's command line for the VM's files on the mount;
# --console puts the serial console here, --kernel/--initrd/--append boot the test guest.
# We add the script the guest runs.
QEMU_CMD=$($VFSD vm qemu-args web --accel tcg --console --store "$STORE" \
    --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.gz" --append "console=ttyS0 panic=-1 quiet")
eval "$QEMU_CMD" -no-reboot \
    -fw_cfg "name=opt/vfsd/script,file=$WORK/script.sh" | grep --line-buffered VFSD-

# The guest has powered off: read its file from the host (debugfs: no loop mount needed).
debugfs -R "cat /hello.txt" "$MNT/vms/web/web-flat.vmdk" 2>/dev/null
$VFSD vm show web --store "$STORE"
du -h --apparent-size "$MNT/vms/web/web-flat.vmdk"; du -h "$MNT/vms/web/web-flat.vmdk"
