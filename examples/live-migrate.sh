#!/usr/bin/env bash
# Live-migrate a running VM between two QEMU processes that share its disk on a vfsd mount.
#
# In a fresh store under a temp dir (removed at the end):
#   1. VM "web"; the source QEMU boots the test guest, which appends numbered 512-byte records
#      to its raw disk (/dev/vda), each written O_DIRECT and fsync'd,
#   2. a destination QEMU waits with `-incoming unix:…` on the same disk file,
#   3. QMP `migrate` (sent with qmp-shell, from pip's qemu.qmp) moves the guest, which carries on
#      writing on the destination and powers off there,
#   4. the host reads the disk: every record is there, in order, with no gap.
#
# Shared storage needs no image copy and no `file.locking=off`: the destination opens the disk
# inactive and takes QEMU's image locks only when the source hands over.
#
# Needs: qemu-system-x86_64, fusermount3, vfsd and qmp-shell on PATH (source .venv/bin/activate;
# pip install qemu.qmp). Runs under TCG; takes ~30 s.
set -euo pipefail

VFSD=${VFSD:-vfsd}
REPO=$(cd "$(dirname "$0")/.." && pwd)
GUEST=${VFSD_GUEST_CACHE:-$HOME/.cache/vfsd-test-guest}
WORK=$(mktemp -d /tmp/vfsd-example.XXXXXX)
STORE=$WORK/store MNT=$WORK/mnt
RECORDS=400
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT"; fi
    for _ in $(seq 100); do   # the daemon deregisters when it has flushed and exited
        compgen -G "$STORE/run/mounts/*.json" >/dev/null || break; sleep 0.1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# qmp ROLE COMMAND: one QMP command to the source or destination QEMU; prints the reply.
qmp() { printf '%s\n' "$2" | qmp-shell "$WORK/$1.qmp" 2>/dev/null | grep -o '{.*}' || true; }

# wait_console ROLE TEXT: until the role's serial console shows TEXT (or 120 s pass).
wait_console() {
    timeout 120 bash -c "until grep -q '$2' '$WORK/$1.console' 2>/dev/null; do sleep 0.2; done"
}

# run_qemu ROLE [ARGS…]: start QEMU in the background on web's flat extent (raw, O_DIRECT).
# Source and destination must get the same machine, devices and memory size.
run_qemu() {
    local role=$1; shift
    qemu-system-x86_64 -name web -machine q35,accel=tcg -m 128M -nodefaults -display none \
        -drive "if=none,id=disk0,file=$MNT/vms/web/web-flat.vmdk,format=raw,cache=none" \
        -device virtio-blk-pci,drive=disk0 \
        -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.gz" \
        -append 'console=ttyS0 panic=-1 quiet' -no-reboot \
        -fw_cfg "name=opt/vfsd/script,file=$WORK/script.sh" \
        -serial "file:$WORK/$role.console" \
        -qmp "unix:$WORK/$role.qmp,server=on,wait=off" "$@" &
    PIDS+=($!)
}

python3 "$REPO/scripts/build-test-guest" "$GUEST"
$VFSD init --store "$STORE"
$VFSD vm create web --disk 64M --memory 128M --store "$STORE"
mkdir "$MNT"
$VFSD mount --store "$STORE" "$MNT"

cat >"$WORK/script.sh" <<GUEST_SCRIPT
set -e
waitdev /dev/vda
i=0
while [ \$i -lt $RECORDS ]; do
    printf 'VFSDREC %08d\n' \$i | dd of=/dev/vda bs=512 seek=\$i conv=sync,notrunc,fsync oflag=direct 2>/dev/null
    if [ \$((i % 50)) = 0 ]; then mark REC \$i; fi
    i=\$((i + 1))
done
mark DONE \$i
GUEST_SCRIPT

echo "== source boots and writes records"
run_qemu source
SOURCE=${PIDS[-1]}
run_qemu destination -incoming "unix:$WORK/migration.sock"
DEST=${PIDS[-1]}
wait_console source 'VFSD-REC 50'

echo "== migrate"
qmp source "migrate uri=unix:$WORK/migration.sock"
until qmp source query-migrate | grep -Eq '"status": "(completed|failed)"'; do sleep 0.2; done
qmp source query-migrate | grep -o '"status": "[a-z]*"\|"total-time": [0-9]*\|"downtime": [0-9]*'
qmp destination query-status
qmp source quit >/dev/null; wait "$SOURCE" || true
echo "source last wrote:      $(grep -o 'VFSD-REC [0-9]*' "$WORK/source.console" | tail -1)"

echo "== the guest finishes on the destination"
wait "$DEST"
echo "destination went on at: $(grep -o 'VFSD-REC [0-9]*' "$WORK/destination.console" | head -1)"
grep -o 'VFSD-[A-Z]* .*' "$WORK/destination.console" | tail -3

echo "== the records on disk, read from the host"
dd if="$MNT/vms/web/web-flat.vmdk" bs=512 count=$((RECORDS + 8)) 2>/dev/null | tr -d '\0' \
    >"$WORK/records.txt"
if seq -f 'VFSDREC %08g' 0 $((RECORDS - 1)) | cmp -s - "$WORK/records.txt"; then
    echo "all $RECORDS records present, in order, no gap"
else
    echo "records differ:"; seq -f 'VFSDREC %08g' 0 $((RECORDS - 1)) | diff - "$WORK/records.txt" | head
    exit 1
fi
