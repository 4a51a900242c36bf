"""Fixtures shared by the whole suite: a private Mosquitto broker per test that needs one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kiosk.mosquitto import Mosquitto, find_binary

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kiosk.simulator import ThreadHandle

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _require_mosquitto() -> None:
    if find_binary() is None:
        pytest.fail("mosquitto is not installed; scripts/test installs it (apt-get install mosquitto)")


@pytest.fixture(name="broker")
def fixture_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private, non-persistent Mosquitto on a free loopback port; tests may stop and restart it."""
    _require_mosquitto()
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture(name="persistent_broker")
def fixture_persistent_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Like `broker`, but sessions and retained messages survive a graceful restart."""
    _require_mosquitto()
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture(name="stripe_simulator")
def fixture_stripe_simulator() -> Iterator[ThreadHandle]:
    """kiosk's Stripe simulator (seed 0) served from its own thread: `.url`, `.simulator`, `.stop()`."""
    from kiosk.simulator import Simulator  # noqa: PLC0415 - only tests that ask for it load it

    handle = Simulator(seed=0).start_in_thread()
    try:
        yield handle
    finally:
        handle.stop()
