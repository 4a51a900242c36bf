"""A stand-in for systemd's `Restart=always` in the update tests.

It runs `{root}/current/bin/kiosk run` — whatever release the `current` symlink names at each
start, as `ExecStart=/opt/kiosk/current/bin/kiosk run` does — and starts it again whenever it
exits, after `restart_s` (RestartSec=). Each run is recorded with the release it started and how
it ended.
"""

# ruff: noqa: ASYNC109 - each wait takes the timeout its test allows

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class Run:
    """One start: the release `current` named, and the exit code (None while running)."""

    release: str
    exit_code: int | None = None


class Supervisor:
    """Keeps `current/bin/kiosk run` running, in a thread."""

    def __init__(self, root: Path, env: dict[str, str], log_path: Path, *, restart_s: float = 0.2) -> None:
        self.root = root
        self.env = env
        self.log_path = log_path
        self.restart_s = restart_s
        self.runs: list[Run] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def start(self) -> None:
        """Start the first run."""
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            current = self.root / "current"
            release = str(current.readlink())
            with self._lock:
                if self._stopping.is_set():
                    return
                with self.log_path.open("ab") as log:
                    log.write(f"--- supervisor: run {len(self.runs) + 1} of {release}\n".encode())
                    self._proc = subprocess.Popen(
                        [str(current / "bin" / "kiosk"), "run"],
                        env=self.env,
                        cwd=self.root,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                run = Run(release)
                self.runs.append(run)
            run.exit_code = self._proc.wait()
            self._stopping.wait(self.restart_s)

    def stop(self) -> None:
        """SIGTERM the running daemon and start no more."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(30)

    async def wait_runs(self, count: int, timeout: float = 60) -> list[Run]:
        """Wait until at least `count` runs have started."""
        async with asyncio.timeout(timeout):
            while len(self.runs) < count:  # noqa: ASYNC110 - a thread fills the list
                await asyncio.sleep(0.05)
        return list(self.runs)

    def log(self) -> str:
        """Everything the daemons wrote to stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
