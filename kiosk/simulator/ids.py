"""Stripe-looking object ids, deterministic for a given seed."""

from __future__ import annotations

import random
import string

_ALPHABET = string.ascii_letters + string.digits


class Ids:
    """Makes ids like `pi_3Qx…` from a seeded generator, so runs repeat exactly."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def new(self, prefix: str, length: int = 24) -> str:
        """A fresh id with Stripe's prefix for the object kind (`pi`, `ch`, `pm`, `tmr`, `req`)."""
        return f"{prefix}_{''.join(self._rng.choices(_ALPHABET, k=length))}"
