"""Running VMs: QEMU started on the VM's own files on the mount, stopped through QMP.

Runtime files live in STORE/run/vms/: NAME.pid, NAME.qmp (QMP socket) and NAME.console (the
serial console when not attached to the terminal). A VM whose disk is leased — open for
writing through the mount by a running QEMU — is not started twice.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vfsd import qemu
from vfsd.mounts import find_mountpoint
from vfsd.store import Store
from vfsd.store.errors import Busy, InvalidArgument, StoreError
from vfsd.store.leases import process_start_time
from vfsd.store.vms import Vms

RUN_DIR = Path("run") / "vms"


class NotMounted(StoreError):
    """The store has no live mount: QEMU needs the VM's files on one."""


@dataclass(frozen=True)
class VmRuntime:
    pidfile: Path
    qmp: Path
    console: Path

    @classmethod
    def of(cls, store: Store, name: str) -> VmRuntime:
        directory = store.config.path.resolve() / RUN_DIR
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / f"{name}.pid", directory / f"{name}.qmp",
                   directory / f"{name}.console")

    def running_pid(self) -> int | None:
        try:
            pid, start = (int(x) for x in self.pidfile.read_text().split())
        except (OSError, ValueError):
            return None
        return pid if process_start_time(pid) == start else None


def command(store: Store, name: str, accel: str = "auto", console: bool = False,
            kernel: Path | None = None, initrd: Path | None = None,
            append: str | None = None) -> list[str]:
    """The QEMU command line for VM `name`, on the store's live mount."""
    mountpoint = find_mountpoint(store.config.path)
    if mountpoint is None:
        raise NotMounted("the store is not mounted: run `vfsd mount MOUNTPOINT` (or vfsd up)")
    info = Vms(store).show(name)
    vm_dir = mountpoint / "vms" / name
    runtime = VmRuntime.of(store, name)
    # The raw extents, not the descriptors: QEMU's vmdk driver drops discards, so a guest's
    # TRIM would never give space back to the pool (a QA pass; tests/vm/test_guest_disk.py).
    disks = [Path(d.extent) for d in info.disks] + [Path(f"{name}.vswp")]
    try:
        resolved = qemu.choose_accel(accel)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    return qemu.qemu_command(
        vm_dir, name, info.memory, disks, firmware=info.firmware, accel=resolved,
        cache="none", discard="unmap", detect_zeroes="unmap",
        serial="stdio" if console else runtime.console, qmp_socket=runtime.qmp,
        formats=["raw"] * (len(info.disks) + 1),
        kernel=kernel, initrd=initrd, append=append,
    )


def leased_disks(store: Store, name: str) -> list[str]:
    info = Vms(store).show(name)
    busy = []
    for disk in info.disks:
        inode = store.resolve(f"vms/{name}/{disk.extent}")
        if store.leases.settled_holder(inode.ino) is not None:
            busy.append(disk.extent)
    return busy


def start(store: Store, name: str, accel: str = "auto", console: bool = False,
          kernel: Path | None = None, initrd: Path | None = None,
          append: str | None = None) -> int:
    """Start QEMU; returns its pid (with `console`, runs attached and returns its status)."""
    runtime = VmRuntime.of(store, name)
    if runtime.running_pid() is not None:
        raise Busy(f"VM {name} is already running (pid {runtime.running_pid()})")
    busy = leased_disks(store, name)
    if busy:
        raise Busy(f"VM {name}'s disk {busy[0]} is open for writing elsewhere "
                   "(a running VM?); refusing to start it twice")
    args = command(store, name, accel, console, kernel, initrd, append)
    if console:
        return subprocess.run(args, check=False).returncode
    runtime.qmp.unlink(missing_ok=True)
    with open(runtime.console.with_suffix(".log"), "ab") as log:  # QEMU keeps its own copy
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
    runtime.pidfile.write_text(f"{proc.pid} {process_start_time(proc.pid)}\n")
    deadline = time.monotonic() + 10
    while not runtime.qmp.exists():
        if proc.poll() is not None:
            _exited_at_once(runtime)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # The QMP socket is made before the machine (its RAM above all) is set up, and answered
    # only once it is: a VM QEMU cannot build dies after the socket appears.
    try:
        qmp(runtime.qmp, "query-status", timeout=30)
    except (OSError, ValueError):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return proc.pid  # alive: its monitor is only slow to answer
        _exited_at_once(runtime)
    return proc.pid


def _exited_at_once(runtime: VmRuntime) -> None:
    runtime.pidfile.unlink(missing_ok=True)
    log = runtime.console.with_suffix(".log").read_text(errors="replace").strip()
    raise StoreError(f"QEMU exited at once: {log.splitlines()[-1] if log else '?'}")


def qmp(socket_path: Path, command_name: str, timeout: float = 5.0) -> dict:
    """One QMP command (after the capabilities handshake)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        stream = sock.makefile("rw")
        stream.readline()  # greeting
        for request in ({"execute": "qmp_capabilities"}, {"execute": command_name}):
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if "return" in reply or "error" in reply:
                    break
        return reply


def state(store: Store, name: str) -> str:
    """"stopped", "running", or what QEMU says instead (paused, io-error: a guest stopped
    on a disk error, such as a full pool; `cont` over QMP resumes it once there is room)."""
    runtime = VmRuntime.of(store, name)
    if runtime.running_pid() is None:
        return "stopped"
    try:
        status = qmp(runtime.qmp, "query-status", timeout=1.0)
        return str(status["return"]["status"])
    except (OSError, ValueError, KeyError):  # QMP busy (a `vm stop`) or starting up
        return "running"


def stop(store: Store, name: str, timeout: float = 30.0) -> str:
    """ACPI power-off, then a hard stop after `timeout` seconds. Returns how QEMU ended:
    "powered-off" (the guest shut down within `timeout`: it wrote back what it had cached),
    "terminated" (SIGTERM: QEMU flushed and closed its disks, but whatever the guest still
    held in its own page cache is lost) or "killed" (SIGKILL, after 10 s more)."""
    Vms(store).show(name)  # NotFound for an unknown VM
    runtime = VmRuntime.of(store, name)
    pid = runtime.running_pid()
    if pid is None:
        raise InvalidArgument(f"VM {name} is not running")
    try:
        qmp(runtime.qmp, "system_powerdown")
    except (OSError, ValueError):
        pass
    deadline = time.monotonic() + timeout
    while process_start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    how = "powered-off"
    for signum, ending in ((signal.SIGTERM, "terminated"), (signal.SIGKILL, "killed")):
        # SIGTERM: QEMU closes its files cleanly
        if process_start_time(pid) is None:
            break
        os.kill(pid, signum)
        how = ending
        deadline = time.monotonic() + 10
        while process_start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    runtime.pidfile.unlink(missing_ok=True)
    return how


def shell_command(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)
