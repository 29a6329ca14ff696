"""File contents over chunk maps: read, write at any offset, truncate, replace atomically.

Chunk bodies are staged (hashed, appended, fdatasync'd) before the write transaction that
references them, so the transaction only moves small index entries. A chunk body covers at
most [index * chunk_size, file size): bytes past a short body are zeros, and truncation cuts
the body that straddles the new end.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from . import changelog, chunks, namespace
from .chunks import StagedChunk, ZeroTest
from .env import Environment, Tx
from .errors import (
    Corrupt,
    FileTooBig,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    ObjectChanged,
    PermissionDenied,
    ReadOnly,
    StoreError,
)
from .records import CHUNK, ChangeOp, ChunkLocation, Inode, InodeFlags, chunk_key
from .segments import Extents, SegmentStore

UPLOAD_BATCH = 64  # chunks staged per fdatasync during replace()
MAX_RETRIES = 20


class _Conflict(StoreError):
    """Another writer changed a chunk this write read-modify-wrote; the write starts over."""


class FileData:
    def __init__(self, env: Environment, segments: SegmentStore, chunk_size: int, origin: int,
                 capacity_left: Callable[[], int | None]):
        self.env = env
        self.segments = segments
        self.chunk_size = chunk_size
        self.origin = origin
        self.capacity_left = capacity_left
        self.is_zero = ZeroTest(chunk_size)
        self._zeros = memoryview(bytes(chunk_size))  # holes, shared by every cached read

    # --- reading -------------------------------------------------------------------------

    def _locations(self, tx: Tx, ino: int, first: int, last: int) -> dict[int, ChunkLocation]:
        out: dict[int, ChunkLocation] = {}
        cursor = tx.cursor(tx.db.chunkmap)
        if not cursor.set_range(chunk_key(ino, first)):
            return out
        end_key = chunk_key(ino, last)
        for key, digest in cursor:
            if key > end_key:
                break
            raw = tx.get(tx.db.chunks, digest)
            if raw is None:
                raise Corrupt(f"inode {ino} references missing chunk {digest.hex()}")
            segment, offset, length, _refs = CHUNK.unpack(raw)
            out[int.from_bytes(key[8:], "big")] = ChunkLocation(segment, offset, length)
        return out

    def read(self, ino: int, offset: int, size: int, version: int | None = None
             ) -> bytes | bytearray | memoryview:
        """Bytes at [offset, offset+size), short at end of file; holes read as zeros.

        One read transaction finds the chunks; bodies are read after it ends (segments outlive
        any read transaction, DESIGN.md "Reading"). With `version`, ObjectChanged unless the
        inode is at that version in the same transaction (a GET never mixes versions)."""
        return self.read_located(ino, offset, size, version)[0]

    def read_located(self, ino: int, offset: int, size: int, version: int | None = None
                     ) -> tuple[bytes | bytearray | memoryview, int, dict[int, ChunkLocation]]:
        """`read`, and also the file's size and where the chunks it read lie (holes left
        out), for a caller that keeps them (vfsd/fs/readmap.py)."""
        end, file_size, locations = self._find(ino, offset, size, version)
        if offset >= end:
            return b"", file_size, {}
        return self.read_bodies(offset, end, locations), file_size, locations

    def _find(self, ino: int, offset: int, size: int, version: int | None
              ) -> tuple[int, int, dict[int, ChunkLocation]]:
        """(end of the range, clipped to the file; file size; where its chunks lie) in one
        read transaction, checking the version as `read` does."""
        cs = self.chunk_size
        with self.env.read() as tx:
            inode = namespace.get_inode(tx, ino)
            if inode.is_dir:
                raise IsADirectory(f"inode {ino} is a directory")
            if version is not None and not namespace.same_data(tx, inode, version):
                raise ObjectChanged("the object changed while it was being read")
            end = min(offset + size, inode.size)
            if offset >= end:
                return end, inode.size, {}
            return end, inode.size, self._locations(tx, ino, offset // cs, (end - 1) // cs)

    def extents(self, ino: int, offset: int, size: int, version: int | None = None
                ) -> Extents:
        """`read` as Extents instead of bytes (bodies in place, verified, their segment files
        held open): for a sender that hands them to a socket without copying them first."""
        end, _size, locations = self._find(ino, offset, size, version)
        held = self.segments.hold(list(locations.values()))
        pieces: list[tuple[int, int, memoryview]] = []
        lengths = {index: location.length for index, location in locations.items()}
        for index, lo, cut, hi in self._spans(offset, end, lengths):
            if cut > lo:
                location = locations[index]
                segment = held[location.segment]
                pieces.append((segment.fd, location.offset + lo, segment.body(location, lo, cut)))
            if hi > cut:
                pieces.append((-1, 0, self._zeros[:hi - cut]))
        return Extents(pieces, held.values())

    def _spans(self, offset: int, end: int, lengths: Mapping[int, int]
               ) -> Iterator[tuple[int, int, int, int]]:
        """(index, lo, cut, hi) for each chunk of [offset, end), offsets within the chunk:
        [lo, cut) comes from its stored body (`lengths[index]` bytes; none for a hole) and
        [cut, hi) is zeros (a hole, or past a short body)."""
        cs = self.chunk_size
        for index in range(offset // cs, (end - 1) // cs + 1) if offset < end else ():
            cstart = index * cs
            lo, hi = max(offset, cstart) - cstart, min(end, cstart + cs) - cstart
            yield index, lo, max(lo, min(hi, lengths.get(index, 0))), hi

    def read_bodies(self, offset: int, end: int, locations: dict[int, ChunkLocation]
                    ) -> bytes | bytearray | memoryview:
        """Bytes [offset, end) of a file whose chunks lie at `locations` (holes left out:
        zeros)."""
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        if first == last:
            location = locations.get(first)
            lo, hi = offset - first * cs, end - first * cs
            if location is None:
                return bytes(hi - lo)
            body = self.segments.read(location)
            if hi <= len(body):
                return memoryview(body)[lo:hi]
            out = bytearray(hi - lo)
            out[: max(0, len(body) - lo)] = body[lo:]
            return out
        out = bytearray(end - offset)
        view = memoryview(out)
        in_place: list[tuple[ChunkLocation, memoryview]] = []
        for index, location in locations.items():
            cstart = index * cs
            lo = max(offset, cstart) - cstart
            limit = min(end, cstart + cs) - cstart
            if lo == 0 and location.length <= limit:
                # The whole body lands in `out`: read it there, skipping two 64 KiB copies.
                at = cstart - offset
                in_place.append((location, view[at:at + location.length]))
                continue
            body = self.segments.read(location)
            avail = min(limit, len(body))
            if avail > lo:
                out[cstart + lo - offset: cstart + avail - offset] = body[lo:avail]
        self.segments.read_many_into(in_place)
        view.release()
        return out

    def views_cached(self, offset: int, end: int,
                     locations: Mapping[int, ChunkLocation | None]) -> list[memoryview] | None:
        """Bytes [offset, end) as pieces in file order, each in place in the page cache or
        zeros, if the page cache holds every record (never waiting for the disk); else None.
        The mount's event loop answers reads with these (FUSE copies the pieces out)."""
        cs = self.chunk_size
        first = offset // cs
        if (end - 1) // cs == first:
            # Within one chunk, as every 4 KiB random read is: the general path below costs
            # a tenth of such a read's time on the loop in dicts and generators.
            location = locations.get(first)
            lo, hi = offset - first * cs, end - first * cs
            if location is None:
                return [self._zeros[:hi - lo]]
            body = self.segments.view_cached(location)
            if body is None:
                return None
            if hi <= len(body):
                return [body[lo:hi]]
            cut = max(lo, len(body))  # a short body: zeros after it
            return [body[lo:cut], self._zeros[:hi - cut]] if cut > lo else [self._zeros[:hi - lo]]
        indices = range(first, (end - 1) // cs + 1)
        stored = {index: location for index in indices
                  for location in [locations.get(index)] if location is not None}
        bodies = self.segments.views_cached(list(stored.values())) if stored else []
        if bodies is None:
            return None
        body_at = dict(zip(stored, bodies))
        pieces: list[memoryview] = []
        lengths = {index: len(body) for index, body in body_at.items()}
        for index, lo, cut, hi in self._spans(offset, end, lengths):
            if cut > lo:
                pieces.append(body_at[index][lo:cut])
            if hi > cut:
                pieces.append(self._zeros[:hi - cut])
        return pieces

    def read_chunk(self, ino: int, index: int) -> bytes:
        """The stored body of one chunk (b"" for a hole); shorter than a chunk means zeros."""
        with self.env.read() as tx:
            location = self._locations(tx, ino, index, index).get(index)
        return b"" if location is None else self.segments.read(location)

    def read_chunks(self, ino: int, indices: Iterable[int]) -> dict[int, bytearray]:
        """Stored bodies of some chunks, holes left out: the bases a flush merges partly
        written chunks onto, in buffers of their own that the caller may change. One read
        transaction finds them; bodies are read after it, each straight into its buffer
        (`segments.read` would copy it twice more: out of the record, then the caller's)."""
        with self.env.read() as tx:
            locations = {i: loc for i in sorted(indices)
                         for loc in [self._locations(tx, ino, i, i).get(i)] if loc is not None}
        # Scattered bases (random writes) would be read one disk round trip at a time: ask
        # for all of them first, so the device works on them together.
        self.segments.prefetch(locations.values())
        bodies = {i: bytearray(location.length) for i, location in locations.items()}
        reads = [(location, memoryview(bodies[i])) for i, location in locations.items()]
        try:
            self.segments.read_many_into(reads)  # a run of records back to back: one preadv
        finally:
            for _, view in reads:
                view.release()  # or the caller could not resize its buffers
        return bodies

    # --- writing -------------------------------------------------------------------------

    def _stage(self, contents: Mapping[int, bytes | bytearray | memoryview],
               within_pool: bool = True, freed: int = 0) -> dict[int, StagedChunk | None]:
        """`freed`: pool bytes the commit gives back before it indexes these (a replacing
        commit's old chunks): room for them too."""
        nonzero = {i: c for i, c in contents.items() if len(c) and not self.is_zero(c)}
        capacity = self.capacity_left() if within_pool else None
        if capacity is not None:
            capacity += freed
        staged = chunks.stage(self.env, self.segments, nonzero.values(), capacity)
        result: dict[int, StagedChunk | None] = dict.fromkeys(contents)
        result.update(zip(nonzero, staged))
        return result

    def rewrite(self, ino: int, data: bytes) -> Inode:
        """Replace a small file's whole contents, read-only flag notwithstanding (callers have
        validated the change: descriptor CID updates)."""
        staged = self.stage_bytes(data)
        with self.env.write() as tx:
            return self.install(tx, ino, staged, len(data))

    def stage_bytes(self, data: bytes) -> list[StagedChunk | None]:
        """Stage a small whole-file body (descriptors, settings) for `install` in a later tx."""
        cs = self.chunk_size
        staged = self._stage({i // cs: data[i:i + cs] for i in range(0, len(data), cs)})
        return [staged[i] for i in range(len(staged))]

    def install(self, tx: Tx, ino: int, staged: list[StagedChunk | None], size: int) -> Inode:
        """Inside a caller's transaction: make `ino` hold exactly the staged chunks."""
        delta = sum(chunks.set_chunk(tx, ino, index, chunk) for index, chunk in enumerate(staged))
        delta += chunks.drop_chunks_from(tx, ino, len(staged))
        chunks.check_pool(tx)
        inode = namespace.get_inode(tx, ino)
        inode.stored += delta
        now = time.time_ns()
        inode.size, inode.mtime_ns, inode.ctime_ns = size, now, now
        namespace.put_inode(tx, inode)
        changelog.record(tx, self.origin, ChangeOp.DATA, ino)
        return inode

    def _commit(self, ino: int, staged: Mapping[int, StagedChunk | None], *,
                bases: Mapping[int, bytes | None] | None = None, size: int | None = None,
                grow_to: int = 0, drop_from: int | None = None, drop_stop: int | None = None,
                mtime_ns: int | None = None, ctime_ns: int | None = None,
                truncating: bool = False, replacing: bool = False,
                within_pool: bool = True) -> Inode:
        with self.env.write() as tx:
            inode = namespace.get_inode(tx, ino)
            check_file_writable(inode)
            for index, base in (bases or {}).items():
                if tx.get(tx.db.chunkmap, chunk_key(ino, index)) != base:
                    raise _Conflict()
            if replacing:
                # Dropped first, so the staged chunks land on empty slots: a body the old
                # contents and the new share is indexed again at its staged location.
                inode.stored += chunks.drop_chunks_from(tx, ino, 0)
                truncating = True
            new_size = (size if size is not None
                        else grow_to if replacing else max(inode.size, grow_to))
            if new_size > inode.size and inode.flags & InodeFlags.FIXED_SIZE:
                raise FileTooBig("the disk is fixed-size; use `vfsd vm resize`")
            if truncating and new_size < inode.size and inode.flags & InodeFlags.FIXED_SIZE:
                raise PermissionDenied("a fixed-size disk cannot shrink")
            for index, chunk in staged.items():
                inode.stored += chunks.set_chunk(tx, ino, index, chunk)
            if drop_from is not None:
                inode.stored += chunks.drop_chunks_from(tx, ino, drop_from, drop_stop)
            if within_pool:
                chunks.check_pool(tx)
            now = time.time_ns()
            inode.size = new_size
            inode.mtime_ns = mtime_ns if mtime_ns is not None else now
            # A later attribute change (chmod, utimensat) since the writes keeps its time.
            inode.ctime_ns = max(inode.ctime_ns, ctime_ns) if ctime_ns is not None else now
            namespace.put_inode(tx, inode)
            changelog.record(tx, self.origin, ChangeOp.DATA, ino)
            return inode

    def write(self, ino: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        """pwrite(2): returns len(data). Partial chunks are read, patched and rewritten; if
        another writer changes such a chunk meanwhile, the write starts over."""
        if not data:
            return 0
        cs = self.chunk_size
        view = memoryview(data).cast("B")
        end = offset + len(view)
        first, last = offset // cs, (end - 1) // cs
        for _attempt in range(MAX_RETRIES):
            partial = [i for i in {first, last} if max(offset, i * cs) - i * cs != 0
                       or min(end, (i + 1) * cs) - i * cs != cs]
            with self.env.read() as tx:
                inode = namespace.get_inode(tx, ino)
                check_file_writable(inode)
                if end > inode.size and inode.flags & InodeFlags.FIXED_SIZE:
                    raise FileTooBig("write past the end of a fixed-size disk")
                bases = {i: tx.get(tx.db.chunkmap, chunk_key(ino, i)) for i in partial}
                old_locations = {i: loc for i in partial
                                 for loc in [self._locations(tx, ino, i, i).get(i)] if loc}
            contents: dict[int, bytes | bytearray | memoryview] = {}
            for index in range(first, last + 1):
                cstart = index * cs
                lo = max(offset, cstart) - cstart
                hi = min(end, cstart + cs) - cstart
                piece = view[cstart + lo - offset: cstart + hi - offset]
                location = old_locations.get(index)
                old_len = location.length if location else 0
                if lo == 0 and old_len <= hi:
                    contents[index] = piece
                    continue
                buf = bytearray(max(old_len, hi))
                if location is not None:
                    buf[:old_len] = self.segments.read(location)
                buf[lo:hi] = piece
                contents[index] = buf
            staged = self._stage(contents)
            try:
                self._commit(ino, staged, bases=bases, grow_to=end)
                return len(view)
            except _Conflict:
                continue
        raise Corrupt(f"write to inode {ino} kept conflicting with other writers")

    def write_chunks(self, ino: int, contents: Mapping[int, bytes | bytearray | memoryview],
                     *, size: int | None, grow_to: int = 0,
                     mtime_ns: int | None = None, ctime_ns: int | None = None,
                     replacing: bool = False, within_pool: bool = True) -> Inode:
        """Replace whole chunk bodies and set the size (or, with size None, grow it to at least
        `grow_to`): the write-back cache's flush. The caller owns the file (it holds the
        lease), so no read-modify-write check is needed. `replacing`: every other chunk of
        the file goes in the same transaction and the size is `size` (or `grow_to`), not at
        least the old one (an O_TRUNC the mount deferred to its first commit: other processes
        see the old contents or the new, never an empty file between). `within_pool=False`
        lets the write take the pool past its quota (a journal replay: data an fsync
        acknowledged). `ctime_ns`: when the writes being committed were made (the change time
        then is at least that, not the commit's time)."""
        with self.segments.held_until_committed():
            try:
                staged = self._stage(contents, within_pool,
                                     self._freed_by_replacing(ino) if replacing else 0)
            except NoSpace:
                # A file deleted meanwhile is NotFound, whatever room there is: the mount
                # drops its data then, where it would retry a full pool's refusal for good.
                self._getattr(ino)
                raise
            return self._commit(ino, staged, size=size, grow_to=grow_to, mtime_ns=mtime_ns,
                                ctime_ns=ctime_ns, replacing=replacing,
                                within_pool=within_pool)

    def _freed_by_replacing(self, ino: int) -> int:
        """What dropping the old contents gives back to a pool with a quota (its use counts
        the bodies indexed, so the drop frees room at once, as the eager truncation did);
        on a pool that is the disk's free space, nothing until gc compacts. The commit's
        `check_pool` still judges the outcome: this only keeps staging from refusing a
        rewrite that fits once the old contents go."""
        with self.env.read() as tx:
            if chunks.quota(tx) is None:
                return 0
            return chunks.freed_by_dropping(tx, ino)

    def truncate(self, ino: int, size: int) -> Inode:
        """ftruncate(2): shrinking frees chunks past the end and cuts the straddling one;
        growing adds a hole and stores nothing."""
        cs = self.chunk_size
        for _attempt in range(MAX_RETRIES):
            with self.env.read() as tx:
                inode = namespace.get_inode(tx, ino)
                check_file_writable(inode)
                keep = (size + cs - 1) // cs  # chunk slots that stay
                cut = size % cs
                location = self._locations(tx, ino, keep - 1, keep - 1).get(keep - 1) if cut else None
                base = tx.get(tx.db.chunkmap, chunk_key(ino, keep - 1)) if cut else None
            staged: dict[int, StagedChunk | None] = {}
            if location is not None and location.length > cut:
                staged = self._stage({keep - 1: self.segments.read(location)[:cut]})
            try:
                return self._commit(ino, staged, bases={keep - 1: base} if cut else None,
                                    size=size, drop_from=keep, truncating=True)
            except _Conflict:
                continue
        raise Corrupt(f"truncate of inode {ino} kept conflicting with other writers")

    def punch_hole(self, ino: int, offset: int, length: int) -> Inode:
        """fallocate(PUNCH_HOLE|KEEP_SIZE): the range reads as zeros and its chunks are freed;
        the size stays. Whole chunks go in one range delete; the two edges are rewritten."""
        cs = self.chunk_size
        for _attempt in range(MAX_RETRIES):
            with self.env.read() as tx:
                inode = namespace.get_inode(tx, ino)
                check_file_writable(inode)
                end = min(offset + length, inode.size)
                if offset >= end:
                    return inode
                first, last = offset // cs, (end - 1) // cs
                edges = sorted(i for i in {first, last}
                               if offset > i * cs or end < min((i + 1) * cs, inode.size))
                bases = {i: tx.get(tx.db.chunkmap, chunk_key(ino, i)) for i in edges}
                old = {i: loc for i in edges
                       for loc in [self._locations(tx, ino, i, i).get(i)] if loc}
            contents: dict[int, bytes | bytearray | memoryview] = {}
            for index, location in old.items():
                buf = bytearray(self.segments.read(location))
                lo = max(offset - index * cs, 0)
                hi = min(end - index * cs, len(buf))
                if hi > lo:
                    buf[lo:hi] = bytes(hi - lo)
                    contents[index] = buf
            whole_first = first if first not in edges else first + 1
            whole_stop = last + 1 if last not in edges else last
            try:
                return self._commit(
                    ino, self._stage(contents), bases=bases, size=inode.size,
                    drop_from=whole_first if whole_stop > whole_first else None,
                    drop_stop=whole_stop,
                )
            except _Conflict:
                continue
        raise Corrupt(f"punching a hole in inode {ino} kept conflicting with other writers")

    def seek(self, ino: int, offset: int, data: bool) -> int | None:
        """SEEK_DATA (data=True) / SEEK_HOLE from the chunk map; None means ENXIO. A stored
        chunk counts as data throughout; the end of the file counts as a hole."""
        cs = self.chunk_size
        with self.env.read() as tx:
            inode = namespace.get_inode(tx, ino)
            if offset >= inode.size:
                return None
            cursor = tx.cursor(tx.db.chunkmap)
            index = offset // cs
            found = cursor.set_range(chunk_key(ino, index))
            while found and cursor.key()[:8] == chunk_key(ino, 0)[:8]:
                present = int.from_bytes(cursor.key()[8:], "big")
                if data:
                    position = max(offset, present * cs)
                    return position if position < inode.size else None
                if present != index:
                    break  # slot `index` is a hole
                index += 1
                found = cursor.next()
            if data:
                return None
            return min(max(offset, index * cs), inode.size)

    def copy_range(self, src: int, src_offset: int, dst: int, dst_offset: int,
                   length: int, replacing: bool = False) -> int:
        """copy_file_range(2). Chunk-aligned whole chunks are shared by reference (no bytes
        move, no space used); any unaligned rest is copied as bytes. Returns bytes copied.
        `replacing`: the destination's old chunks go in the copy's transaction, as if it had
        been truncated to 0 just before (an O_TRUNC the mount deferred); the copy must then
        be one of whole chunks, from another file, all shared in that one transaction (else
        InvalidArgument, and nothing changes)."""
        cs = self.chunk_size
        src_inode = self._getattr(src)
        length = max(0, min(length, src_inode.size - src_offset))
        aligned = src_offset % cs == 0 and dst_offset % cs == 0
        if replacing:
            if not aligned or src == dst:
                raise InvalidArgument("a copy that replaces its destination shares chunks "
                                      "of another file")
            return self._share_chunks(src, src_offset, dst, dst_offset, length, replacing)
        if length == 0:
            return 0
        shared = 0
        if aligned:
            shared = self._share_chunks(src, src_offset, dst, dst_offset, length)
        done = shared
        while done < length:
            piece = self.read(src, src_offset + done, min(length - done, 1 << 20))
            if not piece:
                break
            self.write(dst, dst_offset + done, piece)
            done += len(piece)
        return done

    def _getattr(self, ino: int) -> Inode:
        with self.env.read() as tx:
            return namespace.get_inode(tx, ino)

    def _share_chunks(self, src: int, src_offset: int, dst: int, dst_offset: int,
                      length: int, replacing: bool = False) -> int:
        cs = self.chunk_size
        with self.env.write() as tx:
            src_inode = namespace.get_inode(tx, src)
            dst_inode = namespace.get_inode(tx, dst)
            check_file_writable(dst_inode)
            if replacing:
                dst_inode.stored += chunks.drop_chunks_from(tx, dst, 0)
                dst_inode.size = 0
            count = length // cs
            # A short last chunk of the source may be shared only if nothing of the
            # destination follows it (its missing tail reads as zeros).
            if (length % cs and src_offset + length == src_inode.size
                    and dst_offset + length >= dst_inode.size):
                count += 1
            if count == 0 and not replacing:
                return 0
            end = min(dst_offset + count * cs, dst_offset + length) if count else 0
            shared = end - dst_offset if count else 0
            if replacing and shared < length:
                raise InvalidArgument("a copy that replaces its destination must share all")
            if end > dst_inode.size and dst_inode.flags & InodeFlags.FIXED_SIZE:
                raise FileTooBig("copy past the end of a fixed-size disk")
            first_src, first_dst = src_offset // cs, dst_offset // cs
            sources = {}
            cursor = tx.cursor(tx.db.chunkmap)
            if cursor.set_range(chunk_key(src, first_src)):
                for key, digest in cursor:
                    index = int.from_bytes(key[8:], "big")
                    if key[:8] != chunk_key(src, 0)[:8] or index >= first_src + count:
                        break
                    found = chunks.lookup(tx, digest)
                    if found is None:
                        raise Corrupt(f"inode {src} references missing chunk {digest.hex()}")
                    sources[index - first_src] = StagedChunk(bytes(digest), found[0])
            for i in range(count):
                dst_inode.stored += chunks.set_chunk(tx, dst, first_dst + i, sources.get(i))
            now = time.time_ns()
            dst_inode.size = max(dst_inode.size, end)
            dst_inode.mtime_ns = dst_inode.ctime_ns = now
            namespace.put_inode(tx, dst_inode)
            changelog.record(tx, self.origin, ChangeOp.DATA, dst)
            return shared

    def replace(self, parent: int, name: bytes, bodies: Iterable[bytes | memoryview], *,
                mode: int = stat.S_IFREG | 0o644, uid: int = 0, gid: int = 0,
                xattrs: Mapping[bytes, bytes] | None = None,
                check: Callable[[Tx, Inode | None], None] | None = None) -> Inode:
        """Give `parent/name` exactly the contents `bodies` (consecutive full chunks, the last
        may be short), creating the file if needed. All bodies are durable before one final
        transaction swaps the chunk map, so a reader sees the old contents or the new, and an
        interrupted upload leaves only orphan bytes. `check(tx, existing)` may veto inside it."""
        with self.segments.held_until_committed():
            return self._replace(parent, name, bodies, mode, uid, gid, xattrs, check)

    def _replace(self, parent: int, name: bytes, bodies: Iterable[bytes | memoryview],
                 mode: int, uid: int, gid: int, xattrs: Mapping[bytes, bytes] | None,
                 check: Callable[[Tx, Inode | None], None] | None) -> Inode:
        staged: list[StagedChunk | None] = []
        size = 0
        batch: list[bytes | memoryview] = []

        def flush_batch() -> None:
            result = self._stage(dict(enumerate(batch)))
            staged.extend(result[i] for i in range(len(batch)))
            batch.clear()

        for body in bodies:
            size += len(body)
            batch.append(body)
            if len(batch) >= UPLOAD_BATCH:
                flush_batch()
        flush_batch()
        with self.env.write() as tx:
            entry = namespace.lookup(tx, parent, name)
            existing = namespace.get_inode(tx, entry.ino) if entry else None
            if check is not None:
                check(tx, existing)
            if existing is None:
                inode = namespace.make(tx, self.origin, parent, name, mode, uid, gid)
            else:
                inode = existing
                check_file_writable(inode)
            if xattrs is not None:
                for old in namespace.list_xattrs(tx, inode.ino):
                    if old.startswith(b"user."):
                        tx.delete(tx.db.xattrs, namespace.xattr_key(inode.ino, old))
                for key, value in xattrs.items():
                    tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, key), value)
            return self.install(tx, inode.ino, staged, size)


def check_file_writable(inode: Inode) -> None:
    if inode.is_dir:
        raise IsADirectory(f"inode {inode.ino} is a directory")
    if not inode.is_file:
        raise PermissionDenied(f"inode {inode.ino} is not a regular file")
    if inode.flags & InodeFlags.READONLY:
        raise ReadOnly("the file is read-only")
