"""The core against a plain Python model, driven by a hypothesis state machine.

The model is a tree of `MDir` (name -> node) whose files are `MFile`s holding a bytearray; a hard
link is a second name for the same `MFile`, and a file unlinked while "still open" stays
readable by inode until released. Every step applies one call to both and compares the outcome:
success, or exactly the expected exception class (Linux's answer, except the few cases where
vfsd ranks two applicable errors differently, pinned in test_namespace.py). After every step
the whole tree is compared: each directory's listing (read in small pages) and link count, each
file's size, link count and full contents, and the chunk maps (a slot is stored exactly when its
contents are not all zeros; no body reaches past the end of its file). Teardown runs fsck.

Data steps (write, truncate, punch_hole, copy_range, replace, read, seek) use offsets and
lengths in chunk units plus a remainder (so unaligned heads and tails, multi-chunk spans, and
holes up to ~3 MiB), with random, all-zero, mostly-zero and repeated (dedup) contents. One run
uses 4 KiB chunks (many chunks cheaply), one the default 64 KiB.
"""

from __future__ import annotations

import random
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from vfsd.store import ROOT_INO, Store, fsck
from vfsd.store.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    StoreError,
)
from vfsd.store.records import CHUNK, INO_INDEX

# Some are valid bucket names, so top-level directories are sometimes buckets (key index).
NAMES = st.sampled_from([b"abc", b"xyz", b"Not_A_Bucket", b"q"])
NOREPLACE, EXCHANGE = 1, 2
MAX_ENTRIES = 14
PICK = st.integers(0, 1 << 16)

# A position in chunk units: (chunks, kind of remainder, raw random number).
CHUNKS = st.one_of(st.integers(0, 4), st.integers(0, 1 << 20))
REMAINDER = st.sampled_from(["zero", "one", "last", "random"])
SPAN = st.one_of(st.integers(0, 3), st.integers(0, 12))
KIND = st.sampled_from(["random", "random", "zeros", "mostly_zero", "repeat", "repeat"])


class MFile:
    def __init__(self, ino: int):
        self.ino = ino
        self.data = bytearray()


class MDir:
    def __init__(self, ino: int, parent: MDir | None):
        self.ino = ino
        self.parent = parent
        self.entries: dict[bytes, MFile | MDir] = {}


def is_ancestor(a: MDir, d: MDir | None) -> bool:
    """Whether `a` is `d` or one of its ancestors."""
    while d is not None:
        if d is a:
            return True
        d = d.parent
    return False


class StoreMachine(RuleBasedStateMachine):
    chunk_size = 4096
    max_offset = 3 << 20

    def __init__(self, base: Path):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=base))
        self.store = Store.init(self.dir / "store", chunk_size=self.chunk_size)
        self.root = MDir(ROOT_INO, None)
        self.orphans: list[MFile] = []  # unlinked while "still open": readable by ino
        self.freed: list[int] = []  # inodes that must be gone
        cs = self.chunk_size
        self.patterns = [random.Random(k).randbytes(cs) for k in range(3)]

    def teardown(self) -> None:
        try:
            report = fsck.check(self.store)
            assert report.clean, "fsck found damage:\n" + "\n".join(report.damage)
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- the model ---------------------------------------------------------------------------

    def dirs(self) -> list[MDir]:
        out, todo = [], [self.root]
        while todo:
            d = todo.pop(0)
            out.append(d)
            todo.extend(n for _, n in sorted(d.entries.items()) if isinstance(n, MDir))
        return out

    def entries(self) -> list[tuple[MDir, bytes]]:
        return [(d, name) for d in self.dirs() for name in sorted(d.entries)]

    def links(self) -> dict[int, int]:
        count: dict[int, int] = {}
        for d in self.dirs():
            for node in d.entries.values():
                if isinstance(node, MFile):
                    count[node.ino] = count.get(node.ino, 0) + 1
        return count

    def files(self) -> list[MFile]:
        seen: dict[int, MFile] = {}
        for d in self.dirs():
            for _, node in sorted(d.entries.items()):
                if isinstance(node, MFile):
                    seen.setdefault(node.ino, node)
        for f in self.orphans:
            seen.setdefault(f.ino, f)
        return list(seen.values())

    def drop_name(self, node: MFile | MDir, still_open: bool) -> None:
        """`node` just lost a name: free it, or park it, if that was its last."""
        if isinstance(node, MDir):
            self.freed.append(node.ino)
        elif node.ino not in self.links():
            if still_open:
                self.orphans.append(node)
            else:
                self.freed.append(node.ino)

    def position(self, chunks: int, remainder: str, raw: int, limit: int) -> int:
        cs = self.chunk_size
        within = {"zero": 0, "one": 1, "last": cs - 1, "random": raw % cs}[remainder]
        return (chunks % (limit // cs + 1)) * cs + within

    def contents(self, kind: str, length: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if kind == "random":
            return rng.randbytes(length)
        if kind == "zeros":
            return bytes(length)
        if kind == "mostly_zero":
            buf = bytearray(length)
            for _ in range(min(length, 3)):
                buf[rng.randrange(length)] = rng.randrange(1, 256)
            return bytes(buf)
        block = self.patterns[seed % len(self.patterns)]
        return (block * (length // len(block) + 1))[:length]

    def expect(self, expected: type[StoreError] | None, fn, *args, **kwargs):
        """Call `fn`; it must succeed if `expected` is None, else raise exactly `expected`."""
        try:
            result = fn(*args, **kwargs)
        except StoreError as e:
            assert expected is not None, f"{fn.__name__}{args} raised {e!r}, expected success"
            assert type(e) is expected, f"{fn.__name__}{args} raised {e!r}, expected {expected}"
            return None
        assert expected is None, f"{fn.__name__}{args} succeeded, expected {expected.__name__}"
        return result

    # --- namespace rules ---------------------------------------------------------------------

    @initialize(name=NAMES, seed=PICK)
    def first_file(self, name: bytes, seed: int) -> None:
        """Start with one non-empty file so data rules are enabled from the first step."""
        inode = self.store.create(ROOT_INO, name)
        node = self.root.entries[name] = MFile(inode.ino)
        node.data[:] = self.contents("random", 3 * self.chunk_size + 5, seed)
        self.store.write(inode.ino, 0, node.data)

    def pick_entry(self, existing: bool, d: int, name: bytes) -> tuple[MDir, bytes]:
        """Mostly an existing entry (so removals succeed), else any directory and name."""
        entries = self.entries()
        if existing and entries:
            return entries[d % len(entries)]
        dirs = self.dirs()
        return dirs[d % len(dirs)], name

    @precondition(lambda self: len(self.entries()) < MAX_ENTRIES)
    @rule(d=PICK, name=NAMES)
    def create(self, d: int, name: bytes) -> None:
        dirs = self.dirs()
        parent = dirs[d % len(dirs)]
        expected = Exists if name in parent.entries else None
        inode = self.expect(expected, self.store.create, parent.ino, name)
        if expected is None:
            parent.entries[name] = MFile(inode.ino)

    @precondition(lambda self: len(self.entries()) < MAX_ENTRIES)
    @rule(d=PICK, name=NAMES)
    def mkdir(self, d: int, name: bytes) -> None:
        dirs = self.dirs()
        parent = dirs[d % len(dirs)]
        expected = Exists if name in parent.entries else None
        inode = self.expect(expected, self.store.mkdir, parent.ino, name)
        if expected is None:
            parent.entries[name] = MDir(inode.ino, parent)

    @precondition(lambda self: len(self.entries()) < MAX_ENTRIES and self.entries())
    @rule(src=PICK, d=PICK, name=NAMES)
    def link(self, src: int, d: int, name: bytes) -> None:
        entries, dirs = self.entries(), self.dirs()
        sp, sn = entries[src % len(entries)]
        node = sp.entries[sn]
        parent = dirs[d % len(dirs)]
        # vfsd refuses a directory before looking at the new name; Linux says EEXIST first
        # (pinned in test_namespace.py as a known deviation).
        if isinstance(node, MDir):
            expected: type[StoreError] | None = PermissionDenied
        elif name in parent.entries:
            expected = Exists
        else:
            expected = None
        self.expect(expected, self.store.link, node.ino, parent.ino, name)
        if expected is None:
            parent.entries[name] = node

    @rule(existing=st.booleans(), d=PICK, name=NAMES, still_open=st.booleans())
    def unlink(self, existing: bool, d: int, name: bytes, still_open: bool) -> None:
        parent, name = self.pick_entry(existing, d, name)
        node = parent.entries.get(name)
        if node is None:
            expected: type[StoreError] | None = NotFound
        elif isinstance(node, MDir):
            expected = IsADirectory
        else:
            expected = None
        self.expect(expected, self.store.unlink, parent.ino, name, still_open=still_open)
        if expected is None:
            del parent.entries[name]
            self.drop_name(node, still_open)

    @rule(existing=st.booleans(), d=PICK, name=NAMES)
    def rmdir(self, existing: bool, d: int, name: bytes) -> None:
        parent, name = self.pick_entry(existing, d, name)
        node = parent.entries.get(name)
        if node is None:
            expected: type[StoreError] | None = NotFound
        elif not isinstance(node, MDir):
            expected = NotADirectory
        elif node.entries:
            expected = NotEmpty
        else:
            expected = None
        self.expect(expected, self.store.rmdir, parent.ino, name)
        if expected is None:
            del parent.entries[name]
            self.drop_name(node, False)

    @precondition(lambda self: self.entries())
    @rule(src=PICK, d=PICK, name=NAMES, flags=st.sampled_from([0, 0, NOREPLACE, EXCHANGE]),
          still_open=st.booleans())
    def rename(self, src: int, d: int, name: bytes, flags: int, still_open: bool) -> None:
        entries, dirs = self.entries(), self.dirs()
        sp, sn = entries[src % len(entries)]
        dp = dirs[d % len(dirs)]
        self.do_rename(sp, sn, dp, name, flags, still_open)

    @precondition(lambda self: len(self.entries()) >= 2)
    @rule(src=PICK, dst=PICK, flags=st.sampled_from([0, NOREPLACE, EXCHANGE]),
          still_open=st.booleans())
    def rename_onto_existing(self, src: int, dst: int, flags: int, still_open: bool) -> None:
        """Rename over a name that exists: replace, NOREPLACE refusal, exchange."""
        entries = self.entries()
        sp, sn = entries[src % len(entries)]
        dp, dn = entries[dst % len(entries)]
        self.do_rename(sp, sn, dp, dn, flags, still_open)

    @precondition(lambda self: len(self.dirs()) >= 3)
    @rule(src=PICK, dst=PICK, flags=st.sampled_from([0, 0, NOREPLACE, EXCHANGE]))
    def rename_dir_onto_dir(self, src: int, dst: int, flags: int) -> None:
        """Directories over directories: empty (replaced), non-empty, own subtree."""
        dirs = self.dirs()[1:]
        a, b = dirs[src % len(dirs)], dirs[dst % len(dirs)]
        assert a.parent is not None and b.parent is not None
        self.do_rename(a.parent, self.name_of(a), b.parent, self.name_of(b), flags, False)

    @staticmethod
    def name_of(d: MDir) -> bytes:
        assert d.parent is not None
        return next(name for name, node in d.parent.entries.items() if node is d)

    def do_rename(self, sp: MDir, sn: bytes, dp: MDir, dn: bytes, flags: int,
                  still_open: bool) -> None:
        src = sp.entries.get(sn)
        dst = dp.entries.get(dn)
        expected = self.rename_error(sp, src, dp, dst, flags)
        self.expect(expected, self.store.rename, sp.ino, sn, dp.ino, dn, flags,
                    target_still_open=still_open)
        if expected is not None or src is dst:
            return
        if flags & EXCHANGE:
            assert dst is not None
            sp.entries[sn], dp.entries[dn] = dst, src
            if isinstance(src, MDir):
                src.parent = dp
            if isinstance(dst, MDir):
                dst.parent = sp
            return
        del sp.entries[sn]
        dp.entries[dn] = src
        if isinstance(src, MDir):
            src.parent = dp
        if dst is not None:
            self.drop_name(dst, still_open)

    @staticmethod
    def rename_error(sp: MDir, src, dp: MDir, dst, flags: int) -> type[StoreError] | None:
        """renameat2(2)'s answer, in the order Linux (fs/namei.c do_renameat2) checks, except
        where vfsd ranks two applicable errors differently (see test_namespace.py,
        test_error_precedence_like_linux, which pins Linux's order as a known deviation)."""
        if src is None:
            return NotFound
        if isinstance(src, MDir) and is_ancestor(src, dp):
            return InvalidArgument  # vfsd checks this first; Linux says EEXIST/ENOENT first
        if flags & NOREPLACE and dst is not None:
            return Exists
        if flags & EXCHANGE and dst is None:
            return NotFound
        if isinstance(dst, MDir) and is_ancestor(dst, sp):  # the target contains the source
            if flags & EXCHANGE:
                return InvalidArgument
            # Linux: ENOTEMPTY for any source; vfsd: EISDIR for a file source.
            return NotEmpty if isinstance(src, MDir) else IsADirectory
        if src is dst:
            return None  # two names of one inode: nothing happens
        if not flags & EXCHANGE and dst is not None:
            if isinstance(src, MDir) and not isinstance(dst, MDir):
                return NotADirectory
            if not isinstance(src, MDir) and isinstance(dst, MDir):
                return IsADirectory
            if isinstance(dst, MDir) and dst.entries:
                return NotEmpty
        return None

    # --- data rules --------------------------------------------------------------------------

    @precondition(lambda self: self.files())
    @rule(f=PICK, at=st.tuples(CHUNKS, REMAINDER, PICK), append=st.booleans(),
          span=st.tuples(SPAN, REMAINDER, PICK), kind=KIND, seed=PICK)
    def write(self, f: int, at, append: bool, span, kind: str, seed: int) -> None:
        files = self.files()
        node = files[f % len(files)]
        offset = self.position(*at, self.max_offset)
        if append:  # at or just past the current end: extends the last chunk
            offset = len(node.data) + offset % (2 * self.chunk_size)
        length = self.position(*span, 12 * self.chunk_size)
        data = self.contents(kind, length, seed)
        assert self.store.write(node.ino, offset, data) == len(data)
        if data:
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset:offset + len(data)] = data

    @precondition(lambda self: self.files())
    @rule(f=PICK, to=st.tuples(CHUNKS, REMAINDER, PICK), shrink=st.booleans())
    def truncate(self, f: int, to, shrink: bool) -> None:
        files = self.files()
        node = files[f % len(files)]
        size = self.position(*to, self.max_offset)
        if shrink:
            size = size % (len(node.data) + 1)
        self.store.truncate(node.ino, size)
        if size <= len(node.data):
            del node.data[size:]
        else:
            node.data.extend(bytes(size - len(node.data)))

    @precondition(lambda self: self.files())
    @rule(f=PICK, at=st.tuples(CHUNKS, REMAINDER, PICK), span=st.tuples(SPAN, REMAINDER, PICK))
    def punch_hole(self, f: int, at, span) -> None:
        """fallocate(PUNCH_HOLE|KEEP_SIZE): the range reads as zeros, the size stays."""
        files = self.files()
        node = files[f % len(files)]
        offset = self.position(*at, len(node.data) + self.chunk_size)
        length = self.position(*span, 12 * self.chunk_size)
        expected = InvalidArgument if length <= 0 else None
        self.expect(expected, self.store.punch_hole, node.ino, offset, length)
        if expected is None:
            end = min(offset + length, len(node.data))
            if end > offset:
                node.data[offset:end] = bytes(end - offset)

    @precondition(lambda self: self.files())
    @rule(src=PICK, dst=PICK, src_at=st.tuples(CHUNKS, REMAINDER, PICK),
          dst_at=st.tuples(CHUNKS, REMAINDER, PICK), span=st.tuples(SPAN, REMAINDER, PICK))
    def copy_range(self, src: int, dst: int, src_at, dst_at, span) -> None:
        """copy_file_range(2): aligned whole chunks are shared, the rest copied."""
        files = self.files()
        a, b = files[src % len(files)], files[dst % len(files)]
        so = self.position(*src_at, len(a.data) + self.chunk_size)
        do = self.position(*dst_at, self.max_offset)
        length = self.position(*span, 12 * self.chunk_size)
        overlap = a is b and so < do + length and do < so + length
        expected = InvalidArgument if overlap else None
        copied = self.expect(expected, self.store.copy_range, a.ino, so, b.ino, do, length)
        if expected is None:
            data = bytes(a.data[so:so + length])
            assert copied == len(data)
            if data:
                if do > len(b.data):
                    b.data.extend(bytes(do - len(b.data)))
                b.data[do:do + len(data)] = data

    @precondition(lambda self: self.files())
    @rule(f=PICK, at=st.tuples(CHUNKS, REMAINDER, PICK), data=st.booleans())
    def seek(self, f: int, at, data: bool) -> None:
        """SEEK_DATA / SEEK_HOLE at chunk granularity: all-zero chunks are holes (never
        stored), every other chunk is data; the end of the file is a hole."""
        files = self.files()
        node = files[f % len(files)]
        offset = self.position(*at, len(node.data) + self.chunk_size)
        cs, size = self.chunk_size, len(node.data)
        expected: int | None
        if offset >= size:
            expected = None
        else:
            index = offset // cs
            while index * cs < size and self.chunk_is_zero(node, index) == data:
                index += 1
            expected = max(offset, index * cs) if index * cs < size else (None if data else size)
        assert self.store.seek(node.ino, offset, data) == expected, (offset, data, size)

    def chunk_is_zero(self, node: MFile, index: int) -> bool:
        cs = self.chunk_size
        piece = node.data[index * cs:(index + 1) * cs]
        return piece == bytes(len(piece))

    @precondition(lambda self: len(self.entries()) < MAX_ENTRIES)
    @rule(d=PICK, name=NAMES, span=st.tuples(SPAN, REMAINDER, PICK), kind=KIND, seed=PICK)
    def replace(self, d: int, name: bytes, span, kind: str, seed: int) -> None:
        """Whole-object replacement (an S3 PUT): every link sees the new contents."""
        dirs = self.dirs()
        parent = dirs[d % len(dirs)]
        node = parent.entries.get(name)
        data = self.contents(kind, self.position(*span, 12 * self.chunk_size), seed)
        cs = self.chunk_size
        bodies = [data[i:i + cs] for i in range(0, len(data), cs)]
        expected = IsADirectory if isinstance(node, MDir) else None
        inode = self.expect(expected, self.store.replace, parent.ino, name, bodies)
        if expected is None:
            if node is None:
                node = parent.entries[name] = MFile(inode.ino)
            assert inode.ino == node.ino
            node.data[:] = data

    @precondition(lambda self: self.files())
    @rule(f=PICK, at=st.tuples(CHUNKS, REMAINDER, PICK), span=st.tuples(SPAN, REMAINDER, PICK))
    def read(self, f: int, at, span) -> None:
        files = self.files()
        node = files[f % len(files)]
        offset = self.position(*at, len(node.data) + self.chunk_size)
        size = self.position(*span, 12 * self.chunk_size)
        got = bytes(self.store.read(node.ino, offset, size))
        assert got == bytes(node.data[offset:offset + size]), (offset, size, len(node.data))

    @precondition(lambda self: self.orphans)
    @rule(i=PICK)
    def release_orphan(self, i: int) -> None:
        node = self.orphans.pop(i % len(self.orphans))
        self.store.release_orphan(node.ino)
        self.freed.append(node.ino)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store.open(self.dir / "store")

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def tree_matches(self) -> None:
        store = self.store
        for d in self.dirs():
            listing: dict[bytes, tuple[int, int]] = {}
            cookie = 0
            while page := store.readdir(d.ino, cookie, 3):
                for entry in page:
                    assert entry.name not in listing, f"{entry.name!r} listed twice"
                    listing[entry.name] = (entry.ino, entry.mode_type)
                cookie = page[-1].cookie
            expected = {name: (n.ino, stat.S_IFDIR if isinstance(n, MDir) else stat.S_IFREG)
                        for name, n in d.entries.items()}
            assert listing == expected, f"directory {d.ino}"
            subdirs = sum(isinstance(n, MDir) for n in d.entries.values())
            assert store.getattr(d.ino).nlink == 2 + subdirs, f"directory {d.ino} nlink"

    @invariant()
    def files_match(self) -> None:
        links = self.links()
        for node in self.files():
            inode = self.store.getattr(node.ino)
            assert inode.size == len(node.data), f"inode {node.ino} size"
            assert inode.nlink == links.get(node.ino, 0), f"inode {node.ino} nlink"
            got = bytes(self.store.read(node.ino, 0, inode.size + 1))
            if got != node.data:
                at = next((i for i, (a, b) in enumerate(zip(got, node.data)) if a != b),
                          min(len(got), len(node.data)))
                raise AssertionError(f"inode {node.ino}: contents differ from byte {at} "
                                     f"(chunk {at // self.chunk_size}) of {len(node.data)}")
        for ino in self.freed[-4:]:
            with pytest.raises(NotFound):
                self.store.getattr(ino)

    @invariant()
    def chunk_maps_are_thin(self) -> None:
        """DESIGN "Chunks": a chunk body covers at most [index * chunk_size, file size), and a
        slot is stored exactly when its contents are not all zeros."""
        cs = self.chunk_size
        stored: dict[int, set[int]] = {}
        sizes = {node.ino: len(node.data) for node in self.files()}
        with self.store.env.read() as tx:
            for key, digest in tx.cursor(tx.db.chunkmap):
                ino, index = INO_INDEX.unpack(key)
                stored.setdefault(ino, set()).add(index)
                size = sizes.get(ino, 0)  # the model's; files_match checks the store's
                length = CHUNK.unpack(tx.get(tx.db.chunks, digest))[2]
                assert index * cs + length <= size, (ino, index, length, size)
        for node in self.files():
            nonzero = {i for i in range(-(-len(node.data) // cs))
                       if not self.chunk_is_zero(node, i)}
            assert stored.pop(node.ino, set()) == nonzero, f"inode {node.ino}: stored slots"
        assert not stored, f"chunk map entries of inodes that are gone: {sorted(stored)}"


class DefaultChunks(StoreMachine):
    chunk_size = 65536
    max_offset = 3 << 20


SETTINGS = {
    "deadline": None,
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    "database": None,  # keep no example database in the repository
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}


# A failure is shrunk for up to hypothesis's 5 minutes. A hung store call must end the run:
# the thread method dumps every stack and exits, where the signal method would only raise
# into the hung step and let hypothesis carry on.
@pytest.mark.timeout(480, method="thread")
def test_model_4k_chunks(tmp_path: Path) -> None:
    run_state_machine_as_test(lambda: StoreMachine(tmp_path), settings=settings(
        max_examples=120, stateful_step_count=50, **SETTINGS))


@pytest.mark.timeout(480, method="thread")
def test_model_64k_chunks(tmp_path: Path) -> None:
    run_state_machine_as_test(lambda: DefaultChunks(tmp_path), settings=settings(
        max_examples=50, stateful_step_count=50, **SETTINGS))
