"""Run the test guest (scripts/build-test-guest) under QEMU with a deadline and read its console.

The guest's /init prints marker lines on the serial console, which QEMU writes to a file:
`VFSD-READY <release>` once modules are loaded, whatever the guest script prints (e.g.
`VFSD-SYNCED n`), then `VFSD-OK exit 0` or `VFSD-FAIL exit <status>`, and `VFSD-POWEROFF`.
The script reaches the guest through fw_cfg (`opt/vfsd/script`), so it has no length limit.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from vfsd.qemu import qemu_command

# quiet: kernel messages below warnings stay off the console, so they cannot split our lines.
APPEND = "console=ttyS0,115200 panic=-1 quiet"
MARKER = re.compile(r"VFSD-[A-Z]+(?: .*)?$")


@dataclass(frozen=True)
class Guest:
    """The built guest: kernel and initramfs."""
    kernel: Path
    initrd: Path


class GuestFailed(AssertionError):
    pass


class GuestRun:
    """One QEMU process running a guest script; always killed and reaped by `close`."""

    def __init__(self, guest: Guest, workdir: Path, script: str, vm_dir: Path, name: str,
                 disks: list[Path], *, label: str = "run", memory: int = 256 << 20,
                 **qemu_options):
        workdir.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.console = workdir / f"{label}.console"
        self.script = workdir / f"{label}.sh"
        self.stderr_path = workdir / f"{label}.stderr"
        self.script.write_text(script)
        self.console.write_bytes(b"")
        self.args = qemu_command(
            vm_dir, name, memory, disks, accel="tcg", kernel=guest.kernel, initrd=guest.initrd,
            append=APPEND, serial=self.console, no_reboot=True,
            extra=["-fw_cfg", f"name=opt/vfsd/script,file={self.script}"], **qemu_options)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.seen: list[tuple[float, str]] = []  # (seconds since start, marker line)
        self._offset = 0
        self._partial = b""

    # --- process ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115  (closed by close())
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=subprocess.STDOUT)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def kill(self) -> None:
        """SIGKILL QEMU (a host crash as the guest sees it) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        if self.proc is not None:
            self._stderr.close()
        self.poll()

    # --- console ---------------------------------------------------------------------------

    def poll(self) -> list[str]:
        """Marker lines that arrived since the last poll (each stamped in `seen`)."""
        with open(self.console, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        now = time.monotonic() - self.started
        new = []
        for raw in lines:
            line = raw.decode(errors="replace").strip("\r")
            match = MARKER.search(line)
            if match:
                self.seen.append((now, match.group(0)))
                new.append(match.group(0))
        return new

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def markers(self, word: str) -> list[str]:
        """The detail of every `VFSD-<word> <detail>` line seen so far."""
        self.poll()
        prefix = f"VFSD-{word}"
        return [line[len(prefix):].strip() for _t, line in self.seen
                if line == prefix or line.startswith(prefix + " ")]

    def time_of(self, word: str) -> float:
        prefix = f"VFSD-{word}"
        return next(t for t, line in self.seen if line.split(" ", 1)[0] == prefix)

    def describe(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        tail = "\n".join(self.text().splitlines()[-40:])
        return (f"[{self.label}] qemu: {' '.join(self.args)}\n--- qemu output ---\n{stderr}"
                f"--- console (last 40 lines) ---\n{tail}")

    def wait_for(self, word: str, timeout: float, count: int = 1) -> list[str]:
        """Poll the console until `count` VFSD-<word> lines arrived; fail on a deadline, on
        VFSD-FAIL, or when QEMU exits first."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.markers(word)
            if len(found) >= count:
                return found
            if word != "FAIL" and self.markers("FAIL"):
                raise GuestFailed(f"guest failed: {self.markers('FAIL')}\n{self.describe()}")
            if self.proc is not None and self.proc.poll() is not None:
                self.poll()
                if len(self.markers(word)) >= count:
                    return self.markers(word)
                raise GuestFailed(f"QEMU exited ({self.proc.returncode}) before "
                                  f"{count}× VFSD-{word}\n{self.describe()}")
            if time.monotonic() > deadline:
                raise GuestFailed(f"no {count}× VFSD-{word} within {timeout:.0f} s\n"
                                  f"{self.describe()}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> float:
        """Wait for a clean run: VFSD-OK, then QEMU exiting by itself (the guest powers off).
        Returns the run's duration in seconds."""
        self.wait_for("OK", timeout)
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(5.0, self.started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise GuestFailed(f"QEMU did not exit after VFSD-OK\n{self.describe()}") from None
        assert self.proc.returncode == 0, self.describe()
        assert self.markers("POWEROFF"), self.describe()
        return time.monotonic() - self.started


def run_guest(guest: Guest, workdir: Path, script: str, vm_dir: Path, name: str,
              disks: list[Path], timeout: float = 90, **options) -> GuestRun:
    """Boot, run `script`, power off; fail with the console's tail if it does not end OK."""
    with GuestRun(guest, workdir, script, vm_dir, name, disks, **options) as run:
        run.finish(timeout)
    return run
