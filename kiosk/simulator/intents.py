"""PaymentIntents, their charges and payment methods: validation and transitions as Stripe has them.

State lives in `Intent` objects; `Intents` is the store and the only code that changes them. Every
method takes `now` from the simulator's clock and never reads time itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiosk.simulator import search
from kiosk.simulator.cards import Decline, TestCard, amount_decline
from kiosk.simulator.wire import (
    ALLOWED_TYPES_SINCE,
    PAYMENT_METHOD_TYPES_REMOVED,
    StripeError,
    at_least,
    missing,
    not_found,
    reject_unknown,
    to_dict,
    to_int,
    to_list,
    to_str,
    unknown,
)

if TYPE_CHECKING:
    from kiosk.simulator.ids import Ids

MAX_AMOUNT = 99_999_999
# Minimum charge amounts per currency, in minor units (Stripe's table for the usual currencies).
MIN_AMOUNT = {
    "usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "nzd": 50, "chf": 50, "jpy": 50,
    "sgd": 50, "sek": 300, "nok": 300, "dkk": 250, "hkd": 400, "mxn": 1000, "pln": 200, "czk": 1500,
}  # fmt: skip
CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing")
UPDATABLE_AMOUNT = ("requires_payment_method", "requires_confirmation", "requires_action")
PRESENT_TYPES = ("card_present", "interac_present")
KNOWN_TYPES = ("card", "card_present", "interac_present")
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
# Accepted on create and ignored: they change nothing kiosk relies on.
_IGNORED_CREATE = {
    "customer", "setup_future_usage", "transfer_group", "on_behalf_of", "application_fee_amount",
    "receipt_email", "statement_descriptor_suffix", "payment_method_options", "shipping",
    "automatic_payment_methods", "excluded_payment_method_types", "payment_method_configuration",
}  # fmt: skip
_CREATE = {
    "amount", "currency", "capture_method", "confirmation_method", "metadata", "description",
    "statement_descriptor", "payment_method_types", "allowed_payment_method_types", "expand",
    *_IGNORED_CREATE,
}  # fmt: skip


@dataclass(slots=True)
class Intent:
    """One PaymentIntent and what happened to it."""

    id: str
    seq: int
    amount: int
    currency: str
    capture_method: str
    confirmation_method: str
    payment_method_types: list[str]
    metadata: dict[str, str]
    created: int
    description: str | None = None
    statement_descriptor: str | None = None
    status: str = "requires_payment_method"
    amount_capturable: int = 0
    amount_received: int = 0
    tip: int = 0
    canceled_at: int | None = None
    cancellation_reason: str | None = None
    latest_charge: str | None = None
    payment_method: str | None = None
    last_payment_error: dict[str, Any] | None = None
    capture_before: float | None = None
    collected: tuple[str, float] | None = None  # (reader id, when) in the split flow
    history: list[dict[str, Any]] = field(default_factory=list)
    # Search index: (visible_at, document) pairs, oldest first (see `Intents.search`).
    index: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def render(self) -> dict[str, Any]:
        """The object Stripe returns (every top-level key of Stripe's own example)."""
        return {
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": self.amount_capturable,
            "amount_details": {"tip": {"amount": self.tip} if self.tip else {}},
            "amount_received": self.amount_received,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": f"{self.id}_secret_{self.id[3:][::-1]}",
            "confirmation_method": self.confirmation_method,
            "created": self.created,
            "currency": self.currency,
            "customer": None,
            "customer_account": None,
            "description": self.description,
            "excluded_payment_method_types": None,
            "invoice": None,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": False,
            "managed_payments": None,
            "metadata": dict(self.metadata),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                t: {"request_extended_authorization": False, "request_incremental_authorization_support": False}
                if t == "card_present"
                else {}
                for t in self.payment_method_types
            },
            "payment_method_types": list(self.payment_method_types),
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "source": None,
            "statement_descriptor": self.statement_descriptor,
            "statement_descriptor_suffix": None,
            "status": self.status,
            "transfer_data": None,
            "transfer_group": None,
        }

    def document(self) -> dict[str, Any]:
        """What the search index holds for this intent."""
        return {
            "status": self.status,
            "currency": self.currency,
            "amount": self.amount,
            "created": self.created,
            "metadata": dict(self.metadata),
            "customer": None,
        }

    @property
    def takes_cards(self) -> bool:
        """True when a reader may process this intent."""
        return any(t in PRESENT_TYPES for t in self.payment_method_types)


def unexpected_state(intent: Intent, verb: str, allowed: tuple[str, ...]) -> StripeError:
    """Stripe's 400 for an operation the intent's status does not allow."""
    return StripeError(
        400,
        f"This PaymentIntent's {verb} could not be performed because it has a status of "
        f"{intent.status}. Only a PaymentIntent with one of the following statuses may be "
        f"{verb}d: {', '.join(allowed)}.",
        code="payment_intent_unexpected_state",
        payment_intent=intent.render(),
    )


def check_metadata(value: Any, current: dict[str, str] | None = None) -> dict[str, str]:
    """Validate `metadata` like Stripe and merge it into `current` (empty value deletes a key)."""
    result = dict(current or {})
    if value == "":
        return {}
    meta = to_dict(value, "metadata")
    for key, raw in meta.items():
        if isinstance(raw, (dict, list)):
            raise StripeError(400, f"Invalid value for metadata[{key}]: must be a string.", param=f"metadata[{key}]")
        text = "" if raw is None else to_str(raw, f"metadata[{key}]")
        if len(key) > METADATA_KEY_MAX:
            raise StripeError(
                400,
                f"Metadata keys can have a maximum length of {METADATA_KEY_MAX} characters.",
                param=f"metadata[{key}]",
            )
        if len(text) > METADATA_VALUE_MAX:
            raise StripeError(
                400,
                f"Metadata values can have a maximum length of {METADATA_VALUE_MAX} characters.",
                param=f"metadata[{key}]",
            )
        if text == "":
            result.pop(key, None)
        else:
            result[key] = text
    if len(result) > METADATA_MAX_KEYS:
        raise StripeError(
            400,
            f"Metadata can have a maximum of {METADATA_MAX_KEYS} keys.",
            param="metadata",
        )
    return result


def check_amount(value: Any, currency: str, param: str = "amount") -> int:
    """An amount within Stripe's limits for the currency."""
    amount = to_int(value, param)
    minimum = MIN_AMOUNT[currency]
    if amount < minimum:
        raise StripeError(
            400,
            f"Amount must be at least {minimum} {currency} (in the currency's smallest unit).",
            code="amount_too_small",
            param=param,
        )
    if amount > MAX_AMOUNT:
        raise StripeError(
            400,
            f"Amount must be no more than {MAX_AMOUNT} {currency} (in the currency's smallest unit).",
            code="amount_too_large",
            param=param,
        )
    return amount


class Intents:
    """Every PaymentIntent, charge and payment method of the simulated account."""

    def __init__(self, ids: Ids) -> None:
        self._ids = ids
        self.by_id: dict[str, Intent] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.methods: dict[str, dict[str, Any]] = {}
        self.search_lag = 0.0
        self._seq = 0

    # -- reads ---------------------------------------------------------------------------------
    def get(self, ident: str, param: str = "intent") -> Intent:
        """The intent, or Stripe's 404."""
        intent = self.by_id.get(ident)
        if intent is None:
            raise not_found("payment_intent", ident, param)
        return intent

    def page(self, params: dict[str, Any]) -> dict[str, Any]:
        """`GET /v1/payment_intents`: newest first, cursor pagination."""
        reject_unknown(params, {"limit", "starting_after", "ending_before", "created", "customer", "expand"})
        limit = _limit(params)
        rows = sorted(self.by_id.values(), key=lambda i: i.seq, reverse=True)
        if "created" in params:
            rows = [i for i in rows if _created_ok(i.created, params["created"])]
        if "customer" in params:
            rows = []  # the simulator never attaches customers
        has_more = False
        if "starting_after" in params:
            start = self.get(to_str(params["starting_after"], "starting_after"), "starting_after")
            rows = [i for i in rows if i.seq < start.seq]
            has_more = len(rows) > limit
            rows = rows[:limit]
        elif "ending_before" in params:
            end = self.get(to_str(params["ending_before"], "ending_before"), "ending_before")
            rows = [i for i in rows if i.seq > end.seq]
            has_more = len(rows) > limit
            rows = rows[-limit:]
        else:
            has_more = len(rows) > limit
            rows = rows[:limit]
        return {"object": "list", "data": rows, "has_more": has_more, "url": "/v1/payment_intents"}

    def search(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """`GET /v1/payment_intents/search`, matching what the index held `search_lag` ago."""
        reject_unknown(params, {"query", "limit", "page", "expand"})
        if "query" not in params:
            raise missing("query")
        query = search.parse(to_str(params["query"], "query"))
        limit = _limit(params)
        offset = 0
        if "page" in params:
            page = to_str(params["page"], "page")
            if not page.startswith("page_") or not page[5:].isdigit():
                raise StripeError(400, f"Invalid page: {page}", param="page")
            offset = int(page[5:])
        hits = []
        for intent in sorted(self.by_id.values(), key=lambda i: i.seq, reverse=True):
            doc = _visible(intent, now)
            if doc is not None and query.matches(doc):
                hits.append(intent)
        page_rows = hits[offset : offset + limit]
        has_more = len(hits) > offset + limit
        return {
            "object": "search_result",
            "data": page_rows,
            "has_more": has_more,
            "next_page": f"page_{offset + limit}" if has_more else None,
            "url": "/v1/payment_intents/search",
        }

    # -- writes --------------------------------------------------------------------------------
    def create(self, params: dict[str, Any], version: str, now: float) -> Intent:
        """`POST /v1/payment_intents`, validated like Stripe."""
        for key in params:
            if key not in _CREATE:
                raise unknown(key)
        if "amount" not in params:
            raise missing("amount")
        if "currency" not in params:
            raise missing("currency")
        currency = to_str(params["currency"], "currency").lower()
        if currency not in MIN_AMOUNT:
            raise StripeError(
                400,
                f"Invalid currency: {currency}. The simulator supports: {', '.join(sorted(MIN_AMOUNT))}.",
                param="currency",
            )
        amount = check_amount(params["amount"], currency)
        capture_method = to_str(params.get("capture_method", "automatic"), "capture_method")
        if capture_method not in CAPTURE_METHODS:
            raise StripeError(
                400,
                f"Invalid capture_method: must be one of {', '.join(CAPTURE_METHODS)}",
                param="capture_method",
            )
        confirmation_method = to_str(params.get("confirmation_method", "automatic"), "confirmation_method")
        if confirmation_method not in ("automatic", "manual"):
            raise StripeError(
                400, "Invalid confirmation_method: must be one of automatic, manual", param="confirmation_method"
            )
        types = self._method_types(params, version)
        metadata = check_metadata(params.get("metadata", {}))
        description = params.get("description")
        self._seq += 1
        intent = Intent(
            id=self._ids.new("pi"),
            seq=self._seq,
            amount=amount,
            currency=currency,
            capture_method=capture_method,
            confirmation_method=confirmation_method,
            payment_method_types=types,
            metadata=metadata,
            created=int(now),
            description=None if description is None else to_str(description, "description"),
            statement_descriptor=params.get("statement_descriptor"),
        )
        self.by_id[intent.id] = intent
        self._event(intent, now, "created", amount=amount)
        return intent

    @staticmethod
    def _method_types(params: dict[str, Any], version: str) -> list[str]:
        if "payment_method_types" in params and at_least(version, PAYMENT_METHOD_TYPES_REMOVED):
            raise StripeError(
                400,
                "payment_method_types is no longer supported on this API version; "
                "use allowed_payment_method_types instead.",
                code="payment_method_types_no_longer_supported",
                param="payment_method_types",
            )
        if "allowed_payment_method_types" in params and not at_least(version, ALLOWED_TYPES_SINCE):
            raise unknown("allowed_payment_method_types")
        param = "allowed_payment_method_types" if "allowed_payment_method_types" in params else "payment_method_types"
        if param not in params:
            return ["card"]
        types = [to_str(t, f"{param}[{i}]") for i, t in enumerate(to_list(params[param], param))]
        if not types:
            raise StripeError(
                400, f"Invalid array: {param} must not be empty", code="parameter_invalid_empty", param=param
            )
        for i, t in enumerate(types):
            if t not in KNOWN_TYPES:
                raise StripeError(
                    400,
                    f"The payment method type {t!r} is invalid or not simulated.",
                    param=f"{param}[{i}]",
                )
        return types

    def update(self, intent: Intent, params: dict[str, Any], now: float) -> None:
        """`POST /v1/payment_intents/{id}`: amount (while unconfirmed), metadata, description."""
        reject_unknown(params, {"amount", "metadata", "description", "statement_descriptor", "expand"})
        if "amount" in params:
            if intent.status not in UPDATABLE_AMOUNT:
                raise unexpected_state(intent, "update", UPDATABLE_AMOUNT)
            intent.amount = check_amount(params["amount"], intent.currency)
        if "metadata" in params:
            intent.metadata = check_metadata(params["metadata"], intent.metadata)
        if "description" in params:
            intent.description = to_str(params["description"], "description") or None
        if "statement_descriptor" in params:
            intent.statement_descriptor = to_str(params["statement_descriptor"], "statement_descriptor") or None
        self._event(intent, now, "updated", amount=intent.amount)

    def capture(self, intent: Intent, params: dict[str, Any], now: float) -> None:
        """`POST /v1/payment_intents/{id}/capture`: full or `amount_to_capture`."""
        reject_unknown(params, {"amount_to_capture", "metadata", "expand", "statement_descriptor", "final_capture"})
        if intent.status != "requires_capture":
            raise unexpected_state(intent, "capture", ("requires_capture",))
        amount = intent.amount_capturable
        if "amount_to_capture" in params:
            amount = to_int(params["amount_to_capture"], "amount_to_capture")
            if amount > intent.amount_capturable:
                raise StripeError(
                    400,
                    f"The amount to capture ({amount}) is greater than the amount capturable "
                    f"({intent.amount_capturable}).",
                    code="amount_too_large",
                    param="amount_to_capture",
                    payment_intent=intent.render(),
                )
            if amount < 0:
                raise StripeError(400, "amount_to_capture must be positive.", param="amount_to_capture")
        if "metadata" in params:
            intent.metadata = check_metadata(params["metadata"], intent.metadata)
        intent.status = "succeeded"
        intent.amount_received = amount
        intent.amount_capturable = 0
        charge = self.charges[intent.latest_charge] if intent.latest_charge else None
        if charge is not None:
            charge.update(captured=True, amount_captured=amount, amount_refunded=charge["amount"] - amount)
        self._event(intent, now, "captured", amount=amount)

    def cancel(self, intent: Intent, params: dict[str, Any], now: float) -> None:
        """`POST /v1/payment_intents/{id}/cancel`: releases an authorisation."""
        reject_unknown(params, {"cancellation_reason", "expand"})
        reason = None
        if "cancellation_reason" in params:
            reason = to_str(params["cancellation_reason"], "cancellation_reason")
            if reason not in CANCELLATION_REASONS:
                raise StripeError(
                    400,
                    f"Invalid cancellation_reason: must be one of {', '.join(CANCELLATION_REASONS)}",
                    param="cancellation_reason",
                )
        if intent.status not in CANCELABLE:
            raise unexpected_state(intent, "cancel", CANCELABLE)
        self._void(intent, now, reason, "canceled")

    def _void(self, intent: Intent, now: float, reason: str | None, event: str) -> None:
        released = intent.amount_capturable
        intent.status = "canceled"
        intent.cancellation_reason = reason
        intent.canceled_at = int(now)
        intent.amount_capturable = 0
        intent.collected = None
        charge = self.charges.get(intent.latest_charge or "")
        if charge is not None and charge["status"] == "succeeded" and not charge["captured"]:
            charge.update(amount_refunded=charge["amount"], refunded=True)
        self._event(intent, now, event, reason=reason, released=released)

    def expire(self, now: float) -> None:
        """Authorisations past `capture_before` lapse: the intent turns `canceled`."""
        for intent in self.by_id.values():
            if (
                intent.status == "requires_capture"
                and intent.capture_before is not None
                and intent.capture_before <= now
            ):
                self._void(intent, intent.capture_before, "automatic", "expired")

    # -- what a reader does to an intent ---------------------------------------------------------
    def payment_method(self, card: TestCard, now: float) -> dict[str, Any]:
        """A card-present PaymentMethod for a card the reader read."""
        kind = card.method_type
        details = {
            "brand": card.brand,
            "brand_product": None,
            "cardholder_name": None,
            "country": card.country,
            "description": None,
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": f"fp{card.number[-8:]}",
            "funding": card.funding,
            "last4": card.last4,
            "networks": {"available": [card.brand], "preferred": None},
            "read_method": "contactless_emv",
            "wallet": {"type": "none"},
        }
        method: dict[str, Any] = {
            "id": self._ids.new("pm"),
            "object": "payment_method",
            "billing_details": {
                "address": dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state")),
                "email": None,
                "name": None,
                "phone": None,
            },
            kind: details,
            "created": int(now),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": kind,
        }
        self.methods[method["id"]] = method
        return method

    def collect(self, intent: Intent, card: TestCard, tip: int, reader: str, now: float) -> dict[str, Any]:
        """The split flow's collection: the intent waits for confirmation with this card."""
        method = self.payment_method(card, now)
        intent.payment_method = method["id"]
        intent.status = "requires_confirmation"
        intent.collected = (reader, now)
        self._add_tip(intent, tip)
        self._event(intent, now, "collected", brand=card.brand, last4=card.last4)
        return method

    def revert_collection(self, intent: Intent, now: float, why: str) -> None:
        """A collected card was discarded (canceled, or not confirmed within the window)."""
        intent.collected = None
        intent.payment_method = None
        if intent.status == "requires_confirmation":
            intent.status = "requires_payment_method"
        self._event(intent, now, why)

    def stall(self, intent: Intent, method: dict[str, Any], now: float) -> None:
        """A connectivity problem after the card was read: the intent needs confirming again."""
        intent.payment_method = method["id"]
        intent.status = "requires_confirmation"
        self._event(intent, now, "requires_confirmation")

    @staticmethod
    def _add_tip(intent: Intent, tip: int) -> None:
        if tip > 0 and intent.tip == 0:
            intent.tip = tip
            intent.amount += tip

    def authorise(
        self, intent: Intent, card: TestCard, method: dict[str, Any], tip: int, now: float
    ) -> tuple[Decline | None, dict[str, Any]]:
        """Authorise the card for the intent; returns the decline (if any) and the charge."""
        self._add_tip(intent, tip)
        decline = card.decline or amount_decline(intent.amount - intent.tip)
        if decline is None and card.method_type not in intent.payment_method_types:
            decline = Decline(
                "card_declined", "generic_decline", f"This PaymentIntent does not accept {card.method_type}."
            )
        capture_before = now + card.authorisation_window
        charge = self._charge(intent, card, method, decline, capture_before, now)
        intent.latest_charge = charge["id"]
        intent.collected = None
        if decline is not None:
            intent.status = "requires_payment_method"
            intent.payment_method = None
            intent.last_payment_error = {
                "type": "card_error",
                "code": decline.code,
                "decline_code": decline.decline_code,
                "message": decline.message,
                "charge": charge["id"],
                "payment_method": method,
                "payment_method_type": card.method_type,
                "doc_url": f"https://stripe.com/docs/error-codes/{decline.code.replace('_', '-')}",
            }
            self._event(intent, now, "declined", decline_code=decline.decline_code, brand=card.brand)
            return decline, charge
        intent.payment_method = method["id"]
        intent.last_payment_error = None
        if intent.capture_method == "manual":
            intent.status = "requires_capture"
            intent.amount_capturable = intent.amount
            intent.capture_before = capture_before
            self._event(
                intent, now, "authorised", amount=intent.amount, brand=card.brand, capture_before=int(capture_before)
            )
        else:
            intent.status = "succeeded"
            intent.amount_received = intent.amount
            charge.update(captured=True, amount_captured=intent.amount)
            self._event(intent, now, "captured", amount=intent.amount, brand=card.brand)
        return None, charge

    def _charge(  # noqa: PLR0913, PLR0917 - one charge, built from everything that made it
        self,
        intent: Intent,
        card: TestCard,
        method: dict[str, Any],
        decline: Decline | None,
        capture_before: float,
        now: float,
    ) -> dict[str, Any]:
        kind = card.method_type
        details: dict[str, Any] = {
            "amount_authorized": None if decline else intent.amount,
            "brand": card.brand,
            "cardholder_name": None,
            "country": card.country,
            "emv_auth_data": "8A023030",
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": f"fp{card.number[-8:]}",
            "funding": card.funding,
            "generated_card": None,
            "incremental_authorization_supported": False,
            "last4": card.last4,
            "network": card.brand,
            "overcapture_supported": False,
            "read_method": "contactless_emv",
            "receipt": {
                "account_type": "credit" if card.funding == "credit" else "checking",
                "application_cryptogram": "12AB34CD56EF7890",
                "application_preferred_name": card.brand.upper(),
                "authorization_code": None if decline else "123456",
                "authorization_response_code": "3035" if decline else "3030",
                "cardholder_verification_method": "none",
                "dedicated_file_name": "A0000000031010",
                "terminal_verification_results": "0000000000",
                "transaction_status_information": "0000",
            },
        }
        if kind == "card_present":
            details["capture_before"] = int(capture_before)
        else:
            details.pop("incremental_authorization_supported")
            details.pop("overcapture_supported")
        charge = {
            "id": self._ids.new("ch"),
            "object": "charge",
            "amount": intent.amount,
            "amount_captured": 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": None,
            "billing_details": method["billing_details"],
            "calculated_statement_descriptor": "KIOSK",
            "captured": False,
            "created": int(now),
            "currency": intent.currency,
            "customer": None,
            "description": intent.description,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": decline.code if decline else None,
            "failure_message": decline.message if decline else None,
            "fraud_details": {},
            "invoice": None,
            "livemode": False,
            "metadata": dict(intent.metadata),
            "on_behalf_of": None,
            "outcome": {
                "network_status": "declined_by_network" if decline else "approved_by_network",
                "reason": decline.decline_code if decline else None,
                "risk_level": "not_assessed",
                "seller_message": "The bank did not return any further details with this decline."
                if decline
                else "Payment complete.",
                "type": "issuer_declined" if decline else "authorized",
            },
            "paid": decline is None,
            "payment_intent": intent.id,
            "payment_method": method["id"],
            "payment_method_details": {"type": kind, kind: details},
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": None,
            "refunded": False,
            "refunds": {"object": "list", "data": [], "has_more": False, "url": "/v1/refunds"},
            "review": None,
            "shipping": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "failed" if decline else "succeeded",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.charges[charge["id"]] = charge
        return charge

    def _event(self, intent: Intent, now: float, event: str, **data: Any) -> None:
        intent.history.append({"at": now, "event": event, **data})
        intent.index.append((now + self.search_lag, intent.document()))


def _visible(intent: Intent, now: float) -> dict[str, Any] | None:
    """The latest indexed document of the intent at `now`, or None before its first indexing."""
    # The lag may change between events, so the list is not sorted by visibility: scan it.
    visible = [doc for t, doc in intent.index if t <= now]
    return visible[-1] if visible else None


def _limit(params: dict[str, Any]) -> int:
    limit = to_int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100", param="limit")
    return limit


def _created_ok(created: int, spec: Any) -> bool:
    if not isinstance(spec, dict):
        return created == to_int(spec, "created")
    checks = {"gt": created.__gt__, "gte": created.__ge__, "lt": created.__lt__, "lte": created.__le__}
    for op, value in spec.items():
        if op not in checks:
            raise unknown(f"created[{op}]")
        if not checks[op](to_int(value, f"created[{op}]")):
            return False
    return True
