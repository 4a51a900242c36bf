"""End-to-end harness: the real `kiosk run` process, a private Mosquitto, the simulator, a controller.

The daemon runs as a subprocess (so tests can SIGKILL and SIGTERM it); the controller is an
aiomqtt client in the test that speaks protocol.md §1; the simulator runs in a thread of the
test process and its ledger is what the money-safety assertions check.
"""

# The harness's waits take a `timeout` argument on purpose: each test says how long it allows.
# ruff: noqa: ASYNC109

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
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from kiosk.mosquitto import Mosquitto
    from kiosk.simulator import Simulator
    from kiosk.simulator.ledger import IntentRecord

API_KEY = "sk_test_kioskE2E0000000000000000"
PREFIX = "vend/v1"


@dataclass(frozen=True, slots=True)
class Seen:
    """One message a controller received: topic, JSON payload, retain flag, MQTT 5 expiry left."""

    topic: str
    payload: dict[str, Any]
    retain: bool
    expiry_s: int | None


def _expiry(message: aiomqtt.Message) -> int | None:
    value = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
    return int(value) if value is not None else None


async def retained(host: str, port: int, topic: str, *, mqtt5: bool = True) -> list[Seen]:
    """What a new subscriber to `topic` gets from the broker's retained store, right now.

    A marker published after subscribing comes back after every retained message (the broker
    keeps one connection's messages in order), so no waiting on a clock is needed. A message
    published meanwhile arrives live (its retain flag off) and is not part of that store.
    """
    marker = f"test/marker/{uuid.uuid4().hex}"
    found: list[Seen] = []
    protocol = aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(host, port, identifier=f"probe-{uuid.uuid4().hex[:8]}", protocol=protocol) as client:
        await client.subscribe(topic, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"{}", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if message.topic.value == marker:
                    break
                if not message.retain:
                    continue
                payload = json.loads(message.payload) if message.payload else {}
                found.append(Seen(message.topic.value, payload, message.retain, _expiry(message)))
    return found


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
            # The pace these tests were timed for (the default, 2 s, makes each sale wait longer;
            # tests/test_polling_budget.py counts the default schedule's reads).
            "KIOSK_PAYMENTS__POLL_INTERVAL_S": "1",
            "KIOSK_FLEET__ENABLED": "false",
            **{f"KIOSK_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        # A command the daemon runs under (strace); `terminate` then signals the daemon itself.
        self.wrapper: list[str] = []

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
                [*self.wrapper, sys.executable, "-m", "kiosk", "run"],
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
        pid = self.proc.pid
        # Under a wrapper, strace would detach on SIGTERM and leave the daemon running: the
        # daemon gets it, and the wrapper ends with it. A daemon already gone leaves no child.
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if self.wrapper else []
        if children:
            os.kill(int(children[0]), signal.SIGTERM)
        else:
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
        self.reader_state: dict[str, Any] | None = None
        self.seen: list[Seen] = []
        self._changed = asyncio.Event()

    async def _listen(self) -> None:
        async for message in self.client.messages:
            payload = json.loads(message.payload) if message.payload else {}
            topic = message.topic.value
            self.seen.append(Seen(topic, payload, message.retain, _expiry(message)))
            if topic == f"{PREFIX}/kioskd/state":
                self.daemon_state = payload
            elif topic == f"{PREFIX}/reader/state":
                self.reader_state = payload
            elif topic.endswith("/status"):
                self.statuses[payload["order_id"]].append(payload)
            self._changed.set()
            # Let the waiters look before the next message: messages that arrived together are
            # taken from aiomqtt's queue without a pause, and a short-lived state (`declined`,
            # re-prompted a few ms later) would otherwise be gone before `wait_for` saw it.
            await asyncio.sleep(0)

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
        await self.cancel_id(order_id)

    async def cancel_id(self, order_id: str) -> str:
        """Cancel the order; returns the cancel message's id."""
        body = {**envelope(), "order_id": order_id, "reason": "customer walked away"}
        await self.client.publish(f"{PREFIX}/order/{order_id}/cancel", json.dumps(body), qos=1)
        return str(body["id"])

    async def vend_id(self, order_id: str, result: str, vended_amount: int | None = None) -> str:
        """Report the vend result; returns the message's id."""
        body = {**envelope(), "order_id": order_id, "result": result}
        if vended_amount is not None:
            body["vended_amount"] = vended_amount
        await self.client.publish(f"{PREFIX}/order/{order_id}/vend_result", json.dumps(body), qos=1)
        return str(body["id"])

    async def send(self, order_id: str, kind: str, body: dict[str, Any]) -> str:
        """Publish `body` (an envelope is added under it) on the order's `kind` topic; returns its id."""
        full = {**envelope(), **body}
        await self.client.publish(f"{PREFIX}/order/{order_id}/{kind}", json.dumps(full), qos=1)
        return str(full.get("id"))

    async def wait_until(self, check: Callable[[], bool], timeout: float = 20) -> None:
        """Wait until `check()` holds (checked after every message received)."""
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    async def wait_reply(self, order_id: str, in_reply_to: str, timeout: float = 20) -> dict[str, Any]:
        """The first status of an order that answers the message `in_reply_to`."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [s for s in self.statuses.get(order_id, []) if s.get("in_reply_to") == in_reply_to]
            return bool(found)

        await self.wait_until(check, timeout)
        return found[0]

    async def wait_payments(self, payments: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until kioskd/state says payments are `payments` (online)."""
        await self.wait_until(
            lambda: self.daemon_state is not None and self.daemon_state.get("payments") == payments, timeout
        )
        assert self.daemon_state is not None
        return self.daemon_state

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
async def controller(
    host: str,
    port: int,
    *,
    identifier: str | None = None,
    persistent: bool = False,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
) -> AsyncIterator[Controller]:
    """A connected controller listening to every status (and, with `persistent`, keeping its session)."""
    async with aiomqtt.Client(
        host,
        port,
        identifier=identifier or f"controller-{uuid.uuid4().hex[:8]}",
        clean_session=False if persistent else None,
        protocol=protocol,
    ) as client:
        ctl = Controller(client)
        await client.subscribe(f"{PREFIX}/order/+/status", qos=1)
        await client.subscribe(f"{PREFIX}/kioskd/state", qos=1)
        await client.subscribe(f"{PREFIX}/reader/state", qos=1)
        task = asyncio.create_task(ctl._listen())
        try:
            yield ctl
        finally:
            task.cancel()


# --- The rig: everything a test of the engine needs, started together -----------------------------


@dataclass
class Rig:
    """Mosquitto, the simulator with a registered reader, `kiosk run`, and a controller."""

    sim: Simulator
    reader: str
    daemon: Daemon
    ctl: Controller
    broker: Mosquitto

    def intents(self, order_id: str) -> tuple[IntentRecord, ...]:
        """The simulator's PaymentIntents for an order."""
        return self.sim.ledger().for_order(order_id)

    async def retained_status(self, order_id: str) -> Seen:
        """The order's status as a new subscriber gets it (MQTT 5)."""
        found = await retained(self.broker.host, self.broker.port, f"{PREFIX}/order/{order_id}/status")
        assert len(found) == 1, found
        return found[0]

    def assert_money_safe(self) -> None:
        """design.md's invariants against the simulator's ledger, for every order seen."""
        ledger = self.sim.ledger()
        for order_id in {i.order_id for i in ledger.intents if i.order_id is not None}:
            intents = ledger.for_order(order_id)
            assert len(intents) == 1, f"order {order_id} has {len(intents)} PaymentIntents"
            intent = intents[0]
            captured = ledger.captured_total(order_id)
            assert captured <= intent.amount
            assert len(intent.captures) <= 1
            states = self.ctl.states(order_id)
            if captured:
                assert states[-1] == "completed", (order_id, states)
            if states and states[-1] in {"canceled", "failed"}:
                assert intent.status == "canceled", (order_id, intent.status)
        assert not ledger.uncaptured(), [i.id for i in ledger.uncaptured()]


@asynccontextmanager
async def start_rig(
    workdir: Path,
    broker: Mosquitto,
    *,
    controller_id: str | None = None,
    **settings: str,
) -> AsyncIterator[Rig]:
    """Start the simulator (seed 7) with a reader, `kiosk run` configured by `settings`, a controller.

    Settings are environment names without the `KIOSK_` prefix (`PAYMENTS__CARD_TIMEOUT_S="3"`);
    card and vend-result timeouts default to 3 s so that endings come quickly.
    """
    from kiosk.simulator import Simulator  # noqa: PLC0415 - keeps the simulator out of unit imports

    handle = Simulator(seed=7).start_in_thread()
    simulator = handle.simulator
    reader = simulator.register_reader("simulated-wpe")
    daemon = Daemon(
        workdir,
        broker_url=broker.url,
        api_base=handle.url,
        reader_id=reader,
        **{"PAYMENTS__CARD_TIMEOUT_S": "3", "PAYMENTS__VEND_RESULT_TIMEOUT_S": "3", **settings},
    )
    try:
        async with controller(
            broker.host, broker.port, identifier=controller_id, persistent=bool(controller_id)
        ) as ctl:
            daemon.start()
            try:
                await ctl.wait_daemon("online")
                yield Rig(simulator, reader, daemon, ctl, broker)
            finally:
                if daemon.alive():
                    daemon.terminate()
                print(daemon.log()[-5000:])  # shown by pytest when the test fails
    finally:
        handle.stop()


# --- Checks shared by the crash and recovery tests ----------------------------------------------


def assert_statuses_ordered(ctl: Controller, order_id: str) -> list[str]:
    """The order's statuses never go back: `seq` rises; a repeat is the same status again.

    A re-published status (after a crash, or for a redelivered message) carries the seq and id it
    had the first time, so a controller that keeps the highest seq is never misled. Returns the
    distinct states in order.
    """
    seen = [s for s in ctl.statuses[order_id] if s["state"] != "rejected" or s["seq"]]
    assert seen, f"no status for {order_id}"
    distinct: list[dict[str, Any]] = []
    for status in seen:
        if distinct and status["seq"] == distinct[-1]["seq"]:
            assert (status["id"], status["state"]) == (distinct[-1]["id"], distinct[-1]["state"]), (order_id, seen)
            continue
        assert not distinct or status["seq"] > distinct[-1]["seq"], (order_id, [(s["seq"], s["state"]) for s in seen])
        distinct.append(status)
    return [s["state"] for s in distinct]


def assert_settled(ledger: Any, ctl: Controller, captured: dict[str, int | None]) -> None:
    """design.md's invariants against the simulator's ledger for these orders.

    Args:
        ledger: the simulator's `Ledger`.
        ctl: the controller that followed the orders.
        captured: order id → the amount that must have been captured once, or None for none.
    """
    for order_id, amount in captured.items():
        intents = ledger.for_order(order_id)
        assert len(intents) <= 1, f"order {order_id} has {len(intents)} PaymentIntents"
        captures = [c.amount for i in intents for c in i.captures]
        final = ctl.statuses[order_id][-1]
        if amount is None:
            assert captures == [], (order_id, captures)
            assert final["state"] in {"canceled", "failed", "rejected"}, (order_id, final)
            assert all(i.status == "canceled" for i in intents), (order_id, [i.status for i in intents])
        else:
            assert captures == [amount], (order_id, captures)
            assert final["state"] == "completed", (order_id, final)
            assert final["captured_amount"] == amount
        assert_statuses_ordered(ctl, order_id)
    assert not ledger.uncaptured(), [(i.id, i.order_id) for i in ledger.uncaptured()]
