"""The FUSE mount under fio, beside its ceiling (bench/memfs.py) and tmpfs, in one run.

    python bench/fs.py [--size 512M] [--runtime 5] [--dir DIR] [--json FILE]

Targets (all mounted at once, but measured one at a time: there are only two cores):

  vfsd    `python -m vfsd mount --foreground` of a fresh store (`python -m vfsd init`) made in
          a temporary directory on the disk (--dir, default: beside the repo), not in memory
  memfs   bench/memfs.py, started with the daemon's GLIBC_TUNABLES (vfsd/tunables.py) and given
          the readahead window vfsd sets on its own mount (vfsd/fs/readahead.py)
  tmpfs   `mount -t tmpfs`, made here and unmounted after
  plain   a directory beside the store on the disk (ext4 or whatever it is), for the
          4k write + fdatasync job only

Both FUSE daemons run on the same patched pyfuse3 and poll for the next request for the same
window before sleeping (--poll-us, default 100 as `vfsd mount`'s; 0: no polling). vfsd
polls only while its worker threads are idle; memfs has none.

Jobs (fio, ioengine=psync, numjobs=1, --size per file, --runtime seconds time_based):

  seq write 1M        rw=write bs=1M, a fresh file, end_fsync=1        buffered and direct=1
  seq read 1M         rw=read bs=1M                                    buffered and direct=1
  4k randread         rw=randread bs=4k                                buffered and direct=1
  4k randwrite        rw=randwrite bs=4k, overwriting laid-out data    buffered and direct=1
  4k write+fdatasync  rw=write bs=4k fdatasync=1, a fresh file

Jobs run in the order below, each on every target in turn before the next job, so a burst of
load from elsewhere on the machine hits the targets of one job alike (the ratios suffer less
than the absolute figures). The reads and the random writes share one file per target, laid out first by a fio write job
(bs=1M, end_fsync=1, not timed). Before each read job the page cache is written back and
dropped (echo 3 > /proc/sys/vm/drop_caches, as root) and fio invalidates the file's pages
(invalidate=1), so reads come from the target (for vfsd: its segment files on the disk), not
from a warm page cache. fio's buffers are scrambled per write (its default), so vfsd's dedup
finds nothing to share. Daemon CPU per I/O is read from /proc/PID/stat around each job.

Targets: seq write and read >= 60% of memfs, 4k random read/write >= 40% of memfs, 4k write +
fdatasync >= 50% of the plain file on the disk. Everything mounted is unmounted and every
daemon stopped, whatever happens; the temporary directory is removed. Exits 0 once it has
run (benchmarks report, tests check); 1 when it cannot run at all (no fio, not root).

Experiments: --vfsd-wrapper SCRIPT runs `python SCRIPT mount --foreground --store S MNT`
instead of `python -m vfsd ...` (a scratch script that patches vfsd, then calls
vfsd.cli.main); --no-tunables starts both daemons without GLIBC_TUNABLES (VFSD_NO_TUNABLES=1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# After the sys.path line above: the repo is not installed here.
from vfsd.fs import readahead
from vfsd.fs.polling import DEFAULT_POLL_US

MB = 1_000_000
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in UNITS and not text[-1:].isdigit() else ""
    try:
        value = int(float(text[: len(text) - len(unit)]) * UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < (1 << 20):
        raise argparse.ArgumentTypeError("the file size must be at least 1M")
    return value


def glibc_tunables() -> str:
    """The daemons' GLIBC_TUNABLES (vfsd/tunables.py imports nothing, pyfuse3 included)."""
    from vfsd.tunables import GLIBC_TUNABLES

    return GLIBC_TUNABLES


def fs_type(path: Path) -> str:
    """The mount type of the file system holding `path` (longest matching mount point)."""
    path = path.resolve()
    best, kind = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(
                    mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- jobs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    key: str
    label: str
    rw: str
    bs: str
    direct: bool = False
    fsync: bool = False
    shared: bool = False  # runs on the laid-out file (reads, random overwrites)

    @property
    def reads(self) -> bool:
        return "read" in self.rw

    @property
    def big(self) -> bool:
        return self.bs == "1M"  # shown in MB/s; the 4k jobs in IOPS

    @property
    def target(self) -> tuple[str, float]:
        if self.fsync:
            return "plain", 0.50
        return "memfs", 0.60 if self.big else 0.40


JOBS = [
    Job("seqwrite", "seq write 1M", "write", "1M"),
    Job("seqwrite-d", "seq write 1M direct", "write", "1M", direct=True),
    Job("seqread", "seq read 1M", "read", "1M", shared=True),
    Job("seqread-d", "seq read 1M direct", "read", "1M", direct=True, shared=True),
    Job("randread", "4k randread", "randread", "4k", shared=True),
    Job("randread-d", "4k randread direct", "randread", "4k", direct=True, shared=True),
    Job("randwrite", "4k randwrite", "randwrite", "4k", shared=True),
    Job("randwrite-d", "4k randwrite direct", "randwrite", "4k", direct=True, shared=True),
    Job("fsync", "4k write+fdatasync", "write", "4k", fsync=True),
]


@dataclass
class Result:
    bw: float = float("nan")  # bytes/s
    iops: float = float("nan")
    ios: int = 0
    cpu_us_per_io: float = float("nan")  # of the daemon, if any
    lat_us: float = float("nan")  # mean completion latency
    error: str = ""

    def value(self, job: Job) -> float:
        return self.bw / MB if job.big else self.iops


class Hung(RuntimeError):
    """fio did not finish in time: the target stopped answering."""


def fio(args: list[str], out: Path, timeout: float) -> dict:
    """Run fio with JSON output to a file; the parsed report, or raise with fio's stderr."""
    with contextlib.suppress(OSError):
        out.unlink()
    try:
        proc = subprocess.run(["fio", "--output-format=json", f"--output={out}", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Hung(f"fio did not finish within {timeout:.0f} s: the target hangs") from None
    try:
        text = out.read_text()
        report = json.loads(text[text.index("{"):])
    except (OSError, ValueError):
        raise RuntimeError(f"fio failed ({proc.returncode}): {proc.stdout.strip()[-300:]}"
                           ) from None
    if proc.returncode != 0 or report["jobs"][0].get("error"):
        raise RuntimeError(f"fio error {report['jobs'][0].get('error')}: "
                           f"{proc.stdout.strip()[-300:]}")
    return report


def common_args(name: str, path: Path, size: int) -> list[str]:
    return [f"--name={name}", f"--filename={path}", "--ioengine=psync", "--numjobs=1",
            f"--size={size}", "--fallocate=none", "--group_reporting"]


def layout(path: Path, size: int, out: Path) -> float:
    """Write the shared file sequentially with fio (not timed in the table); seconds taken."""
    t0 = time.monotonic()
    fio(common_args("layout", path, size) + ["--rw=write", "--bs=1M", "--end_fsync=1"], out,
        timeout=300)
    return time.monotonic() - t0


def run_job(job: Job, path: Path, size: int, runtime: int, out: Path,
            daemon_pid: int | None) -> Result:
    args = common_args(job.key, path, size) + [
        f"--rw={job.rw}", f"--bs={job.bs}", f"--direct={int(job.direct)}",
        "--time_based", f"--runtime={runtime}",
    ]
    if job.reads:
        args.append("--invalidate=1")
    elif job.fsync:
        args.append("--fdatasync=1")
    else:
        args.append("--end_fsync=1")  # count the flush of what a buffered write left dirty
    cpu0 = cpu_seconds(daemon_pid) if daemon_pid else float("nan")
    report = fio(args, out, timeout=runtime + 120)
    cpu1 = cpu_seconds(daemon_pid) if daemon_pid else float("nan")
    side = report["jobs"][0]["read" if job.reads else "write"]
    ios = int(side["total_ios"])
    clat = side.get("clat_ns", {}).get("mean", float("nan"))
    return Result(bw=float(side["bw_bytes"]), iops=float(side["iops"]), ios=ios,
                  cpu_us_per_io=(cpu1 - cpu0) * 1e6 / ios if ios else float("nan"),
                  lat_us=clat / 1000)


# --- targets -------------------------------------------------------------------------------

def mount_device(path: Path) -> str | None:
    """"major:minor" of the file system mounted exactly at `path`, from /proc/self/mountinfo
    (never stat(2): that blocks forever on a FUSE mount whose daemon stopped answering)."""
    return readahead.mount_device(Path(os.path.realpath(path)))


def match_readahead(target: str, mnt: Path) -> str:
    """vfsd widens its mount's readahead to 1 MiB (vfsd/fs/readahead.py); give memfs the same
    window, so the ceiling gets the same kernel help. Returns what the mount has, for the log."""
    device = mount_device(mnt)
    if device is None:
        return "unknown"
    knob = readahead.SYSFS_BDI / device / "read_ahead_kb"
    if target == "memfs":
        readahead.widen_readahead(Path(os.path.realpath(mnt)))
    else:
        wait_for(lambda: knob.read_text().strip() == str(readahead.READAHEAD_KIB), 5)
    return f"{knob.read_text().strip()} KiB"


def command(argv: list[str], timeout: float) -> bool:
    """Run a helper (fusermount3, umount); False if it failed or did not end in time."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=timeout) == 0
    except subprocess.TimeoutExpired:
        return False  # left behind: it ends when the connection is aborted below


class Daemon:
    """A foreground FUSE daemon in its own session; stop() always leaves nothing mounted."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], mnt: Path, log: Path):
        self.name, self.argv, self.env, self.mnt, self.log_path = name, argv, env, mnt, log
        self.proc: subprocess.Popen | None = None
        self.device: str | None = None

    def start(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        proc = self.proc
        if not wait_for(lambda: mount_device(self.mnt) or proc.poll() is not None, 60):
            raise RuntimeError(f"{self.name} did not mount within 60 s")
        if proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({proc.returncode}): {self.log_tail()}")
        self.device = mount_device(self.mnt)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def environ(self, name: str) -> str | None:
        try:
            raw = Path(f"/proc/{self.proc.pid}/environ").read_bytes()  # type: ignore[union-attr]
        except OSError:
            return None
        for item in raw.split(b"\0"):
            if item.startswith(name.encode() + b"="):
                return item.split(b"=", 1)[1].decode()
        return None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-600:]
        except OSError:
            return ""

    def abort(self) -> None:
        """Abort the FUSE connection: every request waiting on it fails at once."""
        if self.device and self.device.startswith("0:"):
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{self.device[2:]}/abort").write_text("1")

    def stop(self, hung: bool = False) -> None:
        proc = self.proc
        if hung:
            self.abort()
        if proc is not None and proc.poll() is None:
            # The normal way first: vfsd flushes its dirty chunks and exits on unmount.
            if not hung and not command(["fusermount3", "-u", str(self.mnt)], 60):
                self.abort()
            steps = [(None, 60)] if not hung else []
            for sig, wait in [*steps, (signal.SIGTERM, 15), (signal.SIGKILL, 15)]:
                if sig is not None:
                    if sig == signal.SIGKILL:
                        self.abort()
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if mount_device(self.mnt):
            self.abort()
            command(["fusermount3", "-u", "-z", str(self.mnt)], 30)
            wait_for(lambda: not mount_device(self.mnt), 10)
        self.proc = None


@contextlib.contextmanager
def tmpfs_mount(mnt: Path, size: int) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={3 * size + (64 << 20)},mode=0755",
                    "vfsd-bench-tmpfs", str(mnt)], check=True, capture_output=True, text=True)
    try:
        yield mnt
    finally:
        if not command(["umount", str(mnt)], 60):
            command(["umount", "-l", str(mnt)], 60)


@dataclass
class Target:
    name: str
    directory: Path
    daemon: Daemon | None = None
    shared: Path | None = None  # the laid-out file, once made

    @property
    def pid(self) -> int | None:
        return self.daemon.pid if self.daemon else None

    def dead(self) -> bool:
        return self.daemon is not None and self.daemon.pid is None


@dataclass
class Run:
    size: int
    runtime: int
    work: Path
    results: dict[tuple[str, str], list[Result]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cold: bool = True

    def lay_out(self, target: Target) -> None:
        path = target.directory / "shared.dat"
        try:
            took = layout(path, self.size, self.work / "fio.json")
        except RuntimeError as e:
            self.notes.append(f"{target.name}: layout failed: {e}")
            if isinstance(e, Hung) and target.daemon is not None:
                target.daemon.stop(hung=True)
            return
        target.shared = path
        print(f"  {target.name:<5} layout (not timed) {self.size / MB / took:9,.0f} MB/s",
              flush=True)

    def job(self, job: Job, target: Target) -> None:
        """One job on one target; a fresh file is removed after its job."""
        if job.shared and target.shared is None:
            return
        if target.dead():
            r = Result(error="the daemon died")
        else:
            path = target.shared if job.shared else target.directory / f"{job.key}.dat"
            assert path is not None
            if job.reads:
                self.cold = drop_caches() and self.cold
            try:
                r = run_job(job, path, self.size, self.runtime, self.work / "fio.json",
                            target.pid)
            except RuntimeError as e:
                r = Result(error=str(e))
                self.notes.append(f"{target.name} {job.label}: {e}")
                if isinstance(e, Hung) and target.daemon is not None:
                    target.daemon.stop(hung=True)  # later jobs skip it: "the daemon died"
            if not job.shared:
                with contextlib.suppress(OSError):
                    path.unlink()
        self.results.setdefault((job.key, target.name), []).append(r)
        shown = (f"{r.value(job):9,.0f} {'MB/s' if job.big else 'IOPS'}" if not r.error
                 else "error")
        print(f"  {target.name:<5} {job.label:<22} {shown}", flush=True)

    def median(self, key: str, name: str, job: Job) -> tuple[float, float]:
        """(median value, median daemon CPU µs per I/O) over the repeats that worked."""
        runs = [r for r in self.results.get((key, name), []) if not r.error]
        if not runs:
            return float("nan"), float("nan")
        return (statistics.median(r.value(job) for r in runs),
                statistics.median(r.cpu_us_per_io for r in runs))


# --- the report ----------------------------------------------------------------------------

def fmt(value: float, width: int, digits: int = 0) -> str:
    if math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>{width},.{digits}f}"


def table(run: Run, jobs: list[Job]) -> list[str]:
    cols = ["vfsd", "memfs", "tmpfs", "plain"]
    head = (f"{'job':<22} {'unit':<5} {'vfsd':>9} {'memfs':>9} {'tmpfs':>9} {'plain':>9} "
            f"{'v/memfs':>7} {'v/tmpfs':>7}  {'vfsd':>6} {'memfs':>6}  target")
    lines = [head, (f"{'':<22} {'':<5} {'':>9} {'':>9} {'':>9} {'':>9} {'':>7} {'':>7}  "
                    f"{'CPU µs/io':>13}"), "-" * (len(head) + 22)]
    for job in jobs:
        values, cpu = {}, {}
        for col in cols:
            values[col], cpu[col] = run.median(job.key, col, job)
        ratio_m = values["vfsd"] / values["memfs"] if values["memfs"] else float("nan")
        ratio_t = values["vfsd"] / values["tmpfs"] if values["tmpfs"] else float("nan")
        ref, want = job.target
        ratio = values["vfsd"] / values[ref] if values[ref] else float("nan")
        verdict = "n/a " if math.isnan(ratio) else "PASS" if ratio >= want else "MISS"
        lines.append(
            f"{job.label:<22} {'MB/s' if job.big else 'IOPS':<5} "
            + " ".join(fmt(values[c], 9) for c in cols)
            + f" {fmt(ratio_m, 7, 2)} {fmt(ratio_t, 7, 2)}  {fmt(cpu['vfsd'], 6)} "
              f"{fmt(cpu['memfs'], 6)}  {verdict} (>= {want:.0%} of {ref}"
            + (f": {ratio:.0%})" if not math.isnan(ratio) else ")"))
    return lines


# --- main ----------------------------------------------------------------------------------

def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def default_dir() -> Path:
    """A temporary directory on the repo's file system (the disk), preferring the system's."""
    repo_dev = os.stat(REPO).st_dev
    tmp = Path(tempfile.gettempdir())
    if os.stat(tmp).st_dev == repo_dev and fs_type(tmp) not in ("tmpfs", "ramfs"):
        return tmp
    return REPO.parent if os.access(REPO.parent, os.W_OK) else REPO


def start_target(name: str, work: Path, args: argparse.Namespace, vfsd_env: dict[str, str],
                 memfs_env: dict[str, str], tunables: str,
                 stack: contextlib.ExitStack) -> Target:
    """Mount one target; its teardown goes on `stack` (unmount, stop the daemon)."""
    if name == "plain":
        (work / "plain").mkdir()
        print(f"  plain: {work / 'plain'} ({fs_type(work)})", flush=True)
        return Target(name, work / "plain")
    if name == "tmpfs":
        mnt = stack.enter_context(tmpfs_mount(work / "mnt-tmpfs", args.size))
        print(f"  tmpfs: {mnt}", flush=True)
        return Target(name, mnt)
    if name == "vfsd":
        store = work / "store"
        subprocess.run([sys.executable, "-m", "vfsd", "init", "--store", str(store)],
                       check=True, capture_output=True, text=True, cwd=REPO)
        launcher = [str(args.vfsd_wrapper)] if args.vfsd_wrapper else ["-m", "vfsd"]
        daemon = Daemon("vfsd", [sys.executable, *launcher, "mount", "--foreground",
                                 "--poll-us", str(args.poll_us),
                                 "--store", str(store), str(work / "mnt-vfsd")],
                        vfsd_env, work / "mnt-vfsd", work / "vfsd-daemon.log")
    else:
        daemon = Daemon("memfs", [sys.executable, str(REPO / "bench/memfs.py"),
                                  "--poll-us", str(args.poll_us), str(work / "mnt-memfs")],
                        memfs_env, work / "mnt-memfs", work / "memfs-daemon.log")
    stack.callback(daemon.stop)
    daemon.start()
    got = daemon.environ("GLIBC_TUNABLES")
    # glibc cuts the variable short in /proc/PID/environ as it parses it.
    print(f"  {name}: pid {daemon.pid}, GLIBC_TUNABLES "
          + ("unset" if got is None
             else "as vfsd/tunables.py" if got and tunables.startswith(got) else repr(got))
          + f", readahead {match_readahead(name, daemon.mnt)}", flush=True)
    return Target(name, daemon.mnt, daemon)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"),
                        help="bytes per fio file (default 512M)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per job (default 5)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the temporary store and plain file go (default: a temp "
                             "directory on the repo's file system)")
    parser.add_argument("--targets", default="vfsd,memfs,tmpfs,plain",
                        help="comma-separated subset of vfsd,memfs,tmpfs,plain")
    parser.add_argument("--jobs", default=",".join(j.key for j in JOBS),
                        help="comma-separated subset of " + ",".join(j.key for j in JOBS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every job; the table shows medians (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--vfsd-wrapper", type=Path,
                        help="run this script instead of `-m vfsd` (experiments)")
    parser.add_argument("--no-tunables", action="store_true",
                        help="start both daemons without GLIBC_TUNABLES")
    parser.add_argument("--poll-us", type=int, default=DEFAULT_POLL_US,
                        help="both daemons' polling window before sleeping (default "
                        f"{DEFAULT_POLL_US}, `vfsd mount`'s; 0: no polling)")
    args = parser.parse_args(argv)
    targets = [t for t in ("vfsd", "memfs", "tmpfs", "plain") if t in args.targets.split(",")]
    jobs = [j for j in JOBS if j.key in args.jobs.split(",")]

    if shutil.which("fio") is None:
        print("fio is not installed (apt-get install fio)", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("run as root: the bench mounts tmpfs and drops the page cache", file=sys.stderr)
        return 1
    fio_version = subprocess.run(["fio", "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip()
    tunables = glibc_tunables()
    base = args.dir or default_dir()
    base.mkdir(parents=True, exist_ok=True)
    disk_kind = fs_type(base)
    work = Path(tempfile.mkdtemp(prefix=".vfsd-fsbench-", dir=base))
    run = Run(args.size, args.runtime, work)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    print(f"vfsd FUSE bench: {fio_version}, ioengine=psync, {args.size >> 20} MiB per file, "
          f"{args.runtime} s per job; kernel {os.uname().release}")
    print(f"disk: {work} ({disk_kind}); daemons "
          + ("without GLIBC_TUNABLES" if args.no_tunables else f"GLIBC_TUNABLES={tunables}"))
    if disk_kind in ("tmpfs", "ramfs"):
        print("warning: the store is in memory; the figures say nothing about the disk")
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.1f} before the start: other work on this "
              f"machine skews the figures (the CPU µs/io columns less so)")

    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    env.pop("VFSD_NO_TUNABLES", None)
    vfsd_env = dict(env, VFSD_NO_TUNABLES="1") if args.no_tunables else env
    if args.vfsd_wrapper and not args.no_tunables:
        # `vfsd mount` re-executes `python -m vfsd` to set the tunables, which would drop the
        # wrapper: start it with them set, as the re-exec would.
        vfsd_env = dict(env, GLIBC_TUNABLES=tunables)
    memfs_env = env if args.no_tunables else dict(env, GLIBC_TUNABLES=tunables)
    t_start = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            up: list[Target] = []
            print("mounting:", flush=True)
            for name in targets:
                try:
                    up.append(start_target(name, work, args, vfsd_env, memfs_env, tunables,
                                           stack))
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    detail = (getattr(e, "stderr", "") or "").strip()
                    run.notes.append(f"{name}: not measured: {e} {detail}".strip())
                    print(f"  {name}: not measured: {e} {detail}".strip(), flush=True)
            if any(j.shared for j in jobs):
                print("laying out the shared file (reads and random overwrites):", flush=True)
                for target in up:
                    if target.name != "plain":
                        run.lay_out(target)
            for rep in range(args.repeat):
                for job in jobs:
                    print(f"{job.label}" + (f" (round {rep + 1})" if args.repeat > 1 else "")
                          + ":", flush=True)
                    for target in up:
                        if target.name != "plain" or job.fsync:
                            run.job(job, target)
            for target in up:
                if target.dead():
                    run.notes.append(f"{target.name} died: {target.daemon.log_tail()}")
    except KeyboardInterrupt:
        print("interrupted: cleaned up", file=sys.stderr)
    finally:
        for mnt in work.glob("mnt-*"):  # nothing may stay mounted, whatever happened
            if mount_device(mnt):
                command(["fusermount3", "-u", "-z", str(mnt)], 30)
            if mount_device(mnt):
                command(["umount", "-l", str(mnt)], 30)
        left = [m for m in work.glob("mnt-*") if mount_device(m)]
        if left:  # never walk into a mount
            print(f"could not unmount {', '.join(map(str, left))}; left {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    for line in table(run, jobs):
        print(line)
    print(f"(MB = 10^6 bytes; 1M jobs in MB/s, 4k jobs in IOPS; plain = a file on the store's "
          f"disk ({disk_kind}); CPU µs/io = daemon CPU time / fio I/Os; both daemons poll "
          f"{args.poll_us} µs before sleeping; {time.monotonic() - t_start:.0f} s in all; load average {load_before:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after)")
    if not run.cold:
        run.notes.append("could not drop the page cache: reads may come from a warm cache")
    for note in run.notes:
        print("note:", note)
    if args.json:
        args.json.write_text(json.dumps({
            "size": args.size, "runtime": args.runtime, "disk": disk_kind,
            "tunables": not args.no_tunables, "poll_us": args.poll_us,
            "results": {f"{k}/{t}": [vars(r) for r in rs]
                        for (k, t), rs in run.results.items()},
            "notes": run.notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
