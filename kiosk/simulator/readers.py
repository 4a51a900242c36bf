"""Simulated smart readers: registration, the `action` object, and what a reader does to intents.

A reader's command (process, collect, confirm, cancel_action, set_reader_display) first passes the
reader's gate: a hardware fault, no signal (a timeout for two minutes, then `offline`), or an
injected timeout — true, or a false negative where the reader did get the command. Readers take
time only from the simulator's clock: a card is read when the test helper (or the automatic
presentation) says so, and an authorisation lasts the reader's configured delay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiosk.simulator import cards
from kiosk.simulator.intents import Intent, Intents, check_metadata
from kiosk.simulator.wire import (
    API_ERROR_ON_ACTION_SINCE,
    StripeError,
    at_least,
    missing,
    not_found,
    reject_unknown,
    to_bool,
    to_dict,
    to_int,
    to_list,
    to_str,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiosk.simulator.cards import TestCard
    from kiosk.simulator.ids import Ids

OFFLINE_AFTER = 120.0  # Stripe: a reader with no signal for two minutes is offline
COLLECT_WINDOW = 30.0  # Stripe: confirm or cancel within 30 seconds of collection
DEVICE_TYPES = {"simulated-wpe": "simulated_wisepos_e", "simulated-s700": "simulated_stripe_s700"}
CARD_ACTIONS = ("process_payment_intent", "collect_payment_method")
TAKES_CARD = ("requires_payment_method", "requires_confirmation")
_BUSY = (
    "Reader is currently busy processing another request. Please reference the integration guide for more information."
)


@dataclass(slots=True)
class Action:
    """The reader's current (or last) action, as Stripe shapes `reader.action`."""

    type: str
    started_at: float
    record: dict[str, Any]
    payment_intent: str | None = None
    config: dict[str, Any] | None = None
    cart: dict[str, Any] | None = None
    status: str = "in_progress"
    failure_code: str | None = None
    failure_message: str | None = None
    api_error: dict[str, Any] | None = None
    payment_method: dict[str, Any] | None = None
    authorising: bool = False
    due: float | None = None  # when the authorisation ends
    auto_at: float | None = None  # when the automatic presentation reads a card
    pending: tuple[TestCard, dict[str, Any], int] | None = None

    @property
    def waiting_for_card(self) -> bool:
        """True while the reader shows "present card" for this action."""
        return self.status == "in_progress" and self.type in CARD_ACTIONS and not self.authorising

    def render(self, version: str) -> dict[str, Any]:
        """The `action` object."""
        out: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
        }
        if at_least(version, API_ERROR_ON_ACTION_SINCE):
            out["api_error"] = self.api_error
        if self.type == "set_reader_display":
            out["set_reader_display"] = {"type": "cart", "cart": self.cart}
            return out
        sub: dict[str, Any] = {"payment_intent": self.payment_intent}
        if self.type == "process_payment_intent":
            sub["process_config"] = self.config or {}
        elif self.type == "collect_payment_method":
            sub["collect_config"] = self.config or {}
            sub["payment_method"] = self.payment_method
        else:
            sub["confirm_config"] = self.config or {}
        out[self.type] = sub
        return out


@dataclass(frozen=True, slots=True)
class AutoPresent:
    """Present this card automatically `after_s` seconds into every payment action."""

    after_s: float
    card: str = cards.DEFAULT_CARD
    amount_tip: int = 0


@dataclass(slots=True)
class Reader:
    """One simulated reader and its injected conditions."""

    id: str
    seq: int
    label: str
    device_type: str
    serial_number: str
    location: str | None
    metadata: dict[str, str]
    last_seen: float
    online: bool = True
    signal_lost_at: float | None = None
    hardware_fault: bool = False
    timeouts: deque[bool] = field(default_factory=deque)  # each: is it a false negative?
    connection_errors: deque[bool] = field(default_factory=deque)  # each: authorised anyway?
    auth_delay: float = 0.0
    auto: AutoPresent | None = None
    action: Action | None = None

    def status(self, now: float) -> str:
        """`online`, or `offline` after two minutes without signal."""
        if self.signal_lost_at is not None and now - self.signal_lost_at >= OFFLINE_AFTER:
            return "offline"
        return "online"


class Readers:
    """Every reader of the simulated account, and the actions they ran."""

    def __init__(self, ids: Ids, intents: Intents) -> None:
        self._ids = ids
        self._intents = intents
        self.by_id: dict[str, Reader] = {}
        self.actions: list[dict[str, Any]] = []
        self._cards: dict[str, TestCard] = {}  # payment method id -> the card it was read from

    # -- registry ------------------------------------------------------------------------------
    def register(self, params: dict[str, Any], now: float) -> Reader:
        """`POST /v1/terminal/readers` with a simulated registration code."""
        reject_unknown(params, {"registration_code", "label", "location", "metadata", "expand"})
        if "registration_code" not in params:
            raise missing("registration_code")
        code = to_str(params["registration_code"], "registration_code")
        if code not in DEVICE_TYPES:
            raise StripeError(
                400,
                f"The registration code {code!r} is invalid. The simulator registers {' and '.join(DEVICE_TYPES)}.",
                param="registration_code",
            )

        seq = len(self.by_id) + 1
        reader = Reader(
            id=self._ids.new("tmr"),
            seq=seq,
            label=to_str(params.get("label", f"Simulated reader {seq}"), "label"),
            device_type=DEVICE_TYPES[code],
            serial_number=f"{code.upper()}-{seq:06d}",
            location=to_str(params["location"], "location") if "location" in params else None,
            metadata=check_metadata(params.get("metadata", {})),
            last_seen=now,
        )
        self.by_id[reader.id] = reader
        return reader

    def get(self, ident: str, param: str = "reader") -> Reader:
        """The reader, or Stripe's 404."""
        reader = self.by_id.get(ident)
        if reader is None:
            raise not_found("terminal.reader", ident, param)
        return reader

    def update(self, reader: Reader, params: dict[str, Any]) -> None:
        """`POST /v1/terminal/readers/{id}`: label and metadata."""
        reject_unknown(params, {"label", "metadata", "expand"})
        if "label" in params:
            reader.label = to_str(params["label"], "label")
        if "metadata" in params:
            reader.metadata = check_metadata(params["metadata"], reader.metadata)

    def page(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """`GET /v1/terminal/readers`, newest first, with Stripe's filters and cursors."""
        reject_unknown(
            params,
            {
                "limit",
                "starting_after",
                "ending_before",
                "device_type",
                "location",
                "serial_number",
                "status",
                "expand",
            },
        )
        limit = to_int(params.get("limit", 10), "limit")
        if not 1 <= limit <= 100:
            raise StripeError(400, "Invalid limit: must be between 1 and 100", param="limit")
        rows = sorted(self.by_id.values(), key=lambda r: r.seq, reverse=True)
        for key, attr in (("device_type", "device_type"), ("location", "location"), ("serial_number", "serial_number")):
            if key in params:
                rows = [r for r in rows if getattr(r, attr) == params[key]]
        if "status" in params:
            rows = [r for r in rows if r.status(now) == params["status"]]
        if "starting_after" in params:
            start = self.get(to_str(params["starting_after"], "starting_after"), "starting_after")
            rows = [r for r in rows if r.seq < start.seq]
        elif "ending_before" in params:
            end = self.get(to_str(params["ending_before"], "ending_before"), "ending_before")
            rows = [r for r in rows if r.seq > end.seq][-limit:]
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit, "url": "/v1/terminal/readers"}

    @staticmethod
    def render(reader: Reader, now: float, version: str) -> dict[str, Any]:
        """The `terminal.reader` object."""
        seen = reader.last_seen if reader.signal_lost_at is None else reader.signal_lost_at
        return {
            "id": reader.id,
            "object": "terminal.reader",
            "action": reader.action.render(version) if reader.action else None,
            "device_sw_version": "2.42.0.0",
            "device_type": reader.device_type,
            "ip_address": "192.168.2.2",
            "label": reader.label,
            "last_seen_at": int(seen * 1000),
            "livemode": False,
            "location": reader.location,
            "metadata": dict(reader.metadata),
            "serial_number": reader.serial_number,
            "status": reader.status(now),
        }

    # -- commands ------------------------------------------------------------------------------
    def _command(self, reader: Reader, now: float, apply: Callable[[], None]) -> None:
        """Pass the reader's gate, then apply the command (see the module docstring)."""
        if reader.hardware_fault:
            raise StripeError(
                400,
                "The reader has a hardware fault and cannot process requests.",
                code="terminal_reader_hardware_fault",
            )
        if reader.signal_lost_at is not None:
            if reader.status(now) == "offline":
                raise StripeError(
                    400,
                    "Reader is currently offline, please ensure the reader is powered on and "
                    "connected to the internet before retrying your request.",
                    code="terminal_reader_offline",
                )
            raise _timeout()
        if reader.timeouts:
            false_negative = reader.timeouts.popleft()
            if false_negative:
                apply()
            raise _timeout()
        apply()

    def _busy_check(self, reader: Reader) -> None:
        if reader.action is not None and reader.action.status == "in_progress":
            raise StripeError(400, _BUSY, code="terminal_reader_busy")

    def _payment_intent(self, params: dict[str, Any], states: tuple[str, ...]) -> Intent:
        if "payment_intent" not in params:
            raise missing("payment_intent")
        intent = self._intents.get(to_str(params["payment_intent"], "payment_intent"), "payment_intent")
        if not intent.takes_cards:
            raise StripeError(
                400,
                "This PaymentIntent does not accept card_present: create it with card_present among its "
                "payment method types.",
                code="payment_intent_incompatible_payment_method",
                param="payment_intent",
            )
        if intent.status not in states:
            raise StripeError(
                400,
                f"This PaymentIntent has a status of {intent.status}; the reader needs one of: {', '.join(states)}.",
                code="intent_invalid_state",
                param="payment_intent",
                payment_intent=intent.render(),
            )
        return intent

    def _start(self, reader: Reader, kind: str, now: float, **fields: Any) -> Action:
        if reader.action is not None and reader.action.status == "in_progress":
            # Only an unstarted payment is ever replaced (by set_reader_display): mark it so.
            self._end(reader.action, now, "replaced")
        record = {
            "id": f"act_{len(self.actions) + 1}",
            "reader": reader.id,
            "type": kind,
            "payment_intent": fields.get("payment_intent"),
            "status": "in_progress",
            "failure_code": None,
            "started_at": now,
            "ended_at": None,
            "card": None,
        }
        self.actions.append(record)
        action = Action(type=kind, started_at=now, record=record, **fields)
        if kind in CARD_ACTIONS and reader.auto is not None:
            action.auto_at = now + reader.auto.after_s
        reader.action = action
        return action

    @staticmethod
    def _end(action: Action, now: float, status: str) -> None:
        action.record["status"] = status
        action.record["ended_at"] = now
        action.record["failure_code"] = action.failure_code

    def _succeed(self, action: Action, now: float) -> None:
        action.status = "succeeded"
        action.authorising = False
        self._end(action, now, "succeeded")

    def _fail(
        self, action: Action, now: float, code: str, message: str, api_error: dict[str, Any] | None = None
    ) -> None:
        action.status = "failed"
        action.authorising = False
        action.failure_code = code
        action.failure_message = message
        action.api_error = api_error
        self._end(action, now, "failed")

    def process(self, reader: Reader, params: dict[str, Any], now: float) -> None:
        """`process_payment_intent`: the reader waits for a card, then authorises it."""
        reject_unknown(params, {"payment_intent", "process_config", "expand"})
        config = _config(params.get("process_config"), "process_config")

        def apply() -> None:
            self._busy_check(reader)
            intent = self._payment_intent(params, TAKES_CARD)
            if intent.collected is not None:
                self._intents.revert_collection(intent, now, "collection_discarded")
            self._start(reader, "process_payment_intent", now, payment_intent=intent.id, config=config)

        self._command(reader, now, apply)

    def collect(self, reader: Reader, params: dict[str, Any], now: float) -> None:
        """`collect_payment_method`: read a card without authorising it (split flow)."""
        reject_unknown(params, {"payment_intent", "collect_config", "expand"})
        config = _config(params.get("collect_config"), "collect_config")

        def apply() -> None:
            self._busy_check(reader)
            intent = self._payment_intent(params, ("requires_payment_method",))
            self._start(reader, "collect_payment_method", now, payment_intent=intent.id, config=config)

        self._command(reader, now, apply)

    def confirm(self, reader: Reader, params: dict[str, Any], now: float) -> None:
        """`confirm_payment_intent`: authorise the collected card, within 30 s of collection."""
        reject_unknown(params, {"payment_intent", "confirm_config", "expand"})
        config = _config(params.get("confirm_config"), "confirm_config")

        def apply() -> None:
            self._busy_check(reader)
            intent = self._payment_intent(params, ("requires_confirmation",))
            if intent.collected is None or intent.collected[0] != reader.id or intent.payment_method is None:
                raise StripeError(
                    400,
                    "This PaymentIntent has no payment method collected by this reader.",
                    code="intent_invalid_state",
                    param="payment_intent",
                )
            if now - intent.collected[1] > COLLECT_WINDOW:
                self._intents.revert_collection(intent, now, "collection_expired")
                raise StripeError(
                    400,
                    "The collected payment method expired: confirm within 30 seconds of collection.",
                    code="intent_invalid_state",
                    param="payment_intent",
                )
            method = self._intents.methods[intent.payment_method]
            action = self._start(reader, "confirm_payment_intent", now, payment_intent=intent.id, config=config)
            self._authorise(reader, action, self._cards[method["id"]], method, 0, now)

        self._command(reader, now, apply)

    def cancel_action(self, reader: Reader, params: dict[str, Any], now: float) -> None:
        """`cancel_action`: clears the action; `terminal_reader_busy` while a card is authorised."""
        reject_unknown(params, {"expand"})

        def apply() -> None:
            action = reader.action
            if action is None:
                return
            if action.status == "in_progress" and action.authorising:
                raise StripeError(400, _BUSY, code="terminal_reader_busy")
            if action.status == "in_progress":
                self._end(action, now, "canceled")
            if action.payment_intent is not None and action.type == "collect_payment_method":
                intent = self._intents.by_id[action.payment_intent]
                if intent.collected is not None and intent.collected[0] == reader.id:
                    self._intents.revert_collection(intent, now, "collection_canceled")
            reader.action = None

        self._command(reader, now, apply)

    def set_display(self, reader: Reader, params: dict[str, Any], now: float) -> None:
        """`set_reader_display` (cart); it replaces a payment action that has no card yet."""
        reject_unknown(params, {"type", "cart", "expand"})
        if "type" not in params:
            raise missing("type")
        if to_str(params["type"], "type") != "cart":
            raise StripeError(400, "Invalid type: must be cart", param="type")
        if "cart" not in params:
            raise missing("cart")
        cart = _cart(params["cart"])

        def apply() -> None:
            action = reader.action
            if action is not None and action.status == "in_progress" and action.authorising:
                raise StripeError(400, _BUSY, code="terminal_reader_busy")
            new = self._start(reader, "set_reader_display", now, cart=cart)
            self._succeed(new, now)

        self._command(reader, now, apply)

    # -- the card, the customer and the clock --------------------------------------------------
    def present(self, reader: Reader, params: dict[str, Any], now: float) -> None:
        """Test helper `present_payment_method`: a card is tapped on the reader."""
        reject_unknown(params, {"type", "card_present", "interac_present", "card", "amount_tip", "expand"})
        kind = to_str(params.get("type", "card_present"), "type")
        if kind not in ("card_present", "interac_present"):
            raise StripeError(
                400, f"The simulated reader takes card_present or interac_present, not {kind}.", param="type"
            )
        default = "4506445006931933" if kind == "interac_present" else cards.DEFAULT_CARD
        number = to_str(to_dict(params.get(kind, {}), kind).get("number", default), f"{kind}[number]")
        card = cards.lookup(number)
        if card is None:
            raise StripeError(400, "Your card number is incorrect.", code="invalid_number", param=f"{kind}[number]")
        tip = to_int(params.get("amount_tip", 0), "amount_tip")
        if tip < 0:
            raise StripeError(400, "amount_tip must not be negative.", param="amount_tip")
        action = reader.action
        if action is None or not action.waiting_for_card:
            raise StripeError(400, "This reader has no payment in progress waiting for a payment method.")
        self.read_card(reader, action, card, tip, now)

    def read_card(self, reader: Reader, action: Action, card: TestCard, tip: int, now: float) -> None:
        """The reader reads `card` for its waiting action."""
        action.auto_at = None
        action.record["card"] = f"{card.brand} {card.last4}"
        assert action.payment_intent is not None  # noqa: S101 - card actions always carry one
        intent = self._intents.by_id[action.payment_intent]
        if intent.status not in TAKES_CARD:
            self._fail(action, now, "intent_invalid_state", f"The PaymentIntent has a status of {intent.status}.")
            return
        if action.type == "collect_payment_method":
            method = self._intents.collect(intent, card, tip, reader.id, now)
            self._cards[method["id"]] = card
            action.payment_method = method
            self._succeed(action, now)
            return
        method = self._intents.payment_method(card, now)
        self._cards[method["id"]] = card
        self._authorise(reader, action, card, method, tip, now)

    def _authorise(  # noqa: PLR0913, PLR0917 - one authorisation, all of its parts
        self, reader: Reader, action: Action, card: TestCard, method: dict[str, Any], tip: int, now: float
    ) -> None:
        if reader.auth_delay > 0:
            action.authorising = True
            action.due = now + reader.auth_delay
            action.pending = (card, method, tip)
            return
        self._finish(reader, action, card, method, tip, now)

    def _finish(  # noqa: PLR0913, PLR0917
        self, reader: Reader, action: Action, card: TestCard, method: dict[str, Any], tip: int, now: float
    ) -> None:
        assert action.payment_intent is not None  # noqa: S101
        intent = self._intents.by_id[action.payment_intent]
        if intent.status not in TAKES_CARD:
            self._fail(action, now, "intent_invalid_state", f"The PaymentIntent has a status of {intent.status}.")
            return
        if reader.connection_errors:
            authorised = reader.connection_errors.popleft()
            if authorised:
                self._intents.authorise(intent, card, method, tip, now)
            else:
                self._intents.stall(intent, method, now)
            self._fail(
                action,
                now,
                "connection_error",
                "The reader's connection timed out while authorising; the PaymentIntent may be authorised.",
            )
            return
        decline, charge = self._intents.authorise(intent, card, method, tip, now)
        if decline is None:
            self._succeed(action, now)
            return
        api_error = {
            "type": "card_error",
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
            "charge": charge["id"],
            "payment_intent": intent.render(),
            "payment_method": method,
            "payment_method_type": card.method_type,
        }
        self._fail(action, now, decline.code, decline.message, api_error)

    def customer_cancel(self, reader: Reader, now: float) -> bool:
        """The customer presses cancel; effective only when the action allows it."""
        action = reader.action
        if action is None or not action.waiting_for_card:
            return False
        if not (action.config or {}).get("enable_customer_cancellation", False):
            return False
        self._fail(
            action, now, "customer_canceled", "This action could not be completed because the customer canceled."
        )
        return True

    def intent_canceled(self, intent: Intent, now: float) -> None:
        """An intent was canceled through the API while a reader worked on it."""
        for reader in self.by_id.values():
            action = reader.action
            if action and action.status == "in_progress" and action.payment_intent == intent.id:
                self._fail(action, now, "intent_invalid_state", "The PaymentIntent was canceled.")

    def tick(self, now: float) -> None:
        """Let simulated time act: heartbeats, authorisations, automatic cards, the collect window."""
        for reader in self.by_id.values():
            if reader.signal_lost_at is None:
                reader.last_seen = now
            action = reader.action
            if action is None or action.status != "in_progress":
                continue
            if action.authorising and action.due is not None and action.due <= now and action.pending:
                card, method, tip = action.pending
                action.pending = None
                self._finish(reader, action, card, method, tip, action.due)
            elif (
                action.waiting_for_card
                and action.auto_at is not None
                and action.auto_at <= now
                and reader.auto is not None
                and reader.signal_lost_at is None
                and not reader.hardware_fault
            ):
                card = cards.lookup(reader.auto.card) or cards.TEST_CARDS[cards.DEFAULT_CARD]
                self.read_card(reader, action, card, reader.auto.amount_tip, action.auto_at)
        for intent in self._intents.by_id.values():
            if (
                intent.collected is not None
                and intent.status == "requires_confirmation"
                and now - intent.collected[1] > COLLECT_WINDOW
                and not self._confirming(intent)
            ):
                self._intents.revert_collection(intent, intent.collected[1] + COLLECT_WINDOW, "collection_expired")

    def _confirming(self, intent: Intent) -> bool:
        return any(
            r.action is not None and r.action.type == "confirm_payment_intent" and r.action.payment_intent == intent.id
            for r in self.by_id.values()
        )

    def set_auto_present(self, reader: Reader, auto: AutoPresent | None, now: float) -> None:
        """Configure automatic presentation; applies to a payment already waiting too."""
        reader.auto = auto
        if reader.action is not None and reader.action.waiting_for_card:
            reader.action.auto_at = None if auto is None else now + auto.after_s

    @staticmethod
    def set_online(reader: Reader, online: bool, now: float) -> None:  # noqa: FBT001
        """Give or take the reader's signal."""
        reader.online = online
        if online:
            reader.signal_lost_at = None
            reader.last_seen = now
        elif reader.signal_lost_at is None:
            reader.signal_lost_at = now


def _timeout() -> StripeError:
    return StripeError(
        400,
        "The reader did not respond to the request in time. Check the reader's action before retrying.",
        code="terminal_reader_timeout",
    )


def _config(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    raw = to_dict(value, param)
    out: dict[str, Any] = {}
    for key, item in raw.items():
        if key in ("skip_tipping", "enable_customer_cancellation"):
            out[key] = to_bool(item, f"{param}[{key}]")
        elif key == "tipping":
            tipping = to_dict(item, f"{param}[tipping]")
            out[key] = {
                "amount_eligible": to_int(tipping["amount_eligible"], f"{param}[tipping][amount_eligible]")
                if "amount_eligible" in tipping
                else None
            }
        elif key in ("return_url", "allow_redisplay"):
            out[key] = to_str(item, f"{param}[{key}]")
        else:
            raise StripeError(
                400, f"Received unknown parameter: {param}[{key}]", code="parameter_unknown", param=f"{param}[{key}]"
            )
    return out


def _cart(value: Any) -> dict[str, Any]:
    raw = to_dict(value, "cart")
    for key in ("currency", "line_items", "total"):
        if key not in raw:
            raise missing(f"cart[{key}]")
    reject_unknown(raw, {"currency", "line_items", "tax", "total"}, "cart")
    items = []
    for i, item in enumerate(to_list(raw["line_items"], "cart[line_items]")):
        entry = to_dict(item, f"cart[line_items][{i}]")
        for key in ("amount", "description", "quantity"):
            if key not in entry:
                raise missing(f"cart[line_items][{i}][{key}]")
        items.append(
            {
                "amount": to_int(entry["amount"], f"cart[line_items][{i}][amount]"),
                "description": to_str(entry["description"], f"cart[line_items][{i}][description]"),
                "quantity": to_int(entry["quantity"], f"cart[line_items][{i}][quantity]"),
            }
        )
    return {
        "currency": to_str(raw["currency"], "cart[currency]").lower(),
        "line_items": items,
        "tax": to_int(raw["tax"], "cart[tax]") if "tax" in raw else None,
        "total": to_int(raw["total"], "cart[total]"),
    }
