"""The local bus's payloads (protocol.md §1): parsing what the controller sends, building what we send.

Untrusted input is parsed here, at the edge, with pydantic; anything wrong becomes an
`InvalidInput` with a specific code and a sentence saying what is wrong. Nothing else in kiosk
sees raw payloads.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from kiosk.errors import InvalidInput
from kiosk.model import Item, OrderData, State

MAX_PAYLOAD = 16 * 1024
ORDER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
STATUS_EXPIRY_S = 24 * 3600
MAX_ID = 64


def _check_aware(value: datetime | None) -> None:
    # RFC 3339 times carry an offset; without one the same text would be a different instant
    # on kiosks in different time zones.
    if value is not None and value.tzinfo is None:
        raise ValueError("must be an RFC 3339 time with a time zone, like 2026-01-01T12:00:00Z")


class _Envelope(BaseModel):
    # Unknown fields are tolerated (newer controllers); known fields must have the right type.
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    ts: datetime

    @field_validator("ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        _check_aware(value)
        return value


class ItemIn(BaseModel):
    """One cart line."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sku: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    quantity: Annotated[StrictInt, Field(ge=1, le=99)]
    unit_amount: Annotated[StrictInt, Field(ge=0)]


class OrderRequest(_Envelope):
    """`vend/v1/order/{order_id}/request`."""

    order_id: StrictStr
    amount: StrictInt
    currency: StrictStr
    items: Annotated[list[ItemIn], Field(max_length=50)] | None = None
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _aware_expiry(cls, value: datetime | None) -> datetime | None:
        _check_aware(value)
        return value

    def canonical(self) -> dict[str, Any]:
        """The content that defines the order (envelope excluded): equal content means a duplicate."""
        return {
            "order_id": self.order_id,
            "amount": self.amount,
            "currency": self.currency,
            "items": [i.model_dump() for i in self.items] if self.items is not None else None,
            "expires_at": self.expires_at.timestamp() if self.expires_at else None,
        }

    def digest(self) -> str:
        """Hash of the canonical content."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def cart(self) -> tuple[Item, ...]:
        """The items as the core's values."""
        return tuple(Item(i.sku, i.name, i.quantity, i.unit_amount) for i in self.items or ())


class CancelRequest(_Envelope):
    """`vend/v1/order/{order_id}/cancel`."""

    order_id: StrictStr
    reason: Annotated[StrictStr, Field(max_length=200)] | None = None


class VendResult(_Envelope):
    """`vend/v1/order/{order_id}/vend_result`."""

    order_id: StrictStr
    result: Literal["success", "failure", "partial"]
    vended_amount: Annotated[StrictInt, Field(ge=0)] | None = None


Kind = Literal["request", "cancel", "vend_result"]
_MODELS: dict[str, type[_Envelope]] = {"request": OrderRequest, "cancel": CancelRequest, "vend_result": VendResult}


def topic_order_id(prefix: str, topic: str) -> tuple[str | None, str | None]:
    """(order_id, kind) from `{prefix}/order/{order_id}/{kind}`; None for what cannot be read."""
    head = f"{prefix}/order/"
    if not topic.startswith(head):
        return None, None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2:
        return None, None
    order_id, kind = parts
    return (order_id if ORDER_ID.fullmatch(order_id) else None), kind


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message[0].lower()}{message[1:]}")
    return "; ".join(problems)


def parse(kind: str, order_id: str, payload: bytes) -> OrderRequest | CancelRequest | VendResult:
    """Parse and check one controller message for the order named in its topic.

    Raises:
        InvalidInput: `invalid_order` with what is wrong.
    """
    model = _MODELS.get(kind)
    if model is None:
        raise InvalidInput("invalid_order", f"unknown message kind {kind!r}; expected request, cancel or vend_result")
    if len(payload) > MAX_PAYLOAD:
        raise InvalidInput("invalid_order", f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("invalid_order", f"payload is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInput("invalid_order", "payload must be a JSON object")
    try:
        message = model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput("invalid_order", _explain(exc)) from None
    if message.order_id != order_id:  # type: ignore[attr-defined]
        raise InvalidInput(
            "invalid_order",
            f"order_id {message.order_id!r} differs from the topic's {order_id!r}",  # type: ignore[attr-defined]
        )
    if isinstance(message, VendResult) and message.result == "partial" and message.vended_amount is None:
        raise InvalidInput("invalid_order", "a partial vend_result needs vended_amount")
    return message  # type: ignore[return-value]


def check_request(request: OrderRequest, *, currencies: tuple[str, ...], max_amount: int) -> None:
    """The business rules of an order request.

    Raises:
        InvalidInput: `amount_out_of_range`, `currency_not_allowed` or `invalid_order`.
    """
    if request.currency not in currencies:
        raise InvalidInput(
            "currency_not_allowed",
            f"currency {request.currency!r} is not accepted here; accepted: {', '.join(currencies)}",
        )
    if not 1 <= request.amount <= max_amount:
        raise InvalidInput("amount_out_of_range", f"amount {request.amount} must be from 1 to {max_amount}")
    if request.items is not None:
        total = sum(i.quantity * i.unit_amount for i in request.items)
        if total != request.amount:
            raise InvalidInput("invalid_order", f"items add up to {total}, not the amount {request.amount}")


# --- Outgoing ------------------------------------------------------------------------------------


def now_rfc3339(ts: float) -> str:
    """RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _status_id(kiosk_id: str, order_id: str, seq: int) -> str:
    # The same status keeps its id when re-published (controllers may deduplicate by id); ids
    # are at most 64 characters, so long kiosk and order ids are hashed.
    readable = f"{kiosk_id}.{order_id}.{seq}"
    if len(readable) <= MAX_ID:
        return readable
    return hashlib.sha256(readable.encode()).hexdigest()[:32]


def _unique_id(kiosk_id: str) -> str:
    # Each rejection is a message of its own, even two within the same millisecond.
    unique = uuid.uuid4().hex
    readable = f"{kiosk_id}.{unique}"
    return readable if len(readable) <= MAX_ID else unique


def status_payload(order: OrderData, *, kiosk_id: str, ts: float) -> dict[str, Any]:
    """The retained status of an order."""
    card = order.card
    payment = None
    if order.intent_id is not None and order.state is not State.RECEIVED:
        payment = {"intent": order.intent_id}
        if card is not None and (card.brand or card.last4):
            payment["card"] = {"brand": card.brand, "last4": card.last4}  # type: ignore[assignment]
    reason = order.reason
    return {
        "v": 1,
        "id": _status_id(kiosk_id, order.order_id, order.status_seq),
        "ts": now_rfc3339(ts),
        "order_id": order.order_id,
        "seq": order.status_seq,
        "state": order.state.value,
        "amount": order.amount,
        "currency": order.currency,
        "reason": None
        if reason is None
        else {"code": reason.code, "message": reason.message, "retryable": reason.retryable},
        "payment": payment,
        "captured_amount": order.captured_amount,
        "in_reply_to": order.in_reply_to,
    }


def rejection_payload(  # noqa: PLR0913
    *,
    kiosk_id: str,
    order_id: str,
    ts: float,
    code: str,
    message: str,
    retryable: bool,
    in_reply_to: str | None,
    amount: int | None = None,
    currency: str | None = None,
    seq: int = 0,
) -> dict[str, Any]:
    """A `rejected` status for a message that was not accepted (no order was created or changed)."""
    return {
        "v": 1,
        "id": _unique_id(kiosk_id),
        "ts": now_rfc3339(ts),
        "order_id": order_id,
        "seq": seq,
        "state": State.REJECTED.value,
        "amount": amount,
        "currency": currency,
        "reason": {"code": code, "message": message, "retryable": retryable},
        "payment": None,
        "captured_amount": None,
        "in_reply_to": in_reply_to,
    }
