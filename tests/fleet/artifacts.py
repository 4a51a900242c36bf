"""A loopback HTTP server for update artifacts: Range requests, and a fault that cuts a transfer short."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Served:
    """What the server holds and saw: files by path, Range headers received, transfers to cut."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)
    cut_after: int | None = None  # bytes sent before the next transfer is cut (once)
    extra: bytes = b""  # appended to every body: a server offering more than the job's size


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        del format, args

    def do_GET(self) -> None:
        served = self.served
        data = served.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        data += served.extra
        header = self.headers.get("Range")
        served.ranges.append(header)
        start = 0
        if header and header.startswith("bytes=") and header.endswith("-"):
            start = int(header[len("bytes=") : -1])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if served.cut_after is not None:
            cut, served.cut_after = served.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class ArtifactServer:
    """`ThreadingHTTPServer` on 127.0.0.1 with a free port, in a thread."""

    def __init__(self) -> None:
        self.served = Served()
        handler = type("Handler", (_Handler,), {"served": self.served})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        """The URL of a served path."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
