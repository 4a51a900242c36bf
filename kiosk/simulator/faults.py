"""Injected faults for the HTTP layer: per-endpoint rules and an account-wide rate limit.

A rule matches a method and a path pattern (`fnmatch`, e.g. `/v1/payment_intents/*/capture`) and
may add latency, answer an error status and code instead of running the request, run the request
and then drop the connection (the effect happens, the response is lost), or answer 429 with
`Stripe-Rate-Limited-Reason`. `should_retry` sends `Stripe-Should-Retry: true|false` with the
rule's error answer (a 429 from `rate_limited_reason` says `true` unless told otherwise). `count`
bounds how often it fires and `probability` makes it fire at random — from the simulator's seeded
generator, so a run repeats exactly.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
from dataclasses import asdict, dataclass
from typing import Any

_ids = itertools.count(1)


@dataclass(slots=True)
class FaultRule:
    """One fault rule; see the module docstring."""

    method: str = "*"
    path: str = "*"
    latency_s: float = 0.0
    status: int | None = None
    code: str | None = None
    message: str | None = None
    drop_connection: bool = False
    rate_limited_reason: str | None = None
    should_retry: bool | None = None
    count: int | None = None
    probability: float = 1.0
    id: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if not self.id:
            self.id = next(_ids)
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if self.latency_s < 0:
            raise ValueError("latency_s must not be negative")
        if self.should_retry is not None and self.status is None and self.rate_limited_reason is None:
            raise ValueError("should_retry goes with an error answer: give status or rate_limited_reason")
        self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        """True when the rule is for this request and has firings left."""
        if self.count is not None and self.fired >= self.count:
            return False
        return (self.method in ("*", method)) and fnmatch.fnmatchcase(path, self.path)

    def as_json(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return asdict(self)

    def headers(self) -> dict[str, str]:
        """The headers the rule adds to its error answer."""
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


class Faults:
    """The active rules, checked in the order they were added; the first that fires wins."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        """Add a rule; returns it (with its id)."""
        self.rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        """Remove one rule by id."""
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        return len(self.rules) != before

    def clear(self) -> None:
        """Remove every rule."""
        self.rules.clear()

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any (counting the firing)."""
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            rule.fired += 1
            return rule
        return None


class RateLimiter:
    """An account-wide token bucket: `per_second` requests, bursts up to the same number."""

    def __init__(self) -> None:
        self.per_second: float | None = None
        self._tokens: dict[str, float] = {}
        self._stamp: dict[str, float] = {}

    def set(self, per_second: float | None) -> None:
        """Turn the limit on (requests per second) or off (None)."""
        if per_second is not None and per_second <= 0:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self._tokens.clear()
        self._stamp.clear()

    def allow(self, account: str, now: float) -> bool:
        """Take a token for this request; False when the account is over its rate."""
        if self.per_second is None:
            return True
        tokens = self._tokens.get(account, self.per_second)
        last = self._stamp.get(account, now)
        tokens = min(self.per_second, tokens + max(0.0, now - last) * self.per_second)
        self._stamp[account] = now
        if tokens < 1.0:
            self._tokens[account] = tokens
            return False
        self._tokens[account] = tokens - 1.0
        return True
