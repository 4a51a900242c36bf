"""Idempotency keys as Stripe keeps them: per API key, first response replayed, 24 h lifetime.

A response is stored when it is a success, a 5xx or a card error (402); validation failures, 404s,
conflicts and throttling are not stored, so the same key can be retried after fixing the request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from kiosk.simulator.wire import StripeError

DEFAULT_TTL = 24 * 3600.0
MAX_KEY_LENGTH = 255


@dataclass(slots=True)
class Stored:
    """A response kept for replay."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


@dataclass(slots=True)
class _Entry:
    fingerprint: Any
    created: float
    response: Stored | None = None  # None while the first request is still running


class IdempotencyKeys:
    """Stored responses by (API key, idempotency key)."""

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._order: deque[tuple[float, tuple[str, str]]] = deque()

    def begin(self, account: str, key: str, fingerprint: Any, now: float) -> Stored | None:
        """Claim the key for a request; returns a stored response to replay instead, if any."""
        if len(key) > MAX_KEY_LENGTH:
            raise StripeError(
                400,
                f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.",
                param="Idempotency-Key",
            )
        self.expire(now)
        entry = self._entries.get((account, key))
        if entry is None:
            self._entries[(account, key)] = _Entry(fingerprint, now)
            self._order.append((now, (account, key)))
            return None
        if entry.fingerprint != fingerprint:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were "
                f"first used with. Try using a key other than '{key}' if you meant to execute a "
                "different request.",
                type_="idempotency_error",
            )
        if entry.response is None:
            raise StripeError(
                409,
                "There is currently another in-progress request using this Stripe-Idempotency-Key. "
                "Please try again later.",
                code="idempotency_key_in_use",
                headers={"Stripe-Should-Retry": "true"},
            )
        return entry.response

    def finish(self, account: str, key: str, response: Stored) -> None:
        """Store the response if Stripe would, else release the key."""
        entry = self._entries.get((account, key))
        if entry is None:
            return
        if response.status < 400 or response.status >= 500 or response.status == 402:
            entry.response = response
        else:
            del self._entries[(account, key)]

    def release(self, account: str, key: str) -> None:
        """Forget a claim whose request never produced a response."""
        entry = self._entries.get((account, key))
        if entry is not None and entry.response is None:
            del self._entries[(account, key)]

    def expire(self, now: float) -> None:
        """Forget keys older than the TTL (on the simulator's clock)."""
        while self._order and self._order[0][0] + self.ttl <= now:
            created, ident = self._order.popleft()
            entry = self._entries.get(ident)
            if entry is not None and entry.created == created:
                del self._entries[ident]

    def __len__(self) -> int:
        return len(self._entries)
