"""kiosk.messages: parsing what the controller sends and building what kiosk sends (protocol.md §1)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk import messages
from kiosk.errors import InvalidInput
from kiosk.model import Card, Item, OrderData, Policy, Reason, State

TS = "2026-01-01T12:00:00Z"


def body(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": "m-1", "ts": TS, "order_id": "o-1", **fields}


def raw(**fields: Any) -> bytes:
    return json.dumps(body(**fields)).encode()


def parse_request(**fields: Any) -> messages.OrderRequest:
    parsed = messages.parse("request", "o-1", raw(**{"amount": 300, "currency": "usd", **fields}))
    assert isinstance(parsed, messages.OrderRequest)
    return parsed


def problem(kind: str, payload: bytes, order_id: str = "o-1") -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        messages.parse(kind, order_id, payload)
    return caught.value


# --- Topics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("vend/v1/order/o-1/request", ("o-1", "request")),
        ("vend/v1/order/A.b_c-9/vend_result", ("A.b_c-9", "vend_result")),
        ("vend/v1/order/" + "x" * 64 + "/cancel", ("x" * 64, "cancel")),
        ("vend/v1/order/" + "x" * 65 + "/cancel", (None, "cancel")),
        ("vend/v1/order/has space/request", (None, "request")),
        ("vend/v1/order//request", (None, "request")),
        ("vend/v1/order/o-1/request/extra", (None, None)),
        ("vend/v1/order/o-1", (None, None)),
        ("vend/v2/order/o-1/request", (None, None)),
        ("other/vend/v1/order/o-1/request", (None, None)),
    ],
)
def test_topic_order_id(topic: str, expected: tuple[str | None, str | None]) -> None:
    assert messages.topic_order_id("vend/v1", topic) == expected


# --- Parsing ------------------------------------------------------------------------------------


def test_a_full_request_parses() -> None:
    items = [{"sku": "a", "name": "A", "quantity": 2, "unit_amount": 150}]
    request = parse_request(items=items, expires_at="2026-01-01T12:05:00+01:00", extra={"ignored": True})
    assert request.amount == 300
    assert request.cart() == (Item("a", "A", 2, 150),)
    assert request.expires_at is not None
    assert request.expires_at.timestamp() == 1767265500.0


def test_a_cancel_and_a_vend_result_parse() -> None:
    cancel = messages.parse("cancel", "o-1", raw(reason="door opened"))
    assert isinstance(cancel, messages.CancelRequest)
    assert cancel.reason == "door opened"
    vend = messages.parse("vend_result", "o-1", raw(result="partial", vended_amount=100))
    assert isinstance(vend, messages.VendResult)
    assert (vend.result, vend.vended_amount) == ("partial", 100)


@pytest.mark.parametrize(
    ("kind", "payload", "words"),
    [
        ("request", b"{", "not UTF-8 JSON"),
        ("request", b"\xff", "not UTF-8 JSON"),
        ("request", b"null", "JSON object"),
        ("request", b'"text"', "JSON object"),
        ("request", raw(amount="1", currency="usd"), "amount"),
        ("request", raw(amount=1.0, currency="usd"), "amount"),
        ("request", raw(amount=True, currency="usd"), "amount"),
        ("request", raw(amount=1), "currency"),
        ("request", raw(amount=1, currency=5), "currency"),
        ("request", raw(amount=1, currency="usd", v=2), "v"),
        ("request", raw(amount=1, currency="usd", id=""), "id"),
        ("request", raw(amount=1, currency="usd", id="x" * 65), "id"),
        ("request", raw(amount=1, currency="usd", ts="yesterday"), "ts"),
        ("request", raw(amount=1, currency="usd", ts="2026-01-01T12:00:00"), "time zone"),
        ("request", raw(amount=1, currency="usd", items="a"), "items"),
        ("request", raw(amount=1, currency="usd", items=[{"sku": "a"}]), "items"),
        (
            "request",
            raw(amount=1, currency="usd", items=[{"sku": "a", "name": "A", "quantity": 0, "unit_amount": 1}]),
            "quantity",
        ),
        ("request", raw(amount=1, currency="usd", expires_at="soon"), "expires_at"),
        ("request", raw(amount=1, currency="usd", order_id="o-2"), "differs from the topic"),
        ("cancel", raw(reason=5), "reason"),
        ("cancel", raw(reason="x" * 201), "reason"),
        ("vend_result", raw(result="ok"), "result"),
        ("vend_result", raw(result="partial"), "needs vended_amount"),
        ("vend_result", raw(result="partial", vended_amount=-1), "vended_amount"),
        ("vend_result", raw(result="partial", vended_amount="1"), "vended_amount"),
        ("dispense", raw(), "unknown message kind"),
    ],
)
def test_bad_messages_say_what_is_wrong(kind: str, payload: bytes, words: str) -> None:
    error = problem(kind, payload)
    assert error.code == "invalid_order"
    assert words in error.message, error.message


def test_a_naive_expiry_is_refused_rather_than_read_in_the_local_time_zone() -> None:
    # RFC 3339 times carry an offset; a time without one would mean different instants on
    # kiosks in different time zones.
    error = problem("request", raw(amount=1, currency="usd", expires_at="2026-01-01T12:00:00"))
    assert "expires_at" in error.message
    assert "time zone" in error.message


def test_the_size_limit_is_16_kib() -> None:
    base = raw(amount=1, currency="usd", pad="")
    fits = raw(amount=1, currency="usd", pad="x" * (messages.MAX_PAYLOAD - len(base)))
    assert len(fits) == messages.MAX_PAYLOAD
    messages.parse("request", "o-1", fits)
    over = raw(amount=1, currency="usd", pad="x" * (messages.MAX_PAYLOAD - len(base) + 1))
    assert "16384-byte limit" in problem("request", over).message


def test_long_explanations_are_bounded() -> None:
    bad = {"v": 9, "id": 1, "ts": 2, "order_id": 3, "amount": "x", "currency": 4}
    message = problem("request", json.dumps(bad).encode()).message
    assert message.count(";") == 2  # the first three problems


# --- Business rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"currency": "eur"}, "currency_not_allowed", "'eur'"),
        ({"currency": "USD"}, "currency_not_allowed", "'USD'"),
        ({"amount": 0}, "amount_out_of_range", "from 1 to 1000"),
        ({"amount": -5}, "amount_out_of_range", "from 1 to 1000"),
        ({"amount": 1001}, "amount_out_of_range", "from 1 to 1000"),
        (
            {"items": [{"sku": "a", "name": "A", "quantity": 1, "unit_amount": 299}]},
            "invalid_order",
            "add up to 299",
        ),
    ],
)
def test_check_request_refuses(fields: dict[str, Any], code: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        messages.check_request(parse_request(**fields), currencies=("usd", "cad"), max_amount=1000)
    assert caught.value.code == code
    assert words in caught.value.message


@pytest.mark.parametrize("fields", [{"amount": 1}, {"amount": 1000}, {"currency": "cad"}])
def test_check_request_accepts_the_limits_and_any_allowed_currency(fields: dict[str, Any]) -> None:
    messages.check_request(parse_request(**fields), currencies=("usd", "cad"), max_amount=1000)


def test_an_empty_cart_must_add_up_too() -> None:
    with pytest.raises(InvalidInput):
        messages.check_request(parse_request(items=[]), currencies=("usd",), max_amount=1000)


# --- Duplicates ---------------------------------------------------------------------------------


def test_the_digest_ignores_the_envelope_and_sees_the_content() -> None:
    a = parse_request()
    b = messages.parse("request", "o-1", json.dumps(body(amount=300, currency="usd", id="m-2", ts=TS)).encode())
    assert isinstance(b, messages.OrderRequest)
    assert a.digest() == b.digest()
    assert parse_request(amount=301).digest() != a.digest()
    assert (
        parse_request(expires_at="2026-01-01T13:00:00Z").digest()
        == parse_request(expires_at="2026-01-01T14:00:00+01:00").digest()
    )
    assert parse_request(items=[{"sku": "a", "name": "A", "quantity": 1, "unit_amount": 300}]).digest() != a.digest()


@given(st.integers(min_value=1, max_value=10**8), st.sampled_from(["usd", "eur", "gbp"]))
def test_the_digest_is_stable_and_content_sensitive(amount: int, currency: str) -> None:
    one = parse_request(amount=amount, currency=currency)
    assert one.digest() == parse_request(amount=amount, currency=currency).digest()
    assert one.digest() != parse_request(amount=amount + 1, currency=currency).digest()


# --- Outgoing -----------------------------------------------------------------------------------


def order(**fields: Any) -> OrderData:
    base = OrderData(order_id="o-1", amount=300, currency="usd", policy=Policy(kiosk_id="k1"), created_at=0.0)
    return replace(base, **fields)


def test_status_payload_shape() -> None:
    approved = order(
        state=State.APPROVED,
        status_seq=4,
        intent_id="pi_1",
        card=Card("visa", "4242", "credit"),
        in_reply_to="m-1",
    )
    payload = messages.status_payload(approved, kiosk_id="k1", ts=1767268800.5)
    assert payload == {
        "v": 1,
        "id": "k1.o-1.4",
        "ts": "2026-01-01T12:00:00.500Z",
        "order_id": "o-1",
        "seq": 4,
        "state": "approved",
        "amount": 300,
        "currency": "usd",
        "reason": None,
        "payment": {"intent": "pi_1", "card": {"brand": "visa", "last4": "4242"}},
        "captured_amount": None,
        "in_reply_to": "m-1",
    }


def test_status_payload_without_a_card_or_before_the_payment() -> None:
    received = messages.status_payload(order(intent_id="pi_1", status_seq=1), kiosk_id="k1", ts=0)
    assert received["payment"] is None
    waiting = messages.status_payload(
        order(state=State.AWAITING_CARD, intent_id="pi_1", status_seq=2), kiosk_id="k1", ts=0
    )
    assert waiting["payment"] == {"intent": "pi_1"}
    canceled = messages.status_payload(
        order(state=State.CANCELED, reason=Reason("card_timeout", "No card.", retryable=False)), kiosk_id="k1", ts=0
    )
    assert canceled["reason"] == {"code": "card_timeout", "message": "No card.", "retryable": False}
    assert canceled["payment"] is None


def test_rejection_payload_shape() -> None:
    payload = messages.rejection_payload(
        kiosk_id="k1",
        order_id="o-1",
        ts=0,
        code="busy",
        message="another order is using the card reader",
        retryable=True,
        in_reply_to="m-9",
    )
    assert payload["state"] == "rejected"
    assert payload["reason"] == {"code": "busy", "message": "another order is using the card reader", "retryable": True}
    assert payload["in_reply_to"] == "m-9"
    assert payload["payment"] is None
    assert payload["captured_amount"] is None
    assert len(payload["id"]) <= 64


def test_rejections_in_the_same_millisecond_have_distinct_ids() -> None:
    # Envelope ids are unique (protocol.md §1); a controller deduplicating by id must not drop
    # the second of two quick rejections.
    ids = {
        messages.rejection_payload(
            kiosk_id="k1", order_id="o-1", ts=5.0, code="invalid_order", message="x", retryable=False, in_reply_to=None
        )["id"]
        for _ in range(10)
    }
    assert len(ids) == 10


def test_ids_are_at_most_64_characters_and_stable_for_a_status() -> None:
    long_order = order(order_id="o" * 64, status_seq=12)
    first = messages.status_payload(long_order, kiosk_id="k" * 64, ts=0)["id"]
    again = messages.status_payload(long_order, kiosk_id="k" * 64, ts=99)["id"]
    assert len(first) <= messages.MAX_ID
    assert first == again  # a re-published status is the same message
    later = messages.status_payload(replace(long_order, status_seq=13), kiosk_id="k" * 64, ts=0)["id"]
    assert later != first
    rejection = messages.rejection_payload(
        kiosk_id="k" * 64, order_id="o" * 64, ts=0, code="busy", message="x", retryable=True, in_reply_to=None
    )
    assert len(rejection["id"]) <= messages.MAX_ID


def test_dumps_is_compact_utf8() -> None:
    assert messages.dumps({"name": "café", "n": 1}) == '{"name":"café","n":1}'.encode()


def test_now_rfc3339() -> None:
    assert messages.now_rfc3339(0) == "1970-01-01T00:00:00.000Z"
