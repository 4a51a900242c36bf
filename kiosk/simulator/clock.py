"""The simulator's clock: wall time plus an offset that tests move forward.

Everything time-dependent in the simulator reads this clock: authorisation expiry, idempotency
key lifetime, the 30-second collect→confirm window, a reader going offline, search indexing lag,
automatic card presentation. Advancing it never sleeps.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class SimClock:
    """Seconds since the epoch, as the simulated Stripe sees them."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """The simulator's current time (Unix seconds, fractional)."""
        return self._wall() + self._offset

    @property
    def offset(self) -> float:
        """How far the clock has been advanced past wall time, in seconds."""
        return self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward; returns the new time. Time never goes backwards."""
        if seconds < 0:
            raise ValueError("the simulator's clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()
