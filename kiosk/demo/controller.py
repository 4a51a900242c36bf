"""A simulated vending controller that speaks protocol.md §1, for the demo and the tests.

It behaves as a well-made controller should: it sends an order request and re-sends the very same
request until a status for it arrives (a request can be lost while the daemon restarts); a
retryable `rejected` (busy, payments unavailable) is sent again later; it dispenses once, on the
first `approved`, and reports the `vend_result`; if the daemon asks again (another `approved` after
the report), it repeats the same report rather than dispensing twice. The daemon never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

TERMINAL = frozenset({"completed", "canceled", "failed", "rejected"})
RESEND_S = 1.0


@dataclass(frozen=True, slots=True)
class Order:
    """What the customer chose."""

    order_id: str
    amount: int
    currency: str = "usd"
    items: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class VendOutcome:
    """What came out of the machine: `success`, `failure` (nothing), or `partial` (`vended_amount`)."""

    result: Literal["success", "failure", "partial"]
    vended_amount: int | None = None


def envelope() -> dict[str, Any]:
    """A fresh message envelope (`v`, `id`, `ts`)."""
    return {"v": 1, "id": uuid.uuid4().hex, "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


def is_final(status: Mapping[str, Any]) -> bool:
    """True for a terminal status (a retryable `rejected` is not: the same request may come again)."""
    if status.get("state") not in TERMINAL:
        return False
    reason = status.get("reason")
    return not (status.get("state") == "rejected" and isinstance(reason, dict) and reason.get("retryable"))


@dataclass(frozen=True, slots=True)
class Hooks:
    """Who hears what the controller sees and does (the demo's timeline)."""

    on_status: Callable[[Mapping[str, Any]], object] | None = None  # every new order status
    on_daemon: Callable[[Mapping[str, Any]], object] | None = None  # every `kioskd/state`
    on_note: Callable[[str, str], object] | None = None  # (order_id, what the controller did)


@dataclass(slots=True)
class _Track:
    statuses: list[dict[str, Any]] = field(default_factory=list)
    keys: set[tuple[int, str]] = field(default_factory=set)


class VendingController:
    """The controller's side of the bus, over one MQTT connection.

    Args:
        client: a connected aiomqtt client.
        prefix: the topic prefix (`vend/v1`).
        hooks: called with every new order status (after de-duplication), every `kioskd/state`,
            and (order_id, text) when the controller does something worth telling.
        resend_s: how long to wait for a status before sending a request again.
    """

    def __init__(
        self, client: aiomqtt.Client, *, prefix: str = "vend/v1", hooks: Hooks | None = None, resend_s: float = RESEND_S
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.hooks = hooks or Hooks()
        self.resend_s = resend_s
        self.daemon_state: dict[str, Any] | None = None
        self._orders: dict[str, _Track] = defaultdict(_Track)
        self._changed = asyncio.Condition()

    async def subscribe(self) -> None:
        """Subscribe to every order status and the daemon's state."""
        await self.client.subscribe(f"{self.prefix}/order/+/status", qos=1)
        await self.client.subscribe(f"{self.prefix}/kioskd/state", qos=1)

    async def listen(self) -> None:
        """Take messages until cancelled."""
        async for message in self.client.messages:
            try:
                payload = json.loads(message.payload) if isinstance(message.payload, bytes | str) else None
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            topic = message.topic.value
            if topic == f"{self.prefix}/kioskd/state":
                self.daemon_state = payload
                if self.hooks.on_daemon is not None:
                    self.hooks.on_daemon(payload)
            elif topic.endswith("/status"):
                self._record(payload)
            async with self._changed:
                self._changed.notify_all()

    def _record(self, payload: dict[str, Any]) -> None:
        order_id = payload.get("order_id")
        seq = payload.get("seq")
        state = payload.get("state")
        if not isinstance(order_id, str) or not isinstance(seq, int) or not isinstance(state, str):
            return
        track = self._orders[order_id]
        # Retained statuses come again on every (re)subscription and after a daemon restart.
        if (seq, state) in track.keys:
            return
        track.keys.add((seq, state))
        track.statuses.append(payload)
        if self.hooks.on_status is not None:
            self.hooks.on_status(payload)

    def statuses(self, order_id: str) -> list[dict[str, Any]]:
        """Every distinct status seen for an order, in arrival order."""
        return list(self._orders[order_id].statuses)

    def states(self, order_id: str) -> list[str]:
        """The states seen for an order, in order."""
        return [str(s["state"]) for s in self._orders[order_id].statuses]

    async def _wait_change(self, at_most_s: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most_s):
                    await self._changed.wait()

    async def wait_for(self, order_id: str, *states: str) -> dict[str, Any]:
        """Wait until the order has reached one of `states` (any status seen, not only the latest)."""
        seen = 0
        while True:
            statuses = self._orders[order_id].statuses
            for status in statuses[seen:]:
                if status["state"] in states:
                    return status
            seen = len(statuses)
            await self._wait_change(1.0)

    async def wait_daemon(self, *, payments: str = "available", not_boot: str | None = None) -> dict[str, Any]:
        """Wait until the daemon says it is online with payments in the given state.

        `not_boot`: a boot id to ignore (the daemon as it was before a restart).
        """
        while True:
            state = self.daemon_state
            if (
                state is not None
                and state.get("state") == "online"
                and state.get("payments") == payments
                and (not_boot is None or state.get("boot_id") != not_boot)
            ):
                return state
            await self._wait_change(1.0)

    def _note(self, order_id: str, text: str) -> None:
        if self.hooks.on_note is not None:
            self.hooks.on_note(order_id, text)

    async def _publish(self, order_id: str, kind: str, body: bytes) -> None:
        await self.client.publish(f"{self.prefix}/order/{order_id}/{kind}", body, qos=1)

    async def buy(
        self, order: Order, dispense: Callable[[Mapping[str, Any]], Awaitable[VendOutcome]]
    ) -> dict[str, Any]:
        """Sell one order the way protocol.md asks; returns its final status.

        `dispense` runs once, on the first `approved`, and says what came out.
        """
        request: dict[str, Any] = {
            **envelope(),
            "order_id": order.order_id,
            "amount": order.amount,
            "currency": order.currency,
        }
        if order.items:
            request["items"] = [dict(i) for i in order.items]
        request_body = json.dumps(request).encode()
        await self._publish(order.order_id, "request", request_body)
        track = self._orders[order.order_id]
        handled = len(track.statuses)
        answered = False
        report: bytes | None = None
        loop = asyncio.get_running_loop()
        resend_at = loop.time() + self.resend_s
        while True:
            while handled < len(track.statuses):
                status = track.statuses[handled]
                handled += 1
                answered = True
                if is_final(status):
                    return status
                if status["state"] == "rejected":
                    # Retryable: the order id is not used up; the same request is considered afresh.
                    answered = False
                    resend_at = loop.time() + self.resend_s
                elif status["state"] == "approved":
                    if report is None:
                        outcome = await dispense(status)
                        report = self._vend_result(order.order_id, outcome)
                        self._note(order.order_id, _describe_outcome(outcome))
                    else:
                        self._note(order.order_id, "asked again: repeats the same vend_result")
                    await self._publish(order.order_id, "vend_result", report)
            if not answered and loop.time() >= resend_at:
                self._note(order.order_id, "no status yet: sends the same request again")
                await self._publish(order.order_id, "request", request_body)
                resend_at = loop.time() + self.resend_s
            if handled == len(track.statuses):
                await self._wait_change(max(0.05, resend_at - loop.time()) if not answered else 1.0)

    async def cancel(self, order_id: str, reason: str) -> None:
        """Cancel an order (the customer walked away)."""
        body = {**envelope(), "order_id": order_id, "reason": reason}
        await self._publish(order_id, "cancel", json.dumps(body).encode())

    @staticmethod
    def _vend_result(order_id: str, outcome: VendOutcome) -> bytes:
        body: dict[str, Any] = {**envelope(), "order_id": order_id, "result": outcome.result}
        if outcome.vended_amount is not None:
            body["vended_amount"] = outcome.vended_amount
        return json.dumps(body).encode()


def _describe_outcome(outcome: VendOutcome) -> str:
    if outcome.result == "success":
        return "dispensed; reports vend_result success"
    if outcome.result == "partial":
        return f"dispensed part of the order; reports vend_result partial, vended_amount {outcome.vended_amount}"
    return "nothing came out; reports vend_result failure"


@contextlib.asynccontextmanager
async def connect(
    host: str, port: int, *, prefix: str = "vend/v1", hooks: Hooks | None = None
) -> AsyncIterator[VendingController]:
    """A connected, subscribed, listening controller."""
    identifier = f"vending-controller-{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client(host, port, identifier=identifier) as client:
        ctl = VendingController(client, prefix=prefix, hooks=hooks)
        await ctl.subscribe()
        task = asyncio.create_task(ctl.listen(), name="controller-listen")
        try:
            yield ctl
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
