"""The ledger: every PaymentIntent and reader action, for checking kiosk's money-safety invariants."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True, slots=True)
class Capture:
    """One capture of an intent."""

    amount: int
    at: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """One cancellation (by the API or by an expired authorisation)."""

    reason: str | None
    released: int
    at: float
    expired: bool


@dataclass(frozen=True, slots=True)
class IntentRecord:
    """A PaymentIntent as the ledger sees it, with its capture and cancel history."""

    id: str
    status: str
    amount: int
    currency: str
    amount_capturable: int
    amount_received: int
    metadata: Mapping[str, str]
    created: int
    capture_before: float | None
    captures: tuple[Capture, ...]
    cancels: tuple[Cancel, ...]
    history: tuple[Mapping[str, Any], ...]

    @property
    def order_id(self) -> str | None:
        """The `order_id` kiosk puts in the metadata, if any."""
        return self.metadata.get("order_id")

    @property
    def authorised(self) -> bool:
        """True when a card was ever authorised for this intent."""
        return any(e["event"] in ("authorised", "captured") for e in self.history)


@dataclass(frozen=True, slots=True)
class ReaderAction:
    """One action a reader ran, and how it ended (`in_progress` while it runs)."""

    id: str
    reader: str
    type: str
    payment_intent: str | None
    status: str
    failure_code: str | None
    started_at: float
    ended_at: float | None
    card: str | None


@dataclass(frozen=True, slots=True)
class Ledger:
    """A snapshot of the simulated account at `now`."""

    now: float
    intents: tuple[IntentRecord, ...]
    reader_actions: tuple[ReaderAction, ...]

    def for_order(self, order_id: str) -> tuple[IntentRecord, ...]:
        """Every intent whose `metadata.order_id` is this order."""
        return tuple(i for i in self.intents if i.order_id == order_id)

    def uncaptured(self) -> tuple[IntentRecord, ...]:
        """Intents still holding an authorisation (status `requires_capture`)."""
        return tuple(i for i in self.intents if i.status == "requires_capture")

    def captured_total(self, order_id: str) -> int:
        """Everything captured for an order, over all its intents."""
        return sum(c.amount for i in self.for_order(order_id) for c in i.captures)

    def as_json(self) -> dict[str, Any]:
        """The ledger as `GET /_simulator/ledger` returns it."""
        return {
            "now": self.now,
            "intents": [{**asdict(i), "metadata": dict(i.metadata)} for i in self.intents],
            "reader_actions": [asdict(a) for a in self.reader_actions],
        }
