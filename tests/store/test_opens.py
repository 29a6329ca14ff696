"""Which processes have a file open (vfsd/store/opens.py): another process's hold is seen,
one's own is counted, and a holder that dies holds nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from vfsd.store.opens import Opens

HOLDER = """
import sys, time
from pathlib import Path
from vfsd.store.opens import Opens
opens = Opens(Path(sys.argv[1]))
for ino in map(int, sys.argv[2:]):
    opens.hold(ino)
print("held", flush=True)
time.sleep(60)
"""


def test_holds_of_other_processes_are_seen_and_die_with_them(tmp_path: Path) -> None:
    mine = Opens(tmp_path / "run")
    mine.hold(7)
    assert not mine.held_elsewhere(7)  # one's own hold is not "elsewhere"
    big = (1 << 62) + 5  # inode numbers are 64-bit
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), "7", "9",
                              str(big)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        assert mine.held_elsewhere(7) and mine.held_elsewhere(9) and mine.held_elsewhere(big)
        assert not mine.held_elsewhere(8) and not mine.held_elsewhere(10)
        mine.release(7)
        assert mine.held_elsewhere(7)  # theirs stays
        other.send_signal(signal.SIGKILL)
        other.wait()
        assert not mine.held_elsewhere(7) and not mine.held_elsewhere(big)
    finally:
        if other.poll() is None:
            other.kill()
        mine.close()


def test_holds_of_this_process_are_counted(tmp_path: Path) -> None:
    # Two GETs of one object in a gateway process, or a mount's open file during its own
    # gc pass: held until the last holder lets go.
    opens = Opens(tmp_path / "run")
    try:
        opens.hold(3)
        opens.hold(3)
        opens.release(3)
        assert opens.held(3) and not opens.held_elsewhere(3)
        opens.release(3)
        assert not opens.held(3)
        opens.release(3)  # one release too many changes nothing
        assert not opens.held(3)
    finally:
        opens.close()
