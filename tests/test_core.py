"""Table tests of the order state machine: each path of design.md's lifecycle against the fake Stripe."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from kiosk import core
from kiosk.errors import IllegalTransition
from kiosk.model import Abandon, Call, CallFailed, Failure, Item, Op, Policy, Restarted, State
from tests.fakestripe import Driver, FakeStripe, replace_policy

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(name="d")
def fixture_driver() -> Iterator[Driver]:
    driver = Driver()
    yield driver
    assert driver.violations == []


def awaiting(d: Driver, amount: int = 500, *, policy: Policy | None = None, items: tuple[Item, ...] = ()) -> Driver:
    d.start(amount=amount, policy=policy, items=items)
    d.run_until(State.AWAITING_CARD, limit=5)
    assert d.o.state is State.AWAITING_CARD
    assert d.stripe.waiting_for_card()
    return d


def approved(d: Driver, amount: int = 500, *, policy: Policy | None = None, items: tuple[Item, ...] = ()) -> Driver:
    awaiting(d, amount, policy=policy, items=items)
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED
    return d


def decline(d: Driver, code: str) -> None:
    assert d.stripe.present_card(code)
    d.run_until(State.DECLINED, State.CANCELED, limit=5)
    d.run_until(State.AWAITING_CARD, State.CANCELED, limit=5)


def ops(d: Driver) -> list[Op]:
    return [c.op for c in d.stripe.calls]


def step_until_planned(d: Driver, op: Op, limit: int = 10) -> None:
    """Step the order until `op` is the call it would make next (planned, not yet made)."""
    for _ in range(limit):
        _, action = core.plan(d.o, d.now)
        if isinstance(action, Call) and action.op is op:
            return
        d.step()
    raise AssertionError(f"{op} never planned: {ops(d)}")


def ended(d: Driver, state: State, code: str | None) -> None:
    d.settle()
    assert d.o.state is state
    assert (d.o.reason.code if d.o.reason else None) == code
    assert d.violations == []


# --- the happy paths ------------------------------------------------------------------------------


def test_happy_path(d: Driver) -> None:
    approved(d)
    assert d.o.card is not None
    assert d.o.card.last4 == "4242"
    assert d.vend() is None
    ended(d, State.COMPLETED, None)
    assert d.o.captured_amount == 500
    assert d.stripe.captures == [("pi_1", 500)]
    assert ops(d) == [Op.CREATE, Op.PROCESS, Op.READ_READER, Op.CAPTURE]
    assert d.states == [State.RECEIVED, State.AWAITING_CARD, State.APPROVED, State.CAPTURING, State.COMPLETED]


def test_status_seq_increases_with_each_public_change(d: Driver) -> None:
    approved(d)
    d.vend()
    d.settle()
    assert d.o.status_seq >= len(d.states)  # the driver checks each public change bumps it


def test_cart_is_displayed_before_the_payment(d: Driver) -> None:
    awaiting(d, items=(Item("a", "Water", 2, 250),))
    assert ops(d)[:3] == [Op.CREATE, Op.DISPLAY, Op.PROCESS]


def test_split_flow_collects_then_confirms(d: Driver) -> None:
    awaiting(d, policy=replace_policy(flow="collect_confirm"))
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    d.vend()
    ended(d, State.COMPLETED, None)
    assert Op.COLLECT in ops(d)
    assert Op.CONFIRM in ops(d)
    assert Op.PROCESS not in ops(d)


def test_split_flow_refuses_a_card_the_rules_do_not_allow(d: Driver) -> None:
    awaiting(d, policy=replace_policy(flow="collect_confirm", allowed_brands=("amex",)))
    assert d.stripe.present_card()
    ended(d, State.CANCELED, "card_not_accepted")
    assert Op.CONFIRM not in ops(d)


def test_partial_vend_captures_the_vended_amount(d: Driver) -> None:
    approved(d)
    assert d.vend("partial", 200) is None
    ended(d, State.COMPLETED, None)
    assert d.stripe.captures == [("pi_1", 200)]
    assert d.o.captured_amount == 200


@pytest.mark.parametrize("amount", [500, 600, None])
def test_partial_vend_with_a_bad_amount_is_rejected_and_changes_nothing(d: Driver, amount: int | None) -> None:
    approved(d)
    before = d.o
    reply = d.vend("partial", amount)
    assert reply is not None
    assert reply.code == "invalid_order"
    assert d.o == before


def test_partial_vend_of_nothing_releases_the_hold(d: Driver) -> None:
    approved(d)
    d.vend("partial", 0)
    ended(d, State.CANCELED, "vend_failed")
    assert d.stripe.captures == []


def test_vend_failure_cancels_the_payment(d: Driver) -> None:
    approved(d)
    d.vend("failure")
    ended(d, State.CANCELED, "vend_failed")
    assert d.stripe.captures == []
    assert d.stripe.cancels == ["pi_1"]


def test_duplicate_vend_result_changes_nothing(d: Driver) -> None:
    approved(d)
    d.vend("success", msg="v1")
    before = d.o
    assert d.vend("failure", msg="v2") is None
    assert d.o == before
    ended(d, State.COMPLETED, None)


def test_vend_result_before_approval_is_rejected(d: Driver) -> None:
    awaiting(d)
    reply = d.vend()
    assert reply is not None
    assert reply.code == "invalid_order"
    assert d.o.vend_result is None


# --- declines ---------------------------------------------------------------------------------------


def test_decline_prompts_again_on_the_same_intent(d: Driver) -> None:
    awaiting(d)
    decline(d, "insufficient_funds")
    assert State.DECLINED in d.states
    assert d.stripe.waiting_for_card()
    declined_reason = next(r for r in [d.o.reason] if r is not None) if d.o.reason else None
    assert declined_reason is None  # prompting again clears the reason
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED
    assert list(d.stripe.creates) == ["o1"]
    assert len(d.stripe.creates["o1"]) == 1
    keys = [c.key for c in d.stripe.calls if c.op is Op.PROCESS]
    assert keys == ["kiosk:k1:o1:process:1", "kiosk:k1:o1:process:2"]


def test_decline_reason_is_retryable_and_readable(d: Driver) -> None:
    awaiting(d, amount=501)  # Stripe's test amount: call_issuer
    assert d.stripe.present_test_amount()
    d.run_until(State.DECLINED, limit=5)
    assert d.o.reason is not None
    assert d.o.reason.code == "call_issuer"
    assert d.o.reason.retryable
    assert d.o.reason.message == core.DECLINE_MESSAGES["call_issuer"]


def test_declines_up_to_the_limit_end_the_order(d: Driver) -> None:
    awaiting(d)
    for _ in range(3):
        decline(d, "generic_decline")
    ended(d, State.CANCELED, "attempts_exhausted")
    assert d.stripe.cancels == ["pi_1"]
    assert [c.op for c in d.stripe.calls].count(Op.PROCESS) == 3


# --- the reader's and the customer's endings --------------------------------------------------------


def test_card_timeout_clears_the_reader_and_releases(d: Driver) -> None:
    awaiting(d)
    ended(d, State.CANCELED, "card_timeout")
    assert d.stripe.cancel_actions == ["pi_1"]
    assert d.stripe.cancels == ["pi_1"]
    assert d.now >= 1000 + 30


def test_card_timeout_while_authorising_honours_the_authorisation(d: Driver) -> None:
    awaiting(d)
    assert d.stripe.present_card(slow=True)
    d.run(40)  # the deadline passes while the card is being authorised: cancel_action is busy
    assert d.o.state is not State.CANCELED
    assert d.stripe.cancel_actions == []
    assert d.stripe.finish_authorisation()
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED
    assert d.o.reason is None
    d.vend()
    ended(d, State.COMPLETED, None)


def test_controller_cancel_while_awaiting_card(d: Driver) -> None:
    awaiting(d)
    assert d.cancel() is None
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.cancel_actions == ["pi_1"]
    assert d.stripe.intents["pi_1"].cancellation_reason == "requested_by_customer"
    assert d.o.in_reply_to == "c1"


def test_controller_cancel_loses_the_race_to_the_authorisation(d: Driver) -> None:
    awaiting(d)
    assert d.stripe.present_card(slow=True)
    d.cancel()
    d.run(3)
    assert d.stripe.finish_authorisation()
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.intents["pi_1"].authorised == 500
    assert d.stripe.cancels == ["pi_1"]
    assert State.APPROVED not in d.states


def test_controller_cancel_after_approval_releases(d: Driver) -> None:
    approved(d)
    d.cancel()
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.cancels == ["pi_1"]


def test_cancel_while_capturing_is_too_late(d: Driver) -> None:
    approved(d)
    d.vend()
    reply = d.cancel()
    assert reply is not None
    assert reply.code == "too_late"
    ended(d, State.COMPLETED, None)


def test_an_operators_abandon_while_capturing_changes_nothing_and_the_capture_goes_on(d: Driver) -> None:
    # The product was dispensed: its payment is owed, whoever asks to cancel.
    approved(d)
    d.vend()
    capturing = d.o
    assert capturing.state is State.CAPTURING
    reply = d.send(Abandon("operator_canceled", "canceled by an operator"))
    assert reply is not None
    assert reply.code == "too_late"
    assert d.o == capturing
    ended(d, State.COMPLETED, None)
    assert d.o.captured_amount == 500


def test_an_operators_abandon_after_approval_releases(d: Driver) -> None:
    approved(d)
    d.send(Abandon("operator_canceled", "canceled by an operator"))
    ended(d, State.CANCELED, "operator_canceled")


def test_duplicate_cancel_changes_nothing(d: Driver) -> None:
    awaiting(d)
    d.cancel("c1")
    before = d.o
    assert d.cancel("c2") is None
    assert d.o == before
    ended(d, State.CANCELED, "controller_canceled")


def test_vend_result_timeout_releases(d: Driver) -> None:
    approved(d)
    t = d.now
    ended(d, State.CANCELED, "vend_result_timeout")
    assert d.now >= t + 300
    assert d.stripe.cancels == ["pi_1"]


def test_expired_before_start(d: Driver) -> None:
    d.start(expires_at=d.now + 5)
    d.tick(10)
    ended(d, State.CANCELED, "order_expired")
    assert d.stripe.calls == []


def test_expired_order_helper_is_already_canceled() -> None:
    order = core.expired_order(
        order_id="o1", amount=500, currency="usd", policy=replace_policy(), now=0.0, expires_at=-1.0
    )
    assert order.terminal
    assert order.reason is not None
    assert order.reason.code == "order_expired"
    assert core.plan(order, 1.0) == (order, None)


def test_expired_after_the_intent_was_created_releases_it(d: Driver) -> None:
    d.start(expires_at=d.now + 5)
    d.stripe.inject("throttled", Op.PROCESS)
    d.stripe.inject("throttled", Op.PROCESS)
    d.stripe.inject("throttled", Op.PROCESS)
    d.stripe.inject("throttled", Op.PROCESS)
    ended(d, State.CANCELED, "order_expired")
    assert d.stripe.cancels == ["pi_1"]


def test_customer_cancels_on_the_reader(d: Driver) -> None:
    awaiting(d)
    assert d.stripe.customer_cancel()
    ended(d, State.CANCELED, "customer_canceled")
    assert d.stripe.intents["pi_1"].cancellation_reason == "requested_by_customer"


def test_connection_error_with_the_intent_authorised_is_approved(d: Driver) -> None:
    awaiting(d)
    assert d.stripe.connection_error(authorised=True)
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED
    assert Op.READ_INTENT in ops(d) or d.stripe.reader_view().intent is not None
    d.vend()
    ended(d, State.COMPLETED, None)


def test_connection_error_without_authorisation_prompts_again(d: Driver) -> None:
    awaiting(d)
    assert d.stripe.connection_error(authorised=False)
    d.run(3)
    assert d.stripe.waiting_for_card()
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    d.vend()
    ended(d, State.COMPLETED, None)
    assert len(d.stripe.creates["o1"]) == 1


def test_reader_offline_before_the_payment(d: Driver) -> None:
    d.start()
    d.stripe.offline = True
    ended(d, State.CANCELED, "reader_offline")
    assert d.o.reason is not None
    assert d.o.reason.retryable
    assert d.stripe.cancels == ["pi_1"]


def test_reader_offline_during_the_payment(d: Driver) -> None:
    awaiting(d)
    start = d.now
    d.stripe.offline = True
    ended(d, State.CANCELED, "reader_offline")
    assert d.now - start < d.o.policy.card_timeout_s  # promptly, not after the card timeout
    assert d.o.reason is not None
    assert d.o.reason.retryable
    assert d.stripe.cancel_actions == []  # nothing to clear on a reader that is gone
    assert d.stripe.cancels == ["pi_1"]


def test_reader_hardware_fault(d: Driver) -> None:
    d.start()
    d.stripe.hardware_fault = True
    ended(d, State.CANCELED, "reader_unavailable")
    assert d.stripe.cancels == ["pi_1"]


def test_reader_reboot_while_awaiting_card_prompts_again(d: Driver) -> None:
    awaiting(d)
    d.stripe.reboot_reader()
    d.run(3)
    assert d.stripe.waiting_for_card()
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED


def test_busy_reader_with_another_orders_action_being_authorised_is_not_cleared(d: Driver) -> None:
    earlier = d.stripe.stale_payment("processing", authorising="approve")  # never finishes here
    d.start()
    ended(d, State.FAILED, "payments_unavailable")
    assert d.stripe.cancel_actions == []
    assert Op.CLEAR_STALE not in ops(d)
    assert d.stripe.cancels == [d.o.intent_id]
    assert earlier.status == "processing"  # the earlier order's payment is left alone
    assert d.stripe.action is not None
    assert d.stripe.action.intent_id == earlier.id


# --- unknown outcomes -------------------------------------------------------------------------------


def _next_after(d: Driver, op: Op) -> Op:
    i = min(i for i, c in enumerate(d.stripe.calls) if c.op is op)
    return d.stripe.calls[i + 1].op


@pytest.mark.parametrize("applied", [True, False])
def test_unknown_create_is_resent_with_the_same_key(d: Driver, *, applied: bool) -> None:
    d.stripe.inject("unknown", Op.CREATE, applied=applied)
    approved(d)
    creates = [c for c in d.stripe.calls if c.op is Op.CREATE]
    assert [c.key for c in creates] == ["kiosk:k1:o1:create:1"] * 2
    assert len(d.stripe.creates["o1"]) == 1
    d.vend()
    ended(d, State.COMPLETED, None)


@pytest.mark.parametrize("applied", [True, False])
def test_unknown_create_then_cancel_learns_the_id_and_releases(d: Driver, *, applied: bool) -> None:
    d.start()
    d.stripe.inject("unknown", Op.CREATE, applied=applied)
    d.step()
    d.cancel()
    ended(d, State.CANCELED, "controller_canceled")
    assert len(d.stripe.creates.get("o1", [])) <= 1
    if d.pi is not None:
        assert d.pi.status == "canceled"


@pytest.mark.parametrize("applied", [True, False])
@pytest.mark.parametrize("op", [Op.DISPLAY, Op.PROCESS])
def test_unknown_reader_call_is_followed_by_a_read(d: Driver, op: Op, *, applied: bool) -> None:
    d.stripe.inject("unknown", op, applied=applied)
    approved(d, items=(Item("a", "Water", 1, 500),))
    if op is Op.PROCESS:
        assert _next_after(d, op) is Op.READ_READER
    d.vend()
    ended(d, State.COMPLETED, None)
    assert len(d.stripe.creates["o1"]) == 1


@pytest.mark.parametrize("applied", [True, False])
@pytest.mark.parametrize("op", [Op.COLLECT, Op.CONFIRM])
def test_unknown_split_flow_call_is_followed_by_a_read(d: Driver, op: Op, *, applied: bool) -> None:
    d.stripe.inject("unknown", op, applied=applied)
    d.start(policy=replace_policy(flow="collect_confirm"))
    d.run(2)
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=20)
    assert d.o.state is State.APPROVED
    assert _next_after(d, op) is Op.READ_READER
    d.vend()
    ended(d, State.COMPLETED, None)


@pytest.mark.parametrize("applied", [True, False])
def test_unknown_cancel_action_is_followed_by_a_read(d: Driver, *, applied: bool) -> None:
    awaiting(d)
    d.stripe.inject("unknown", Op.CANCEL_ACTION, applied=applied)
    ended(d, State.CANCELED, "card_timeout")
    assert _next_after(d, Op.CANCEL_ACTION) is Op.READ_READER
    assert d.stripe.cancels == ["pi_1"]


@pytest.mark.parametrize("applied", [True, False])
def test_unknown_capture_is_read_then_retried_with_the_same_key(d: Driver, *, applied: bool) -> None:
    approved(d)
    d.stripe.inject("unknown", Op.CAPTURE, applied=applied)
    d.vend()
    ended(d, State.COMPLETED, None)
    captures = [c for c in d.stripe.calls if c.op is Op.CAPTURE]
    assert d.stripe.calls[d.stripe.calls.index(captures[0]) + 1].op is Op.READ_INTENT
    assert {c.key for c in captures} == {"kiosk:k1:o1:capture:1"}
    assert len(captures) == (1 if applied else 2)
    assert d.stripe.captures == [("pi_1", 500)]


@pytest.mark.parametrize("applied", [True, False])
def test_unknown_cancel_is_read_then_retried(d: Driver, *, applied: bool) -> None:
    approved(d)
    d.stripe.inject("unknown", Op.CANCEL, applied=applied)
    d.vend("failure")
    ended(d, State.CANCELED, "vend_failed")
    assert _next_after(d, Op.CANCEL) is Op.READ_INTENT
    assert d.stripe.cancels == ["pi_1"]


@pytest.mark.parametrize("applied", [True, False])
@pytest.mark.parametrize("op", [Op.PROCESS, Op.CONFIRM])
def test_an_unknown_outcome_resolved_by_reading_does_not_count_against_the_approved_order(
    d: Driver, op: Op, *, applied: bool
) -> None:
    d.stripe.inject("unknown", op, applied=applied)
    d.start(policy=replace_policy(flow="collect_confirm" if op is Op.CONFIRM else "process"))
    d.run(2)
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=20)
    d.run(120)  # the customer takes a while to pick the product: beyond the step budget
    assert d.o.state is State.APPROVED
    d.vend()
    ended(d, State.COMPLETED, None)


# --- throttling and refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("op", [Op.CREATE, Op.PROCESS, Op.CAPTURE, Op.READ_READER])
def test_throttled_call_backs_off_and_keeps_its_key(d: Driver, op: Op) -> None:
    d.stripe.inject("throttled", op)
    d.stripe.inject("throttled", op)
    approved(d)
    d.vend()
    ended(d, State.COMPLETED, None)
    calls = [c for c in d.stripe.calls if c.op is op]
    assert len(calls) >= 3
    assert len({c.key for c in calls if c.op.mutating}) <= 1


def test_throttled_retries_wait(d: Driver) -> None:
    d.start()
    d.stripe.inject("throttled", Op.CREATE)
    d.step()
    _, action = core.plan(d.o, d.now)
    assert not isinstance(action, Call)
    assert action is not None
    assert action.until is not None
    assert action.until > d.now


def test_refused_capture_is_retried_not_dropped(d: Driver) -> None:
    approved(d)
    d.stripe.inject("refused", Op.CAPTURE, "processing_error")
    d.stripe.inject("refused", Op.CAPTURE, "processing_error")
    d.vend()
    ended(d, State.COMPLETED, None)
    assert d.stripe.captures == [("pi_1", 500)]


def test_capture_refused_long_after_the_budget_is_still_retried(d: Driver) -> None:
    approved(d)
    for _ in range(30):
        d.stripe.inject("refused", Op.CAPTURE, "processing_error")
    d.vend()
    ended(d, State.COMPLETED, None)
    assert d.stripe.captures == [("pi_1", 500)]


def test_reader_timeout_false_negative_carries_on(d: Driver) -> None:
    d.start()
    d.stripe.inject("refused", Op.PROCESS, "terminal_reader_timeout", applied=True)
    d.run_until(State.AWAITING_CARD, limit=10)
    assert d.stripe.waiting_for_card()
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED
    assert [c.op for c in d.stripe.calls].count(Op.PROCESS) == 1


def test_reader_timeout_true_negative_retries(d: Driver) -> None:
    d.start()
    d.stripe.inject("refused", Op.PROCESS, "terminal_reader_timeout")
    d.run_until(State.AWAITING_CARD, limit=10)
    assert d.stripe.waiting_for_card()
    assert [c.op for c in d.stripe.calls].count(Op.PROCESS) == 2


def test_intent_invalid_state_reads_the_intent(d: Driver) -> None:
    d.start()
    d.stripe.inject("refused", Op.PROCESS, "intent_invalid_state")
    d.run(5)
    assert _next_after(d, Op.PROCESS) is Op.READ_INTENT
    ended(d, State.CANCELED, "card_timeout")


def test_authorisation_expired_before_capture(d: Driver) -> None:
    approved(d)
    assert d.stripe.expire_authorisation("o1")
    d.vend()
    ended(d, State.FAILED, "authorization_expired")
    assert d.stripe.captures == []


def test_step_budget_ends_a_stuck_order_and_releases(d: Driver) -> None:
    d.start()
    for _ in range(200):
        d.stripe.inject("unknown", Op.PROCESS)
    ended(d, State.FAILED, "payments_unavailable")
    assert d.stripe.cancels == ["pi_1"]
    assert d.now - 1000 < 200


def test_release_that_keeps_failing_ends_failed_and_leaves_it_to_the_reconciler(d: Driver) -> None:
    approved(d)
    d.vend("failure")
    for _ in range(500):
        d.stripe.inject("unknown", Op.CANCEL)
        d.stripe.inject("unknown", Op.READ_INTENT)
    ended(d, State.FAILED, "release_pending")
    assert d.pi is not None
    assert d.pi.status == "requires_capture"
    assert d.stripe.captures == []


def test_auth_failure_ends_the_order(d: Driver) -> None:
    d.start()
    d.stripe.inject("auth", Op.CREATE)
    ended(d, State.FAILED, "payments_unavailable")
    assert d.stripe.creates == {}


# --- restarts ---------------------------------------------------------------------------------------


def _scenario(d: Driver, crash_at: int, *, applied: bool) -> None:
    """Happy path with a crash before the `crash_at`-th call."""
    d.start(items=(Item("a", "Water", 1, 500),))
    calls = 0
    crashed = False
    card = False
    vended = False
    while not d.o.terminal and d.now < 5000:
        if not crashed and calls == crash_at:
            crashed = True
            d.crash(applied=applied)
            continue
        if not card and d.stripe.waiting_for_card():
            card = d.stripe.present_card()
        if d.o.state is State.APPROVED and not vended:
            vended = True
            d.vend()
        action = d.step()
        if isinstance(action, Call):
            calls += 1
        elif action is not None:
            d.tick(0.5 if action.until is None else max(action.until - d.now, 0.001))


@pytest.mark.parametrize("applied", [True, False])
@pytest.mark.parametrize("crash_at", range(6))
def test_restart_at_each_step(d: Driver, crash_at: int, *, applied: bool) -> None:
    _scenario(d, crash_at, applied=applied)
    assert d.o.state is State.COMPLETED
    assert d.stripe.captures == [("pi_1", 500)]
    assert len(d.stripe.creates["o1"]) == 1


def test_restart_while_awaiting_card_reads_the_reader_first(d: Driver) -> None:
    awaiting(d)
    n = len(d.stripe.calls)
    d.send(Restarted())
    d.step()
    assert d.stripe.calls[n].op is Op.READ_READER


def test_restart_after_approval_keeps_the_sale(d: Driver) -> None:
    approved(d)
    d.vend()
    d.send(Restarted())
    d.send(Restarted())
    ended(d, State.COMPLETED, None)


def test_restart_of_a_terminal_order_changes_nothing(d: Driver) -> None:
    approved(d)
    d.vend()
    d.settle()
    before = d.o
    d.send(Restarted())
    assert d.o == before


def test_a_result_for_a_call_not_in_flight_is_a_bug(d: Driver) -> None:
    d.start()
    with pytest.raises(IllegalTransition):
        core.handle(d.o, FakeStripe().perform(Call(Op.READ_READER), d.o), d.now)


# --- regressions found by the state machine --------------------------------------------------------


def test_split_flow_decline_then_a_good_card_is_confirmed_under_a_new_key(d: Driver) -> None:
    awaiting(d, policy=replace_policy(flow="collect_confirm"))
    assert d.stripe.present_card("generic_decline")
    d.run_until(State.DECLINED, limit=10)
    d.run_until(State.AWAITING_CARD, limit=10)
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    assert d.o.state is State.APPROVED
    keys = [c.key for c in d.stripe.calls if c.op is Op.CONFIRM]
    assert len(keys) == len(set(keys)) == 2


def test_reader_losing_a_collected_card_ends_the_order_without_a_hot_loop(d: Driver) -> None:
    awaiting(d, policy=replace_policy(flow="collect_confirm"))
    assert d.stripe.present_card()
    d.stripe.reboot_reader()
    d.settle()
    assert d.o.state is State.CANCELED
    assert d.o.reason is not None
    assert d.o.reason.code in {"card_timeout", "confirm_window_missed"}
    assert d.stripe.cancels == ["pi_1"]
    assert len(d.stripe.calls) < 60


def test_throttled_display_then_a_broken_reader_is_not_retried_forever(d: Driver) -> None:
    d.stripe.inject("throttled", Op.DISPLAY)
    d.start(items=(Item("a", "Water", 1, 500),))
    d.run(0.1)
    d.stripe.hardware_fault = True
    ended(d, State.CANCELED, "reader_unavailable")
    assert [c.op for c in d.stripe.calls].count(Op.DISPLAY) == 2


def test_auth_failure_on_a_read_pauses_before_winding_down(d: Driver) -> None:
    awaiting(d)
    d.stripe.inject("auth", Op.READ_READER)
    ended(d, State.FAILED, "payments_unavailable")
    assert d.stripe.cancels == ["pi_1"]


def test_refused_create_while_winding_down_creates_nothing(d: Driver) -> None:
    d.start()
    d.stripe.inject("throttled", Op.CREATE)
    d.step()
    d.cancel()
    d.stripe.inject("refused", Op.CREATE, "processing_error")
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.creates == {}


# --- failures of issue 5: Should-Retry, jitter, stored 5xx, expiry, a silent reader -------------


def _fail_next(d: Driver, op: Op, **fields: object) -> Call:
    """Run until `op` is about to be made, then answer it with a failure built from `fields`."""
    for _ in range(50):
        order, action = core.plan(d.o, d.now)
        if isinstance(action, Call) and action.op is op:
            d.order = order
            d.order, _ = core.handle(order, CallFailed(action, **fields), d.now)  # type: ignore[arg-type]
            return action
        d.step()
        if not isinstance(action, Call):
            d.tick(0.5)
    raise AssertionError(f"{op} never planned")


def test_should_retry_false_on_a_throttled_create_is_not_retried(d: Driver) -> None:
    d.start()
    _fail_next(d, Op.CREATE, failure=Failure.THROTTLED, code="lock_timeout", should_retry=False)
    ended(d, State.FAILED, "lock_timeout")
    assert d.stripe.creates == {}


def test_should_retry_true_on_a_refusal_retries_with_the_same_key(d: Driver) -> None:
    d.start()
    call = _fail_next(d, Op.CREATE, failure=Failure.REFUSED, code="lock_timeout", should_retry=True)
    assert d.o.retry_op is Op.CREATE
    assert d.o.retry_at is not None
    assert d.o.retry_at > d.now
    d.run_until(State.AWAITING_CARD, limit=10)
    creates = [c.key for c in d.stripe.calls if c.op is Op.CREATE]
    assert creates == [call.key]


def test_backoff_is_jittered_per_order_and_reproducible() -> None:
    policy = Policy(kiosk_id="k1")
    waits: dict[str, float] = {}
    for order_id in ("o1", "o2", "o3", "o4", "o1"):
        order = core.new_order(order_id=order_id, amount=500, currency="usd", policy=policy, now=0.0)
        order, call = core.plan(order, 0.0)
        assert isinstance(call, Call)
        order, _ = core.handle(order, CallFailed(call, Failure.THROTTLED, code="rate_limit"), 0.0)
        assert order.retry_at is not None
        if order_id in waits:
            assert waits[order_id] == order.retry_at  # the same order waits the same again
        waits[order_id] = order.retry_at
    base = policy.backoff_base_s
    assert all(base * 0.5 <= w < base * 1.5 for w in waits.values()), waits
    assert len(set(waits.values())) == len(waits)  # and different orders do not come back in step


def test_retry_after_is_a_floor_for_the_backoff(d: Driver) -> None:
    d.start()
    _fail_next(d, Op.CREATE, failure=Failure.THROTTLED, code="rate_limit", retry_after=7.0)
    assert d.o.retry_at is not None
    assert d.o.retry_at >= d.now + 7.0


def test_a_stored_server_error_on_capture_is_read_then_retried_under_a_new_key(d: Driver) -> None:
    approved(d)
    d.vend()
    first = _fail_next(d, Op.CAPTURE, failure=Failure.UNKNOWN, code=None, replayed=True)
    ended(d, State.COMPLETED, None)
    captures = [c for c in d.stripe.calls if c.op is Op.CAPTURE]
    assert len(captures) == 1
    assert captures[0].key != first.key
    assert d.stripe.calls[-2].op is Op.READ_INTENT


def test_an_unknown_capture_is_retried_under_the_same_key_after_a_read(d: Driver) -> None:
    approved(d)
    d.vend()
    first = _fail_next(d, Op.CAPTURE, failure=Failure.UNKNOWN, code="timeout")
    ended(d, State.COMPLETED, None)
    assert [c.op for c in d.stripe.calls][-2:] == [Op.READ_INTENT, Op.CAPTURE]
    assert d.stripe.calls[-1].key == first.key


def test_a_refused_capture_after_capture_before_fails_once_and_releases(d: Driver) -> None:
    approved(d)
    assert d.o.capture_before is not None
    d.vend()
    d.tick(d.o.capture_before - d.now + 1)
    assert d.stripe.expire_authorisation("o1")  # Stripe cancels an expired authorisation itself
    _fail_next(d, Op.CAPTURE, failure=Failure.REFUSED, code="charge_expired_for_capture")
    ended(d, State.FAILED, "authorization_expired")
    ops_after = [c.op for c in d.stripe.calls]
    assert Op.CAPTURE not in ops_after  # no second capture: no retry loop
    assert d.stripe.captures == []


def test_an_authorisation_that_expired_while_capturing_ends_failed_without_a_loop(d: Driver) -> None:
    approved(d)
    d.vend()
    assert d.stripe.expire_authorisation("o1")
    ended(d, State.FAILED, "authorization_expired")
    assert [c.op for c in d.stripe.calls].count(Op.CAPTURE) == 1
    assert d.stripe.captures == []


def test_the_vend_deadline_never_passes_capture_before_minus_the_margin(d: Driver) -> None:
    policy = replace_policy(vend_result_timeout_s=10 * 24 * 3600.0, capture_margin_s=3600.0)
    approved(d, policy=policy)
    assert d.o.capture_before is not None
    assert d.o.vend_deadline == d.o.capture_before - 3600.0
    ended(d, State.CANCELED, "vend_result_timeout")
    assert d.stripe.captures == []


def test_a_reader_that_times_out_on_cancel_action_is_left_and_the_payment_released(d: Driver) -> None:
    awaiting(d)
    d.cancel()
    for _ in range(core.CANCEL_ACTION_TRIES):
        _fail_next(d, Op.CANCEL_ACTION, failure=Failure.REFUSED, code="terminal_reader_timeout")
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.cancels == ["pi_1"]


# --- a stale action of an earlier order on the reader (issue 5, item 3) ---------------------------


def _clears(d: Driver) -> list[Call]:
    return [c for c in d.stripe.calls if c.op is Op.CLEAR_STALE]


@pytest.mark.parametrize("status", ["requires_payment_method", "requires_confirmation", "canceled"])
@pytest.mark.parametrize("flow", ["process", "collect_confirm"])
def test_a_stale_action_whose_intent_is_not_being_authorised_is_cleared(d: Driver, status: str, flow: str) -> None:
    earlier = d.stripe.stale_payment(status)
    start = Op.COLLECT if flow == "collect_confirm" else Op.PROCESS
    awaiting(d, policy=replace_policy(flow=flow))
    assert ops(d) == [Op.CREATE, start, Op.READ_READER, Op.READ_OTHER_INTENT, Op.CLEAR_STALE, start]
    read, clear = (c for c in d.stripe.calls if c.op in {Op.READ_OTHER_INTENT, Op.CLEAR_STALE})
    assert read.target == clear.target == earlier.id
    assert clear.key == "kiosk:k1:o1:clear_stale_action:1"
    assert d.stripe.cancel_actions == [earlier.id]
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    d.vend()
    ended(d, State.COMPLETED, None)
    assert earlier.status == status  # only its action was cleared; the PaymentIntent is untouched
    assert earlier.id not in d.stripe.cancels


def test_a_stale_action_being_authorised_is_waited_for_then_the_order_pays(d: Driver) -> None:
    earlier = d.stripe.stale_payment("processing", authorising="approve")
    d.start()
    d.run(4.0)
    assert d.o.state is State.RECEIVED
    assert Op.CLEAR_STALE not in ops(d)
    reads = ops(d).count(Op.READ_OTHER_INTENT)
    assert 2 <= reads <= 6, ops(d)  # read again after each backoff, not in a loop
    assert d.stripe.finish_authorisation()
    assert earlier.status == "requires_capture"
    d.run_until(State.AWAITING_CARD, limit=20)
    assert d.stripe.present_card()
    d.run_until(State.APPROVED, limit=10)
    d.vend()
    ended(d, State.COMPLETED, None)
    assert d.stripe.cancel_actions == []
    assert earlier.status == "requires_capture"  # the earlier order's money is not kiosk's to move here
    assert earlier.id not in d.stripe.cancels


def test_stripe_refusing_the_clear_while_a_card_is_authorised_means_wait_and_compare_again(d: Driver) -> None:
    # The PI does not (yet) show the authorisation, but the reader does: cancel_action is busy.
    earlier = d.stripe.stale_payment("requires_payment_method", authorising="approve")
    d.start()
    d.run(3.0)
    clears = _clears(d)
    assert len(clears) >= 2
    assert len({c.key for c in clears}) == len(clears)  # never re-sent under the same key
    assert d.stripe.cancel_actions == []
    assert d.stripe.finish_authorisation()
    d.run_until(State.AWAITING_CARD, limit=20)
    assert d.stripe.cancel_actions == []
    assert earlier.status == "requires_capture"


def test_a_card_left_inserted_is_not_taken_for_a_stale_action(d: Driver) -> None:
    d.start()
    d.stripe.inject("refused", Op.PROCESS, "terminal_reader_busy")
    d.stripe.inject("refused", Op.PROCESS, "terminal_reader_busy")
    d.run_until(State.AWAITING_CARD, limit=20)
    assert ops(d).count(Op.PROCESS) == 3
    assert Op.READ_OTHER_INTENT not in ops(d)
    assert Op.CLEAR_STALE not in ops(d)


@pytest.mark.parametrize("applied", [True, False])
def test_an_unknown_clear_is_read_and_compared_again_never_resent(d: Driver, *, applied: bool) -> None:
    earlier = d.stripe.stale_payment()
    d.start()
    d.stripe.inject("unknown", Op.CLEAR_STALE, applied=applied)
    d.run_until(State.AWAITING_CARD, limit=20)
    clears = _clears(d)
    assert len(clears) == (1 if applied else 2)
    assert len({c.key for c in clears}) == len(clears)
    assert d.stripe.cancel_actions == [earlier.id]
    assert d.stripe.calls[d.stripe.calls.index(clears[0]) + 1].op is Op.READ_READER


def test_a_restart_while_clearing_a_stale_action_does_not_clear_twice(d: Driver) -> None:
    earlier = d.stripe.stale_payment()
    d.start()
    step_until_planned(d, Op.CLEAR_STALE)
    d.crash(applied=True)
    d.run_until(State.AWAITING_CARD, limit=20)
    assert d.stripe.cancel_actions == [earlier.id]
    assert len(_clears(d)) == 1


def test_a_restart_between_the_comparison_and_the_clear_compares_again(d: Driver) -> None:
    earlier = d.stripe.stale_payment()
    d.start()
    step_until_planned(d, Op.CLEAR_STALE)
    d.send(Restarted())  # the comparison was saved, the clear not yet planned
    d.run_until(State.AWAITING_CARD, limit=20)
    assert ops(d).count(Op.READ_OTHER_INTENT) == 2
    assert ops(d)[ops(d).index(Op.CLEAR_STALE) - 1] is Op.READ_OTHER_INTENT
    assert d.stripe.cancel_actions == [earlier.id]


def test_a_restart_between_the_comparison_and_the_cancel_action_compares_again(d: Driver) -> None:
    d.start()
    d.step()
    d.begin()  # the reader takes the payment; the answer is lost
    d.cancel()
    d.send(Restarted())
    step_until_planned(d, Op.CANCEL_ACTION)
    assert d.o.state is State.RECEIVED
    d.send(Restarted())  # the comparison was saved, the cancel_action not yet planned
    d.stripe.reboot_reader()  # meanwhile the reader's action ended
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.cancel_actions == []
    assert ops(d)[-2:] == [Op.READ_READER, Op.CANCEL]


def test_a_cancel_while_waiting_for_a_stale_authorisation_leaves_it_alone(d: Driver) -> None:
    earlier = d.stripe.stale_payment("processing", authorising="approve")
    d.start()
    d.run(2.0)
    d.cancel()
    ended(d, State.CANCELED, "controller_canceled")
    assert d.stripe.cancel_actions == []
    assert d.stripe.cancels == [d.o.intent_id]
    assert earlier.status == "processing"


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("flow", ["process", "collect_confirm"])
def test_a_cancel_while_a_stale_action_refuses_the_start_starts_nothing_and_clears_nothing(
    d: Driver, flow: str, *, restart: bool
) -> None:
    earlier = d.stripe.stale_payment()
    d.start(policy=replace_policy(flow=flow))
    d.step()
    start = d.begin()  # refused busy by the earlier action; the answer is still on its way
    assert isinstance(start, Call)
    assert start.op is (Op.COLLECT if flow == "collect_confirm" else Op.PROCESS)
    d.cancel()
    if restart:
        d.send(Restarted())  # the answer is lost
    else:
        d.finish()
    ended(d, State.CANCELED, "controller_canceled")
    assert ops(d).count(start.op) == 1  # a wind-down never starts the payment again
    assert Op.CLEAR_STALE not in ops(d)
    assert d.stripe.cancel_actions == []  # the action on the reader was never this order's
    assert d.stripe.cancels == [d.o.intent_id]
    assert d.stripe.action is not None
    assert (d.stripe.action.intent_id, d.stripe.action.status) == (earlier.id, "in_progress")


@pytest.mark.parametrize("restart", [False, True])
def test_a_cancel_while_the_start_is_unanswered_clears_the_orders_own_action(d: Driver, *, restart: bool) -> None:
    d.start()
    d.step()
    if not restart:
        d.stripe.inject("unknown", Op.PROCESS, applied=True)
    start = d.begin()  # the reader takes it; kiosk does not hear so
    assert isinstance(start, Call)
    d.cancel()
    if restart:
        d.send(Restarted())
    else:
        d.finish()
    ended(d, State.CANCELED, "controller_canceled")
    assert ops(d) == [Op.CREATE, Op.PROCESS, Op.READ_READER, Op.CANCEL_ACTION, Op.CANCEL]
    assert d.stripe.cancel_actions == [d.o.intent_id]


def test_a_cancel_while_clearing_a_stale_action_never_clears_it_later(d: Driver) -> None:
    earlier = d.stripe.stale_payment()
    d.start()
    d.stripe.inject("auth", Op.CLEAR_STALE)
    step_until_planned(d, Op.CLEAR_STALE)
    d.begin()  # refused: the API key was rejected
    d.cancel()
    d.finish()
    assert d.stripe.present_card()  # meanwhile a card is authorised on the earlier payment
    ended(d, State.CANCELED, "controller_canceled")
    assert len(_clears(d)) == 1  # the comparison is old: the wind-down does not clear
    assert d.stripe.cancel_actions == []
    assert d.stripe.cancels == [d.o.intent_id]
    assert earlier.status == "requires_capture"


def test_a_stale_action_on_an_offline_reader_ends_the_order_reader_offline(d: Driver) -> None:
    d.stripe.stale_payment()
    d.start()
    d.stripe.inject("refused", Op.CLEAR_STALE, "terminal_reader_offline")
    ended(d, State.CANCELED, "reader_offline")
    assert d.stripe.cancels == [d.o.intent_id]


# --- Stripe-Should-Retry on an unknown outcome ------------------------------------------------------


def test_a_server_error_on_create_that_should_not_be_retried_ends_the_order(d: Driver) -> None:
    d.start()
    _fail_next(d, Op.CREATE, failure=Failure.UNKNOWN, code=None, should_retry=False)
    ended(d, State.FAILED, "payments_unavailable")
    assert ops(d) == []  # not re-sent: not under its key (a replay), never under a new one
    assert d.stripe.creates == {}


def test_a_server_error_on_capture_that_should_not_be_retried_is_read_then_sent_under_a_new_key(d: Driver) -> None:
    approved(d)
    d.vend()
    first = _fail_next(d, Op.CAPTURE, failure=Failure.UNKNOWN, code=None, should_retry=False)
    ended(d, State.COMPLETED, None)
    captures = [c for c in d.stripe.calls if c.op is Op.CAPTURE]
    assert [c.key for c in captures] != [first.key]
    assert d.stripe.calls[-2].op is Op.READ_INTENT
