"""A small HTTP/1.1 server on asyncio streams: keep-alive, Content-Length (or chunked) bodies.

Only what the simulator needs, with no dependency beyond the standard library, so that tests and
the demo never pull a web framework into the project. A handler returns a `Response`, or `None` to
drop the connection without answering (the simulator's "applied, response lost" fault).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


@dataclass(slots=True)
class Request:
    """One parsed request; header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    """One response; `Content-Length` and `Connection` are added when it is written."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, *, keep_alive: bool) -> bytes:
        """The bytes on the wire."""
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response | None]]


class _BadRequest(Exception):  # noqa: N818 - internal signal, answered with a 400
    pass


class HttpServer:
    """Serves one handler on a TCP port until `close()`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside a task here
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Cancelled by close(): end the connection quietly; the server is going away.
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            try:
                request, keep_alive = await self._parse(head, reader)
            except _BadRequest as exc:
                writer.write(Response(400, str(exc).encode()).encode(keep_alive=False))
                await writer.drain()
                return
            response = await self._handler(request)
            if response is None:
                return  # the connection is dropped without an answer (see module docstring)
            writer.write(response.encode(keep_alive=keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    @staticmethod
    async def _parse(head: bytes, reader: asyncio.StreamReader) -> tuple[Request, bool]:
        try:
            text = head.decode("latin-1")
            request_line, *header_lines = text[:-4].split("\r\n")
            method, target, version = request_line.split(" ", 2)
        except ValueError as exc:
            raise _BadRequest("malformed request line") from exc
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest("malformed header line")
            headers[name.strip().lower()] = value.strip()
        path, _, query = target.partition("?")
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as exc:
                raise _BadRequest("bad Content-Length") from exc
            if length < 0 or length > MAX_BODY:
                raise _BadRequest("body too large")
            body = await reader.readexactly(length) if length else b""
        return Request(method.upper(), path, query, headers, body), keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _BadRequest("bad chunk size") from exc
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY:
            raise _BadRequest("body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
