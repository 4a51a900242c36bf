"""A private Mosquitto broker on a free loopback port, for the tests and the demo.

It never touches a system-wide broker: it writes its own configuration into a directory of its
own, listens on 127.0.0.1 only, and can be stopped, killed and restarted on the same port (fault
tests need that).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Self

from kiosk.errors import KioskError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path
    from types import TracebackType

START_TIMEOUT_S = 10.0


class BrokerError(KioskError):
    """The broker could not be started."""


def find_binary() -> str | None:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One private broker process.

    Args:
        workdir: where the configuration, log and (if persistent) database go.
        port: the TCP port, or a free one.
        persistence: keep retained messages and sessions across restarts.
        extra_config: more lines for mosquitto.conf (ACLs, password files, TLS listeners).
        anonymous: allow clients without a username.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        extra_config: Iterable[str] = (),
        anonymous: bool = True,
    ) -> None:
        binary = find_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed; install it with 'apt-get install mosquitto'")
        self.binary = binary
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_config = list(extra_config)
        self.anonymous = anonymous
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker's URL for kiosk's `mqtt.url`."""
        return f"mqtt://{self.host}:{self.port}"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "max_queued_messages 10000",
            # As root, mosquitto would otherwise drop privileges and lose access to workdir.
            "user root",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> Self:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return self
        self._write_config()
        self._proc = subprocess.Popen(  # noqa: S603 - our own binary and config
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                stderr = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerError(f"mosquitto exited at start ({stderr.strip() or self.log_tail()})")
            if _listening(self.host, self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {START_TIMEOUT_S:g} s")

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: a persistent broker saves its state)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL: nothing is saved)."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        # The port is free once nothing listens on it.
        deadline = time.monotonic() + 5
        while _listening(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> Self:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the broker's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
