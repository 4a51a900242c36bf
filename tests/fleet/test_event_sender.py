"""The fleet event sender against a real journal: what it publishes, marks and asks the journal."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import pytest

from kiosk.errors import BusUnavailable
from kiosk.fleet.events import EventOutbox
from kiosk.fleet.store import FleetStore, NewEvent
from kiosk.journal import Journal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

TOPIC = "fleet/v1/k1/events"
NOW = 1_000.0
WAIT_S = 5


class Broker:
    """Takes event publishes; can refuse the nth one, or hold it until released."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.refuse_at: int | None = None
        self.hold_at: int | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._attempts = 0

    async def publish(self, topic: str, body: bytes) -> None:
        assert topic == TOPIC
        self._attempts += 1
        if self._attempts == self.refuse_at:
            raise BusUnavailable("connection lost while publishing")
        if self._attempts == self.hold_at:
            self.holding.set()
            await self.release.wait()
        self.seqs.append(json.loads(body)["seq"])


async def connected() -> None:
    return None


def events(*names: str) -> list[NewEvent]:
    return [NewEvent(name, "alert", {"name": name}) for name in names]


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Iterator[FleetStore]:
    with Journal.open(tmp_path / "kiosk.db") as journal:
        yield FleetStore(journal)


class Calls:
    """The names of the functions run on the journal's thread, in the order they finished."""

    def __init__(self, store: FleetStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        self._changed = asyncio.Condition()
        call = store.journal.call

        async def spy(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            result = await call(fn, *args, **kwargs)
            async with self._changed:
                self.names.append(fn.__name__)
                self._changed.notify_all()
            return result

        monkeypatch.setattr(store.journal, "call", spy)

    async def wait_for(self, name: str, count: int = 1) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: self.names.count(name) >= count)


async def sent_marks(store: FleetStore) -> list[float | None]:
    rows = await store.journal.call(store.due, NOW + 1)
    return [row.sent_at for row in rows]


@contextlib.asynccontextmanager
async def sending(outbox: EventOutbox, broker: Broker) -> AsyncIterator[asyncio.Task[None]]:
    sender = asyncio.create_task(outbox.run(broker.publish, connected))
    try:
        yield sender
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_an_event_costs_the_sender_one_look_and_one_mark_with_the_next_look(
    store: FleetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker()
    outbox = EventOutbox(store, TOPIC, clock=lambda: NOW)
    calls = Calls(store, monkeypatch)
    async with sending(outbox, broker):
        await calls.wait_for("_look")  # found nothing: the sender waits for an event
        await outbox.add(*events("a"))
        await calls.wait_for("_mark_and_look")
        await asyncio.sleep(0.05)  # and nothing more follows
    assert calls.names == ["_look", "append", "_look", "_mark_and_look"]
    assert broker.seqs == [1]
    assert await sent_marks(store) == [NOW]


async def test_events_the_broker_took_before_a_failure_are_marked_and_the_rest_follow(
    store: FleetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker()
    broker.refuse_at = 2
    outbox = EventOutbox(store, TOPIC, clock=lambda: NOW)
    await outbox.add(*events("a", "b", "c"))
    calls = Calls(store, monkeypatch)
    async with sending(outbox, broker):
        await calls.wait_for("_mark_and_look")
    assert broker.seqs == [1, 2, 3]  # the first not sent again: it was marked when the bus failed
    assert calls.names == ["_look", "mark_sent", "_look", "_mark_and_look"]
    assert await sent_marks(store) == [NOW, NOW, NOW]


async def test_stopping_mid_batch_marks_what_the_broker_took(store: FleetStore) -> None:
    broker = Broker()
    broker.hold_at = 2
    outbox = EventOutbox(store, TOPIC, clock=lambda: NOW)
    await outbox.add(*events("a", "b"))
    async with sending(outbox, broker) as sender:
        async with asyncio.timeout(WAIT_S):
            await broker.holding.wait()
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert broker.seqs == [1]
    assert await sent_marks(store) == [NOW, None]
