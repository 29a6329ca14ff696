#!/usr/bin/env bash
# Upload a disk image over S3, then boot a VM from it: the object is a file on the mount, so
# `vfsd vm import` reads it from there and QEMU boots the VM's own files.
#
# In a fresh store under a temp dir (removed at the end):
#   1. builds the tiny test guest (kernel + busybox initramfs, cached in ~/.cache),
#   2. makes a 256 MiB ext4 image on the host holding a greeting file, converts it to qcow2,
#   3. runs the store (mount + S3 gateway) and uploads the image with the aws CLI,
#   4. imports it as VM "web" (zero areas stay holes) and boots the guest, which prints the
#      greeting from its disk.
#
# Needs: qemu-system-x86_64, qemu-img, e2fsprogs, fusermount3, the aws CLI, and vfsd on PATH
# (source .venv/bin/activate). Runs under TCG; takes ~30 s.
set -euo pipefail

VFSD=${VFSD:-vfsd}
REPO=$(cd "$(dirname "$0")/.." && pwd)
GUEST=${VFSD_GUEST_CACHE:-$HOME/.cache/vfsd-test-guest}
WORK=$(mktemp -d /tmp/vfsd-example.XXXXXX)
STORE=$WORK/store MNT=$WORK/mnt
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GATEWAY_PID=

cleanup() {
    [ -n "$GATEWAY_PID" ] && kill "$GATEWAY_PID" 2>/dev/null && wait "$GATEWAY_PID" 2>/dev/null
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT"; fi
    for _ in $(seq 100); do   # the daemon deregisters when it has flushed and exited
        compgen -G "$STORE/run/mounts/*.json" >/dev/null || break; sleep 0.1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 "$REPO/scripts/build-test-guest" "$GUEST"

# An image made elsewhere: ext4 with one file, as qcow2.
truncate -s 256M "$WORK/disk.raw"
mkfs.ext4 -q -F -L uploaded "$WORK/disk.raw"
echo "hello from an image uploaded over S3" >"$WORK/greeting"
debugfs -w -R "write $WORK/greeting greeting.txt" "$WORK/disk.raw" >/dev/null 2>&1
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"

# The store, mounted, with its S3 gateway and a user.
$VFSD init --store "$STORE"
eval "$($VFSD user add uploader --json --store "$STORE" | python3 -c '
import json, sys; k = json.load(sys.stdin)
print("export AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=%s" % (k["access_key"], k["secret_key"]))')"
export AWS_DEFAULT_REGION=us-east-1
mkdir "$MNT"
$VFSD mount "$MNT" --store "$STORE"
$VFSD gateway --store "$STORE" --listen "127.0.0.1:$PORT" &
GATEWAY_PID=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

S3="aws --endpoint-url http://127.0.0.1:$PORT s3"
$S3 mb s3://images
$S3 cp "$WORK/disk.qcow2" s3://images/disk.qcow2
ls -l "$MNT/images/"            # the object is a file on the mount: no copy was made

# A VM from the uploaded image, then a boot that reads the greeting from its disk.
$VFSD vm import web "$MNT/images/disk.qcow2" --memory 256M --store "$STORE"
cat >"$WORK/script.sh" <<'GUEST_SCRIPT'
set -e
waitdev /dev/vda
mount -t ext4 -o ro /dev/vda /mnt
mark GREETING "$(cat /mnt/greeting.txt)"
umount /mnt
GUEST_SCRIPT
QEMU_CMD=$($VFSD vm qemu-args web --accel tcg --console --store "$STORE" \
    --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.gz" --append "console=ttyS0 panic=-1 quiet")
eval "$QEMU_CMD" -no-reboot \
    -fw_cfg "name=opt/vfsd/script,file=$WORK/script.sh" | grep --line-buffered VFSD-
$VFSD vm show web --store "$STORE"
