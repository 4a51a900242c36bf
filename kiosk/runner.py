"""The runner: the only code that knows both the core and the outside world.

For each order: ask the core what to do, save the new state (with the idempotency key of the
call about to be made) in one journal transaction, make the call, turn its outcome into the next
event. Controller messages are applied under the order's lock and saved before the bus
acknowledges them. Statuses go out through the journal's outbox, so none is lost in a crash.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import TypeAdapter

from kiosk import core, crashpoints, logs, messages
from kiosk.errors import (
    IdempotencyMisuse,
    InvalidInput,
    StripeAuthError,
    StripeRefused,
    Throttled,
    UnknownOutcome,
    UpstreamError,
)
from kiosk.journal import Journal, OutboxMessage, StoredOrder
from kiosk.model import (
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
    Op,
    OrderData,
    Policy,
    ReaderView,
    Restarted,
    VendReported,
    Wait,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiosk.gateway import Intent, Reader, ReaderAction

log = logs.get("runner")

# Order data is our own, trusted JSON; pydantic's dataclass support saves a hand-written codec.
_ORDER_CODEC: TypeAdapter[OrderData] = TypeAdapter(OrderData)


def encode(order: OrderData) -> str:
    """The order as journal JSON."""
    return _ORDER_CODEC.dump_json(order).decode()


def decode(text: str) -> OrderData:
    """An order from journal JSON."""
    return _ORDER_CODEC.validate_json(text)


class Gateway(Protocol):
    """What the runner needs of the Stripe gateway."""

    async def create_intent(
        self, *, amount: int, currency: str, metadata: dict[str, str], description: str | None = None, key: str
    ) -> Intent: ...
    async def retrieve_intent(self, pi_id: str) -> Intent: ...
    async def capture_intent(self, pi_id: str, *, amount_to_capture: int | None = None, key: str) -> Intent: ...
    async def cancel_intent(self, pi_id: str, *, reason: Any = "abandoned", key: str) -> Intent: ...
    async def retrieve_reader(self) -> Reader: ...
    async def process_intent(self, pi_id: str, *, key: str) -> Reader: ...
    async def collect_payment_method(self, pi_id: str, *, key: str) -> Reader: ...
    async def confirm_intent(self, pi_id: str, *, key: str) -> Reader: ...
    async def cancel_action(self, *, key: str) -> Reader: ...
    async def set_display(self, currency: str, line_items: Any, total: int, *, key: str) -> Reader: ...


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """What the runner takes from the settings."""

    kiosk_id: str
    topic_prefix: str
    currencies: tuple[str, ...]
    max_amount: int
    policy: Policy


@dataclass(slots=True, eq=False)
class Live:
    """An order being driven: its current data, a lock for changes, a bell for its task."""

    order: OrderData
    request_hash: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    saved: OrderData | None = None  # what the journal holds, when known
    # A call a message handler planned and saved with its own change, for the order's task to make.
    planned: Call | None = None


def durable(order: OrderData) -> OrderData:
    """The order without what a restart re-derives: the bookkeeping of reads.

    A read needs no idempotency key and changes nothing at Stripe; a restart reads again anyway
    (`Restarted`). So a read in flight, the poll counter and the next poll time need not reach
    the disk: saving them would cost two synced commits per reader poll.
    """
    inflight = order.inflight
    if inflight is not None and not inflight.op.mutating:
        inflight = None
    return replace(order, inflight=inflight, polls=0, next_poll_at=None, pending_read=None)


# --- Translating the gateway's objects ----------------------------------------------------------


def intent_view(intent: Intent) -> IntentView:
    """The core's view of a PaymentIntent."""
    card = intent.card
    error = intent.last_error
    return IntentView(
        id=intent.id,
        status=intent.status,
        amount=intent.amount,
        amount_capturable=intent.amount_capturable,
        amount_received=intent.amount_received,
        card=Card(card.brand, card.last4, card.funding, card.wallet) if card else None,
        capture_before=float(intent.capture_before) if intent.capture_before is not None else None,
        decline=Decline(error.code, error.decline_code, error.message) if error else None,
        order_id=intent.metadata.get("order_id"),
    )


def _action_view(action: ReaderAction | None) -> ActionView | None:
    if action is None:
        return None
    card = action.card
    return ActionView(
        type=action.type,
        status=action.status,
        intent_id=action.payment_intent,
        failure_code=action.failure_code,
        failure_message=action.failure_message,
        card=Card(card.brand, card.last4, card.funding, card.wallet) if card else None,
    )


def reader_view(reader: Reader) -> ReaderView:
    """The core's view of a reader, with the action's PaymentIntent when the read carried it."""
    return ReaderView(
        id=reader.id,
        status=reader.status or "unknown",
        action=_action_view(reader.action),
        intent=intent_view(reader.intent) if reader.intent is not None else None,
    )


def failure_event(call: Call, exc: UpstreamError) -> CallFailed:
    """A gateway error as the core's event (with Stripe-Should-Retry and whether it was a replay)."""
    event = _failure_event(call, exc)
    return replace(event, should_retry=exc.should_retry, replayed=exc.replayed)


def _failure_event(call: Call, exc: UpstreamError) -> CallFailed:
    match exc:
        case Throttled():
            return CallFailed(call, Failure.THROTTLED, exc.code, exc.message, exc.retry_after)
        case StripeAuthError():
            return CallFailed(call, Failure.AUTH, exc.code, exc.message)
        case IdempotencyMisuse():
            log.error("runner.idempotency_misuse", call=call.op.value, key=call.key, error=exc.message)
            return CallFailed(call, Failure.REFUSED, exc.code or "idempotency_error", exc.message)
        case StripeRefused():
            return CallFailed(call, Failure.REFUSED, exc.code, exc.message)
        case UnknownOutcome():
            return CallFailed(call, Failure.UNKNOWN, exc.code, exc.message)
    return CallFailed(call, Failure.UNKNOWN, exc.code, exc.message)


# --- The runner ---------------------------------------------------------------------------------


class Runner:
    """Drives every open order; takes controller messages; reports through the outbox.

    Args:
        config: the settings the runner needs.
        journal: where every step is saved.
        gateway: Stripe.
        outbox_ready: called after each save that queued messages (wakes the publisher).
        on_outcome: told of every call outcome (availability tracking), before it is saved.
        on_saved: called once that outcome is saved: what the outcome sets off (the reader's
            state, published) then does not compete with the journal's thread meanwhile.
        on_terminal: told of each order saved in its final state, after the commit (fleet events).
        clock: wall-clock seconds (UTC); injectable for tests.
    """

    def __init__(  # noqa: PLR0913 - the runner is where these meet
        self,
        config: RunnerConfig,
        journal: Journal,
        gateway: Gateway,
        *,
        outbox_ready: Callable[[], None] = lambda: None,
        on_outcome: Callable[[Call, Event], None] = lambda _c, _e: None,
        on_saved: Callable[[], None] = lambda: None,
        accepting: Callable[[], tuple[str, str] | None] = lambda: None,
        on_terminal: Callable[[OrderData], None] = lambda _o: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._journal = journal
        self._gateway = gateway
        self._outbox_ready = outbox_ready
        self._on_outcome = on_outcome
        self._on_saved = on_saved
        self._accepting = accepting
        self._on_terminal = on_terminal
        self._clock = clock
        self._live: dict[str, Live] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self.policy = config.policy

    # -- lifecycle ------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Load every open order and mark what was in flight as unknown; returns how many."""
        stored = await self._journal.call(self._journal.open_orders)
        for row in stored:
            order = decode(row.data_json)
            live = Live(order=order, request_hash=row.request_hash)
            self._live[order.order_id] = live
            async with live.lock:
                changed, _ = core.handle(order, Restarted(), self._clock())
                await self._save(live, changed, "restarted")
            log.info("runner.order_recovered", order_id=order.order_id, state=order.state.value)
            crashpoints.reached("recovering")
        return len(stored)

    async def run(self) -> None:
        """Drive the recovered orders and every new one until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            for live in list(self._live.values()):
                self._start(live)
            try:
                await asyncio.Future()  # until cancelled
            finally:
                self._tasks = None

    def _start(self, live: Live) -> None:
        if self._tasks is not None:
            self._tasks.create_task(self._drive(live), name=f"order-{live.order.order_id}")

    @property
    def open_orders(self) -> int:
        """How many orders are not yet terminal."""
        return sum(1 for live in self._live.values() if not live.order.terminal)

    def order(self, order_id: str) -> OrderData | None:
        """An open order's current data (tests, fleet commands)."""
        live = self._live.get(order_id)
        return live.order if live else None

    # -- saving ---------------------------------------------------------------------------------

    async def _save(
        self, live: Live, order: OrderData, event: str, *, new: StoredOrder | None = None
    ) -> StoredOrder | None:
        """Save `order`; with `new`, as a new order unless its id is journaled already.

        Returns None, or (with `new`) the order the journal already held by that id, in which case
        nothing was written and `live` is unchanged.
        """
        before = live.order
        if order == before and new is None:
            return None
        outbox: list[OutboxMessage] = []
        if order.status_seq != before.status_seq or new is not None:
            outbox.append(self._status_message(order))
        if new is None and not outbox and live.saved is not None and durable(order) == durable(live.saved):
            live.order = order  # only read bookkeeping changed: nothing the journal must keep
            return None
        if new is not None:
            known = await self._journal.call(
                self._journal.add,
                order.order_id,
                request_hash=new.request_hash,
                request_json=new.request_json,
                state=order.state.value,
                terminal=order.terminal,
                data_json=encode(order),
                transition=(None, order.state.value, event),
                outbox=outbox,
            )
            if known is not None:
                return known
        else:
            transition = (before.state.value, order.state.value, event) if order.state != before.state else None
            await self._journal.call(
                self._journal.save,
                order.order_id,
                state=order.state.value,
                terminal=order.terminal,
                data_json=encode(order),
                transition=transition,
                outbox=outbox,
            )
        live.order = order
        live.saved = order
        if order.terminal and (new is not None or not before.terminal):
            self._on_terminal(order)  # after the commit: the fleet's event outbox
        if order.reason is not None and order.reason.code == "authorization_expired" and not before.terminal:
            # Money kiosk was owed and will not get: a person should know (alerting keys on this).
            log.error(
                "payment.authorization_expired",
                order_id=order.order_id,
                intent=order.intent_id,
                capture_before=order.capture_before,
                amount=order.amount,
            )
        if outbox:
            crashpoints.reached("status_queued")
            crashpoints.reached(f"status_queued_{order.state.value}")
            self._outbox_ready()
            log.info(
                "order.status",
                order_id=order.order_id,
                state=order.state.value,
                seq=order.status_seq,
                reason=order.reason.code if order.reason else None,
                intent=order.intent_id,
                captured_amount=order.captured_amount,
            )
        return None

    def _status_message(self, order: OrderData) -> OutboxMessage:
        payload = messages.status_payload(order, kiosk_id=self.config.kiosk_id, ts=self._clock())
        return OutboxMessage(
            topic=f"{self.config.topic_prefix}/order/{order.order_id}/status",
            payload=messages.dumps(payload),
            retain=True,
            expiry_s=messages.STATUS_EXPIRY_S,
            status_seq=order.status_seq,
        )

    async def _enqueue(self, *items: OutboxMessage) -> None:
        await self._journal.call(self._journal.enqueue, list(items))
        self._outbox_ready()

    # -- driving an order -----------------------------------------------------------------------

    async def _drive(self, live: Live) -> None:
        order_id = live.order.order_id
        planned: Call | Wait | None = None
        action: Call | Wait | None
        try:
            while True:
                now = self._clock()
                if planned is None:
                    async with live.lock:
                        if live.planned is not None:
                            action, live.planned = live.planned, None
                        else:
                            order, action = core.plan(live.order, now)
                            await self._save(
                                live, order, f"call.{action.op.value}" if isinstance(action, Call) else "tick"
                            )
                else:
                    action, planned = planned, None
                if action is None:
                    break
                if isinstance(action, Wait):
                    await self._sleep(live, action.until, now)
                    continue
                crashpoints.reached(f"before_{action.op.value}")
                outcome = await self._perform(live.order, action)
                crashpoints.reached(f"after_{action.op.value}")
                self._on_outcome(action, outcome)
                async with live.lock:
                    planned = await self._settle_and_plan(live, outcome)
                self._on_saved()
        finally:
            if self._live.get(order_id) is live and live.order.terminal:
                del self._live[order_id]
        log.info("runner.order_settled", order_id=order_id, state=live.order.state.value)

    async def _settle_and_plan(self, live: Live, outcome: Event) -> Call | Wait | None:
        """Apply a call's outcome and plan the next step, saved in one transaction where possible.

        The next call's idempotency key is in the same commit as the outcome before it, so the
        journal still holds every key before its call is made — with one synced commit per step
        instead of two. When planning itself changed what the controller sees (a deadline passed
        at that instant), the outcome is saved first, so that each status keeps its own seq.
        """
        now = self._clock()
        handled, _ = core.handle(live.order, outcome, now)
        order, action = core.plan(handled, now)
        if order.status_seq != handled.status_seq:
            await self._save(live, handled, _event_name(outcome))
            await self._save(live, order, "tick")
        else:
            await self._save(live, order, _event_name(outcome))
        return action

    async def _save_and_plan(
        self, live: Live, order: OrderData, event: str, *, new: StoredOrder | None = None
    ) -> StoredOrder | None:
        """Save `order` after `event`; when its next call can be planned now, in the same commit.

        The planned call waits in `live.planned` for the order's task (the caller holds the lock
        and wakes the task). One synced commit instead of two when a controller's message or a new
        order leads straight to a call: its key is in the journal before the call, as always.
        Returns what `_save` returns.
        """
        planned, action = core.plan(order, self._clock())
        if isinstance(action, Call) and planned.status_seq == order.status_seq:
            known = await self._save(live, planned, event, new=new)
            if known is None:
                live.planned = action
            return known
        return await self._save(live, order, event, new=new)

    async def _sleep(self, live: Live, until: float | None, now: float) -> None:
        timeout = None if until is None else max(0.0, until - now)
        try:
            async with asyncio.timeout(timeout):
                await live.wake.wait()
        except TimeoutError:
            pass
        live.wake.clear()

    async def _perform(self, order: OrderData, call: Call) -> Event:  # noqa: C901
        gw = self._gateway
        pi = order.intent_id or ""
        key = call.key or ""
        try:
            match call.op:
                case Op.CREATE:
                    intent = await gw.create_intent(
                        amount=order.amount,
                        currency=order.currency,
                        metadata={"kiosk_id": self.config.kiosk_id, "order_id": order.order_id},
                        description=f"kiosk {self.config.kiosk_id} order {order.order_id}",
                        key=key,
                    )
                    return CallSucceeded(call, intent=intent_view(intent))
                case Op.DISPLAY:
                    lines = [(i.name, i.unit_amount * i.quantity, i.quantity) for i in order.items]
                    reader = await gw.set_display(order.currency, lines, order.amount, key=key)
                case Op.PROCESS:
                    reader = await gw.process_intent(pi, key=key)
                case Op.COLLECT:
                    reader = await gw.collect_payment_method(pi, key=key)
                case Op.CONFIRM:
                    reader = await gw.confirm_intent(pi, key=key)
                case Op.CANCEL_ACTION:
                    reader = await gw.cancel_action(key=key)
                case Op.CAPTURE:
                    intent = await gw.capture_intent(pi, amount_to_capture=call.amount, key=key)
                    return CallSucceeded(call, intent=intent_view(intent))
                case Op.CANCEL:
                    intent = await gw.cancel_intent(pi, reason=call.reason or "abandoned", key=key)
                    return CallSucceeded(call, intent=intent_view(intent))
                case Op.READ_INTENT | Op.READ_OTHER_INTENT:
                    # read_other_intent reads the PaymentIntent of a stale action, not the order's.
                    return CallSucceeded(call, intent=intent_view(await gw.retrieve_intent(call.target or pi)))
                case Op.READ_READER:
                    reader = await gw.retrieve_reader()
                case Op.CLEAR_STALE:
                    # The core compared right before: that PaymentIntent is not being authorised.
                    reader = await gw.cancel_action(key=key)
                    log.info(
                        "reader.stale_action_cleared",
                        order_id=order.order_id,
                        intent=order.intent_id,
                        stale_intent=call.target,
                    )
        except UpstreamError as exc:
            event = failure_event(call, exc)
            log.warning(
                "payment.call_failed",
                order_id=order.order_id,
                call=call.op.value,
                failure=event.failure.value,
                code=event.code,
            )
            return event
        return CallSucceeded(call, reader=reader_view(reader))

    # -- controller messages --------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Apply one controller message; returns once its effect is durable (then ack it)."""
        order_id, kind = messages.topic_order_id(self.config.topic_prefix, topic)
        if order_id is None or kind is None:
            log.warning("bus.bad_topic", topic=topic[:200])
            return
        try:
            message = messages.parse(kind, order_id, payload)
        except InvalidInput as exc:
            log.warning("bus.invalid_message", order_id=order_id, kind=kind, code=exc.code, problem=exc.message)
            await self._reject(order_id, exc.code, exc.message, retryable=False, in_reply_to=_peek_id(payload))
            return
        match message:
            case messages.OrderRequest():
                await self._on_request(message)
            case messages.CancelRequest():
                await self._on_controller(order_id, CancelRequested(message.id, message.reason))
            case messages.VendResult():
                await self._on_controller(order_id, VendReported(message.id, message.result, message.vended_amount))

    async def _reject(  # noqa: PLR0913
        self,
        order_id: str,
        code: str,
        text: str,
        *,
        retryable: bool,
        in_reply_to: str | None,
        amount: int | None = None,
        currency: str | None = None,
    ) -> None:
        """A non-retained `rejected` status, then the order's real status again if it has one."""
        payload = messages.rejection_payload(
            kiosk_id=self.config.kiosk_id,
            order_id=order_id,
            ts=self._clock(),
            code=code,
            message=text,
            retryable=retryable,
            in_reply_to=in_reply_to,
            amount=amount,
            currency=currency,
        )
        topic = f"{self.config.topic_prefix}/order/{order_id}/status"
        await self._tell(order_id, OutboxMessage(topic=topic, payload=messages.dumps(payload), retain=False))

    def _republish(self, order: OrderData) -> OutboxMessage:
        return replace(self._status_message(order), status_seq=None)

    async def _tell(self, order_id: str, *first: OutboxMessage, known: OrderData | None = None) -> None:
        """Queue `first`, then the order's current status again, if there is an order.

        A live order's lock is held from reading its status to queueing it, so no newer status can
        be queued in between: the outbox publishes in order, and the broker must be left holding
        the latest status as the retained one, never an older one re-published late. `known` is
        the order as the caller just read it from the journal, when it did (not read again).
        """
        live = self._live.get(order_id)
        if live is not None:
            async with live.lock:
                await self._enqueue(*first, self._republish(live.order))
            return
        # Not live: ended (its journal row is final) or unknown. Only the message consumer, which
        # is here now, could make it live again.
        current = known if known is not None else await self._current(order_id)
        again = [self._republish(current)] if current is not None else []
        if first or again:
            await self._enqueue(*first, *again)

    async def _current(self, order_id: str) -> OrderData | None:
        live = self._live.get(order_id)
        if live is not None:
            return live.order
        stored = await self._journal.call(self._journal.get, order_id)
        return decode(stored.data_json) if stored is not None else None

    async def _on_request(self, request: messages.OrderRequest) -> None:
        order_id = request.order_id
        digest = request.digest()
        live = self._live.get(order_id)
        if live is not None:
            await self._known_request(request, digest, live.request_hash, live.order)
            return
        refused = self._refuse(request)
        if refused is not None:
            # Not to be served as a new order; but an ended order by this id hears its truth.
            stored = await self._journal.call(self._journal.get, order_id)
            if stored is not None:
                await self._known_request(request, digest, stored.request_hash, decode(stored.data_json))
                return
            code, text, retryable = refused
            if retryable:  # busy, unavailable, maintenance: nothing wrong with the request
                log.info("order.rejected", order_id=order_id, code=code)
            else:
                log.warning("order.rejected", order_id=order_id, code=code, problem=text)
            await self._reject(
                order_id,
                code,
                text,
                retryable=retryable,
                in_reply_to=request.id,
                amount=request.amount,
                currency=request.currency,
            )
            return
        now = self._clock()
        expires = request.expires_at.timestamp() if request.expires_at else None
        make = core.expired_order if expires is not None and expires <= now else core.new_order
        order = make(
            order_id=order_id,
            amount=request.amount,
            currency=request.currency,
            policy=self.policy,
            now=now,
            items=request.cart(),
            expires_at=expires,
            message_id=request.id,
        )
        live = Live(order=order, request_hash=digest)
        request_json = messages.dumps(request.canonical()).decode()
        stored_new = StoredOrder(
            order_id=order_id,
            request_hash=digest,
            request_json=request_json,
            state=order.state.value,
            terminal=order.terminal,
            data_json="",
            status_seq=0,
            created_at=now,
            updated_at=now,
        )
        crashpoints.reached("order_received")
        async with live.lock:
            live.order = replace(order, status_seq=0)  # nothing saved yet: the first status is seq 1
            known = await self._save_and_plan(live, order, "request", new=stored_new)
        if known is not None:
            # The journal already held this id (an ended order): nothing was written.
            await self._known_request(request, digest, known.request_hash, decode(known.data_json))
            return
        crashpoints.reached("order_journaled")
        log.info("order.received", order_id=order_id, amount=request.amount, currency=request.currency)
        if not order.terminal:
            self._live[order_id] = live
            self._start(live)

    async def _known_request(
        self, request: messages.OrderRequest, digest: str, request_hash: str, current: OrderData
    ) -> None:
        """Answer a request for an order id in use: its status again, or a conflict before it."""
        order_id = request.order_id
        if request_hash == digest:
            log.info("order.duplicate_request", order_id=order_id, state=current.state.value)
            await self._tell(order_id, known=current)
            return
        log.warning("order.conflict", order_id=order_id)
        await self._reject(
            order_id,
            "order_conflict",
            "this order id is already used by an order with other content",
            retryable=False,
            in_reply_to=request.id,
            amount=request.amount,
            currency=request.currency,
        )

    def _refuse(self, request: messages.OrderRequest) -> tuple[str, str, bool] | None:
        """Why `request` is not served as a new order: (code, message, retryable), or None."""
        try:
            messages.check_request(request, currencies=self.config.currencies, max_amount=self.config.max_amount)
        except InvalidInput as exc:
            return exc.code, exc.message, False
        refusal = self._refusal()
        if refusal is not None:
            return *refusal, True
        return None

    def _refusal(self) -> tuple[str, str] | None:
        if any(not live.order.terminal for live in self._live.values()):
            return "busy", "another order is using the card reader; try again when it has ended"
        return self._accepting()

    async def _on_controller(self, order_id: str, event: CancelRequested | VendReported) -> None:
        live = self._live.get(order_id)
        if live is None:
            current = await self._current(order_id)
            if current is None:
                await self._reject(
                    order_id,
                    "unknown_order",
                    f"there is no order {order_id}",
                    retryable=False,
                    in_reply_to=event.message_id,
                )
                return
            # A terminal order: a duplicate report changes nothing; answer with the truth. A
            # cancel is refused (too_late) whether or not a vend result ended the order.
            _, reply = core.handle(current, event, self._clock())
            if reply is not None:
                await self._reject(order_id, reply.code, reply.message, retryable=False, in_reply_to=event.message_id)
            else:
                await self._tell(order_id, known=current)
            return
        async with live.lock:
            before = live.order
            order, reply = core.handle(before, event, self._clock())
            await self._save_and_plan(live, order, type(event).__name__)
            if reply is None and order == before:
                # A duplicate (redelivered) message: the controller hears the current truth again.
                await self._enqueue(self._republish(order))
        if reply is not None:
            log.info("order.message_refused", order_id=order_id, code=reply.code, problem=reply.message)
            await self._reject(order_id, reply.code, reply.message, retryable=False, in_reply_to=event.message_id)
        live.wake.set()

    async def abandon(self, order_id: str, code: str, message: str) -> Literal["canceling", "not_open", "too_late"]:
        """End an open order from outside (fleet `cancel_order`).

        Returns "canceling" when the order now winds down, "not_open" when there is no open order
        by that id, "too_late" when it is capturing (its product was dispensed: the payment is owed).
        """
        from kiosk.model import Abandon  # noqa: PLC0415 - rarely used

        live = self._live.get(order_id)
        if live is None or live.order.terminal:
            return "not_open"
        async with live.lock:
            current = live.order  # as it is now: it may have moved on while this waited for the lock
            if current.terminal:
                return "not_open"
            order, refused = core.handle(current, Abandon(code, message), self._clock())
            if refused is not None:
                return "too_late"
            await self._save(live, order, "abandon")
        live.wake.set()
        return "canceling"


def _event_name(event: Event) -> str:
    match event:
        case CallSucceeded():
            return f"{event.call.op.value}.ok"
        case CallFailed():
            return f"{event.call.op.value}.{event.failure.value}{'.' + event.code if event.code else ''}"
    return type(event).__name__


def _peek_id(payload: bytes) -> str | None:
    """The envelope's `id`, if it can be read, for `in_reply_to` of a rejection."""
    try:
        import json  # noqa: PLC0415 - only on the rejection path

        data = json.loads(payload[: messages.MAX_PAYLOAD])
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= 64 else None
