"""The order state machine: events in, Stripe calls out, time passed in as a value.

House rules of the machine (they are the money-safety invariants of design.md, made local):
- One call in flight per order. Its idempotency key is part of the order data the runner saves
  *before* making the call, so a restart finds the key and re-sends the same request.
- An unknown outcome (timeout, connection error, 5xx, restart) is resolved by reading: the next
  call is a read of the PaymentIntent or the reader, never a second create. A create whose
  outcome is unknown is re-sent with the same key, which Stripe answers with the first response.
- `approved` only after the PaymentIntent was seen in `requires_capture`; capture only after a
  recorded `success`/`partial` vend result, for at most what was authorised.
- An order that ends without a capture ends only after its PaymentIntent was seen canceled (or
  never existed), except when a step's time budget ran out: then it ends `failed` and the
  reconciler releases the hold.
- Reader hygiene: `cancel_action` clears the reader's action, whoever's it is, so it is sent only
  after a read showed the action to be this order's own PaymentIntent's — with one exception. A
  stale action of an earlier order (another PaymentIntent, still `in_progress`) that makes the
  reader answer busy is cleared only after that PaymentIntent was read, right before the cancel,
  and found not being authorised (anything but `processing` or `requires_capture`). One that is
  being authorised is never canceled: kiosk waits (backoff, read again) within the step budget.
  Stripe itself refuses `cancel_action` while a card is being authorised; that refusal, too,
  means wait and compare again, never resend. The other PaymentIntent itself is left alone.
  An order winding down starts nothing on the reader and clears no stale action; a comparison
  made before a restart is made again after it.
- Everything is a pure function of (order data, event, now). No I/O, no clock, no randomness.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

from kiosk.errors import IllegalTransition
from kiosk.model import (
    Abandon,
    ActionView,
    Call,
    CallFailed,
    CallSucceeded,
    CancelRequested,
    Card,
    Event,
    Failure,
    Goal,
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

READER_OPS = frozenset({Op.DISPLAY, Op.PROCESS, Op.COLLECT, Op.CONFIRM, Op.CANCEL_ACTION, Op.CLEAR_STALE})
PAYMENT_ACTIONS = frozenset({"process_payment_intent", "collect_payment_method", "confirm_payment_intent"})
# Calls made only to start (or confirm) this order's payment: never made once the order winds down.
STARTING = frozenset({Op.DISPLAY, Op.CLEAR_STALE, Op.PROCESS, Op.COLLECT, Op.CONFIRM})
# A PaymentIntent in these states is being (or has just been) authorised: its action is never canceled.
AUTHORISING = frozenset({"processing", "requires_capture"})
# States in which the reader may be running this order's payment action.
ON_READER = frozenset({State.RECEIVED, State.AWAITING_CARD, State.PROCESSING, State.DECLINED})
COLLECT_WINDOW_S = 30.0
CANCEL_ACTION_TRIES = 3  # a reader that keeps timing out on cancel_action: release the PI instead
RESTART_VEND_GRACE_S = 30.0  # after a restart, at most this long for a vend result the broker kept

# Short texts a customer can read on the machine's screen, by Stripe decline or error code.
DECLINE_MESSAGES = {
    "insufficient_funds": "Insufficient funds. Please try another card.",
    "lost_card": "This card cannot be used. Please try another card.",
    "stolen_card": "This card cannot be used. Please try another card.",
    "expired_card": "This card has expired. Please try another card.",
    "incorrect_pin": "Incorrect PIN. Please try again.",
    "pin_try_exceeded": "Too many PIN attempts. Please try another card.",
    "online_or_offline_pin_required": "Please insert your card and enter your PIN.",
    "offline_pin_required": "Please insert your card and enter your PIN.",
    "withdrawal_count_limit_exceeded": "Card limit reached. Please try another card.",
    "call_issuer": "Card declined. Please contact your bank or try another card.",
    "processing_error": "The card could not be processed. Please try again.",
    "generic_decline": "Card declined. Please try another card.",
    "card_declined": "Card declined. Please try another card.",
    "card_not_accepted": "This card is not accepted here. Please try another card.",
}


# --- Creating an order -------------------------------------------------------------------------


def new_order(  # noqa: PLR0913 - an order is made of these
    *,
    order_id: str,
    amount: int,
    currency: str,
    policy: Policy,
    now: float,
    items: tuple[Item, ...] = (),
    expires_at: float | None = None,
    message_id: str | None = None,
) -> OrderData:
    """A freshly received order (journal it, then publish `received`)."""
    return OrderData(
        order_id=order_id,
        amount=amount,
        currency=currency,
        policy=policy,
        created_at=now,
        items=items,
        expires_at=expires_at,
        in_reply_to=message_id,
        status_seq=1,
        step_since=now,
    )


def expired_order(  # noqa: PLR0913
    *,
    order_id: str,
    amount: int,
    currency: str,
    policy: Policy,
    now: float,
    items: tuple[Item, ...] = (),
    expires_at: float | None = None,
    message_id: str | None = None,
) -> OrderData:
    """An order whose `expires_at` had passed when it arrived: canceled before anything began."""
    order = new_order(
        order_id=order_id,
        amount=amount,
        currency=currency,
        policy=policy,
        now=now,
        items=items,
        expires_at=expires_at,
        message_id=message_id,
    )
    return replace(
        order,
        state=State.CANCELED,
        reason=Reason("order_expired", "The order expired before payment began."),
    )


def idempotency_key(order: OrderData, op: Op) -> str:
    """The key of the current attempt of `op`: (kiosk id, order id, operation, attempt)."""
    return f"kiosk:{order.policy.kiosk_id}:{order.order_id}:{op.value}:{order.attempts.get(op.value, 1)}"


# --- Deciding the next call --------------------------------------------------------------------


def plan(order: OrderData, now: float) -> tuple[OrderData, Call | Wait | None]:
    """Apply the passage of time, then say what to do next.

    Returns the (possibly changed) order and one of: a `Call` to make now (the order returned
    already records it as in flight with its key: save it before calling), a `Wait`, or None when
    the order has ended.
    """
    order = _bump_seq(order, _apply_time(order, now))
    if order.terminal:
        return order, None
    if order.inflight is not None:
        return order, Wait(None)
    if order.retry_at is not None and now < order.retry_at:
        return order, Wait(order.retry_at)
    call = _next_call(order, now)
    if isinstance(call, Wait):
        return order, call
    if call.op.mutating:
        call = replace(call, key=idempotency_key(order, call.op))
    return replace(order, inflight=call, retry_at=None), call


def _next_call(order: OrderData, now: float) -> Call | Wait:  # noqa: C901, PLR0911 - one branch per state
    if order.pending_read is not None:
        return _call_for(order, order.pending_read)
    if order.retry_op is not None:
        return _call_for(order, order.retry_op)
    if order.goal is not None:
        return _wind_down(order)
    match order.state:
        case State.RECEIVED:
            if order.intent_id is None:
                return Call(Op.CREATE)
            if order.items and not order.displayed:
                return Call(Op.DISPLAY)
            return _start_payment(order)
        case State.DECLINED:
            return _start_payment(order)
        case State.AWAITING_CARD:
            if order.collected:
                return Call(Op.CONFIRM)
            return _poll(order, now, Op.READ_READER, order.card_deadline)
        case State.PROCESSING:
            return _poll(order, now, Op.READ_READER if _collect_flow(order) else Op.READ_INTENT, None)
        case State.APPROVED:
            return Wait(order.vend_deadline)
        case State.CAPTURING:
            return _call_for(order, Op.CAPTURE)
    raise IllegalTransition(order.state, "plan")  # pragma: no cover - terminal states return above


def _collect_flow(order: OrderData) -> bool:
    return order.policy.flow == "collect_confirm"


def _start_op(order: OrderData) -> Op:
    return Op.COLLECT if _collect_flow(order) else Op.PROCESS


def _start_payment(order: OrderData) -> Call:
    return Call(_start_op(order))


def _poll(order: OrderData, now: float, op: Op, deadline: float | None) -> Call | Wait:
    if order.next_poll_at is None or now >= order.next_poll_at:
        return Call(op)
    return Wait(order.next_poll_at if deadline is None else min(order.next_poll_at, deadline))


def _call_for(order: OrderData, op: Op) -> Call:
    if op is Op.CAPTURE:
        amount = order.vend_amount if order.vend_result == "partial" else None
        return Call(Op.CAPTURE, amount=amount)
    if op is Op.CANCEL:
        return Call(Op.CANCEL, reason=order.goal.stripe_reason if order.goal else "abandoned")
    if op is Op.CLEAR_STALE or op is Op.READ_OTHER_INTENT:
        return Call(op, target=order.stale_intent)
    return Call(op)


def _wind_down(order: OrderData) -> Call:
    assert order.goal is not None  # noqa: S101 - the caller checked
    if order.state in ON_READER and not order.action_cleared:
        # Compare before cancel: cancel_action only when the reader's action is this order's.
        return Call(Op.READ_READER)
    return _call_for(order, Op.CANCEL)


# --- Time ---------------------------------------------------------------------------------------


def _apply_time(order: OrderData, now: float) -> OrderData:
    if order.terminal:
        return order
    policy = order.policy
    if order.goal is None:
        if order.state is State.RECEIVED and order.expires_at is not None and now >= order.expires_at:
            order = _begin_goal(
                order,
                Goal(State.CANCELED, "order_expired", "The order expired before payment began."),
                now,
            )
        elif order.state is State.AWAITING_CARD and order.card_deadline is not None and now >= order.card_deadline:
            order = _begin_goal(
                order,
                Goal(
                    State.CANCELED,
                    "card_timeout",
                    "No card was presented in time.",
                    honor_authorisation=True,
                ),
                now,
            )
        elif order.state is State.APPROVED and order.vend_deadline is not None and now >= order.vend_deadline:
            order = _begin_goal(
                order,
                Goal(State.CANCELED, "vend_result_timeout", "The machine did not confirm the vend."),
                now,
            )
        elif (
            order.collected
            and order.collected_at is not None
            and now >= order.collected_at + COLLECT_WINDOW_S - 5
            and order.inflight is None
        ):
            order = _begin_goal(
                order,
                Goal(
                    State.CANCELED,
                    "confirm_window_missed",
                    "The payment could not be confirmed in time.",
                ),
                now,
            )
    # A step that keeps failing ends the order, except captures and releases: those are money
    # already moving and keep being retried (the reconciler is the backstop for releases).
    if (
        order.tries > 0
        and now - order.step_since > policy.step_budget_s
        and order.state is not State.CAPTURING
        and order.goal is None
    ):
        order = _begin_goal(
            order,
            Goal(
                State.FAILED,
                "payments_unavailable",
                "Payments are unavailable right now.",
                retryable=False,
            ),
            now,
        )
    elif (
        order.goal is not None
        and order.tries > 0
        # Without a known PI there is nothing of ours to release but what the reconciler finds.
        and now - order.step_since > policy.step_budget_s * (1 if order.intent_id is None else 4)
        and order.inflight is None
    ):
        if order.intent_id is None:
            return _end_goal(order)
        # Releasing the hold keeps failing: tell the controller now; the reconciler finishes it.
        order = _finish(
            order, State.FAILED, Reason("release_pending", "The payment is being released.", retryable=False)
        )
    return order


# --- Handling events ----------------------------------------------------------------------------


def handle(order: OrderData, event: Event, now: float) -> tuple[OrderData, Reason | None]:
    """Apply one event.

    Returns the new order and, for a controller message or an operator's Abandon that cannot
    be applied, the reason to refuse it with.

    Raises:
        IllegalTransition: a call result for a call that is not in flight (a bug in the caller).
    """
    before = order
    reply: Reason | None = None
    match event:
        case CallSucceeded() | CallFailed():
            if order.inflight != event.call:
                raise IllegalTransition(order.state, f"result of {event.call.op} with {order.inflight} in flight")
            order = replace(order, inflight=None)
            order = _succeeded(order, event, now) if isinstance(event, CallSucceeded) else _failed(order, event, now)
        case CancelRequested():
            order, reply = _cancel_requested(order, event, now)
        case VendReported():
            order, reply = _vend_reported(order, event, now)
        case Restarted():
            order = _restarted(order, now)
        case Abandon():
            order, reply = _abandon(order, event, now)
    if order.goal is not None and order.retry_op in STARTING:
        # A start that was in flight when the wind-down began (its answer unknown, the reader
        # busy, the key refused) is not sent again: the wind-down's read of the reader decides
        # (cancel_action only if the action is this order's and running; another PaymentIntent's
        # action is left alone: nothing of ours is there to clear). Sent again, a start could
        # begin a payment after the cancel, or, refused busy by another action, be sent again
        # without end; a stale action's clear would act on a comparison no longer fresh.
        order = replace(order, retry_op=None)
    return _bump_seq(before, order), reply


def public_view(order: OrderData) -> tuple[object, ...]:
    """What the controller sees of an order; a change here means a new status message."""
    # The PI id alone is no news: the controller first sees it with `awaiting_card`.
    return (order.state, order.reason, order.card, order.captured_amount)


def _bump_seq(before: OrderData, after: OrderData) -> OrderData:
    if public_view(before) != public_view(after):
        return replace(after, status_seq=before.status_seq + 1)
    return after


def _restarted(order: OrderData, now: float) -> OrderData:
    if order.terminal:
        return order
    order = replace(order, retry_at=None, step_since=now if order.tries == 0 else order.step_since)
    if order.retry_op is Op.CLEAR_STALE:
        # That action's PaymentIntent was compared before the restart: compare again first.
        order = replace(order, retry_op=_start_op(order), stale_intent=None)
    if order.state is State.APPROVED and order.goal is None and order.vend_deadline is not None:
        # While kiosk was down the controller could not be heard: its vend result may be waiting
        # in the broker's session, sent in time. Let it arrive before the hold is released.
        grace = min(order.policy.vend_result_timeout_s, RESTART_VEND_GRACE_S)
        order = replace(order, vend_deadline=max(order.vend_deadline, now + grace))
    if order.inflight is not None:
        call = order.inflight
        order = replace(order, inflight=None)
        return _failed(order, CallFailed(call, Failure.UNKNOWN, message="the daemon restarted"), now)
    if order.intent_id is None:
        return order
    # Whatever happened while we were down is read back before anything else is done.
    read = Op.READ_READER if order.state is State.AWAITING_CARD else Op.READ_INTENT
    if order.state is State.RECEIVED:
        read = Op.READ_INTENT
    if order.retry_op is Op.CANCEL_ACTION:
        # The reader's action was compared before the restart: compare again first.
        read = Op.READ_READER
    return replace(order, pending_read=read)


def _progress(order: OrderData, now: float) -> OrderData:
    """A call moved the order on: the retry budget starts again."""
    return replace(order, tries=0, step_since=now, retry_op=None, retry_at=None)


def _retry(  # noqa: PLR0913 - how long to wait has three sources
    order: OrderData,
    now: float,
    op: Op,
    *,
    same_key: bool,
    delay: float | None = None,
    floor: float = 0.0,
) -> OrderData:
    """Retry `op` after a jittered exponential backoff (or exactly `delay`; never before `floor`)."""
    tries = order.tries + 1
    policy = order.policy
    backoff = _jitter(order, op, tries, min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** (tries - 1)))
    wait = delay if delay is not None else max(backoff, floor)
    attempts = order.attempts
    if not same_key and op.mutating:
        attempts = {**attempts, op.value: attempts.get(op.value, 1) + 1}
    return replace(
        order,
        tries=tries,
        retry_at=now + wait,
        retry_op=op if op.mutating else None,
        pending_read=None if op.mutating else op,
        attempts=attempts,
        step_since=order.step_since if order.tries else now,
    )


def _read_then(order: OrderData, now: float, read: Op, retry: Op | None, *, delay: float = 0.0) -> OrderData:
    """Read first; `retry` (same key) follows unless what is read shows it is not needed."""
    tries = order.tries + 1
    return replace(
        order,
        pending_read=read,
        retry_op=retry,
        tries=tries,
        retry_at=now + delay if delay else None,
        step_since=order.step_since if order.tries else now,
    )


def _new_attempt(order: OrderData, op: Op) -> OrderData:
    attempts = {**order.attempts, op.value: order.attempts.get(op.value, 1) + 1}
    if op is Op.COLLECT:
        # A new collection needs a new confirmation: under the old key Stripe would replay the
        # first confirm's answer (a decline) and the new card would never be confirmed.
        attempts[Op.CONFIRM.value] = attempts.get(Op.CONFIRM.value, 1) + 1
    return replace(order, attempts=attempts)


def _backoff_s(order: OrderData) -> float:
    policy = order.policy
    base = min(policy.backoff_cap_s, policy.backoff_base_s * 2.0 ** max(order.tries - 1, 0))
    return _jitter(order, order.retry_op or order.pending_read or Op.READ_READER, order.tries, base)


def _jitter(order: OrderData, op: Op, tries: int, wait: float) -> float:
    """`wait` scaled by a factor in [1 - jitter, 1 + jitter) drawn from (key, try): pure, yet spread.

    Kiosks of a fleet throttled at the same moment have different order ids, so they come back
    at different moments; the same order replayed (tests, a restart) waits the same again.
    """
    spread = min(max(order.policy.backoff_jitter, 0.0), 1.0)
    if spread == 0.0 or wait <= 0.0:
        return wait
    draw = zlib.crc32(f"{idempotency_key(order, op)}#{tries}".encode()) / 2**32
    return wait * (1.0 - spread + 2.0 * spread * draw)


def _begin_goal(order: OrderData, goal: Goal, now: float) -> OrderData:
    create_pending = order.retry_op is Op.CREATE
    order = replace(order, goal=goal, retry_op=None, tries=0, retry_at=None, step_since=now)
    if order.intent_id is not None or order.inflight is not None:
        return order
    if create_pending:
        # A create may have reached Stripe: learn its id (same key), then release it.
        return replace(order, retry_op=Op.CREATE)
    return _end_goal(order)


def _finish(order: OrderData, state: State, reason: Reason | None, captured: int | None = None) -> OrderData:
    return replace(
        order,
        state=state,
        reason=reason,
        captured_amount=captured,
        goal=None,
        inflight=None,
        pending_read=None,
        retry_op=None,
        retry_at=None,
        next_poll_at=None,
    )


def _end_goal(order: OrderData) -> OrderData:
    goal = order.goal
    assert goal is not None  # noqa: S101 - only called with a goal
    return _finish(order, goal.end, Reason(goal.code, goal.message, goal.retryable))


# --- Call results -------------------------------------------------------------------------------


def _succeeded(order: OrderData, event: CallSucceeded, now: float) -> OrderData:  # noqa: C901, PLR0911
    op = event.call.op
    # Reads, and clearing another order's action, do not move this order on: the step's budget
    # keeps running (a reader that keeps getting stale actions ends the order in time).
    if op not in {Op.READ_READER, Op.READ_INTENT, Op.READ_OTHER_INTENT, Op.CLEAR_STALE}:
        order = _progress(order, now)
    match op:
        case Op.CREATE:
            assert event.intent is not None  # noqa: S101 - the runner passes the intent
            order = replace(order, intent_id=event.intent.id, retry_op=None)
            return _observe_intent(order, event.intent, now)
        case Op.DISPLAY:
            return replace(order, displayed=True)
        case Op.PROCESS | Op.COLLECT:
            return _payment_started(order, now)
        case Op.CONFIRM:
            return replace(
                order,
                state=State.PROCESSING,
                collected=False,
                next_poll_at=now + order.policy.poll_first_s,
            )
        case Op.CANCEL_ACTION:
            return replace(order, action_cleared=True)
        case Op.CLEAR_STALE:
            # The reader is free: start our payment. A later stale action is cleared under a new
            # key (this one's would only replay this answer).
            return _new_attempt(replace(order, stale_intent=None, retry_op=None, retry_at=None), Op.CLEAR_STALE)
        case Op.READ_OTHER_INTENT:
            assert event.intent is not None  # noqa: S101
            return _observe_stale(replace(order, pending_read=None), event.intent, now)
        case Op.CAPTURE | Op.CANCEL:
            assert event.intent is not None  # noqa: S101
            return _observe_intent(order, event.intent, now)
        case Op.READ_INTENT:
            assert event.intent is not None  # noqa: S101
            return _observe_intent(replace(order, pending_read=None, polls=order.polls + 1), event.intent, now)
        case Op.READ_READER:
            assert event.reader is not None  # noqa: S101
            return _observe_reader(replace(order, pending_read=None, polls=order.polls + 1), event.reader, now)
    raise IllegalTransition(order.state, f"result of {op}")  # pragma: no cover


def _payment_started(order: OrderData, now: float) -> OrderData:
    if order.goal is not None:
        return order
    deadline = order.card_deadline
    if order.state is not State.AWAITING_CARD or deadline is None:
        deadline = now + order.policy.card_timeout_s
    return replace(
        _progress(order, now),
        state=State.AWAITING_CARD,
        reason=None,
        card_deadline=deadline,
        next_poll_at=now + order.policy.poll_first_s,
        action_cleared=False,
        stale_intent=None,
    )


def _next_poll(order: OrderData, now: float) -> float:
    policy = order.policy
    since = order.card_deadline - policy.card_timeout_s if order.card_deadline is not None else order.step_since
    slow = now - since > policy.poll_slow_after_s
    return now + (policy.poll_slow_s if slow else policy.poll_interval_s)


def _ours(order: OrderData, action: ActionView | None) -> bool:
    return action is not None and action.type in PAYMENT_ACTIONS and action.intent_id == order.intent_id


def _stale(order: OrderData, action: ActionView | None) -> str | None:
    """The PaymentIntent of another payment still running on the reader, if that is what it shows."""
    if (
        action is None
        or action.type not in PAYMENT_ACTIONS
        or action.status != "in_progress"
        or action.intent_id is None
        or action.intent_id == order.intent_id
    ):
        return None
    return action.intent_id


def _observe_stale(order: OrderData, intent: IntentView, now: float) -> OrderData:
    """The PaymentIntent of a stale action, read right before clearing the action (or not)."""
    if order.goal is not None or intent.id != order.stale_intent or order.state not in {State.RECEIVED, State.DECLINED}:
        return replace(order, stale_intent=None, retry_op=None if order.retry_op is Op.CLEAR_STALE else order.retry_op)
    if intent.status in AUTHORISING:
        # A card is being authorised on it (or just was): never cancel that. Its action ends by
        # itself; ask the reader again after a backoff, within the step's budget.
        return _retry(replace(order, stale_intent=None), now, _start_op(order), same_key=True)
    return replace(order, retry_op=Op.CLEAR_STALE, retry_at=None)


def _observe_reader(order: OrderData, reader: ReaderView, now: float) -> OrderData:
    if reader.status == "offline" and order.state in ON_READER:
        # Stripe has not heard from the reader for two minutes: no card will come through it.
        # Nothing can be cleared on it either; releasing the PI ends its action.
        if order.goal is None:
            return _begin_goal(
                replace(order, action_cleared=True, next_poll_at=None),
                Goal(State.CANCELED, "reader_offline", "The card reader is offline.", retryable=True),
                now,
            )
        return _reader_gone(order)
    after = _observe_reader_action(order, reader, now)
    action = reader.action
    running = action is not None and _ours(order, action) and action.status == "in_progress"
    if order.goal is None and after.goal is not None and not running:
        # The wind-down began from this very read, which showed no action of ours running: there
        # is nothing to cancel_action, and reading the reader again at once would be a busy loop.
        after = replace(after, action_cleared=True)
    return after


def _observe_reader_action(order: OrderData, reader: ReaderView, now: float) -> OrderData:  # noqa: C901, PLR0911, PLR0912
    action = reader.action
    ours = _ours(order, action)
    retry = order.retry_op
    if order.goal is not None:
        if ours and action is not None and action.status == "in_progress":
            # Ours and still running: cancel it (again, with a new key, after a busy answer).
            again = retry is Op.CANCEL_ACTION
            order = replace(order, retry_op=Op.CANCEL_ACTION)
            return _new_attempt(order, Op.CANCEL_ACTION) if again else order
        order = replace(order, action_cleared=True, retry_op=None if retry is Op.CANCEL_ACTION else retry)
        if ours and action is not None and action.status == "succeeded":
            # The PI decides (it may be authorised); when the read carried it, don't read it again.
            if reader.intent is not None and reader.intent.id == order.intent_id:
                return _observe_intent(order, reader.intent, now)
            return replace(order, pending_read=Op.READ_INTENT)
        return order
    if order.state in {State.RECEIVED, State.DECLINED}:
        # We were starting the payment and do not know whether the reader took it.
        if ours and action is not None:
            order = replace(order, retry_op=None)
            order = _payment_started(order, now)
            return _observe_reader(order, reader, now) if action.status != "in_progress" else order
        stale = _stale(order, action)
        if stale is not None and retry in {Op.PROCESS, Op.COLLECT}:
            # Another PaymentIntent's payment (an earlier order that was never cleared) keeps the
            # reader busy: read that PI before deciding whether its action may be cleared.
            return replace(order, stale_intent=stale, pending_read=Op.READ_OTHER_INTENT)
        if retry is not None:
            # The retry follows, after a backoff: a reader busy with something else (another
            # order's action, a card left inserted) answers busy again if asked at once.
            return replace(order, retry_at=now + _backoff_s(order))
        return order
    if order.state is State.AWAITING_CARD or order.state is State.PROCESSING:
        if not ours or action is None:
            # Our action is gone (reader restarted, or replaced): the PI tells what happened.
            return replace(order, pending_read=Op.READ_INTENT, next_poll_at=None)
        if action.status == "in_progress":
            return replace(order, next_poll_at=_next_poll(order, now))
        if action.status == "succeeded":
            if action.type == "collect_payment_method" and order.state is State.AWAITING_CARD:
                return _collected(order, action.card, now)
            intent = reader.intent
            order = replace(order, state=State.PROCESSING, reason=None)
            if intent is not None and intent.id == order.intent_id:
                return _observe_intent(order, intent, now)
            return replace(order, pending_read=Op.READ_INTENT)
        # failed
        if action.failure_code == "customer_canceled":
            return _begin_goal(
                replace(order, action_cleared=True),
                Goal(
                    State.CANCELED,
                    "customer_canceled",
                    "The customer canceled on the reader.",
                    stripe_reason="requested_by_customer",
                ),
                now,
            )
        # A decline, a connection error (the PI may be authorised) or anything else: the PI decides.
        intent = reader.intent
        if intent is not None and intent.id == order.intent_id:
            return _observe_intent(order, intent, now, reader_failure=action)
        return replace(order, pending_read=Op.READ_INTENT, next_poll_at=None)
    return order


def _collected(order: OrderData, card: Card | None, now: float) -> OrderData:
    policy = order.policy
    problem = None
    if card is not None:
        if policy.allowed_brands and (card.brand or "") not in policy.allowed_brands:
            problem = f"{card.brand or 'this'} cards are not accepted here."
        elif policy.allowed_funding and (card.funding or "") not in policy.allowed_funding:
            problem = f"{card.funding or 'this kind of'} cards are not accepted here."
        elif not policy.allow_wallets and card.wallet:
            problem = "Phone and watch wallets are not accepted here."
    if problem is not None:
        return _begin_goal(
            replace(order, card=card),
            Goal(State.CANCELED, "card_not_accepted", f"{problem} Please try another card."),
            now,
        )
    # Seen again (a read after an unknown confirm): the 30 s window still runs from the first time.
    since = order.collected_at if order.collected and order.collected_at is not None else now
    return replace(order, card=card, collected=True, collected_at=since)


def _observe_intent(  # noqa: C901, PLR0911, PLR0912
    order: OrderData,
    intent: IntentView,
    now: float,
    reader_failure: ActionView | None = None,
) -> OrderData:
    status = intent.status
    goal = order.goal
    retry = order.retry_op
    if status == "requires_capture":
        order = replace(
            order,
            card=intent.card or order.card,
            capturable=intent.amount_capturable,
            capture_before=intent.capture_before,
        )
        if order.state is State.CAPTURING:
            # Still to capture after an unknown outcome or a refusal: again, after a backoff.
            wait = _backoff_s(order) if order.tries else 0.0
            return replace(order, retry_op=Op.CAPTURE, retry_at=now + wait if wait else None)
        if order.state is State.APPROVED:
            return order if goal is None else replace(order, retry_op=None)
        if goal is not None and not goal.honor_authorisation:
            return replace(order, action_cleared=True, retry_op=None if retry is not Op.CANCEL else retry)
        # A step resolved by reading is progress too: a leftover retry count would let the step
        # budget end (and release) an approved order while the machine is dispensing.
        return replace(
            _progress(order, now),
            state=State.APPROVED,
            reason=None,
            goal=None,
            retry_op=None,
            pending_read=None,
            collected=False,
            vend_deadline=_vend_deadline(order, now),
            next_poll_at=None,
        )
    if status == "succeeded":
        return _finish(order, State.COMPLETED, None, captured=intent.amount_received)
    if status == "canceled":
        if goal is not None:
            return _end_goal(order)
        if order.state is State.CAPTURING or order.state is State.APPROVED:
            return _finish(
                order,
                State.FAILED,
                Reason(
                    "authorization_expired",
                    "The authorisation expired before it was captured; nothing was charged.",
                ),
            )
        return _finish(order, State.CANCELED, Reason("payment_canceled", "The payment was canceled."))
    if goal is not None:
        # Not yet released: the cancel (or cancel_action) follows.
        if status == "processing" and order.state in ON_READER:
            return _retry(order, now, Op.READ_INTENT, same_key=True, delay=order.policy.poll_interval_s)
        return replace(order, action_cleared=True if order.state not in ON_READER else order.action_cleared)
    if order.state is State.CAPTURING or order.state is State.APPROVED:
        # The authorisation is gone (Stripe reverted it): nothing to capture.
        return _begin_goal(
            order,
            Goal(
                State.FAILED,
                "authorization_lost",
                "The authorisation is no longer valid; nothing was charged.",
            ),
            now,
        )
    if status == "processing":
        return replace(order, state=State.PROCESSING, next_poll_at=now + order.policy.poll_interval_s)
    if status == "requires_confirmation":
        if _collect_flow(order):
            again = replace(
                order,
                state=State.AWAITING_CARD,
                collected=True,
                collected_at=order.collected_at or now,
            )
            # A confirm that ended without authorising (connection_error) is confirmed again,
            # under a new key: the old one would replay the first confirm's answer, not act.
            return _new_attempt(again, Op.CONFIRM) if order.state is State.PROCESSING else again
        # Stripe's "temporary connectivity problem": process the same PI again.
        return _new_attempt(
            replace(
                order,
                state=State.DECLINED if order.state is State.DECLINED else order.state,
                retry_op=Op.PROCESS,
            ),
            Op.PROCESS,
        )
    if status in {"requires_payment_method", "requires_action"}:
        if order.state is State.RECEIVED:
            return order
        error = intent.decline
        failure_code = reader_failure.failure_code if reader_failure else None
        if error is not None or failure_code not in {None, "connection_error"}:
            return _declined(order, intent, reader_failure, now)
        # The action ended without a decline (reader rebooted, display replaced it): prompt again.
        return _new_attempt(
            replace(order, retry_op=Op.COLLECT if _collect_flow(order) else Op.PROCESS, collected=False),
            Op.COLLECT if _collect_flow(order) else Op.PROCESS,
        )
    return order


def _vend_deadline(order: OrderData, now: float) -> float:
    """When to give up on the vend result: its timeout, but never later than capture allows."""
    deadline = now + order.policy.vend_result_timeout_s
    if order.capture_before is not None:
        deadline = min(deadline, order.capture_before - order.policy.capture_margin_s)
    return deadline


def _authorisation_expired(order: OrderData, now: float) -> OrderData:
    """Stripe refused the capture and `capture_before` has passed: fail once, release, no retry loop."""
    return _begin_goal(
        replace(order, retry_op=None, pending_read=None),
        Goal(
            State.FAILED,
            "authorization_expired",
            "The authorisation expired before it was captured; nothing was charged.",
        ),
        now,
    )


def _declined(order: OrderData, intent: IntentView, failure: ActionView | None, now: float) -> OrderData:
    error = intent.decline
    code = (error.decline_code or error.code) if error else None
    code = code or (failure.failure_code if failure else None) or "card_declined"
    message = DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["generic_decline"])
    declines = order.declines + 1
    order = replace(order, declines=declines, collected=False, next_poll_at=None)
    if declines >= order.policy.max_card_attempts:
        return _begin_goal(
            order,
            Goal(
                State.CANCELED,
                "attempts_exhausted",
                f"The card was declined {declines} times. {message}",
            ),
            now,
        )
    op = Op.COLLECT if _collect_flow(order) else Op.PROCESS
    return _new_attempt(
        replace(
            _progress(order, now),
            state=State.DECLINED,
            reason=Reason(code, message, retryable=True),
            card_deadline=None,
        ),
        op,
    )


def _failed(order: OrderData, event: CallFailed, now: float) -> OrderData:  # noqa: C901, PLR0911, PLR0912
    op = event.call.op
    failure = event.failure
    code = event.code
    # Stripe-Should-Retry overrides the status code's usual meaning, both ways.
    if failure is Failure.THROTTLED and event.should_retry is False:
        failure = Failure.REFUSED
    elif failure is Failure.REFUSED and event.should_retry is True:
        failure = Failure.THROTTLED
    if failure is Failure.AUTH:
        if order.goal is not None or order.state in {State.APPROVED, State.CAPTURING}:
            return _retry(order, now, op, same_key=True, delay=order.policy.backoff_cap_s)
        order = _begin_goal(
            order,
            Goal(State.FAILED, "payments_unavailable", "Payments are unavailable right now."),
            now,
        )
        # The key will not be accepted a moment later either: wind down after a pause.
        return order if order.terminal else replace(order, retry_at=now + order.policy.backoff_cap_s)
    if op is Op.CLEAR_STALE and code not in {"terminal_reader_offline", "terminal_reader_hardware_fault"}:
        return _stale_not_cleared(order, event, now)
    if failure is Failure.THROTTLED:
        return _retry(order, now, op, same_key=True, floor=event.retry_after or 0.0)
    if not op.mutating:
        return _retry(order, now, op, same_key=True)
    if failure is Failure.UNKNOWN:
        if (event.replayed or event.should_retry is False) and op is not Op.CREATE:
            # Stripe stored a server error under this key and will answer it again, forever (or
            # says that sending it again will not help): the read decides whether the call is
            # still needed, and then it goes under a new key.
            # (Never for create: a new create key could make a second PaymentIntent.)
            order = _new_attempt(order, op)
        match op:
            case Op.CREATE if event.should_retry is False:
                # Sending it again would only replay this answer, and a new key could make a
                # second PaymentIntent: the order ends. A PaymentIntent made after all carries
                # this kiosk and order in its metadata: the reconciler finds and releases it.
                order = replace(order, retry_op=None)
                if order.goal is not None:
                    return _end_goal(order)
                return _begin_goal(
                    order,
                    Goal(State.FAILED, "payments_unavailable", "Payments are unavailable right now."),
                    now,
                )
            case Op.CREATE:
                return _retry(order, now, Op.CREATE, same_key=True)
            case Op.DISPLAY:
                # Cosmetic; the payment action replaces it anyway. Drop a pending display retry
                # (after throttling), or it would be re-sent at once, forever.
                return replace(order, displayed=True, retry_op=None)
            # The first unknown outcome is read at once; when it keeps happening, after a backoff
            # (else a read and a retry would follow each other as fast as Stripe answers).
            case Op.PROCESS | Op.COLLECT | Op.CONFIRM | Op.CANCEL_ACTION:
                return _read_then(order, now, Op.READ_READER, op, delay=_backoff_s(order) if order.tries else 0.0)
            case Op.CAPTURE | Op.CANCEL:
                return _read_then(order, now, Op.READ_INTENT, op, delay=_backoff_s(order) if order.tries else 0.0)
    # Refused, with a code.
    if op is Op.CAPTURE and order.capture_before is not None and now >= order.capture_before:
        return _authorisation_expired(order, now)
    match op, code:
        case Op.DISPLAY, _ if code != "terminal_reader_offline":
            return replace(order, displayed=True, retry_op=None)
        case _, "terminal_reader_offline":
            if op is Op.CANCEL_ACTION or order.goal is not None:
                # Nothing can be cleared on a reader that is gone: go on to release the PI (and
                # drop the pending reader retry, or it would be re-sent at once, forever).
                return _reader_gone(order)
            return _begin_goal(
                order,
                Goal(State.CANCELED, "reader_offline", "The card reader is offline.", retryable=True),
                now,
            )
        case _, "terminal_reader_hardware_fault":
            if order.goal is not None:
                return _reader_gone(order)
            return _begin_goal(
                order,
                Goal(State.CANCELED, "reader_unavailable", "The card reader is out of service."),
                now,
            )
        case Op.CANCEL_ACTION, "terminal_reader_timeout" if order.tries + 1 >= CANCEL_ACTION_TRIES:
            # The reader does not answer: canceling the PaymentIntent ends its action too, and
            # releases whatever the card may have authorised meanwhile.
            return _reader_gone(replace(order, tries=order.tries + 1))
        case (
            (Op.PROCESS | Op.COLLECT | Op.CONFIRM | Op.CANCEL_ACTION),
            "terminal_reader_busy" | "terminal_reader_timeout",
        ):
            # Maybe ours after all (a false negative), maybe another action or a card left inserted.
            delay = order.policy.poll_interval_s if op is Op.CANCEL_ACTION else 0.0
            order = _read_then(order, now, Op.READ_READER, op, delay=delay)
            return _new_attempt(order, op) if op is not Op.CANCEL_ACTION else order
        case _, "intent_invalid_state" | "payment_intent_unexpected_state":
            # Read after a backoff: when the PI looks ready for the same call again (a collected
            # card the reader lost), asking again at once would loop without time passing.
            order = _read_then(order, now, Op.READ_INTENT, None)
            return replace(order, retry_at=now + _backoff_s(order))
        case Op.CONFIRM, _:
            return _begin_goal(
                order,
                Goal(
                    State.CANCELED,
                    "payment_failed",
                    event.message or "The payment could not be confirmed.",
                ),
                now,
            )
        case Op.CAPTURE | Op.CANCEL, _:
            # Capture and release are never given up on: read, then try again with a new key.
            return _new_attempt(_read_then(order, now, Op.READ_INTENT, op, delay=order.policy.backoff_base_s), op)
    if op is Op.CREATE and order.goal is not None:
        # Refused, so no PaymentIntent exists under this key (an applied create would have been
        # replayed): nothing to release. Creating one with a new key only to cancel it is a risk.
        return _end_goal(order)
    if order.goal is not None:
        return _retry(order, now, op, same_key=False)
    return _begin_goal(
        order,
        Goal(
            State.FAILED,
            code or "stripe_error",
            event.message or "The payment could not be started.",
        ),
        now,
    )


def _stale_not_cleared(order: OrderData, event: CallFailed, now: float) -> OrderData:
    """Clearing a stale action failed: busy (a card is being authorised on it), a timeout, an error.

    It is never sent again as it was: after a backoff the reader is read and compared again.
    """
    order = _new_attempt(replace(order, stale_intent=None), Op.CLEAR_STALE)
    if order.goal is not None:
        return replace(order, retry_op=None if order.retry_op is Op.CLEAR_STALE else order.retry_op)
    wait = max(_backoff_s(order), event.retry_after or 0.0)
    return _read_then(order, now, Op.READ_READER, _start_op(order), delay=wait)


def _reader_gone(order: OrderData) -> OrderData:
    retry = None if order.retry_op in READER_OPS else order.retry_op
    return replace(order, action_cleared=True, retry_op=retry)


# --- Controller messages ------------------------------------------------------------------------


def _cancel_requested(order: OrderData, event: CancelRequested, now: float) -> tuple[OrderData, Reason | None]:
    if order.terminal or order.state is State.CAPTURING:
        return order, Reason("too_late", f"The order is {order.state.value}; it can no longer be canceled.")
    if order.goal is not None:
        return order, None
    goal = Goal(
        State.CANCELED,
        "controller_canceled",
        event.reason or "The machine canceled the order.",
        stripe_reason="requested_by_customer",
    )
    return _begin_goal(replace(order, in_reply_to=event.message_id), goal, now), None


def _abandon(order: OrderData, event: Abandon, now: float) -> tuple[OrderData, Reason | None]:
    if order.state is State.CAPTURING:
        # The product was dispensed, and its payment is owed, whoever asks to cancel.
        return order, Reason("too_late", "The order is capturing; it can no longer be canceled.")
    if order.terminal or order.goal is not None:
        return order, None
    return _begin_goal(order, Goal(State.CANCELED, event.code, event.message), now), None


def _vend_reported(order: OrderData, event: VendReported, now: float) -> tuple[OrderData, Reason | None]:
    if order.vend_result is not None:
        return order, None  # a duplicate: the first report stands
    if order.state is not State.APPROVED or order.goal is not None:
        return order, Reason("invalid_order", f"No vend result is expected while the order is {order.state.value}.")
    result = event.result
    amount = event.vended_amount
    if result == "partial":
        if amount is None:
            return order, Reason("invalid_order", "A partial vend result needs vended_amount.")
        if amount >= order.capturable:
            return order, Reason(
                "invalid_order",
                f"vended_amount {amount} must be below the authorised amount {order.capturable}; "
                "report success instead.",
            )
        if amount <= 0:
            result = "failure"
    order = replace(order, vend_result=result, vend_amount=amount, in_reply_to=event.message_id)
    if result == "failure":
        return _begin_goal(
            order,
            Goal(
                State.CANCELED,
                "vend_failed",
                "The product could not be dispensed; nothing was charged.",
            ),
            now,
        ), None
    return replace(order, state=State.CAPTURING, reason=None), None


# --- Helpers for the runner ---------------------------------------------------------------------


def card_of(order: OrderData) -> Card | None:
    """The card to show in the status payload."""
    return order.card
