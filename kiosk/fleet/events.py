"""The fleet event outbox: business events kept until the fleet acknowledges them.

Events are appended to the journal (kiosk.fleet.store) in their own transaction with a `seq`
that never resets (SQLite AUTOINCREMENT never reuses a value), published QoS 1, and kept until
a retained `events/ack` with `upto_seq` covers them. Unacknowledged events are sent again after
every reconnect and `resend_after_s` after their last send, with the same `id` and `seq`, so
receivers dedupe on `id`: delivery is at least once across crashes and broker outages.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kiosk import logs
from kiosk.errors import BusUnavailable
from kiosk.fleet import payloads
from kiosk.fleet.store import EventStats, FleetStore, NewEvent, StoredEvent

if TYPE_CHECKING:
    from kiosk.model import OrderData

log = logs.get("fleet")

RESEND_AFTER_S = 60.0
KEEP_ACKED_S = 7 * 24 * 3600.0
BATCH = 100

Publish = Callable[[str, bytes], Awaitable[None]]


def order_event(order: OrderData) -> NewEvent:
    """The event for an order that reached its final state (`order.completed`, …)."""
    reason = order.reason
    data: dict[str, Any] = {
        "order_id": order.order_id,
        "state": order.state.value,
        "amount": order.amount,
        "currency": order.currency,
        "captured_amount": order.captured_amount,
        "intent": order.intent_id,
        "reason": None if reason is None else {"code": reason.code, "message": reason.message},
    }
    return NewEvent(
        id=uuid.uuid4().hex,
        type=f"order.{order.state.value}",
        data=data,
        key=f"order:{order.order_id}:{order.state.value}",
    )


class EventOutbox:
    """Appends events durably and sends them until acknowledged (one task: `run`)."""

    def __init__(
        self,
        store: FleetStore,
        topic: str,
        *,
        resend_after_s: float = RESEND_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._topic = topic
        self._resend_after_s = resend_after_s
        self._clock = clock
        self._bell = asyncio.Event()

    async def add(self, *events: NewEvent) -> list[int]:
        """Append events (durable when this returns) and wake the sender; returns their seqs."""
        seqs = await self._store.journal.call(self._store.append, events, self._clock())
        if seqs:
            log.info("fleet.event", types=[e.type for e in events], seqs=seqs)
            self._bell.set()
        return seqs

    def add_soon(self, *events: NewEvent) -> asyncio.Task[list[int]]:
        """`add` from synchronous code (the runner's hook); the task is returned to keep it alive."""
        return asyncio.get_running_loop().create_task(self.add(*events), name="fleet-event")

    async def ack(self, upto_seq: int) -> None:
        """Apply the fleet's acknowledgement."""
        done = await self._store.journal.call(self._store.ack, upto_seq)
        if done is None:
            log.warning(
                "fleet.ack_ahead", upto_seq=upto_seq, detail="the fleet acknowledged events this journal never had"
            )
        elif done:
            log.info("fleet.events_acked", upto_seq=upto_seq, count=done)

    async def reconnected(self) -> None:
        """After a (re)connect every unacknowledged event is due again: the broker may have lost it."""
        await self._store.journal.call(self._store.unsend)
        self._bell.set()

    def _look(self, resend_before: float) -> tuple[list[StoredEvent], EventStats | None]:
        """On the journal's thread: the events due, or, when none is, the outbox's figures."""
        rows = self._store.due(resend_before, BATCH)
        return rows, None if rows else self._store.stats()

    def _mark_and_look(
        self, sent: list[int], at: float, resend_before: float
    ) -> tuple[list[StoredEvent], EventStats | None]:
        """On the journal's thread: mark what the broker took, then `_look` (one hand-off, not two)."""
        self._store.mark_sent(sent, at)
        return self._look(resend_before)

    async def run(self, publish: Publish, wait_connected: Callable[[], Awaitable[None]]) -> None:
        """Send due events for ever; sleeps until an event is added or a re-send is due."""
        while True:
            await wait_connected()
            now = self._clock()
            self._bell.clear()  # before looking: an event added from now on rings it again
            rows, stats = await self._store.journal.call(self._look, now - self._resend_after_s)
            while stats is None:  # events are due
                sent = await self._send(rows, publish)
                if sent is None:
                    break  # the bus failed: wait for it again
                now = self._clock()
                self._bell.clear()
                rows, stats = await self._store.journal.call(self._mark_and_look, sent, now, now - self._resend_after_s)
            if stats is None:
                continue
            timeout = None
            if stats.last_sent_at is not None:
                timeout = max(0.5, stats.last_sent_at + self._resend_after_s - now)
            try:
                async with asyncio.timeout(timeout):
                    await self._bell.wait()
            except TimeoutError:
                pass

    async def _send(self, rows: list[StoredEvent], publish: Publish) -> list[int] | None:
        """Publish `rows` in seq order: their seqs, or None once the bus failed (those sent are marked)."""
        sent: list[int] = []
        try:
            for row in rows:
                body = payloads.event(
                    seq=row.seq, event_id=row.id, type_=row.type, created_at=row.created_at, data=row.data
                )
                await publish(self._topic, body)
                sent.append(row.seq)
        except BusUnavailable as exc:
            log.info("fleet.events_interrupted", reason=str(exc))
            await self._mark(sent)
            await asyncio.sleep(0.5)
            return None
        except BaseException:
            await self._mark(sent)  # stopping: what the broker took is not sent again until the re-send time
            raise
        return sent

    async def _mark(self, sent: list[int]) -> None:
        if sent:
            await self._store.journal.call(self._store.mark_sent, sent, self._clock())
