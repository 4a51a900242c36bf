"""Named steps where the crash tests kill the daemon.

`reached("after_create")` kills the process with SIGKILL when the environment variable
`KIOSK_TEST_CRASH_AT` names that step (comma-separated for several), and blocks the event loop
for good when `KIOSK_TEST_WEDGE_AT` names it (the watchdog test: a wedged loop stops feeding
systemd). `await pause("fleet_will_connection")` waits when `KIOSK_TEST_PAUSE_AT` names the step
with seconds (`step:2`): one side of a race held back on purpose. All are read once at import; in
production none is set and every call is a lookup that finds nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

_ARMED = frozenset(filter(None, os.environ.get("KIOSK_TEST_CRASH_AT", "").split(",")))
_WEDGED = frozenset(filter(None, os.environ.get("KIOSK_TEST_WEDGE_AT", "").split(",")))
# `step:seconds,…`: steps made slow on purpose, to hold one side of a race back.
_PAUSED = {
    step: float(seconds)
    for step, _, seconds in (item.partition(":") for item in os.environ.get("KIOSK_TEST_PAUSE_AT", "").split(","))
    if step and seconds
}


def reached(step: str) -> None:
    """Die here if a crash test asked for it."""
    if step in _ARMED:
        sys.stderr.write(f"kiosk: crash point {step} reached, killing the process\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if step in _WEDGED:
        sys.stderr.write(f"kiosk: wedge point {step} reached, blocking the event loop\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)  # deliberately blocking: this simulates a wedged event loop


async def pause(step: str) -> None:
    """Wait here (without blocking the event loop) if a test asked for this step to be slow."""
    seconds = _PAUSED.get(step)
    if seconds:
        sys.stderr.write(f"kiosk: pause point {step} reached, waiting {seconds:g} s\n")
        sys.stderr.flush()
        await asyncio.sleep(seconds)
