"""GET bodies from the page cache to the socket, without a buffer of our own.

Reading a window into a buffer cost three passes over every byte: bytearray zeroes it, preadv
fills it, the transport copies it into the kernel; perf put those at a third of the gateway's
CPU in a 16 MiB GET. FileData.extents instead maps the segment files, checks the CRCs there
(in a worker thread), and this module hands the mapped pages to the socket with one writev(2)
per window: one copy, by the kernel, and one system call per window. sendfile(2) would spare
that copy but needs a call per chunk (records have headers between them), and each call lets
go of the GIL: with the worker threads waiting for it, the hand-overs cost more than the copy.

Only on plain TCP: TLS encrypts in user space, so an HTTPS GET reads windows as before.

asyncio's transport owns the socket. Bytes it still holds (the headers, zeros it could not
send at once) must leave first, and only the loop itself may wait for the socket to take more
(a transport's descriptor cannot get a second writer). So pieces go out with writev directly
while the transport holds nothing; when the socket is full, or the transport holds bytes, the
piece at hand goes to loop.sendfile (or, for zeros, to the transport), which waits for both.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from vfsd.store.segments import Extents

IOV_MAX = 1024  # buffers per writev (Linux)


def can_sendfile(request: web.Request) -> bool:
    transport = request.transport
    return (transport is not None and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("socket") is not None)


class _Descriptor:
    """What loop.sendfile needs of a file: a descriptor. It seeks the file when done; the
    descriptor is shared, and every send names its offset, so that is left undone."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def seek(self, _offset: int) -> None:
        pass


class ExtentSender:
    """Sends `Extents` on a prepared response whose transport `can_sendfile`."""

    def __init__(self, request: web.Request, response: web.StreamResponse):
        self._request = request
        self._response = response
        self._loop = asyncio.get_running_loop()

    async def send(self, extents: Extents) -> None:
        pieces = extents.pieces
        transport = self._request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        sock = transport.get_extra_info("socket")
        i, done = 0, 0  # the piece at hand, and how much of it has gone out
        batch: list[memoryview] = []
        try:
            while i < len(pieces):
                # Checked before every call: a closing transport closes its socket soon after,
                # and the number may then name another file.
                if transport.is_closing():
                    raise ConnectionResetError("the client went away")
                if not transport.get_write_buffer_size():
                    batch = [view for _fd, _offset, view in pieces[i:i + IOV_MAX]]
                    batch[0] = batch[0][done:]
                    wanted = sum(len(view) for view in batch)
                    try:
                        sent = os.writev(sock.fileno(), batch)
                    except BlockingIOError:
                        sent = 0
                    done += sent
                    while i < len(pieces) and done >= len(pieces[i][2]):
                        done -= len(pieces[i][2])
                        i += 1
                    if sent == wanted:
                        continue
                await self._wait_with(transport, pieces[i], done)
                i, done = i + 1, 0
        finally:
            # A slice of a mapped view left alive (by a traceback holding this frame) would
            # keep the map, and its descriptor, open until the garbage collector ran.
            batch.clear()

    async def _wait_with(self, transport: asyncio.Transport,
                         piece: tuple[int, int, memoryview], done: int) -> None:
        """Send the rest of one piece through the loop, which waits until the transport's
        bytes are out and the socket takes more."""
        fd, offset, view = piece
        if fd >= 0:
            try:
                await self._loop.sendfile(transport,
                                          _Descriptor(fd),  # type: ignore[arg-type]
                                          offset + done, len(view) - done, fallback=False)
                return
            except asyncio.SendfileNotAvailableError:
                # What asyncio raises for any error before the first byte, a reset too.
                if transport.is_closing():
                    raise ConnectionResetError("the client went away") from None
        await self._response.write(view[done:])
