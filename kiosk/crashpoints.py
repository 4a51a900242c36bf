"""Named steps where the crash tests kill the daemon.

`reached("after_create")` kills the process with SIGKILL when the environment variable
`KIOSK_TEST_CRASH_AT` names that step (comma-separated for several). It is read once at import;
in production the variable is not set and every call is a set lookup that finds nothing.
"""

from __future__ import annotations

import os
import signal
import sys

_ARMED = frozenset(filter(None, os.environ.get("KIOSK_TEST_CRASH_AT", "").split(",")))


def reached(step: str) -> None:
    """Die here if a crash test asked for it."""
    if step in _ARMED:
        sys.stderr.write(f"kiosk: crash point {step} reached, killing the process\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
