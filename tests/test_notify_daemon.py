"""The real `kiosk run` under a stand-in for systemd's notify socket: READY=1 once the journal is
loaded, WATCHDOG=1 from the event loop (and not once the loop is wedged), STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kiosk.mosquitto import Mosquitto
from tests.crashrig import CrashRig, crash_rig

pytestmark = pytest.mark.slow


class NotifySocket:
    """An AF_UNIX datagram socket like systemd's, recording (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)  # noqa: FBT003 - the socket API
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]

    async def wait_for(self, field: str, timeout: float = 20) -> float:  # noqa: ASYNC109 - a bounded helper
        async with asyncio.timeout(timeout):
            while True:
                for at, message in self.messages:
                    if field in message.split("\n"):
                        return at
                self.drain()
                await asyncio.sleep(0.02)

    async def wait_count(self, field: str, count: int, *, since: float, timeout: float = 20) -> None:  # noqa: ASYNC109
        """Wait until `count` messages with `field` were read at or after `since`."""
        async with asyncio.timeout(timeout):
            while self.count(field, since=since) < count:  # noqa: ASYNC110 - a socket drained by polling
                await asyncio.sleep(0.02)

    def count(self, field: str, since: float = 0.0) -> int:
        self.drain()
        return sum(1 for at, m in self.messages if at >= since and field in m.split("\n"))


@pytest.fixture(name="notify")
def fixture_notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.sock.close()


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto, notify: NotifySocket) -> AsyncIterator[CrashRig]:
    async with crash_rig(tmp_path, broker) as rig:
        # WatchdogSec=1s: kiosk pings every 0.5 s.
        rig.daemon.env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000")
        yield rig


async def test_ready_watchdog_and_stopping(rig: CrashRig, notify: NotifySocket) -> None:
    started = time.monotonic()
    rig.daemon.start()
    ready = await notify.wait_for("READY=1")
    print(f"start -> READY=1: {ready - started:.2f} s")
    # Fed again and again after READY (every 0.5 s when idle); waited for, not counted after a
    # fixed sleep, so a slow start on a loaded machine does not make it look unfed.
    await notify.wait_count("WATCHDOG=1", 3, since=ready)
    assert await asyncio.to_thread(rig.daemon.terminate) == 0
    await notify.wait_for("STOPPING=1", timeout=2)


async def test_ready_does_not_wait_for_the_broker(rig: CrashRig, notify: NotifySocket, broker: Mosquitto) -> None:
    broker.stop()
    rig.daemon.start()
    await notify.wait_for("READY=1")
    assert rig.daemon.alive()


async def test_a_wedged_event_loop_stops_feeding_the_watchdog(rig: CrashRig, notify: NotifySocket) -> None:
    rig.daemon.env["KIOSK_TEST_WEDGE_AT"] = "after_create"
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order(None, "o-1", 250)
    await notify.wait_for("READY=1")
    async with asyncio.timeout(20):
        while "wedge point after_create reached" not in rig.daemon.log():  # noqa: ASYNC110 - a file to poll
            await asyncio.sleep(0.05)
    notify.drain()  # pings sent before the wedge are stamped now, before `wedged`
    wedged = time.monotonic()
    await asyncio.sleep(2.0)
    assert rig.daemon.alive()
    assert notify.count("WATCHDOG=1", since=wedged) == 0
    rig.daemon.kill()
