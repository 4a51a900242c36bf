"""The order state machine under random interleavings, with design.md's invariants checked throughout.

Hypothesis drives orders one after another through the fake Stripe while it interleaves controller
messages (cancel, vend results, duplicates), the customer and the reader (cards approved, declined,
slow to authorise, cancel on the reader, connection errors, reboots, offline), API faults (unknown
with and without the effect applied, throttled, refused, auth), clock ticks and restarts. Every step
is checked against the fake's ledger; at the end the faults stop, time passes, and every order must
have ended with the money right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kiosk.model import TERMINAL, Item, Op, Restarted, State, Wait
from tests.fakestripe import KEY_RE, READER_CALLS, Driver, FaultKind, replace_policy

if TYPE_CHECKING:
    from collections.abc import Callable

MUTATING = [op for op in Op if op.mutating]
REFUSALS = [
    "terminal_reader_busy",
    "terminal_reader_offline",
    "terminal_reader_timeout",
    "terminal_reader_hardware_fault",
    "intent_invalid_state",
    "processing_error",
]
READER_EVENTS = [
    "authorisation_finishes",
    "customer_cancels",
    "connection_error",
    "connection_error_authorised",
    "reboot",
    "offline",
    "online",
    "hardware_fault",
    "repaired",
    "authorisation_expires",
]
OUTCOMES = ["approve", "approve", "approve", "generic_decline", "insufficient_funds", "incorrect_pin"]


def note(text: str) -> None:
    """Count `text` in Hypothesis' statistics (a replayed sequence runs outside Hypothesis)."""
    if currently_in_test_context():
        event(text)


class OrderMachine(RuleBasedStateMachine):
    """One kiosk: orders in sequence, everything else at random."""

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.count = 0
        self.ended: list[str] = []
        self.vend_at_end = True

    # --- orders ------------------------------------------------------------------------------

    def _idle(self) -> bool:
        return self.d.order is None or self.d.o.terminal

    @initialize(amount=st.sampled_from([500, 501, 1234]), split=st.booleans(), vend_at_end=st.booleans())
    def first_order(self, amount: int, *, split: bool, vend_at_end: bool) -> None:
        self.vend_at_end = vend_at_end
        self.new_order(amount, items=False, split=split, expires=None)

    @precondition(lambda self: self._idle() and self.count < 4)
    @rule(
        amount=st.sampled_from([500, 501, 1234, 9999]),
        items=st.booleans(),
        split=st.booleans(),
        expires=st.sampled_from([None, 2.0, 100.0]),
    )
    def new_order(self, amount: int, *, items: bool, split: bool, expires: float | None) -> None:
        if self.d.order is not None:
            self.ended.append(self.d.o.order_id)
        self.count += 1
        self.d.start(
            f"o{self.count}",
            amount,
            policy=replace_policy(flow="collect_confirm" if split else "process"),
            items=(Item("sku", "Snack", 1, amount),) if items else (),
            expires_at=None if expires is None else self.d.now + expires,
        )

    # --- the runner's loop and the clock -----------------------------------------------------

    @precondition(lambda self: not self._idle())
    @rule(n=st.integers(1, 6))
    def steps(self, n: int) -> None:
        for _ in range(n):
            if self.d.pending is not None:
                self.d.finish()
            elif self.d.o.terminal or self.d.step() is None:
                return

    @precondition(lambda self: not self._idle() and self.d.pending is None)
    @rule()
    def begin_call(self) -> None:
        self.d.begin()

    @precondition(lambda self: self.d.pending is not None)
    @rule()
    def finish_call(self) -> None:
        self.d.finish()

    @precondition(lambda self: self.d.order is not None and self.d.pending is None)
    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0, 31.0, 65.0, 301.0]))
    def time_passes(self, seconds: float) -> None:
        self.d.run(seconds)

    @precondition(lambda self: self.d.order is not None)
    @rule(applied=st.booleans())
    def restart(self, *, applied: bool) -> None:
        self.d.crash(applied=applied)

    # --- the controller ----------------------------------------------------------------------

    @precondition(lambda self: self.d.order is not None)
    @rule(msg=st.sampled_from(["c1", "c2"]))
    def controller_cancels(self, msg: str) -> None:
        self.d.cancel(msg)

    @precondition(lambda self: self.d.order is not None)
    @rule(
        result=st.sampled_from(["success", "success", "failure", "partial"]),
        amount=st.sampled_from([None, 0, 1, 250, 499, 500, 10000]),
        msg=st.sampled_from(["v1", "v2"]),
    )
    def controller_reports_vend(self, result: str, amount: int | None, msg: str) -> None:
        before = self.d.o
        reply = self.d.vend(result, amount, msg)
        if reply is not None:
            assert self.d.o == before, "a rejected controller message changed the order"

    # --- the customer and the reader ---------------------------------------------------------

    @rule()
    def card_approved(self) -> None:
        self.d.stripe.present_card()

    @rule(outcome=st.sampled_from(OUTCOMES), slow=st.booleans())
    def card_presented(self, outcome: str, *, slow: bool) -> None:
        self.d.stripe.present_card(outcome, slow=slow)

    @rule(what=st.sampled_from(READER_EVENTS))
    def reader_event(self, what: str) -> None:
        stripe = self.d.stripe
        match what:
            case "authorisation_finishes":
                stripe.finish_authorisation()
            case "customer_cancels":
                stripe.customer_cancel()
            case "connection_error":
                stripe.connection_error(authorised=False)
            case "connection_error_authorised":
                stripe.connection_error(authorised=True)
            case "reboot":
                stripe.reboot_reader()
            case "offline" | "online":
                stripe.offline = what == "offline"
            case "hardware_fault" | "repaired":
                stripe.hardware_fault = what == "hardware_fault"
            case "authorisation_expires" if self.d.order is not None:
                stripe.expire_authorisation(self.d.o.order_id)

    @precondition(lambda self: self._idle() or self.d.o.state is State.RECEIVED)
    @rule(
        status=st.sampled_from(["requires_payment_method", "requires_confirmation", "canceled", "processing"]),
        authorising=st.booleans(),
    )
    def stale_action_appears(self, status: str, *, authorising: bool) -> None:
        """An earlier order's payment is left running on an idle reader (a card maybe authorising)."""
        action = self.d.stripe.action
        if action is not None and action.status == "in_progress":
            return
        if not self._idle() and self.d.pi is not None and self.d.pi.id in self.d.stripe.started:
            # Earlier means before this order's own payment reached the reader: after that only
            # kiosk, which runs one order at a time, puts payments on it. (One put there between
            # kiosk's read and its cancel_action would be cleared: cancel_action names no action.)
            return
        # A PI Stripe shows `processing` has a card being authorised: that ends by itself.
        self.d.stripe.stale_payment(status, authorising="approve" if authorising or status == "processing" else None)
        note("stale action")

    # --- the API -------------------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["unknown", "unknown", "throttled", "refused", "auth"]),
        op=st.sampled_from(list(Op)),
        code=st.sampled_from(REFUSALS),
        applied=st.booleans(),
    )
    def api_fault(self, kind: FaultKind, op: Op, code: str, *, applied: bool) -> None:
        if kind == "unknown":
            self.d.stripe.inject(kind, op, applied=applied and op.mutating)
        elif kind == "refused" and op.mutating:
            if (code.startswith("terminal_reader") and op not in READER_CALLS) or (
                code == "intent_invalid_state" and op is Op.CREATE
            ):
                code = "processing_error"
            # Only a reader timeout can be a false negative (the reader did start).
            self.d.stripe.inject(kind, op, code, applied=applied and code == "terminal_reader_timeout")
        elif kind != "refused":
            self.d.stripe.inject(kind, op)

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def money_is_safe(self) -> None:
        assert self.d.violations == []
        assert self.d.stripe.violations == []

    @invariant()
    def at_most_one_intent_and_capture_per_order(self) -> None:
        stripe = self.d.stripe
        assert all(len(ids) <= 1 for ids in stripe.creates.values())
        captured = [pid for pid, _ in stripe.captures]
        assert len(captured) == len(set(captured))
        for pid, amount in stripe.captures:
            pi = stripe.intents[pid]
            assert 0 < amount <= pi.authorised <= pi.amount

    @invariant()
    def keys_are_well_formed_and_recorded(self) -> None:
        for call in self.d.stripe.calls:
            if call.op.mutating:
                assert call.key is not None
                assert KEY_RE.match(call.key), call.key
        if self.d.order is not None and self.d.pending is not None:
            assert self.d.o.inflight == self.d.pending.call

    @invariant()
    def earlier_orders_stay_settled(self) -> None:
        for order_id in self.ended:
            pi = self.d.stripe.intent_of(order_id)
            if pi is not None and pi.status == "requires_capture":
                # Only a `failed` order whose budget ran out may leave its hold to the reconciler.
                assert self.d.budget_failed

    def teardown(self) -> None:
        """Liveness: with the faults gone and time passing, the order ends with the money right."""
        d = self.d
        if d.order is None:
            return
        stripe = d.stripe
        stripe.faults.clear()
        stripe.offline = stripe.hardware_fault = False
        stripe.finish_authorisation()
        d.finish()
        if not d.o.terminal and d.o.inflight is not None:
            d.send(Restarted())
        end = d.now + 7 * 24 * 3600.0
        while not d.o.terminal and d.now < end:
            if stripe.waiting_for_card():
                stripe.present_card()
            if d.o.state is State.APPROVED and d.o.vend_result is None and self.vend_at_end:
                d.vend("success", msg="v-end")
            action = d.step()
            if action is None:
                break
            if isinstance(action, Wait):
                d.tick(1.0 if action.until is None else max(action.until - d.now, 0.001))
        assert d.o.state in TERMINAL, f"order stuck in {d.o.state}"
        note(f"orders {self.count}, last ended {d.o.state}/{d.o.reason.code if d.o.reason else ''}")
        note(f"{'approved' if State.APPROVED in d.states else 'never approved'}")
        note(f"captures {len(stripe.captures)}")
        assert d.violations == []
        assert stripe.violations == []
        if d.o.state is State.FAILED and d.pi is not None and d.pi.status == "requires_capture":
            assert d.o.reason is not None
            assert d.o.reason.code in {"payments_unavailable", "release_pending"}


OrderMachine.TestCase.settings = settings(
    derandomize=True,
    max_examples=1500,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOrderMachine = OrderMachine.TestCase


# --- Sequences the machine found, replayed step by step ------------------------------------------


class Replay:
    """The machine driven by hand, its invariants checked after each rule as Hypothesis does."""

    def __init__(self) -> None:
        self.machine = OrderMachine()

    def __getattr__(self, name: str) -> Callable[..., None]:
        rule = getattr(self.machine, name)

        def step(**kwargs: object) -> None:
            rule(**kwargs)
            if name != "teardown":
                self.machine.money_is_safe()
                self.machine.at_most_one_intent_and_capture_per_order()
                self.machine.keys_are_well_formed_and_recorded()
                self.machine.earlier_orders_stay_settled()

        return step


def test_no_stale_action_appears_once_the_order_has_its_own_on_the_reader() -> None:
    # The wind-down read the reader and saw its own action running; before its cancel_action the
    # card was approved and a "stale" action appeared in its place. A stale action is an earlier
    # payment left on the reader: it cannot begin after this order's own action did.
    state = Replay()
    state.first_order(amount=500, split=False, vend_at_end=False)
    state.begin_call()
    state.finish_call()
    state.begin_call()
    state.restart(applied=False)
    state.begin_call()
    state.card_approved()
    state.controller_cancels(msg="c1")
    state.stale_action_appears(authorising=False, status="requires_payment_method")
    assert "pi_earlier" not in state.machine.d.stripe.intents
    state.finish_call()
    state.begin_call()
    state.teardown()


def test_a_cancel_while_a_stale_action_keeps_the_reader_busy_is_no_busy_loop() -> None:
    # The start was in flight (refused busy by the stale action) when the controller canceled and
    # kiosk restarted: the wind-down kept re-sending the start, back to back, under new keys.
    state = Replay()
    state.first_order(amount=500, split=False, vend_at_end=False)
    state.steps(n=1)
    state.stale_action_appears(authorising=False, status="requires_payment_method")
    state.begin_call()
    state.controller_cancels(msg="c1")
    state.restart(applied=False)
    state.time_passes(seconds=0.5)
    state.teardown()


def test_a_card_authorised_on_a_stale_action_between_the_read_and_the_clear() -> None:
    # The earlier payment's PI was read (not being authorised), then a card was presented to the
    # earlier payment and authorised at once, then its (now ended) action was cleared: nothing
    # kiosk could have seen, and nothing that moves the earlier payment's money.
    state = Replay()
    state.first_order(amount=500, split=False, vend_at_end=False)
    state.begin_call()
    state.controller_cancels(msg="c1")
    state.finish_call()
    state.begin_call()
    state.finish_call()
    state.stale_action_appears(authorising=False, status="requires_payment_method")
    state.begin_call()
    state.finish_call()
    state.new_order(amount=500, expires=None, items=False, split=False)
    state.steps(n=4)
    state.teardown()
    assert state.machine.d.stripe.intents["pi_earlier"].status == "requires_capture"
