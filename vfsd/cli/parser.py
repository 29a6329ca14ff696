"""The argument parser: every verb, its options and its help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from vfsd import __version__
from vfsd.fs.polling import DEFAULT_POLL_US

from .common import DEFAULT_USER, Parser, count_arg, duration_arg, poll_arg, size_arg
from .daemons import cmd_gateway, cmd_mount, cmd_up, parse_listen
from .store_verbs import (
    cmd_fsck,
    cmd_gc,
    cmd_init,
    cmd_pool_set,
    cmd_stats,
    cmd_user_add,
    cmd_user_ls,
    cmd_user_rm,
    quota_arg,
)
from .vm_verbs import (
    cmd_clone,
    cmd_revert,
    cmd_snapshot,
    cmd_snapshot_rm,
    cmd_snapshots,
    cmd_vm_create,
    cmd_vm_export,
    cmd_vm_import,
    cmd_vm_ls,
    cmd_vm_qemu_args,
    cmd_vm_resize,
    cmd_vm_rm,
    cmd_vm_show,
    cmd_vm_start,
    cmd_vm_stop,
    cmd_volume_attach,
    cmd_volume_create,
    cmd_volume_detach,
    cmd_volume_ls,
    cmd_volume_resize,
    cmd_volume_rm,
)

# --- the parser ----------------------------------------------------------------------------

def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--store", metavar="PATH",
                        help="the store directory (default: $VFSD_STORE, else ./data)")
    json_flag = Parser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = Parser(
        prog="vfsd",
        description="A deduplicating, thin-provisioned store for VM files, volumes and "
                    "objects, seen as a FUSE file system and as S3.",
        epilog="Every verb has its own --help. Errors print one line and exit non-zero "
               "(1 error, 2 bad usage, 3 fsck found damage).",
    )
    parser.add_argument("--version", action="version", version=f"vfsd {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)

    def verb(sub: argparse._SubParsersAction, name: str, func: Callable[..., int], help: str,
             description: str = "", json: bool = False) -> Parser:
        # `list` and `remove` as well: the words people type (and the help once used).
        aliases = {"ls": ["list"], "rm": ["remove"]}.get(name, [])
        p = sub.add_parser(name, help=help, description=description or help, aliases=aliases,
                           parents=[common] + ([json_flag] if json else []))
        p.set_defaults(func=func)
        return p

    p = verb(verbs, "init", cmd_init, "create a new store",
             "Create a store directory: meta/ (the LMDB index), segments/ (chunk bodies) and "
             "store.toml. The chunk size is fixed for the store's life.")
    p.add_argument("--chunk-size", type=size_arg, default=64 * 1024, metavar="SIZE",
                   help="dedup/thin granularity, a power of two from 4K to 4M (default 64K, "
                        "QEMU's cluster size)")
    p.add_argument("--quota", type=size_arg, metavar="SIZE",
                   help="pool capacity (default: the backing disk's free space)")
    verb(verbs, "stats", cmd_stats, "show space use: logical, physical, dedup, thin overcommit",
         json=True)
    p = verb(verbs, "fsck", cmd_fsck, "check every invariant of the store (read-only)",
             "Check that chunk maps, refcounts, segment records (CRC and hash), directory "
             "entries, link counts and the S3 key index agree. Exits 3 if anything is "
             "damaged. With --repair, first rebuild what can be derived from the chunk maps "
             "(refcounts, counters, the S3 key index, directory cookies), re-index chunks "
             "found intact in segments, turn lost chunks (records gone with a cut or missing "
             "segment file) into holes, reporting the files, and run a gc pass. A chunk whose "
             "bytes are there but fail their checksum, with no intact copy, is left and named "
             "(reads of it fail with EIO): restore or delete those files. Unreferenced bytes (dead records, orphans of interrupted "
             "writes, padding) are not damage: gc gives a segment back once at least half of "
             "it is unreferenced.")
    p.add_argument("--repair", action="store_true", help="repair, then check")
    p.add_argument("--grace", type=duration_arg, default=None, metavar="SECONDS",
                   help="with --repair: gc grace period for retired segments (default 5s)")

    vm = verbs.add_parser("vm", help="virtual machines: create, ls, show, start, stop, snapshot, "
                          "clone, resize, rm, import, export",
                          description="VMs live in vms/NAME/ as VMware-style files: NAME.vmdk "
                          "(descriptor), NAME-flat.vmdk (thin disk), NAME.vswp (swap), "
                          "NAME.nvram (firmware variables) and NAME.vmx (settings).")
    vm_verbs = vm.add_subparsers(dest="vm_verb", metavar="VERB", required=True,
                                 parser_class=Parser)
    vm.set_defaults(kind="vm")  # the snapshot verbs serve VMs and volumes alike
    p = verb(vm_verbs, "create", cmd_vm_create, "create a VM's files", json=True)
    p.add_argument("name")
    p.add_argument("--disk", type=size_arg, required=True, metavar="SIZE",
                   help="virtual disk size, e.g. 20G (thin: costs nothing until written)")
    p.add_argument("--memory", type=size_arg, required=True, metavar="SIZE",
                   help="guest memory, e.g. 2G; also the size of the swap file")
    p.add_argument("--firmware", choices=("bios", "uefi"), default="bios",
                   help="uefi copies OVMF's variable store into NAME.nvram (default bios)")
    verb(vm_verbs, "ls", cmd_vm_ls, "list VMs", json=True)
    p = verb(vm_verbs, "show", cmd_vm_show, "show a VM's settings and disks", json=True)
    p.add_argument("name")
    p = verb(vm_verbs, "rm", cmd_vm_rm, "delete a VM and its instance disks",
             "Delete vms/NAME/ and the VM's own disks. Attached volumes are detached and kept.")
    p.add_argument("name")
    p = verb(vm_verbs, "resize", cmd_vm_resize, "grow a VM's disk (refused while it runs)",
             json=True)
    p.add_argument("name")
    p.add_argument("--disk", type=size_arg, required=True, metavar="SIZE",
                   help="the new size; shrinking is refused")

    p = verb(vm_verbs, "import", cmd_vm_import, "create a VM from a disk image",
             "Create a VM from a qcow2, vmdk or raw image: its disk gets the image's virtual "
             "size and zero areas stay holes. Uses qemu-img, through the live mount if there "
             "is one; shows progress on a terminal.", json=True)
    p.add_argument("name")
    p.add_argument("image", help="the image file (qcow2, vmdk, raw, ...)")
    p.add_argument("--memory", type=size_arg, required=True, metavar="SIZE",
                   help="guest memory, e.g. 2G; also the size of the swap file")
    p.add_argument("--firmware", choices=("bios", "uefi"), default="bios",
                   help="uefi copies OVMF's variable store into NAME.nvram (default bios)")
    p = verb(vm_verbs, "export", cmd_vm_export, "write a VM's disk to a qcow2 or vmdk image",
             "Write the VM's first disk to DEST (refused while the VM runs). The format "
             "follows DEST's suffix (.vmdk: vmdk, else qcow2) unless --format says.")
    p.add_argument("name")
    p.add_argument("dest")
    p.add_argument("--format", choices=("qcow2", "vmdk"), help="the image format")

    accel_opts = Parser(add_help=False)
    accel_opts.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                            help="kvm, tcg, or auto: a bounded probe picks kvm only if it "
                                 "really runs guests (default auto)")
    accel_opts.add_argument("--console", action="store_true",
                            help="serial console on this terminal (QEMU runs attached)")
    accel_opts.add_argument("--kernel", type=Path, metavar="FILE",
                            help="boot this kernel directly instead of from the disk")
    accel_opts.add_argument("--initrd", type=Path, metavar="FILE", help="with --kernel")
    accel_opts.add_argument("--append", metavar="CMDLINE", help="with --kernel: its command line")
    p = vm_verbs.add_parser("qemu-args", parents=[common, accel_opts],
                            help="print the QEMU command line `vm start` would run",
                            description="Print the QEMU command that runs the VM from its files "
                            "on the store's live mount (each disk's raw -flat.vmdk extent with "
                            "cache=none and discard=unmap, so guest TRIM frees pool space; the "
                            "swap file as an extra disk).")
    p.add_argument("name")
    p.set_defaults(func=cmd_vm_qemu_args)
    p = vm_verbs.add_parser("start", parents=[common, accel_opts], help="start a VM in QEMU",
                            description="Start QEMU on the VM's files on the mount. Refused if "
                            "the VM runs already or its disk is open for writing elsewhere.")
    p.add_argument("name")
    p.set_defaults(func=cmd_vm_start)
    p = verb(vm_verbs, "stop", cmd_vm_stop, "power a VM off (ACPI, then hard after --timeout)")
    p.add_argument("name")
    p.add_argument("--timeout", type=duration_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for the guest to power off (default 30s)")

    p = verb(vm_verbs, "snapshot", cmd_snapshot, "snapshot a VM's files (not its swap)",
             "Copy the chunk maps (no data) of the VM's files, except the swap file, into "
             "vms/NAME/.snapshots/SNAP/, read-only. A mounted VM's dirty data is flushed "
             "first, so the snapshot is crash-consistent.", json=True)
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vm_verbs, "snapshots", cmd_snapshots, "list a VM's snapshots", json=True)
    p.add_argument("name")
    p = verb(vm_verbs, "revert", cmd_revert, "give a stopped VM a snapshot's disks and nvram",
             "Refused while the VM's disks are open for writing (running).")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vm_verbs, "snapshot-rm", cmd_snapshot_rm,
             "delete a snapshot (clones made from it stay intact)")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vm_verbs, "clone", cmd_clone, "make a new VM sharing a VM's (or snapshot's) data",
             "Metadata only: the clone references the same chunks until either side writes. "
             "Attached volumes become instance disks of the clone.", json=True)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--snapshot", metavar="SNAP", help="clone this snapshot of SRC instead")

    volume = verbs.add_parser("volume", help="detachable disks: create, ls, attach, detach, resize, "
                              "snapshot, rm",
                              description="Volumes live in volumes/ and outlive the VMs they "
                              "are attached to (a hard link into the VM's directory).")
    vol_verbs = volume.add_subparsers(dest="volume_verb", metavar="VERB", required=True,
                                      parser_class=Parser)
    volume.set_defaults(kind="volume")
    p = verb(vol_verbs, "create", cmd_volume_create, "create a thin volume", json=True)
    p.add_argument("name")
    p.add_argument("--size", type=size_arg, required=True, metavar="SIZE", help="e.g. 10G")
    verb(vol_verbs, "ls", cmd_volume_ls, "list volumes and where they are attached", json=True)
    p = verb(vol_verbs, "attach", cmd_volume_attach, "attach a volume to a VM")
    p.add_argument("name")
    p.add_argument("--vm", required=True, help="the VM to attach it to")
    p = verb(vol_verbs, "detach", cmd_volume_detach, "detach a volume from its VM")
    p.add_argument("name")
    p = verb(vol_verbs, "resize", cmd_volume_resize,
             "grow a volume (refused while a running VM has it)", json=True)
    p.add_argument("name")
    p.add_argument("--size", type=size_arg, required=True, metavar="SIZE",
                   help="the new size; shrinking is refused")
    p = verb(vol_verbs, "rm", cmd_volume_rm, "delete a detached volume")
    p.add_argument("name")
    p = verb(vol_verbs, "snapshot", cmd_snapshot, "snapshot a volume (metadata only)",
             json=True)
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vol_verbs, "snapshots", cmd_snapshots, "list a volume's snapshots", json=True)
    p.add_argument("name")
    p = verb(vol_verbs, "revert", cmd_revert,
             "give a volume a snapshot's data (refused while a VM writes to it)")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vol_verbs, "snapshot-rm", cmd_snapshot_rm, "delete a volume snapshot")
    p.add_argument("name")
    p.add_argument("snap")
    p = verb(vol_verbs, "clone", cmd_clone, "make a new volume sharing a volume's data",
             json=True)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--snapshot", metavar="SNAP", help="clone this snapshot of SRC instead")

    mount_opts = Parser(add_help=False)
    mount_opts.add_argument("--cache-size", type=size_arg, default=256 << 20, metavar="SIZE",
                            help="memory for dirty data before writers wait (default 256M)")
    mount_opts.add_argument("--commit-interval", type=duration_arg, default=1.0,
                            metavar="SECONDS", help="commit dirty data to the store at least "
                            "this often (default 1s); close commits at once, fsync makes "
                            "small writes durable in the fsync journal and large ones by a "
                            "commit")
    mount_opts.add_argument("--poll-us", type=poll_arg, default=DEFAULT_POLL_US,
                            metavar="MICROSECONDS",
                            help="before sleeping until the next request, poll for it this "
                            f"long at most (default {DEFAULT_POLL_US}; 0: never). The window adapts: "
                            "it grows while requests follow their replies closely (a "
                            "database's fsyncs, a guest's 4k I/O), saving a wake-up each, and "
                            "shrinks on an idle mount. No polling while the mount's worker "
                            "threads are busy (a flush needs the core)")
    mount_opts.add_argument("--allow-other", action="store_true",
                            help="let users other than the mounting one use the mount")
    p = verbs.add_parser("mount", parents=[common, mount_opts], help="mount the store (FUSE)",
                         description="Mount the store as a POSIX file system. Runs as a "
                         "daemon (logging to STORE/vfsd.log) unless --foreground. SIGTERM, "
                         "SIGINT or `fusermount3 -u` flush all dirty data and unmount.")
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--metrics-listen", type=parse_listen, metavar="HOST:PORT",
                   help="serve Prometheus /metrics here: requests by operation and errno, "
                   "latency, dirty data (off by default; unauthenticated, keep it private)")
    p.set_defaults(func=cmd_mount)
    # The gateway's options, for `vfsd gateway` and for the gateway `vfsd up` starts.
    gateway_opts = argparse.ArgumentParser(add_help=False)
    gateway_opts.add_argument("--region", default="us-east-1",
                              help="the region clients sign for")
    gateway_opts.add_argument("--tls-cert", type=Path, metavar="PEM",
                              help="serve HTTPS with this certificate (with --tls-key); "
                              "clients then send aws-chunked bodies")
    gateway_opts.add_argument("--tls-key", type=Path, metavar="PEM",
                              help="the certificate's private key")
    gateway_opts.add_argument("--metrics-listen", type=parse_listen, metavar="HOST:PORT",
                              help="serve Prometheus /metrics here (off by default; "
                              "unauthenticated, keep it private)")
    gateway_opts.add_argument("--processes", type=count_arg, default=None, metavar="N",
                              help="server processes sharing the port (default: one per "
                              "core, up to 4): a process serves small requests on about "
                              "one core")
    p = verbs.add_parser("up", parents=[common, mount_opts, gateway_opts],
                         help="the main job: init if "
                         "needed, mount in the foreground and serve S3 beside it",
                         description="Initialise the store if missing, create the S3 user "
                         f"{DEFAULT_USER!r} on first run, start the S3 gateway and mount the "
                         "store in the foreground. Ctrl-C flushes, unmounts and stops both.")
    p.add_argument("--mnt", default="./mnt", help="mount point (default ./mnt, created)")
    p.add_argument("--mount-metrics-listen", type=parse_listen, metavar="HOST:PORT",
                   help="serve the mount's Prometheus /metrics here (off by default; "
                   "--metrics-listen is the gateway's)")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9000),
                   metavar="HOST:PORT", help="the S3 gateway's address (default 127.0.0.1:9000)")
    p.set_defaults(func=cmd_up)
    p = verbs.add_parser("gateway", parents=[common, gateway_opts],
                         help="serve the store over S3 (HTTP)",
                         description="Serve the store as S3: top-level directories are "
                         "buckets, files are objects. Requests are signed (SigV4) with keys "
                         "from `vfsd user add`. Runs until SIGTERM/SIGINT.")
    p.set_defaults(func=cmd_gateway)
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9000),
                   metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:9000; "
                   "binding beyond loopback must be asked for explicitly)")
    pool = verbs.add_parser("pool", help="the storage pool: its quota",
                            description="The pool is what the store may use on disk: a quota, "
                            "else the backing file system's free space. Writes past it fail "
                            "with ENOSPC on the mount and a clean S3 error, leaving nothing "
                            "half-written.")
    pool_verbs = pool.add_subparsers(dest="pool_verb", metavar="VERB", required=True,
                                     parser_class=Parser)
    p = verb(pool_verbs, "set", cmd_pool_set, "set or clear the pool's quota")
    p.add_argument("--quota", type=quota_arg, required=True, metavar="SIZE",
                   help="e.g. 500G, or 'none' for the backing disk's free space")
    p = verb(verbs, "gc", cmd_gc, "give back the space of deleted and overwritten data",
             "Retire segments that hold no live chunk, compact mostly-dead ones, delete "
             "retired segment files once their grace period is over, and trim change-log "
             "entries older than an hour (the newest 10,000 stay). A mounted store does "
             "this in the background too.")
    p.add_argument("--grace", type=duration_arg, default=5.0, metavar="SECONDS",
                   help="how long a retired segment stays readable (default 5s)")
    p.add_argument("--wait", action="store_true",
                   help="wait out the grace period and delete what this pass retired")

    user = verbs.add_parser("user", help="S3 users: add, ls, rm")
    user_verbs = user.add_subparsers(dest="user_verb", metavar="VERB", required=True,
                                     parser_class=Parser)
    p = verb(user_verbs, "add", cmd_user_add, "create a user and print its new key pair",
             json=True)
    p.add_argument("name")
    verb(user_verbs, "ls", cmd_user_ls, "list users (no secrets)", json=True)
    p = verb(user_verbs, "rm", cmd_user_rm, "delete a user")
    p.add_argument("name")
    return parser
