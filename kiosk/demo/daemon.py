"""The daemon as the demo runs it: a real `kiosk run` child process, configured by its environment.

A separate process so that the demo can kill it with SIGKILL mid-order, as a power cut would, and
start it again on the same state directory. Its logs go to a file, not into the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

DEMO_API_KEY = "sk_test_kioskDemo000000000000000"
STOP_TIMEOUT_S = 15.0
# Variables of the machine's own kiosk (or systemd) that must not reach the demo's daemon.
_FOREIGN = ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class DaemonProcess:
    """`python -m kiosk run` with the demo's settings.

    Args:
        workdir: holds the state directory, an empty config file and `daemon.log`.
        settings: `KIOSK_…` variables (without the prefix), e.g. `{"PAYMENTS__CARD_TIMEOUT_S": "3"}`.
    """

    def __init__(self, workdir: Path, settings: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.log_path = workdir / "daemon.log"
        # An empty config file of its own: a kiosk installed on this machine (/etc/kiosk) stays out.
        self.config_path = workdir / "kiosk.toml"
        self.config_path.write_text("# kiosk demo: every setting comes from the environment\n", encoding="utf-8")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_") and k not in _FOREIGN},
            "KIOSK_STATE_DIR": str(workdir / "state"),
            **{f"KIOSK_{k}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return self.proc.pid if self.proc is not None else None

    def start(self, *, crash_at: str | None = None) -> None:
        """Start (or start again) the daemon; `crash_at` arms one of kiosk's crash points for this run."""
        self.runs += 1
        env = dict(self.env)
        if crash_at:
            env["KIOSK_TEST_CRASH_AT"] = crash_at
        with self.log_path.open("ab") as log:
            log.write(f"--- kiosk demo: daemon start {self.runs} (crash point: {crash_at or 'none'})\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # noqa: S603 - this very Python running kiosk
                [sys.executable, "-m", "kiosk", "run", "--config", str(self.config_path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: Ctrl-C at the terminal stops the demo, which then stops the
                # daemon in order (SIGTERM), instead of the daemon getting the SIGINT too.
                start_new_session=True,
            )

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    async def wait_exit(self, poll_s: float = 0.05) -> int | None:
        """Wait until the process ends by itself (a crash point); its exit code."""
        while (proc := self.proc) is not None:
            if (code := proc.poll()) is not None:
                return code
            await asyncio.sleep(poll_s)
        return None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean-up, as a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM as systemd stops it (SIGKILL if it does not end in time); the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The end of the daemon's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        return ""
