"""kiosk's Stripe simulator: Stripe's API in test mode with simulated smart readers.

Tests and the demo run against it with the unmodified stripe client. The daemon never imports
this package. See docs/simulator.md.
"""

from kiosk.simulator.app import Endpoint, Simulator, ThreadHandle
from kiosk.simulator.clock import SimClock
from kiosk.simulator.ledger import Ledger

__all__ = ["Endpoint", "Ledger", "SimClock", "Simulator", "ThreadHandle"]
