"""The reconciler: finds this kiosk's PaymentIntents that no open order accounts for, and releases them.

Search (by `metadata.kiosk_id`) is Stripe's only way to find PIs whose id the journal lost, and it
lags, so it is the backstop, not the main path: every open order settles its own PI. A PI is
released when it is still uncaptured and its order is unknown to the journal, ended, or
names another PI. Open orders are left alone — they settle their own PI, and a PI created a
moment ago may not be saved yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kiosk import logs
from kiosk.errors import StripeRefused, UpstreamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiosk.gateway import Intent
    from kiosk.journal import Journal

log = logs.get("reconciler")

OPEN_STATUSES = frozenset(
    {"requires_payment_method", "requires_confirmation", "requires_action", "processing", "requires_capture"}
)


class Stripe(Protocol):
    """What the reconciler needs of the gateway."""

    async def search_intents(
        self, kiosk_id: str, status: str | None = None, *, open_only: bool = False
    ) -> list[Intent]: ...
    async def cancel_intent(self, pi_id: str, *, reason: Any = "abandoned", key: str) -> Intent: ...


@dataclass(frozen=True, slots=True)
class Report:
    """What one pass found and did."""

    seen: int
    released: tuple[str, ...]
    failed: tuple[str, ...]


class Reconciler:
    """One pass at a time; `run_once` is what the periodic task and the fleet command call."""

    def __init__(
        self,
        kiosk_id: str,
        journal: Journal,
        gateway: Stripe,
        *,
        is_open: Callable[[str], bool],
    ) -> None:
        self._kiosk_id = kiosk_id
        self._journal = journal
        self._gateway = gateway
        self._is_open = is_open
        self._lock = asyncio.Lock()

    async def run_once(self) -> Report:
        """Search, compare with the journal, release what nobody owns.

        Raises:
            UpstreamError: the search itself failed (try again later).
        """
        async with self._lock:
            # Only what may still hold money: a kiosk's past sales (thousands after a few weeks)
            # would fill every answer, cost ten requests a pass and crowd out an orphan.
            intents = await self._gateway.search_intents(self._kiosk_id, open_only=True)
            released: list[str] = []
            failed: list[str] = []
            for intent in intents:
                if intent.status not in OPEN_STATUSES or not await self._orphaned(intent):
                    continue
                try:
                    await self._gateway.cancel_intent(
                        intent.id, reason="abandoned", key=f"kiosk:{self._kiosk_id}:reconcile:{intent.id}:cancel"
                    )
                except StripeRefused as exc:
                    # Already canceled or captured meanwhile: nothing to release.
                    log.info("reconciler.not_released", intent=intent.id, code=exc.code)
                    continue
                except UpstreamError as exc:
                    log.warning("reconciler.release_failed", intent=intent.id, code=exc.code)
                    failed.append(intent.id)
                    continue
                log.warning(
                    "payment.released",
                    intent=intent.id,
                    order_id=intent.metadata.get("order_id"),
                    status=intent.status,
                    by="reconciler",
                )
                released.append(intent.id)
            return Report(seen=len(intents), released=tuple(released), failed=tuple(failed))

    async def _orphaned(self, intent: Intent) -> bool:
        order_id = intent.metadata.get("order_id")
        if order_id is None:
            return True
        if self._is_open(order_id):
            return False
        stored = await self._journal.call(self._journal.get, order_id)
        if stored is None or not stored.terminal:
            # Unknown to the journal (it was lost), or open but not yet driven: only the former
            # is ours to release; an open order settles its own PI.
            return stored is None
        return True
