"""In-process rig for fault tests: the real Runner, Gateway, Journal and Availability, no MQTT.

Each `Lane` is one kiosk: its own simulator (in a thread, so its clock and faults are its own),
a registered reader, a journal in a temporary directory, the stripe-python gateway over real HTTP
on loopback, and the runner driving orders on the test's event loop. Controller messages go in
through `Runner.on_message` (what the bus adapter calls); statuses come out of the journal's
outbox. Lanes run side by side, so many faults are tried in the time of a few.

Policies are quick (a 3 s card timeout, 0.2 s polls, a 2.5 s step budget, 1 s per request), so
every ending comes within seconds; the state machine is the same as in production.
"""

# The lane's waits take a `timeout` argument on purpose: each scenario says how long it allows.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from kiosk.availability import Availability
from kiosk.errors import UpstreamError
from kiosk.gateway import Gateway
from kiosk.journal import Journal
from kiosk.model import Call, CallSucceeded, Event, Op, OrderData, Policy
from kiosk.runner import Runner, RunnerConfig, decode, failure_event, reader_view

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from kiosk.simulator import Simulator
    from kiosk.simulator.app import ThreadHandle
    from kiosk.simulator.ledger import IntentRecord

API_KEY = "sk_test_kioskFaults00000000000000"
PREFIX = "vend/v1"
REQUEST_TIMEOUT_S = 1.0
ENDED = ("completed", "canceled", "failed", "rejected")

FAST = Policy(
    kiosk_id="k1",
    card_timeout_s=3.0,
    max_card_attempts=3,
    vend_result_timeout_s=3.0,
    poll_first_s=0.2,
    poll_interval_s=0.2,
    poll_slow_after_s=10.0,
    poll_slow_s=0.4,
    backoff_base_s=0.05,
    backoff_cap_s=0.4,
    step_budget_s=2.5,
)


def envelope() -> dict[str, Any]:
    """A fresh message envelope."""
    return {"v": 1, "id": uuid.uuid4().hex, "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


@dataclass
class Lane:
    """One kiosk and its own simulator; see the module docstring."""

    handle: ThreadHandle
    reader: str
    journal: Journal
    gateway: Gateway
    availability: Availability
    runner: Runner | None = None
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    messages: int = 0

    @property
    def sim(self) -> Simulator:
        """This lane's simulator."""
        return self.handle.simulator

    @property
    def run(self) -> Runner:
        """The runner (started)."""
        assert self.runner is not None
        return self.runner

    # -- plumbing -----------------------------------------------------------------------------

    def drain(self) -> None:
        """Take the outbox's statuses (the bus would publish them); called after each save."""
        rows = self.journal.pending_outbox(1000)
        for row in rows:
            if row.topic.endswith("/status"):
                payload = json.loads(row.payload)
                self.statuses.setdefault(payload["order_id"], []).append(payload)
        if rows:
            self.journal.mark_sent([row.id for row in rows])
        self.changed.set()

    def observe(self, call: Call, event: Event) -> None:
        """What the service does with each outcome: availability."""
        self.availability.observe(call, event, time.time())

    def ended(self, order: OrderData) -> None:
        """What the service does with each ended order: availability."""
        self.availability.order_ended(order, time.time())

    async def check_reader(self) -> None:
        """One turn of the service's idle reader check (what makes payments available again)."""
        call = Call(Op.READ_READER)
        try:
            event: Event = CallSucceeded(call, reader=reader_view(await self.gateway.retrieve_reader()))
        except UpstreamError as exc:
            event = failure_event(call, exc)
        self.observe(call, event)

    # -- the controller's side ------------------------------------------------------------------

    async def send(self, order_id: str, kind: str, body: dict[str, Any]) -> str:
        """A controller message, applied as the bus adapter would; returns its id."""
        full = {**envelope(), "order_id": order_id, **body}
        await self.run.on_message(f"{PREFIX}/order/{order_id}/{kind}", json.dumps(full).encode())
        self.messages += 1
        return str(full["id"])

    async def request(self, order_id: str, amount: int, *, items: bool = False) -> str:
        """Publish an order (with a one-line cart when `items`)."""
        body: dict[str, Any] = {"amount": amount, "currency": "usd"}
        if items:
            body["items"] = [{"sku": "w1", "name": "Water", "quantity": 1, "unit_amount": amount}]
        return await self.send(order_id, "request", body)

    async def vend(self, order_id: str, result: str = "success") -> None:
        """Report the vend result."""
        await self.send(order_id, "vend_result", {"result": result})

    async def cancel(self, order_id: str) -> None:
        """Cancel the order."""
        await self.send(order_id, "cancel", {"reason": "customer walked away"})

    def states(self, order_id: str) -> list[str]:
        """The states published for an order, in order."""
        return [s["state"] for s in self.statuses.get(order_id, [])]

    def last(self, order_id: str) -> dict[str, Any]:
        """The latest status."""
        return self.statuses[order_id][-1]

    async def wait_until(self, check: Callable[[], bool], timeout: float = 15) -> None:
        """Wait until `check()` holds (checked after every status)."""
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):  # also sees changes that publish nothing
                        await self.changed.wait()

    async def wait_for(self, order_id: str, *states: str, timeout: float = 15) -> dict[str, Any]:
        """Wait until the order's latest status is one of `states`."""
        await self.wait_until(
            lambda: bool(self.statuses.get(order_id)) and self.last(order_id)["state"] in states, timeout
        )
        return self.last(order_id)

    async def wait_settled(self, order_id: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until the order has ended and nothing of it is left running."""
        status = await self.wait_for(order_id, *ENDED, timeout=timeout)
        await self.wait_until(lambda: self.run.order(order_id) is None, timeout)
        return status

    def order(self, order_id: str) -> OrderData:
        """The order as the journal keeps it."""
        stored = self.journal.get(order_id)
        assert stored is not None, order_id
        return decode(stored.data_json)

    def intents(self, order_id: str) -> tuple[IntentRecord, ...]:
        """The simulator's PaymentIntents for an order."""
        return self.sim.ledger().for_order(order_id)

    # -- resetting between cells ----------------------------------------------------------------

    async def restore(self) -> None:
        """Every fault away, the reader back and idle, and payments available again."""
        sim = self.sim
        sim.clear_faults()
        sim.set_reader_online(self.reader, online=True)
        sim.reader_hardware_fault(self.reader, faulty=False)
        sim.set_authorisation_delay(self.reader, 0)
        sim.set_rate_limit(None)
        sim.auto_present(self.reader, None)
        with sim._lock:  # no control call empties the queued reader faults
            state = sim.readers.get(self.reader)
            state.timeouts.clear()
            state.connection_errors.clear()
        self.availability.reset_reader_fault()  # a person saw to the reader
        for _ in range(3):
            await self.check_reader()
            if self.availability.refusal() is None:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"payments still unavailable: {self.availability.reason()}")


@contextlib.asynccontextmanager
async def lane(workdir: Path, *, seed: int = 7, policy: Policy = FAST, sim_clock: bool = False) -> AsyncIterator[Lane]:
    """A started lane; the runner stops and the simulator with it on exit.

    With `sim_clock`, the runner's clock is the simulator's: a test advances both at once.
    """
    from kiosk.simulator import Simulator  # noqa: PLC0415 - keeps the simulator out of unit imports

    handle = Simulator(seed=seed).start_in_thread()
    reader = handle.simulator.register_reader("simulated-wpe")
    journal = Journal.in_dir(workdir)
    gateway = Gateway(
        api_key=SecretStr(API_KEY),
        api_base=handle.url,
        api_version=None,
        reader_id=reader,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )
    the_lane = Lane(handle, reader, journal, gateway, Availability(reader, step_failure_hold_s=0.0))
    the_lane.runner = Runner(
        RunnerConfig(kiosk_id="k1", topic_prefix=PREFIX, currencies=("usd",), max_amount=100_000, policy=policy),
        journal,
        gateway,
        outbox_ready=the_lane.drain,
        on_outcome=the_lane.observe,
        accepting=the_lane.availability.refusal,
        on_terminal=the_lane.ended,
        clock=handle.simulator.now if sim_clock else time.time,
    )
    task = asyncio.create_task(the_lane.runner.run())
    try:
        await the_lane.check_reader()
        yield the_lane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gateway.close()
        journal.close()
        handle.stop()


def with_policy(**changes: Any) -> Policy:
    """FAST with some fields changed."""
    return replace(FAST, **changes)


# --- The invariants, against the simulator's ledger --------------------------------------------------


def money_problems(the_lane: Lane, order_id: str, *, vended: int | None) -> list[str]:  # noqa: C901, PLR0912 - one check per invariant
    """design.md's invariants for one ended order; an empty list when they hold.

    Args:
        the_lane: where the order ran.
        order_id: the order.
        vended: the amount the controller reported dispensed (None: no success was reported).
    """
    problems: list[str] = []
    intents = the_lane.intents(order_id)
    states = the_lane.states(order_id)
    final = the_lane.last(order_id) if states else None
    if len(intents) > 1:
        problems.append(f"{len(intents)} PaymentIntents")
    captures = [c.amount for i in intents for c in i.captures]
    if len(captures) > 1:
        problems.append(f"captured {len(captures)} times")
    for intent in intents:
        if intent.amount_received > intent.amount:
            problems.append("captured more than the amount")
        if "approved" in states and not intent.authorised:
            problems.append("approved without an authorisation")
    if captures and vended is None:
        problems.append("captured without a vend success")
    if final is None:
        problems.append("no status")
        return problems
    seqs = [s["seq"] for s in the_lane.statuses[order_id] if s["seq"]]
    if seqs != sorted(set(seqs)):
        problems.append(f"status seqs not rising: {seqs}")
    if final["state"] == "completed":
        if captures != [vended]:
            problems.append(f"completed with captures {captures}, vended {vended}")
    elif final["state"] in {"canceled", "failed", "rejected"}:
        if captures:
            problems.append(f"{final['state']} but captured {captures}")
        left = [i.id for i in intents if i.status != "canceled"]
        reason = (final.get("reason") or {}).get("code")
        if left and reason != "release_pending":
            problems.append(f"{final['state']}/{reason} with PaymentIntents left {left}")
    else:
        problems.append(f"not ended: {final['state']}")
    return problems


async def happy_order(the_lane: Lane, order_id: str, amount: int = 400) -> list[str]:
    """An order that must simply work (the one after each fault); returns the problems seen."""
    the_lane.sim.auto_present(the_lane.reader, 0.2)
    await the_lane.request(order_id, amount)
    status = await the_lane.wait_for(order_id, "approved", *ENDED)
    if status["state"] != "approved":
        return [f"next order ended {status['state']}/{(status.get('reason') or {}).get('code')}"]
    await the_lane.vend(order_id)
    status = await the_lane.wait_settled(order_id)
    the_lane.sim.auto_present(the_lane.reader, None)
    problems = money_problems(the_lane, order_id, vended=amount)
    if status["state"] != "completed":
        problems.append(f"next order ended {status['state']}")
    return problems
