"""`Stripe-Should-Retry` end to end: the simulator sends it, the runner and the core honour it.

Each test runs one order through the real runner, gateway and journal against the simulator over
real HTTP (tests/faultrig.py), with a fault rule whose error answer carries the header; then the
invariants are checked against the simulator's ledger and the next order must simply work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.faultrig import Lane, happy_order, lane, money_problems

if TYPE_CHECKING:
    from pathlib import Path

CREATE = ("POST", "/v1/payment_intents")


def count_requests(the_lane: Lane) -> list[tuple[str, str]]:
    """Every API request the simulator serves from now on (method, path)."""
    seen: list[tuple[str, str]] = []
    the_lane.sim.on_request = lambda method, path: seen.append((method, path))
    return seen


async def sale(the_lane: Lane, order_id: str, amount: int = 500) -> dict[str, object]:
    """An order with a card presented automatically; vended once approved. Returns the final status."""
    the_lane.sim.auto_present(the_lane.reader, 0.2)
    await the_lane.request(order_id, amount)
    status = await the_lane.wait_for(order_id, "approved", "completed", "canceled", "failed", "rejected")
    if status["state"] == "approved":
        await the_lane.vend(order_id)
    final = await the_lane.wait_settled(order_id)
    the_lane.sim.auto_present(the_lane.reader, None)
    return final


async def next_order_works(the_lane: Lane, order_id: str) -> None:
    await the_lane.restore()
    assert await happy_order(the_lane, order_id) == []


async def test_a_500_on_create_that_should_not_be_retried_is_not_resent(tmp_path: Path) -> None:
    async with lane(tmp_path) as the_lane:
        method, path = CREATE
        the_lane.sim.add_fault(method=method, path=path, status=500, should_retry=False, count=1)
        seen = count_requests(the_lane)
        final = await sale(the_lane, "sr-500")
        assert (final["state"], final["reason"]) == (
            "failed",
            {"code": "payments_unavailable", "message": "Payments are unavailable right now.", "retryable": False},
        )
        # Sent once: not under its key (Stripe would replay the 500), never under a new one.
        assert seen.count(CREATE) == 1
        assert the_lane.intents("sr-500") == ()
        assert the_lane.order("sr-500").attempts.get("create", 1) == 1
        assert money_problems(the_lane, "sr-500", vended=None) == []
        assert the_lane.availability.refusal() is not None  # the next customer is told at once
        await next_order_works(the_lane, "sr-500-next")


@pytest.mark.parametrize(
    ("status", "code"),
    [(409, "idempotency_key_in_use"), (429, "lock_timeout"), (429, "rate_limit"), (400, "lock_timeout")],
)
async def test_an_answer_that_should_be_retried_is_retried_with_the_same_key(
    tmp_path: Path, status: int, code: str
) -> None:
    async with lane(tmp_path) as the_lane:
        method, path = CREATE
        rule = the_lane.sim.add_fault(method=method, path=path, status=status, code=code, should_retry=True, count=2)
        seen = count_requests(the_lane)
        final = await sale(the_lane, "sr-retry")
        assert final["state"] == "completed", final
        assert next(r.fired for r in the_lane.sim.faults.rules if r.id == rule) == 2
        assert seen.count(CREATE) == 3
        assert len(the_lane.intents("sr-retry")) == 1
        # The same key every time: the attempt number in kiosk's key never moved.
        assert the_lane.order("sr-retry").attempts.get("create", 1) == 1
        assert money_problems(the_lane, "sr-retry", vended=500) == []
        await next_order_works(the_lane, "sr-retry-next")


async def test_a_429_that_should_not_be_retried_ends_the_order_at_once(tmp_path: Path) -> None:
    async with lane(tmp_path) as the_lane:
        method, path = CREATE
        the_lane.sim.add_fault(method=method, path=path, rate_limited_reason="global-rate", should_retry=False, count=1)
        seen = count_requests(the_lane)
        final = await sale(the_lane, "sr-429")
        assert final["state"] == "failed"
        assert seen.count(CREATE) == 1
        assert the_lane.intents("sr-429") == ()
        assert money_problems(the_lane, "sr-429", vended=None) == []
        await next_order_works(the_lane, "sr-429-next")


async def test_a_500_on_capture_that_should_not_be_retried_is_read_then_captured_under_a_new_key(
    tmp_path: Path,
) -> None:
    async with lane(tmp_path) as the_lane:
        the_lane.sim.add_fault(
            method="POST", path="/v1/payment_intents/*/capture", status=500, should_retry=False, count=1
        )
        seen = count_requests(the_lane)
        final = await sale(the_lane, "sr-capture")
        assert final["state"] == "completed", final
        (intent,) = the_lane.intents("sr-capture")
        captures = [p for m, p in seen if m == "POST" and p.endswith("/capture")]
        assert len(captures) == 2  # the refused one, then one more after a read
        assert [c.amount for c in intent.captures] == [500]
        assert the_lane.order("sr-capture").attempts.get("capture", 1) == 2
        assert money_problems(the_lane, "sr-capture", vended=500) == []
