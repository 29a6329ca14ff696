#!/usr/bin/env bash
# Move a volume (a detachable disk) from one VM to another; deleting a VM keeps its volumes.
#
# In a fresh store under a temp dir (removed at the end):
#   1. VMs "web" and "db", volume "data" attached to web, ext4 made on it from the host,
#   2. web's guest writes a file on the volume (/dev/vdb) and powers off,
#   3. the volume is detached from web and attached to db; db's guest reads the file back,
#   4. `vfsd vm rm db` deletes db but leaves the volume, ready to attach elsewhere.
#
# Needs: qemu-system-x86_64, e2fsprogs, fusermount3, and vfsd on PATH (source .venv/bin/activate).
# Runs under TCG (no KVM needed); takes ~30 s.
set -euo pipefail

VFSD=${VFSD:-vfsd}
REPO=$(cd "$(dirname "$0")/.." && pwd)
GUEST=${VFSD_GUEST_CACHE:-$HOME/.cache/vfsd-test-guest}
WORK=$(mktemp -d /tmp/vfsd-example.XXXXXX)
STORE=$WORK/store MNT=$WORK/mnt

cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT"; fi
    for _ in $(seq 100); do   # the daemon deregisters when it has flushed and exited
        compgen -G "$STORE/run/mounts/*.json" >/dev/null || break; sleep 0.1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# boot VM SCRIPT: run the test guest with VM's disks (as `vfsd vm start` would attach them,
# /dev/vda first, then attached volumes, then swap) and SCRIPT; print its marker lines.
boot() {
    local cmd
    cmd=$($VFSD vm qemu-args "$1" --accel tcg --console --store "$STORE" \
        --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.gz" \
        --append "console=ttyS0 panic=-1 quiet")
    printf '%s\n' "$2" >"$WORK/script.sh"
    eval "$cmd" -no-reboot \
        -fw_cfg "name=opt/vfsd/script,file=$WORK/script.sh" | grep --line-buffered VFSD-
}

python3 "$REPO/scripts/build-test-guest" "$GUEST"
$VFSD init --store "$STORE"
$VFSD vm create web --disk 256M --memory 256M --store "$STORE"
$VFSD vm create db --disk 256M --memory 256M --store "$STORE"
$VFSD volume create data --size 128M --store "$STORE"
$VFSD volume attach data --vm web --store "$STORE"   # a hard link into vms/web/
mkdir "$MNT"
$VFSD mount --store "$STORE" "$MNT"
mkfs.ext4 -q -F -L data "$MNT/volumes/data-flat.vmdk"

echo "== web writes to the volume"
boot web 'set -e
waitdev /dev/vdb
mount -t ext4 /dev/vdb /mnt
echo "written by VM web" >/mnt/note.txt
mark NOTE "$(cat /mnt/note.txt)"'

echo "== move the volume to db"
$VFSD volume detach data --store "$STORE"
$VFSD volume attach data --vm db --store "$STORE"
$VFSD volume ls --store "$STORE"
ls "$MNT/vms/web" "$MNT/vms/db"

echo "== db reads it back"
boot db 'set -e
waitdev /dev/vdb
mount -t ext4 -o ro /dev/vdb /mnt
grep -q "written by VM web" /mnt/note.txt
mark NOTE "$(cat /mnt/note.txt)"'

echo "== deleting db keeps the volume"
$VFSD vm rm db --store "$STORE"
$VFSD volume ls --store "$STORE"
