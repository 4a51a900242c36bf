"""End-to-end harness: the real `kiosk run` process, a private Mosquitto, the simulator, a controller.

The daemon runs as a subprocess (so tests can SIGKILL and SIGTERM it); the controller is an
aiomqtt client in the test that speaks protocol.md §1; the simulator runs in a thread of the
test process and its ledger is what the money-safety assertions check.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

API_KEY = "sk_test_kioskE2E0000000000000000"
PREFIX = "vend/v1"


def envelope() -> dict[str, Any]:
    """A fresh message envelope."""
    return {"v": 1, "id": uuid.uuid4().hex, "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


class Daemon:
    """`kiosk run` as a child process with an environment-only configuration."""

    def __init__(self, workdir: Path, *, broker_url: str, api_base: str, reader_id: str, **settings: str) -> None:
        self.workdir = workdir
        self.log_path = workdir / "daemon.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")},
            "KIOSK_ID": "k1",
            "KIOSK_STATE_DIR": str(workdir / "state"),
            "KIOSK_MQTT__URL": broker_url,
            "KIOSK_STRIPE__API_KEY": API_KEY,
            "KIOSK_STRIPE__API_BASE": api_base,
            "KIOSK_STRIPE__READER_ID": reader_id,
            "KIOSK_PAYMENTS__REQUEST_TIMEOUT_S": "5",
            "KIOSK_FLEET__ENABLED": "false",
            **{f"KIOSK_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, *, crash_at: str | None = None) -> None:
        """Start (or restart) the daemon; `crash_at` arms a crash point for this run."""
        env = dict(self.env)
        if crash_at:
            env["KIOSK_TEST_CRASH_AT"] = crash_at
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- run {self.runs} crash_at={crash_at}\n".encode())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kiosk", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, as systemd stop does; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    async def wait_exit(self, timeout: float = 20) -> int:
        """Wait for the process to end by itself (a crash point)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("daemon did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def log(self) -> str:
        """Everything the daemon wrote to stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Controller:
    """A vending controller on the local bus: publishes orders and follows their statuses."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.statuses: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.daemon_state: dict[str, Any] | None = None
        self._changed = asyncio.Event()

    async def _listen(self) -> None:
        async for message in self.client.messages:
            payload = json.loads(message.payload) if message.payload else {}
            topic = message.topic.value
            if topic == f"{PREFIX}/kioskd/state":
                self.daemon_state = payload
            elif topic.endswith("/status"):
                self.statuses[payload["order_id"]].append(payload)
            self._changed.set()

    async def request(self, order_id: str, amount: int, currency: str = "usd", **extra: Any) -> str:
        """Publish an order request; returns its message id."""
        body = {**envelope(), "order_id": order_id, "amount": amount, "currency": currency, **extra}
        await self.client.publish(f"{PREFIX}/order/{order_id}/request", json.dumps(body), qos=1)
        return str(body["id"])

    async def vend(self, order_id: str, result: str, vended_amount: int | None = None) -> None:
        """Report the vend result."""
        body = {**envelope(), "order_id": order_id, "result": result}
        if vended_amount is not None:
            body["vended_amount"] = vended_amount
        await self.client.publish(f"{PREFIX}/order/{order_id}/vend_result", json.dumps(body), qos=1)

    async def cancel(self, order_id: str) -> None:
        """Cancel the order."""
        body = {**envelope(), "order_id": order_id, "reason": "customer walked away"}
        await self.client.publish(f"{PREFIX}/order/{order_id}/cancel", json.dumps(body), qos=1)

    async def raw(self, topic: str, payload: bytes) -> None:
        """Publish anything."""
        await self.client.publish(topic, payload, qos=1)

    def states(self, order_id: str) -> list[str]:
        """The states seen for an order, in order."""
        return [s["state"] for s in self.statuses[order_id]]

    def last(self, order_id: str) -> dict[str, Any]:
        """The latest status of an order."""
        return self.statuses[order_id][-1]

    async def wait_for(self, order_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until the order's latest status is one of `states`."""
        async with asyncio.timeout(timeout):
            while True:
                seen = self.statuses.get(order_id)
                if seen and seen[-1]["state"] in states:
                    return seen[-1]
                self._changed.clear()
                await self._changed.wait()

    async def wait_daemon(self, state: str = "online", timeout: float = 20) -> dict[str, Any]:
        """Wait until kioskd/state says `state`."""
        async with asyncio.timeout(timeout):
            while self.daemon_state is None or self.daemon_state.get("state") != state:
                self._changed.clear()
                await self._changed.wait()
            return self.daemon_state


@asynccontextmanager
async def controller(host: str, port: int) -> AsyncIterator[Controller]:
    """A connected controller listening to every status."""
    async with aiomqtt.Client(host, port, identifier=f"controller-{uuid.uuid4().hex[:8]}") as client:
        ctl = Controller(client)
        await client.subscribe(f"{PREFIX}/order/+/status", qos=1)
        await client.subscribe(f"{PREFIX}/kioskd/state", qos=1)
        task = asyncio.create_task(ctl._listen())
        try:
            yield ctl
        finally:
            task.cancel()
