"""The split flow (`payments.flow = "collect_confirm"`) end to end, with card rules.

The reader collects the card, kiosk checks it against the configured rules, then confirms it —
or releases it — within the reader's 30-second window, measured on the simulator's clock (the
ledger's reader actions and PaymentIntent history carry simulated times).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

from kiosk import core
from kiosk.model import ActionView, Call, CallSucceeded, Card, Op, ReaderView, State
from tests.faultrig import Lane, lane, money_problems, with_policy

if TYPE_CHECKING:
    from pathlib import Path

    from kiosk.simulator.ledger import ReaderAction

WINDOW_S = 30.0
DEBIT_VISA = "4000056655665556"
MASTERCARD = "5555555555554444"


def _actions(the_lane: Lane, kind: str) -> list[ReaderAction]:
    return [a for a in the_lane.sim.ledger().reader_actions if a.type == kind]


def _collected_at(the_lane: Lane) -> float:
    (collect,) = [a for a in _actions(the_lane, "collect_payment_method") if a.status == "succeeded"]
    assert collect.ended_at is not None
    return collect.ended_at


async def test_an_accepted_card_is_confirmed_within_the_window(tmp_path: Path) -> None:
    policy = with_policy(flow="collect_confirm", allowed_brands=("visa",), allowed_funding=("credit",))
    async with lane(tmp_path, policy=policy) as the_lane:
        the_lane.sim.auto_present(the_lane.reader, 0.2)
        await the_lane.request("split-ok", 600)
        await the_lane.wait_for("split-ok", "approved")
        await the_lane.vend("split-ok")
        assert (await the_lane.wait_settled("split-ok"))["state"] == "completed"
        (confirm,) = _actions(the_lane, "confirm_payment_intent")
        gap = confirm.started_at - _collected_at(the_lane)
        print(f"collect -> confirm: {gap:.2f} s of simulated time")
        assert 0 <= gap < WINDOW_S
        assert money_problems(the_lane, "split-ok", vended=600) == []


async def _refused(tmp_path: Path, card: str, **rules: object) -> Lane:
    async with lane(tmp_path, policy=with_policy(flow="collect_confirm", **rules)) as the_lane:
        the_lane.sim.auto_present(the_lane.reader, 0.2, card=card)
        await the_lane.request("split-no", 600)
        final = await the_lane.wait_settled("split-no")
        assert final["state"] == "canceled"
        assert final["reason"]["code"] == "card_not_accepted"
        assert "not accepted" in final["reason"]["message"]
        assert _actions(the_lane, "confirm_payment_intent") == []  # never authorised
        (intent,) = the_lane.intents("split-no")
        assert not intent.authorised
        assert intent.status == "canceled"
        released = intent.cancels[0].at - _collected_at(the_lane)
        print(f"collect -> release: {released:.2f} s of simulated time")
        assert 0 <= released < WINDOW_S
        assert money_problems(the_lane, "split-no", vended=None) == []
        return the_lane


async def test_a_brand_not_allowed_is_released_unauthorised_within_the_window(tmp_path: Path) -> None:
    await _refused(tmp_path, MASTERCARD, allowed_brands=("visa", "amex"))


async def test_a_funding_type_not_allowed_is_released_unauthorised_within_the_window(tmp_path: Path) -> None:
    await _refused(tmp_path, DEBIT_VISA, allowed_funding=("credit",))


def test_a_wallet_is_refused_when_wallets_are_not_allowed() -> None:
    policy = with_policy(flow="collect_confirm", allow_wallets=False)
    order = core.new_order(order_id="w1", amount=500, currency="usd", policy=policy, now=0.0)
    order = replace(order, intent_id="pi_1", state=State.AWAITING_CARD, card_deadline=30.0)
    order, call = core.plan(order, 1.0)
    assert isinstance(call, Call)
    assert call.op is Op.READ_READER
    wallet = Card("visa", "4242", "credit", "apple_pay")
    action = ActionView("collect_payment_method", "succeeded", "pi_1", card=wallet)
    order, _ = core.handle(order, CallSucceeded(call, reader=ReaderView("tmr_1", "online", action)), 1.0)
    assert order.goal is not None
    assert order.goal.code == "card_not_accepted"
    assert "wallet" in order.goal.message.lower()


async def test_confirm_trouble_still_releases_the_card_within_the_window(tmp_path: Path) -> None:
    # The runner runs on the simulator's clock, which the test drives: the step budget is out of
    # the way (120 s), so only the collect window can end the order.
    policy = with_policy(flow="collect_confirm", step_budget_s=120.0, card_timeout_s=300.0, backoff_cap_s=0.2)
    async with lane(tmp_path, policy=policy, sim_clock=True) as the_lane:
        sim = the_lane.sim
        sim.add_fault(method="POST", path="/v1/terminal/readers/*/confirm_payment_intent", status=500)
        sim.auto_present(the_lane.reader, 0.2)

        async def clock() -> None:
            while True:
                await asyncio.sleep(0.05)
                sim.advance(0.25)  # five times real time

        ticking = asyncio.create_task(clock())
        try:
            await the_lane.request("split-slow", 600)
            final = await the_lane.wait_settled("split-slow", timeout=30)
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
        assert final["state"] == "canceled"
        assert final["reason"]["code"] == "confirm_window_missed"
        (intent,) = the_lane.intents("split-slow")
        assert not intent.authorised
        assert intent.cancels, intent.status
        released = intent.cancels[0].at - _collected_at(the_lane)
        print(f"collect -> release with every confirm failing: {released:.1f} s of simulated time")
        assert 0 < released < WINDOW_S
        assert money_problems(the_lane, "split-slow", vended=None) == []
        # Retried after a backoff, not as fast as the simulator answers (that was ~100 a second).
        assert the_lane.gateway.calls["readers.confirm_payment_intent"] <= 40
