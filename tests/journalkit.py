"""Journal test helpers: an injected clock, a status message, a new order saved as the runner saves it."""

from __future__ import annotations

from kiosk.journal import Journal, OutboxMessage


class Clock:
    """Wall-clock seconds that the test sets (`clock.now += …`)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def status(order_id: str, seq: int) -> OutboxMessage:
    """The order's status message `seq`, as the runner queues it."""
    return OutboxMessage(
        topic=f"vend/v1/order/{order_id}/status",
        payload=f'{{"order_id":"{order_id}","seq":{seq}}}'.encode(),
        retain=True,
        expiry_s=86_400,
        status_seq=seq,
    )


TERMINAL = frozenset({"completed", "canceled", "rejected", "failed"})


def new_order(journal: Journal, order_id: str, *, state: str = "received", queued: bool = True) -> int:
    """Save a new order in `state`, with its first status queued unless not `queued`; returns its status seq."""
    return journal.save(
        order_id,
        request_hash="h-" + order_id,
        request_json=f'{{"order_id":"{order_id}","amount":250}}',
        state=state,
        terminal=state in TERMINAL,
        data_json=f'{{"state":"{state}"}}',
        transition=(None, state, "request"),
        outbox=[status(order_id, 1)] if queued else [],
    )
