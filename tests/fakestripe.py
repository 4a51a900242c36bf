"""An in-memory Stripe with one simulated reader that executes the core's `Call`s, and a driver.

`FakeStripe` keeps a ledger (PaymentIntents per order, captures, cancels, cancel_actions) and
Stripe's idempotency semantics: a key's first response is stored and replayed to any later request
with the same key; the same key with other parameters is an `idempotency_error` (and a violation,
because kiosk must never do that). Faults are queued with `inject` and hit the next matching call.
The customer side (present a card, decline, cancel on the reader, connection errors, expiry of
the authorisation) is driven by methods the tests call.

`Driver` is the runner's loop around `kiosk.core` (plan, save, perform, handle) on a simulated
clock, checking design.md's money-safety invariants after every step and collecting violations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from kiosk import core
from kiosk.model import (
    TERMINAL,
    ActionView,
    Call,
    CallFailed,
    CallSucceeded,
    CancelRequested,
    Card,
    Decline,
    Event,
    Failure,
    IntentView,
    Item,
    Op,
    OrderData,
    Policy,
    ReaderView,
    Reason,
    Restarted,
    State,
    VendReported,
    Wait,
)

KIOSK = "k1"
READER = "tmr_fake"
AUTH_VALIDITY_S = 2 * 24 * 3600.0
KEY_RE = re.compile(r"^kiosk:(?P<kiosk>[^:]+):(?P<order>[^:]+):(?P<op>[a-z_]+):(?P<n>[1-9][0-9]*)$")
ACTIVE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action", "processing"})
# Stripe's test amounts: the last two digits decide the outcome of a card-present payment.
TEST_AMOUNTS = {
    "01": "call_issuer",
    "05": "generic_decline",
    "55": "incorrect_pin",
    "60": "online_or_offline_pin_required",
    "65": "withdrawal_count_limit_exceeded",
    "75": "pin_try_exceeded",
}
READER_CALLS = frozenset({Op.DISPLAY, Op.PROCESS, Op.COLLECT, Op.CONFIRM, Op.CANCEL_ACTION, Op.CLEAR_STALE})
# A PaymentIntent being (or just) authorised: an action of it must never be canceled by another order.
AUTHORISING = frozenset({"processing", "requires_capture"})

FaultKind = Literal["unknown", "throttled", "refused", "auth"]
Outcome = CallSucceeded | CallFailed


@dataclass
class FakeIntent:
    """A PaymentIntent as the fake Stripe holds it."""

    id: str
    order_id: str
    kiosk_id: str
    amount: int
    currency: str
    status: str = "requires_payment_method"
    amount_capturable: int = 0
    amount_received: int = 0
    card: Card | None = None
    capture_before: float | None = None
    decline: Decline | None = None
    authorised: int = 0  # the most ever authorised
    cancellation_reason: str | None = None

    def view(self) -> IntentView:
        """What a retrieve returns."""
        return IntentView(
            id=self.id,
            status=self.status,
            amount=self.amount,
            amount_capturable=self.amount_capturable,
            amount_received=self.amount_received,
            card=self.card,
            capture_before=self.capture_before,
            decline=self.decline,
            order_id=self.order_id,
        )


@dataclass
class FakeAction:
    """The reader's current action."""

    type: str
    status: str
    intent_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    card: Card | None = None
    authorising: str | None = None  # a card is being authorised, with this outcome to come
    collected_outcome: str | None = None  # split flow: what confirming the collected card gives

    def view(self) -> ActionView:
        """What a reader retrieve shows of it."""
        return ActionView(
            type=self.type,
            status=self.status,
            intent_id=self.intent_id,
            failure_code=self.failure_code,
            failure_message=self.failure_message,
            card=self.card,
        )


@dataclass(frozen=True)
class Fault:
    """A fault for the next call of `op` (any call when None)."""

    kind: FaultKind
    op: Op | None = None
    code: str | None = None
    applied: bool = False  # unknown / refused: whether Stripe carried the call out anyway


@dataclass(frozen=True)
class _Stored:
    fingerprint: tuple[object, ...]
    intent: IntentView | None
    reader: ReaderView | None
    code: str | None  # a stored error


@dataclass
class FakeStripe:
    """Stripe and one reader, in memory, on the driver's clock."""

    kiosk_id: str = KIOSK
    now: float = 0.0
    intents: dict[str, FakeIntent] = field(default_factory=dict)
    creates: dict[str, list[str]] = field(default_factory=dict)  # order id -> PI ids created
    captures: list[tuple[str, int]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    cancel_actions: list[str | None] = field(default_factory=list)  # the PI of the action cleared
    started: list[str] = field(default_factory=list)  # the PI of each payment action the reader took
    other_read: tuple[int, str] | None = None  # the last read of another PI: (its place in calls, status)
    action: FakeAction | None = None
    offline: bool = False
    hardware_fault: bool = False
    faults: list[Fault] = field(default_factory=list)
    keys: dict[str, _Stored] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    # --- switches ------------------------------------------------------------------------------

    def inject(self, kind: FaultKind, op: Op | None = None, code: str | None = None, *, applied: bool = False) -> None:
        """Queue a fault for the next call of `op`."""
        self.faults.append(Fault(kind, op, code, applied))

    def intent_of(self, order_id: str) -> FakeIntent | None:
        """The (only) PaymentIntent created for an order."""
        ids = self.creates.get(order_id, [])
        return self.intents[ids[0]] if ids else None

    # --- the customer and the world ------------------------------------------------------------

    def waiting_for_card(self) -> bool:
        """Whether the reader is prompting for a card."""
        a = self.action
        return (
            a is not None
            and a.type in {"process_payment_intent", "collect_payment_method"}
            and a.status == "in_progress"
            and a.authorising is None
        )

    def present_card(self, outcome: str = "approve", *, slow: bool = False) -> bool:
        """The customer presents a card: `approve` or a decline code; `slow` leaves it authorising."""
        a = self.action
        if a is None or not self.waiting_for_card() or a.intent_id is None:
            return False
        pi = self.intents[a.intent_id]
        if pi.status not in {"requires_payment_method", "requires_confirmation"}:
            return False
        if a.type == "collect_payment_method":
            a.status = "succeeded"
            a.card = Card(brand="visa", last4="4242", funding="credit")
            a.collected_outcome = outcome
            pi.status = "requires_confirmation"
            return True
        if slow:
            a.authorising = outcome
            return True
        self._resolve(a, pi, outcome)
        return True

    def present_test_amount(self) -> bool:
        """Present the default card: the amount's last two digits decide (Stripe's test amounts)."""
        a = self.action
        if a is None or a.intent_id is None:
            return False
        amount = self.intents[a.intent_id].amount
        return self.present_card(TEST_AMOUNTS.get(f"{amount % 100:02d}", "approve"))

    def finish_authorisation(self) -> bool:
        """The slow authorisation started by `present_card(slow=True)` completes."""
        a = self.action
        if a is None or a.authorising is None or a.intent_id is None:
            return False
        outcome, a.authorising = a.authorising, None
        self._resolve(a, self.intents[a.intent_id], outcome)
        return True

    def customer_cancel(self) -> bool:
        """The customer presses cancel on the reader."""
        a = self.action
        if a is None or not self.waiting_for_card():
            return False
        a.status, a.failure_code, a.failure_message = "failed", "customer_canceled", "Customer canceled."
        return True

    def connection_error(self, *, authorised: bool) -> bool:
        """The reader's authorisation timed out; the PI may in fact be authorised."""
        a = self.action
        if a is None or a.status != "in_progress" or a.intent_id is None or a.type != "process_payment_intent":
            return False
        pi = self.intents[a.intent_id]
        if authorised:
            self._authorise(pi)
        a.authorising = None
        a.status, a.failure_code, a.failure_message = "failed", "connection_error", "Reader lost its connection."
        return True

    def expire_authorisation(self, order_id: str) -> bool:
        """The card's authorisation lapses: Stripe cancels the PI."""
        pi = self.intent_of(order_id)
        if pi is None or pi.status != "requires_capture":
            return False
        pi.status, pi.amount_capturable, pi.cancellation_reason = "canceled", 0, "automatic"
        return True

    def reboot_reader(self) -> None:
        """The reader restarts: its action is gone."""
        self.action = None

    def set_stale_action(self, intent_id: str = "pi_earlier") -> None:
        """An earlier order's action is still on the reader (finished)."""
        self.action = FakeAction("process_payment_intent", "failed", intent_id, "card_declined", "Declined")

    def stale_payment(self, status: str = "requires_payment_method", *, authorising: str | None = None) -> FakeIntent:
        """An earlier order's payment still running on the reader, its PI in `status`.

        With `authorising` (an outcome), a card is being authorised on it: `finish_authorisation`
        completes it.
        """
        earlier = FakeIntent("pi_earlier", "earlier", self.kiosk_id, 700, "usd", status=status)
        self.intents[earlier.id] = earlier
        self.action = FakeAction("process_payment_intent", "in_progress", earlier.id, authorising=authorising)
        return earlier

    def _authorise(self, pi: FakeIntent) -> None:
        pi.status = "requires_capture"
        pi.amount_capturable = pi.amount
        pi.authorised = max(pi.authorised, pi.amount)
        pi.card = Card(brand="visa", last4="4242", funding="credit")
        pi.capture_before = self.now + AUTH_VALIDITY_S
        pi.decline = None

    def _resolve(self, a: FakeAction, pi: FakeIntent, outcome: str) -> None:
        if outcome == "approve":
            self._authorise(pi)
            a.status = "succeeded"
            return
        pi.status = "requires_payment_method"
        pi.decline = Decline("card_declined", outcome, "Your card was declined.")
        a.status, a.failure_code, a.failure_message = "failed", "card_declined", "Your card was declined."

    # --- the API -------------------------------------------------------------------------------

    def reader_view(self) -> ReaderView:
        """A reader retrieve, with the action's PI expanded."""
        a = self.action
        intent = self.intents[a.intent_id].view() if a is not None and a.intent_id in self.intents else None
        return ReaderView(
            id=READER,
            status="offline" if self.offline else "online",
            action=a.view() if a is not None else None,
            intent=intent,
        )

    def _fingerprint(self, call: Call, order: OrderData) -> tuple[object, ...]:
        target = None if call.op is Op.CREATE else order.intent_id
        params = (order.order_id, order.amount, order.currency) if call.op is Op.CREATE else ()
        return (call.op, target, call.amount, call.reason, *params)

    def perform(self, call: Call, order: OrderData) -> Outcome:
        """Carry out `call` for `order` (as saved before the call) and say what the runner saw."""
        self.calls.append(call)
        if call.op.mutating:
            self._check_key(call, order)
        fault = next((f for f in self.faults if f.op is None or f.op is call.op), None)
        if fault is not None and fault.kind == "refused" and call.key in self.keys:
            # A request whose key has a stored result gets that result replayed, not a new refusal.
            self.faults.remove(fault)
            fault = None
        if fault is not None:
            self.faults.remove(fault)
            if fault.kind == "throttled":
                return CallFailed(call, Failure.THROTTLED, code="rate_limit", retry_after=None)
            if fault.kind == "auth":
                return CallFailed(call, Failure.AUTH, code="invalid_api_key")
            if fault.applied:
                self._perform(call, order)
            if fault.kind == "unknown":
                return CallFailed(call, Failure.UNKNOWN, message="timed out")
            return CallFailed(call, Failure.REFUSED, code=fault.code, message=f"injected {fault.code}")
        return self._perform(call, order)

    def _check_key(self, call: Call, order: OrderData) -> None:
        match = KEY_RE.match(call.key or "")
        if (
            match is None
            or match["kiosk"] != self.kiosk_id
            or match["order"] != order.order_id
            or match["op"] != call.op.value
        ):
            self.violations.append(f"bad idempotency key {call.key!r} for {call.op} of {order.order_id}")

    def _perform(self, call: Call, order: OrderData) -> Outcome:
        key = call.key
        fingerprint = self._fingerprint(call, order)
        if key is not None and key in self.keys:
            stored = self.keys[key]
            if stored.fingerprint != fingerprint:
                self.violations.append(f"key {key} reused with other parameters: {stored.fingerprint} / {fingerprint}")
                return CallFailed(call, Failure.REFUSED, code="idempotency_error")
            if stored.code is not None:
                return CallFailed(call, Failure.REFUSED, code=stored.code, message="replayed")
            return CallSucceeded(call, intent=stored.intent, reader=stored.reader)
        outcome = self._execute(call, order)
        if key is not None:
            code = outcome.code if isinstance(outcome, CallFailed) else None
            intent = outcome.intent if isinstance(outcome, CallSucceeded) else None
            reader = outcome.reader if isinstance(outcome, CallSucceeded) else None
            self.keys[key] = _Stored(fingerprint, intent, reader, code)
        return outcome

    def _execute(self, call: Call, order: OrderData) -> Outcome:  # noqa: C901, PLR0911, PLR0912, PLR0915
        op = call.op
        if op is Op.READ_OTHER_INTENT:
            other = self.intents.get(call.target or "")
            if other is None or call.target == order.intent_id:
                self.violations.append(f"read_other_intent of {call.target} for {order.order_id}")
                return CallFailed(call, Failure.REFUSED, code="resource_missing")
            self.other_read = (len(self.calls), other.status)
            return CallSucceeded(call, intent=other.view())
        if op is Op.CREATE:
            new = FakeIntent(f"pi_{len(self.intents) + 1}", order.order_id, self.kiosk_id, order.amount, order.currency)
            self.intents[new.id] = new
            self.creates.setdefault(order.order_id, []).append(new.id)
            return CallSucceeded(call, intent=new.view())
        if op is Op.READ_READER:
            return CallSucceeded(call, reader=self.reader_view())
        if op in READER_CALLS:
            if self.offline:
                return CallFailed(call, Failure.REFUSED, code="terminal_reader_offline")
            if self.hardware_fault:
                return CallFailed(call, Failure.REFUSED, code="terminal_reader_hardware_fault")
        pi = self.intents.get(order.intent_id or "")
        if pi is None:
            self.violations.append(f"{op} before the PI of {order.order_id} is known")
            return CallFailed(call, Failure.REFUSED, code="resource_missing")
        a = self.action
        match op:
            case Op.READ_INTENT:
                return CallSucceeded(call, intent=pi.view())
            case Op.DISPLAY:
                if a is not None and a.authorising is not None:
                    return CallFailed(call, Failure.REFUSED, code="terminal_reader_busy")
                self.action = FakeAction("set_reader_display", "succeeded")
            case Op.PROCESS | Op.COLLECT:
                if a is not None and a.status == "in_progress":
                    return CallFailed(call, Failure.REFUSED, code="terminal_reader_busy")
                if pi.status not in {"requires_payment_method", "requires_confirmation"}:
                    return CallFailed(call, Failure.REFUSED, code="intent_invalid_state")
                kind = "process_payment_intent" if op is Op.PROCESS else "collect_payment_method"
                self.action = FakeAction(kind, "in_progress", pi.id)
                self.started.append(pi.id)
            case Op.CONFIRM:
                if (
                    a is None
                    or a.type != "collect_payment_method"
                    or a.intent_id != pi.id
                    or pi.status != "requires_confirmation"
                ):
                    return CallFailed(call, Failure.REFUSED, code="intent_invalid_state")
                outcome = a.collected_outcome or "approve"
                self.action = FakeAction("confirm_payment_intent", "in_progress", pi.id, card=a.card)
                self._resolve(self.action, pi, outcome)
            case Op.CANCEL_ACTION:
                if a is not None and a.authorising is not None:
                    return CallFailed(call, Failure.REFUSED, code="terminal_reader_busy")
                owner = a.intent_id if a is not None else None
                if owner is not None and owner != order.intent_id:
                    self.violations.append(f"cancel_action for {order.order_id} cleared {owner}'s action")
                self.cancel_actions.append(owner)
                self.action = None
            case Op.CLEAR_STALE:
                if a is not None and a.authorising is not None:
                    return CallFailed(call, Failure.REFUSED, code="terminal_reader_busy")
                owner = a.intent_id if a is not None else None
                if owner == order.intent_id:
                    self.violations.append(f"clear_stale_action for {order.order_id} cleared its own action")
                if owner is not None and owner != call.target:
                    self.violations.append(f"clear_stale_action for {call.target} cleared {owner}'s action")
                # kiosk clears it only right after reading its PI and finding it not being authorised.
                # A card can still be authorised in between (the clear then finds the action ended:
                # that changes nothing for the money), but one being authorised is never cleared.
                read = self.other_read
                if read is None or read[0] != len(self.calls) - 1 or self.calls[-2].target != call.target:
                    self.violations.append(f"clear_stale_action for {call.target} without reading it right before")
                elif read[1] in AUTHORISING:
                    self.violations.append(f"clear_stale_action for {call.target} after reading it {read[1]}")
                if (
                    owner is not None
                    and a is not None
                    and a.status == "in_progress"
                    and owner in self.intents
                    and self.intents[owner].status in AUTHORISING
                ):
                    self.violations.append(f"cleared the action of {owner}, being authorised")
                self.cancel_actions.append(owner)
                self.action = None
            case Op.CAPTURE:
                if order.vend_result not in {"success", "partial"}:
                    self.violations.append(f"capture of {order.order_id} without a recorded vend success")
                if pi.status != "requires_capture":
                    return CallFailed(call, Failure.REFUSED, code="payment_intent_unexpected_state")
                amount = pi.amount_capturable if call.amount is None else call.amount
                if amount > pi.amount_capturable or amount <= 0:
                    self.violations.append(f"capture of {amount} > capturable {pi.amount_capturable}")
                    return CallFailed(call, Failure.REFUSED, code="amount_too_large")
                pi.status, pi.amount_received, pi.amount_capturable = "succeeded", amount, 0
                self.captures.append((pi.id, amount))
                return CallSucceeded(call, intent=pi.view())
            case Op.CANCEL:
                if pi.status not in ACTIVE | {"requires_capture"}:
                    return CallFailed(call, Failure.REFUSED, code="payment_intent_unexpected_state")
                pi.status, pi.amount_capturable, pi.cancellation_reason = "canceled", 0, call.reason
                self.cancels.append(pi.id)
                if a is not None and a.intent_id == pi.id and a.status == "in_progress":
                    a.authorising = None
                    a.status, a.failure_code = "failed", "payment_intent_canceled"
                return CallSucceeded(call, intent=pi.view())
        return CallSucceeded(call, reader=self.reader_view())


# --- The runner's loop, with the invariants ------------------------------------------------------


BUSY_LIMIT = 12  # calls one order may make at one instant before it counts as a busy loop


@dataclass
class Driver:
    """The runner's loop for one order at a time on a simulated clock, checking the invariants."""

    stripe: FakeStripe = field(default_factory=FakeStripe)
    policy: Policy = field(default_factory=lambda: Policy(kiosk_id=KIOSK))
    now: float = 1000.0
    order: OrderData | None = None
    violations: list[str] = field(default_factory=list)
    replies: list[Reason | None] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    budget_failed: bool = False
    pending: Outcome | None = None
    _reads_now: set[Op] = field(default_factory=set)
    _calls_now: int = 0
    _instant: float = -1.0

    def start(
        self,
        order_id: str = "o1",
        amount: int = 500,
        *,
        policy: Policy | None = None,
        items: tuple[Item, ...] = (),
        expires_at: float | None = None,
    ) -> OrderData:
        """Receive a new order."""
        self.order = core.new_order(
            order_id=order_id,
            amount=amount,
            currency="usd",
            policy=policy or self.policy,
            now=self.now,
            items=items,
            expires_at=expires_at,
            message_id=f"m-{order_id}",
        )
        self.states = [self.order.state]
        self._reads_now, self._calls_now = set(), 0  # the busy-loop count is per order
        return self.order

    @property
    def o(self) -> OrderData:
        """The current order."""
        assert self.order is not None
        return self.order

    @property
    def pi(self) -> FakeIntent | None:
        """The current order's PaymentIntent at the fake Stripe."""
        return self.stripe.intent_of(self.o.order_id)

    def _set(self, order: OrderData) -> None:
        before = self.o
        if order.status_seq < before.status_seq:
            self.violations.append(f"status seq went back {before.status_seq} -> {order.status_seq}")
        if core.public_view(order) != core.public_view(before) and order.status_seq == before.status_seq:
            self.violations.append(f"public view changed without a new seq: {before.state} -> {order.state}")
        if before.terminal and core.public_view(order) != core.public_view(before):
            self.violations.append(f"terminal order changed: {before.state} -> {order.state}")
        if order.state is not before.state:
            self.states.append(order.state)
        self.order = order
        self.check()

    def send(self, event: Event) -> Reason | None:
        """Feed a controller message or a restart to the order (also while a call is in flight)."""
        if isinstance(event, Restarted):
            self.pending = None  # the reply of the call in flight, if any, is lost
            self.tick(1.0)  # a restart takes time; reads afterwards are not a busy loop
        self._reads_now = set()  # news: reading again is not a repeat
        order, reply = core.handle(self.o, event, self.now)
        self._set(order)
        self.replies.append(reply)
        return reply

    def cancel(self, msg: str = "c1") -> Reason | None:
        """The controller cancels."""
        return self.send(CancelRequested(msg))

    def vend(self, result: str = "success", amount: int | None = None, msg: str = "v1") -> Reason | None:
        """The controller reports the vend."""
        return self.send(VendReported(msg, result, amount))

    def tick(self, seconds: float) -> None:
        """Let time pass without the order planning."""
        self.now += seconds
        self.stripe.now = self.now

    def step(self) -> Call | Wait | None:
        """One plan, and when it is a call, perform it and feed back the outcome."""
        action = self.begin()
        if isinstance(action, Call):
            self.finish()
        return action

    def begin(self) -> Call | Wait | None:
        """Plan, and when it is a call, perform it; its outcome waits for `finish`."""
        if self.pending is not None:
            return Wait(None)
        if self._instant != self.now:
            self._instant, self._reads_now, self._calls_now = self.now, set(), 0
        order, action = core.plan(self.o, self.now)
        self._set(order)
        if not isinstance(action, Call):
            if isinstance(action, Wait) and action.until is not None and action.until <= self.now:
                self.violations.append(f"plan waits until {action.until} <= now {self.now}: a busy loop")
            return action
        call = action
        self._check_call(order, call)
        self.pending = self.stripe.perform(call, order)
        return call

    def finish(self) -> None:
        """The outcome of the call in flight reaches the order."""
        outcome, self.pending = self.pending, None
        if outcome is None:
            return
        new, reply = core.handle(self.o, outcome, self.now)
        if reply is not None:
            self.violations.append(f"a call outcome was answered with {reply}")
        self._set(new)

    def _check_call(self, order: OrderData, call: Call) -> None:
        if order.inflight != call:
            self.violations.append(f"{call} not recorded in order.inflight before the call")
        if call.op.mutating and call.key is None:
            self.violations.append(f"mutating {call.op} without a key")
        self._calls_now += 1
        if call.op.mutating:
            self._reads_now = set()  # a read after a change is news, not a repeat
        else:
            if call.op in self._reads_now:
                self.violations.append(f"{call.op} twice at t={self.now} ({self.o.state}): a busy loop")
            self._reads_now.add(call.op)
        if self._calls_now > BUSY_LIMIT:
            self.violations.append(f"{self._calls_now} calls at t={self.now}: a busy loop")
            raise BusyLoopError(self.violations[-1])

    def crash(self, *, applied: bool) -> Call | None:
        """The daemon dies: the next call was saved, and made (`applied`) or not; then it restarts."""
        if self.pending is not None:
            self.send(Restarted())
            return None
        order, action = core.plan(self.o, self.now)
        self._set(order)
        call = action if isinstance(action, Call) else None
        if call is not None and applied:
            self.stripe.perform(call, order)
        self.send(Restarted())
        return call

    def run(self, seconds: float = 0.0) -> None:
        """Run the order's calls and waits until it waits for an event or `seconds` have passed."""
        end = self.now + seconds
        while True:
            action = self.step()
            if action is None:
                return
            if isinstance(action, Call):
                continue
            if action.until is None or action.until > end:
                if end > self.now:
                    self.tick(end - self.now)
                    continue
                return
            self.tick(max(action.until - self.now, 0.0))

    def run_until(self, *states: State, limit: float = 600.0) -> None:
        """Run until the order is in one of `states` (or `limit` simulated seconds have passed)."""
        end = self.now + limit
        while self.o.state not in states and self.now < end:
            action = self.step()
            if action is None:
                return
            if isinstance(action, Wait):
                until = end if action.until is None else min(action.until, end)
                self.tick(max(until - self.now, 0.001))

    def settle(self, limit: float = 7 * 24 * 3600.0) -> None:
        """Run to the end, answering nothing: no card, no vend result (timeouts end the order)."""
        self.run_until(*TERMINAL, limit=limit)

    # --- invariants ------------------------------------------------------------------------------

    def check(self) -> None:
        """design.md's money-safety invariants against the fake's ledger; violations are collected."""
        order = self.o
        stripe = self.stripe
        pis = stripe.creates.get(order.order_id, [])
        v = self.violations
        if len(pis) > 1:
            v.append(f"{order.order_id} has {len(pis)} PaymentIntents")
        pi = self.pi
        captures = [amount for pid, amount in stripe.captures if pid in pis]
        if len(captures) > 1:
            v.append(f"{order.order_id} captured {len(captures)} times")
        if pi is not None:
            if not pi.amount_received <= max(pi.authorised, 0) <= order.amount or pi.amount != order.amount:
                v.append(f"amounts: received {pi.amount_received} authorised {pi.authorised} order {order.amount}")
            if order.intent_id is not None and order.intent_id != pi.id:
                v.append(f"order records {order.intent_id}, Stripe has {pi.id}")
        if order.state is State.APPROVED and (pi is None or pi.authorised == 0):
            v.append("approved without the PI ever in requires_capture")
        if not order.terminal:
            return
        self._check_end(order, pi)

    def _check_end(self, order: OrderData, pi: FakeIntent | None) -> None:
        v = self.violations
        status = pi.status if pi is not None else None
        if order.state is State.COMPLETED:
            want = order.vend_amount if order.vend_result == "partial" else order.amount
            if order.vend_result not in {"success", "partial"}:
                v.append("completed without a vend success")
            if pi is None or status != "succeeded" or pi.amount_received != want or order.captured_amount != want:
                v.append(f"completed but Stripe shows {status} {pi and pi.amount_received}, want {want}")
            return
        if status == "succeeded":
            v.append(f"{order.state} but the PI was captured")
        if order.state is State.FAILED and status in ACTIVE | {"requires_capture"}:
            # Only a step whose time budget ran out may leave the release to the reconciler.
            if order.reason is None or order.reason.code not in {"payments_unavailable", "release_pending"}:
                v.append(f"failed/{order.reason} with the PI left {status}")
            self.budget_failed = True
        elif order.state is not State.FAILED and status not in {None, "canceled"}:
            v.append(f"{order.state}/{order.reason} with the PI left {status}")
        if (
            order.vend_result in {"success", "partial"}
            and pi is not None
            and pi.cancellation_reason != "automatic"
            and not self.budget_failed
        ):
            v.append(f"lost sale: vend {order.vend_result} recorded, order ended {order.state}/{order.reason}")


class BusyLoopError(AssertionError):
    """The order made too many calls without time passing."""


def replace_policy(**changes: object) -> Policy:
    """The default policy with some settings changed."""
    return replace(Policy(kiosk_id=KIOSK), **changes)  # type: ignore[arg-type]
