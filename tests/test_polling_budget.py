"""Reads per order: the polling schedule of Policy (README, "Polling and the API budget").

The schedule lives in the core, so the fake Stripe on a simulated clock counts exactly what the
runner does against Stripe. Run with `-s` to see the figures.
"""

from __future__ import annotations

import pytest

from kiosk.model import Op, Policy, State
from tests.fakestripe import Driver

READS = {Op.READ_READER, Op.READ_INTENT}


def order_with_card_at(at_s: float | None, policy: Policy | None = None) -> tuple[int, int]:
    """(reads, all requests) of one order whose card comes `at_s` after the prompt (None: never)."""
    d = Driver(policy=policy or Policy(kiosk_id="k1"))
    d.start()
    d.run_until(State.AWAITING_CARD, limit=5)
    if at_s is None:
        d.settle()
    else:
        d.run(at_s)
        assert d.stripe.present_card()
        d.run_until(State.APPROVED, limit=10)
        assert d.states[-1] is State.APPROVED
        d.vend()
        d.settle()
        assert d.states[-2:] == [State.CAPTURING, State.COMPLETED]
    assert d.violations == []
    calls = [c.op for c in d.stripe.calls]
    return sum(op in READS for op in calls), len(calls)


def reads_allowed(at_s: float, policy: Policy) -> float:
    """The schedule's own bound: one read per interval, slower after `poll_slow_after_s`, plus the PI."""
    quick = min(at_s, policy.poll_slow_after_s) / policy.poll_interval_s
    slow = max(at_s - policy.poll_slow_after_s, 0.0) / policy.poll_slow_s
    return quick + slow + 3  # the first poll, the read that sees the card, the PaymentIntent


@pytest.mark.parametrize("at_s", [2.0, 5.0, 20.0])
def test_reads_per_order_follow_the_schedule(at_s: float) -> None:
    policy = Policy(kiosk_id="k1")
    reads, total = order_with_card_at(at_s, policy)
    print(f"card at {at_s:>4.0f} s: {reads:>2} reads, {total:>2} Stripe requests per order")
    assert reads <= reads_allowed(at_s, policy)
    assert reads >= at_s / policy.poll_slow_s  # it does look while the customer is there


def test_an_order_with_no_card_is_bounded_by_the_card_timeout() -> None:
    policy = Policy(kiosk_id="k1")
    reads, total = order_with_card_at(None, policy)
    print(f"no card ({policy.card_timeout_s:.0f} s timeout): {reads} reads, {total} Stripe requests")
    assert reads <= reads_allowed(policy.card_timeout_s, policy) + 2  # and the wind-down's reads


def test_a_slower_schedule_costs_fewer_reads() -> None:
    quick = order_with_card_at(20.0, Policy(kiosk_id="k1"))[0]
    slow = order_with_card_at(20.0, Policy(kiosk_id="k1", poll_interval_s=4.0, poll_slow_s=8.0))[0]
    assert slow < quick
