"""What the gateway tells the core about a failure, over real HTTP against the simulator.

Stripe-Should-Retry and Idempotent-Replayed reach the core's CallFailed; the core's decisions on
them are tested in tests/test_core.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiosk.errors import UpstreamError
from kiosk.model import Call, Failure, Op
from kiosk.runner import failure_event
from tests.faultrig import lane

if TYPE_CHECKING:
    from pathlib import Path


async def _create_fails(tmp_path: Path, key: str, **rule: Any) -> list[UpstreamError]:
    errors: list[UpstreamError] = []
    async with lane(tmp_path) as the_lane:
        the_lane.sim.add_fault(method="POST", path="/v1/payment_intents", **rule)
        for _ in range(2):
            try:
                await the_lane.gateway.create_intent(amount=500, currency="usd", metadata={"order_id": "x"}, key=key)
            except UpstreamError as exc:
                errors.append(exc)
    return errors


async def test_a_rate_limit_says_should_retry(tmp_path: Path) -> None:
    first, *_ = await _create_fails(tmp_path, "k-429", rate_limited_reason="endpoint-rate", count=1)
    event = failure_event(Call(Op.CREATE, key="k-429"), first)
    assert event.failure is Failure.THROTTLED
    assert event.should_retry is True
    assert event.replayed is False


async def test_a_stored_server_error_is_replayed_under_the_same_key(tmp_path: Path) -> None:
    first, again = await _create_fails(tmp_path, "k-500", status=500, count=1)
    assert failure_event(Call(Op.CREATE, key="k-500"), first).replayed is False
    event = failure_event(Call(Op.CREATE, key="k-500"), again)
    assert event.failure is Failure.UNKNOWN
    assert event.replayed is True  # the core reads, then retries capture/cancel/reader calls under a new key
