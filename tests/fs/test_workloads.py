"""Real programs on a real mount: tar, make + gcc, SQLite in WAL mode, concurrent writers, the
core writing behind the mount's back, and a 4 GiB dd under a small write-back cache."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount, wait_for

from vfsd.store import Store

CHUNK = 64 * 1024
SEED = int(os.environ.get("VFSD_TEST_SEED", random.randrange(1 << 32)))


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False,
                            **kwargs)
    assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(autouse=True)
def show_seed() -> None:
    print(f"random seed {SEED} (rerun with VFSD_TEST_SEED={SEED})")  # shown when a test fails


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def nonzero_bytes(path: Path) -> int:
    """Bytes in chunks that are not all zeros: what a thin store keeps of the file."""
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if chunk.count(0) != len(chunk):
                total += len(chunk)
    return total


# --- (a) tar ---------------------------------------------------------------------------------

def tree(root: Path) -> dict[str, os.stat_result]:
    """Relative path -> lstat of everything below root, minus site-packages and __pycache__."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "__pycache__")]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.lstat()
    return out


@pytest.mark.timeout(240)
def test_untar_python_stdlib(mnt: Path, tmp_path: Path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tarball = tmp_path / "stdlib.tar"
    run(["tar", "-cf", tarball, "--exclude=site-packages", "--exclude=__pycache__",
         "-C", stdlib.parent, stdlib.name])
    run(["tar", "-xf", tarball, "-C", mnt], timeout=200)

    source, copy = tree(stdlib), tree(mnt / stdlib.name)
    assert sorted(copy) == sorted(source)
    files = 0
    apparent = nonzero = 0
    for rel, src in source.items():
        dst = copy[rel]
        assert stat.S_IFMT(dst.st_mode) == stat.S_IFMT(src.st_mode), rel
        assert stat.S_IMODE(dst.st_mode) == stat.S_IMODE(src.st_mode), rel
        assert int(dst.st_mtime) == int(src.st_mtime), rel  # tar keeps whole seconds
        if stat.S_ISLNK(src.st_mode):
            assert os.readlink(mnt / stdlib.name / rel) == os.readlink(stdlib / rel), rel
        elif stat.S_ISREG(src.st_mode):
            files += 1
            assert dst.st_size == src.st_size, rel
            assert sha256(mnt / stdlib.name / rel) == sha256(stdlib / rel), rel
            kept = nonzero_bytes(stdlib / rel)
            assert dst.st_blocks == (kept + 511) // 512, f"{rel}: st_blocks {dst.st_blocks}"
            apparent += src.st_size
            nonzero += kept
    assert files > 1000

    du_apparent = int(run(["du", "-s", "-B1", "--apparent-size", mnt / stdlib.name])
                      .stdout.split()[0])
    du_used = int(run(["du", "-s", "-B1", mnt / stdlib.name]).stdout.split()[0])
    dirs_apparent = sum(st.st_size for st in copy.values() if stat.S_ISDIR(st.st_mode))
    assert du_apparent == apparent + dirs_apparent + (mnt / stdlib.name).stat().st_size
    assert nonzero <= du_used <= nonzero + 512 * len(copy), (du_used, nonzero)


# --- (b) make --------------------------------------------------------------------------------

PROJECT = {
    "util.h": "int answer(void);\n",
    "util.c": '#include "util.h"\nint answer(void) { return 42; }\n',
    "main.c": textwrap.dedent("""\
        #include <stdio.h>
        #include "util.h"
        int main(void) { printf("answer %d\\n", answer()); return 0; }
        """),
    "Makefile": textwrap.dedent("""\
        prog: main.o util.o
        \tgcc -o prog main.o util.o
        main.o: main.c util.h
        \tgcc -c main.c
        util.o: util.c util.h
        \tgcc -c util.c
        """),
}


@pytest.mark.timeout(60)
def test_make_rebuilds_only_what_changed(mnt: Path):
    src = mnt / "proj"
    src.mkdir()
    for name, text in PROJECT.items():
        (src / name).write_text(text)

    out = run(["make"], cwd=src).stdout
    assert "gcc -c main.c" in out and "gcc -c util.c" in out and "gcc -o prog" in out
    assert run(["./prog"], cwd=src).stdout == "answer 42\n"
    assert subprocess.run(["make", "-q"], cwd=src, check=False).returncode == 0, "out of date"

    mtimes = {n: (src / n).stat().st_mtime_ns for n in ("main.o", "util.o", "prog")}
    os.utime(src / "util.c")  # touch
    assert (src / "util.c").stat().st_mtime_ns > mtimes["util.o"]
    out = run(["make"], cwd=src).stdout
    assert "gcc -c util.c" in out and "gcc -o prog" in out, out
    assert "main.c" not in out, f"main.o was rebuilt though main.c did not change:\n{out}"
    assert (src / "main.o").stat().st_mtime_ns == mtimes["main.o"]
    assert (src / "util.o").stat().st_mtime_ns > mtimes["util.o"]
    assert (src / "prog").stat().st_mtime_ns > mtimes["prog"]
    assert subprocess.run(["make", "-q"], cwd=src, check=False).returncode == 0

    # A real edit: the new binary runs the new code.
    (src / "util.c").write_text('#include "util.h"\nint answer(void) { return 43; }\n')
    out = run(["make"], cwd=src).stdout
    assert "main.c" not in out
    assert run(["./prog"], cwd=src).stdout == "answer 43\n"


# --- (c) SQLite --------------------------------------------------------------------------------

def check_db(path: Path, model: dict[int, tuple[str, int]]) -> None:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == len(model)
        rows = {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, v, n FROM t")}
        assert rows == model
    finally:
        db.close()


@pytest.mark.timeout(120)
def test_sqlite_wal_thousands_of_transactions(store_path: Path, tmp_path: Path):
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt).start()
    try:
        (mnt / "db").mkdir()
        path = mnt / "db" / "test.sqlite"
        db = sqlite3.connect(path, isolation_level=None)
        try:
            assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER)")
            db.execute("CREATE INDEX t_n ON t (n)")
            model: dict[int, tuple[str, int]] = {}
            next_id = 1
            for _ in range(3000):
                db.execute("BEGIN")
                for _ in range(rng.randint(1, 4)):
                    choice = rng.random()
                    if choice < 0.6 or not model:
                        row = ("x" * rng.randrange(2000), rng.randrange(1 << 30))
                        db.execute("INSERT INTO t (id, v, n) VALUES (?, ?, ?)", (next_id, *row))
                        model[next_id] = row
                        next_id += 1
                    elif choice < 0.9:
                        key = rng.choice(list(model))
                        row = (model[key][0] + "y", rng.randrange(1 << 30))
                        db.execute("UPDATE t SET v = ?, n = ? WHERE id = ?", (*row, key))
                        model[key] = row
                    else:
                        key = rng.choice(list(model))
                        db.execute("DELETE FROM t WHERE id = ?", (key,))
                        del model[key]
                db.execute("COMMIT")
        finally:
            db.close()
        check_db(path, model)

        m.stop()
        m = Mount(store_path, mnt).start()
        check_db(path, model)
    finally:
        m.stop()


SQLITE_WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA synchronous=FULL")
for i in range(int(sys.argv[2]), 1 << 30):
    db.execute("INSERT INTO t (id, v, n) VALUES (?, ?, ?)", (i, "z" * (i % 3000), i))
    print(i, flush=True)  # committed: fsync of the WAL returned
"""


@pytest.mark.timeout(120)
def test_sqlite_wal_commits_survive_sigkill(store_path: Path, tmp_path: Path):
    """SQLite's own durability contract (synchronous=FULL) through a daemon crash."""
    rng = random.Random(SEED)
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt).start()
    writer = None
    try:
        path = mnt / "crash.sqlite"
        db = sqlite3.connect(path, isolation_level=None)
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER)")
        db.close()
        for round_no in range(2):
            start = 1 + round_no * 1_000_000
            writer = subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(path), str(start)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            target, committed = rng.randint(20, 200), []
            while len(committed) < target:
                line = writer.stdout.readline()
                assert line, f"the SQLite writer died: {writer.stderr.read()}"
                committed.append(int(line))
            m.kill()
            committed += [int(x) for x in writer.stdout.read().split()]
            writer.wait(timeout=30)
            m = Mount(store_path, mnt).start()
            db = sqlite3.connect(path)
            try:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                ids = {r[0] for r in db.execute("SELECT id FROM t WHERE id >= ?", (start,))}
            finally:
                db.close()
            lost = sorted(set(committed) - ids)
            assert not lost, f"{len(lost)} committed transactions lost, first {lost[:5]}"
            assert ids <= set(committed) | {max(committed) + 1}
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        m.stop()


# --- (d) two writers at once ---------------------------------------------------------------------

PATTERN_WRITER = """
import os, random, sys, time
path, seed, piece, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = random.Random(seed).randbytes(64 << 20)
while not os.path.exists(go):
    time.sleep(0.005)
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
for at in range(0, len(data), piece):
    assert os.pwrite(fd, data[at:at + piece], at) == len(data[at:at + piece])
os.close(fd)
"""


@pytest.mark.timeout(180)
def test_two_processes_write_64m_each(store_path: Path, tmp_path: Path):
    """At once, through a cache a quarter of their size: writers wait for room while the
    flusher empties the other file's chunks."""
    go = tmp_path / "go"
    m = Mount(store_path, tmp_path / "mnt", "--cache-size", "32M").start()
    mnt = m.path
    jobs = {"one": (SEED, 100_000), "two": (SEED + 1, 1 << 20)}  # unaligned vs aligned writes
    procs = {name: subprocess.Popen([sys.executable, "-c", PATTERN_WRITER, str(mnt / name),
                                     str(seed), str(piece), str(go)], stderr=subprocess.PIPE)
             for name, (seed, piece) in jobs.items()}
    try:
        go.touch()
        for name, proc in procs.items():
            assert proc.wait(timeout=60) == 0, f"writer {name}: {proc.stderr.read().decode()}"
        for name, (seed, _piece) in jobs.items():
            want = hashlib.sha256(random.Random(seed).randbytes(64 << 20)).hexdigest()
            assert (mnt / name).stat().st_size == 64 << 20
            assert sha256(mnt / name) == want, f"{name} through the mount"
            with Store.open(store_path) as store:
                got = hashlib.sha256(store.read_file(name)).hexdigest()
            assert got == want, f"{name} in the core"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        m.stop()


# --- (e) the core changes things behind the mount's back ----------------------------------------

def core(store: Path, code: str) -> None:
    """Run `code` with `s` = the store opened through the core, in another process."""
    script = f"from vfsd.store import Store\ns = Store.open({str(store)!r})\n{code}\ns.close()\n"
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@pytest.mark.timeout(60)
def test_core_changes_show_on_the_mount_within_a_second(mnt: Path, store_path: Path):
    rng = random.Random(SEED)
    (mnt / "ext").mkdir()
    assert os.listdir(mnt / "ext") == []
    assert not (mnt / "ext" / "new").exists()

    # A new file.
    data = rng.randbytes(300_000)
    core(store_path, f"s.write_file('ext/new', {data!r})")
    wait_for(lambda: read_or_none(mnt / "ext" / "new") == data, 1, "the new file on the mount")
    assert os.listdir(mnt / "ext") == ["new"]

    # An existing file, read (so in the page cache), changed in place at the same size.
    cached = bytearray(rng.randbytes(256 * 1024))
    (mnt / "ext" / "cached").write_bytes(cached)
    for _ in range(2):
        assert (mnt / "ext" / "cached").read_bytes() == cached
    patch = rng.randbytes(5000)
    core(store_path, f"s.write(s.resolve('ext/cached').ino, 70000, {patch!r})")
    cached[70000:75000] = patch
    wait_for(lambda: (mnt / "ext" / "cached").read_bytes() == cached, 1,
             "the core's write to a cached file on the mount")

    # The same, but size and mtime unchanged: only the change log can tell the kernel.
    assert (mnt / "ext" / "cached").read_bytes() == cached
    patch = rng.randbytes(5000)
    core(store_path, "ino = s.resolve('ext/cached').ino\n"
                     "mtime = s.getattr(ino).mtime_ns\n"
                     f"s.write(ino, 130000, {patch!r})\n"
                     "s.setattr(ino, mtime_ns=mtime)")
    cached[130000:135000] = patch
    wait_for(lambda: (mnt / "ext" / "cached").read_bytes() == cached, 1,
             "a same-size, same-mtime change through the core on the mount")

    # A delete.
    assert (mnt / "ext" / "new").stat().st_size == len(data)
    core(store_path, "s.unlink(s.resolve('ext').ino, b'new')")
    wait_for(lambda: not (mnt / "ext" / "new").exists(), 1, "the deleted file to go")
    assert os.listdir(mnt / "ext") == ["cached"]


@pytest.mark.timeout(60)
def test_changes_trimmed_before_the_mount_read_them_still_show(mount: Mount, store_path: Path):
    """The change log is trimmed (vfsd/store/changelog.py). A mount stopped for longer than
    the log keeps entries finds a gap in it and must invalidate everything."""
    mnt = mount.path
    rng = random.Random(SEED)
    cached = bytearray(rng.randbytes(256 * 1024))
    (mnt / "cached").write_bytes(cached)
    for _ in range(2):
        assert (mnt / "cached").read_bytes() == cached
    time.sleep(1.5)  # past a commit interval: the daemon holds no write transaction when stopped
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGSTOP)
    try:
        # Size and mtime unchanged: only the change log could tell the kernel, and its entry
        # is trimmed before the mount reads it.
        patch = rng.randbytes(5000)
        core(store_path, "import time\n"
                         "from vfsd.store import changelog\n"
                         "ino = s.resolve('cached').ino\n"
                         "mtime = s.getattr(ino).mtime_ns\n"
                         f"s.write(ino, 130000, {patch!r})\n"
                         "s.setattr(ino, mtime_ns=mtime)\n"
                         "s.write_file('later', b'x')\n"
                         "changelog.trim(s.env, time.time_ns() // 1_000_000 + 1, retain_ms=0,"
                         " keep_newest=1)")
    finally:
        mount.proc.send_signal(signal.SIGCONT)
    cached[130000:135000] = patch
    wait_for(lambda: (mnt / "cached").read_bytes() == cached, 2,
             "a change whose log entry was trimmed unread, on the mount")
    assert "event=change-log-gap" in mount.output()


# --- (f) 4 GiB, and random small writes, through a 256 MiB cache ---------------------------------

CACHE_BOUND_KIB = (256 + 150) * 1024  # the bound: the cache size + 150 MiB


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """Samples the daemon's RSS every 50 ms while the block runs; afterwards the list holds
    the samples, the peak (VmHWM, reset on entry: what the block made) last."""
    samples: list[int] = []
    done = threading.Event()
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (proc(5))

    def sample() -> None:
        while not done.is_set():
            try:
                samples.append(rss_kib(pid))
            except OSError:
                return
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()
        with contextlib.suppress(OSError):  # a daemon gone: the block's own error says so
            samples.append(rss_kib(pid, "VmHWM"))


def assert_within_cache_bound(samples: list[int]) -> None:
    """`peak_rss`'s samples: enough of them, and none at or past CACHE_BOUND_KIB."""
    peak = max(samples)
    print(f"daemon RSS: peak {peak // 1024} MiB over {len(samples)} samples")
    assert len(samples) > 20
    assert peak < CACHE_BOUND_KIB, (f"daemon RSS peaked at {peak // 1024} MiB "
                                    f"(bound {CACHE_BOUND_KIB // 1024})")


def pool_used(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bavail) * st.f_frsize


def segment_bytes(store: Path) -> int:
    total = 0
    for path in (store / "segments").iterdir():
        with contextlib.suppress(FileNotFoundError):  # gc may delete it meanwhile
            total += path.stat().st_size
    return total


@pytest.mark.timeout(240)
def test_4g_dd_stays_within_the_cache_bound(store_path: Path, tmp_path: Path):
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--cache-size", "256M").start()
    try:
        pid = m.proc.pid
        # The pool's used space (statfs blocks - available), and the store's segment files:
        # unlike the disk's free space, neither moves when other processes use the disk.
        before, segments_before = pool_used(mnt), segment_bytes(store_path)
        with peak_rss(pid) as samples:
            run(["dd", "if=/dev/urandom", f"of={mnt / 'big'}", "bs=1M", "count=4096",
                 "conv=fsync", "status=none"], timeout=200)
        assert_within_cache_bound(samples)
        assert (mnt / "big").stat().st_size == 4 << 30
        used = pool_used(mnt) - before
        assert used >= 3.5 * (1 << 30), f"statvfs shows only {used >> 20} MiB used by 4 GiB"
        assert segment_bytes(store_path) - segments_before >= 3.5 * (1 << 30)

        run(["rm", mnt / "big"])

        def gaps() -> tuple[int, int]:
            return pool_used(mnt) - before, segment_bytes(store_path) - segments_before

        try:
            # gc runs every 2 s and deletes retired segments after a 5 s grace; a loaded
            # machine (CI beside other work) stretches that.
            wait_for(lambda: max(gaps()) < 512 << 20, 30, "the space to come back")
        except TimeoutError:
            pool_gap, segment_gap = gaps()
            pytest.fail(f"after rm of a 4 GiB file, statvfs still shows {pool_gap >> 20} MiB "
                        f"more used than before the write, and the store's segment files "
                        f"{segment_gap >> 20} MiB more (gc gives the disk back)")
    finally:
        m.stop()
        shutil.rmtree(store_path / "segments", ignore_errors=True)  # do not keep 4 GiB in /tmp


@pytest.mark.timeout(240)
def test_random_small_writes_stay_within_the_cache_bound(store_path: Path, tmp_path: Path):
    """A 4 KiB write at a random offset leaves its chunk partly written, and the flush reads
    the stored chunk back to lay the write on it: those bases, and what the allocator keeps
    of them afterwards, are the daemon's memory too. A guest's random writes to its disk
    must not take the mount past the bound a sequential writer keeps."""
    mnt = tmp_path / "mnt"
    m = Mount(store_path, mnt, "--cache-size", "256M").start()
    try:
        disk = mnt / "disk"
        run(["dd", "if=/dev/urandom", f"of={disk}", "bs=1M", "count=512", "conv=fsync",
             "status=none"], timeout=120)
        rng = random.Random(SEED)
        blocks = [rng.randbytes(4096) for _ in range(64)]
        fd = os.open(disk, os.O_WRONLY)
        try:
            with peak_rss(m.proc.pid) as samples:
                # ~15 s here: several commit intervals, each a flush of thousands of chunks.
                for _ in range(150_000):
                    os.pwrite(fd, rng.choice(blocks), rng.randrange((512 << 20) // 4096) * 4096)
                os.fsync(fd)
        finally:
            os.close(fd)
        assert_within_cache_bound(samples)
    finally:
        m.stop()
        shutil.rmtree(store_path / "segments", ignore_errors=True)  # GiBs of rewrites
