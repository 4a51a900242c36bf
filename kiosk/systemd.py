"""systemd's notify protocol over a datagram socket, with the standard library only.

Outside systemd (no `$NOTIFY_SOCKET`) every call is a silent no-op; inside, a failed send is
logged and swallowed: telling systemd about our state must never take the daemon down.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from kiosk import logs

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logs.get("systemd")


class Notifier:
    """Sends `READY=1`, `STATUS=…`, `WATCHDOG=1` and `STOPPING=1` to the service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between `WATCHDOG=1` pings (half systemd's `WatchdogSec`), or None when off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send one message of `KEY=value` fields; True if it was sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A status text is free-form; an unencodable character must not cost the message.
            self._sock.sendto("\n".join(fields).encode(errors="replace"), self._address)
        except OSError as exc:
            # Once per outage: a watchdog ping every few seconds must not flood the journal.
            if not self._failing:
                log.warning("systemd.notify_failed", error=str(exc), fields=list(fields))
            self._failing = True
            return False
        if self._failing:
            log.info("systemd.notify_recovered")
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd that start-up is done."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """Free-form status shown by `systemctl status`."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """Feed the watchdog."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd that shutdown has begun."""
        return self.notify("STOPPING=1", *_status(status))

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> list[str]:
    # One line: a newline would start another field of the message (a forged READY=1, say).
    return [f"STATUS={' '.join(text.splitlines())}"] if text else []


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec if usec > 0 else None
