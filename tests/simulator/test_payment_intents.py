"""PaymentIntents through the real stripe client, each object checked against Stripe's schema."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import stripe

from kiosk.simulator.cards import DAY
from tests.simulator.schema import assert_conforms, require_reference

if TYPE_CHECKING:
    from tests.simulator.conftest import Served


def conforms(obj: Any) -> None:
    require_reference()
    assert_conforms(obj.to_dict() if hasattr(obj, "to_dict") else obj, "payment_intent", "payment_intent")


async def test_create_retrieve_conform(served: Served) -> None:
    pi = await served.pi(1234, metadata={"order_id": "o-1", "kiosk_id": "k1"})
    assert pi.status == "requires_payment_method"
    assert pi.amount == 1234
    assert pi.capture_method == "manual"
    conforms(pi)
    again = await served.client.v1.payment_intents.retrieve_async(pi.id)
    assert again.metadata.to_dict() == {"order_id": "o-1", "kiosk_id": "k1"}
    conforms(again)


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({"currency": "usd"}, "parameter_missing", "amount"),
        ({"amount": 1000}, "parameter_missing", "currency"),
        ({"amount": 49, "currency": "usd"}, "amount_too_small", "amount"),
        ({"amount": 100_000_000, "currency": "usd"}, "amount_too_large", "amount"),
        ({"amount": "ten", "currency": "usd"}, "parameter_invalid_integer", "amount"),
        ({"amount": 100, "currency": "xyz"}, None, "currency"),
        ({"amount": 100, "currency": "usd", "capture_method": "later"}, None, "capture_method"),
        ({"amount": 100, "currency": "usd", "metadata": {"k" * 41: "v"}}, None, "metadata[" + "k" * 41 + "]"),
        ({"amount": 100, "currency": "usd", "metadata": {"k": "v" * 501}}, None, "metadata[k]"),
        ({"amount": 100, "currency": "usd", "metadata": {f"k{i}": "v" for i in range(51)}}, None, "metadata"),
    ],
)
async def test_create_validation(served: Served, params: dict[str, Any], code: str | None, param: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.create_async(params=params)  # type: ignore[arg-type]
    assert info.value.http_status == 400
    assert info.value.code == code
    assert info.value.param == param


async def test_retrieve_missing_is_404(served: Served) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.retrieve_async("pi_nope")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"


async def test_update_amount_and_metadata(served: Served) -> None:
    pi = await served.pi(1000, metadata={"a": "1", "b": "2"})
    updated = await served.client.v1.payment_intents.update_async(
        pi.id, params={"amount": 1500, "metadata": {"a": "", "c": "3"}}
    )
    assert updated.amount == 1500
    assert updated.metadata.to_dict() == {"b": "2", "c": "3"}
    conforms(updated)


async def test_update_amount_refused_once_authorised(served: Served) -> None:
    _, pi = await served.paid()
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.update_async(pi.id, params={"amount": 2000})
    assert info.value.code == "payment_intent_unexpected_state"
    ok = await served.client.v1.payment_intents.update_async(pi.id, params={"metadata": {"vend": "done"}})
    assert ok.metadata["vend"] == "done"


async def test_list_with_cursors(served: Served) -> None:
    ids = [(await served.pi(100 + i)).id for i in range(5)]
    first = await served.client.v1.payment_intents.list_async(params={"limit": 2})
    assert [p.id for p in first.data] == ids[::-1][:2]
    assert first.has_more
    second = await served.client.v1.payment_intents.list_async(params={"limit": 2, "starting_after": first.data[-1].id})
    assert [p.id for p in second.data] == ids[::-1][2:4]
    back = await served.client.v1.payment_intents.list_async(params={"limit": 2, "ending_before": second.data[0].id})
    assert [p.id for p in back.data] == ids[::-1][:2]
    for p in first.data:
        conforms(p)


async def test_search_metadata_and_status(served: Served) -> None:
    a = await served.pi(1000, metadata={"kiosk_id": "k1"})
    await served.pi(1000, metadata={"kiosk_id": "k2"})
    _, c = await served.paid()
    await served.client.v1.payment_intents.update_async(c.id, params={"metadata": {"kiosk_id": "k1"}})
    found = await served.client.v1.payment_intents.search_async(params={"query": "metadata['kiosk_id']:'k1'"})
    assert {p.id for p in found.data} == {a.id, c.id}
    held = await served.client.v1.payment_intents.search_async(
        params={"query": "metadata['kiosk_id']:'k1' AND status:'requires_capture'"}
    )
    assert [p.id for p in held.data] == [c.id]
    with pytest.raises(stripe.InvalidRequestError):
        await served.client.v1.payment_intents.search_async(
            params={"query": "status:'x' AND amount>1 OR currency:'usd'"}
        )


async def test_search_indexing_lag(served: Served) -> None:
    served.sim.set_search_lag(60)
    pi = await served.pi(1000, metadata={"kiosk_id": "lag"})
    query = {"query": "metadata['kiosk_id']:'lag'"}
    assert (await served.client.v1.payment_intents.search_async(params=query)).data == []  # type: ignore[arg-type]
    served.sim.advance(61)
    assert [p.id for p in (await served.client.v1.payment_intents.search_async(params=query)).data] == [pi.id]  # type: ignore[arg-type]


async def test_full_and_partial_capture(served: Served) -> None:
    _, pi = await served.paid(1000)
    assert pi.status == "requires_capture"
    assert pi.amount_capturable == 1000
    captured = await served.client.v1.payment_intents.capture_async(pi.id)
    assert (captured.status, captured.amount_received, captured.amount_capturable) == ("succeeded", 1000, 0)
    conforms(captured)
    _, pi2 = await served.paid(1000)
    partial = await served.client.v1.payment_intents.capture_async(
        pi2.id, params={"amount_to_capture": 600, "expand": ["latest_charge"]}
    )
    assert partial.amount_received == 600
    charge = partial.latest_charge
    assert isinstance(charge, stripe.Charge)
    assert (charge.amount_captured, charge.amount_refunded) == (600, 400)


async def test_capture_more_than_capturable(served: Served) -> None:
    _, pi = await served.paid(1000)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.capture_async(pi.id, params={"amount_to_capture": 1001})
    assert info.value.code == "amount_too_large"


async def test_capture_twice_is_unexpected_state(served: Served) -> None:
    _, pi = await served.paid(1000)
    await served.client.v1.payment_intents.capture_async(pi.id)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.capture_async(pi.id)
    assert info.value.code == "payment_intent_unexpected_state"
    assert info.value.json_body is not None
    assert info.value.json_body["error"]["payment_intent"]["status"] == "succeeded"  # type: ignore[index]
    assert served.sim.ledger().intents[-1].captures[0].amount == 1000


async def test_cancel_releases_authorisation(served: Served) -> None:
    _, pi = await served.paid(1000)
    canceled = await served.client.v1.payment_intents.cancel_async(pi.id, params={"cancellation_reason": "abandoned"})
    assert (canceled.status, canceled.cancellation_reason, canceled.amount_capturable) == ("canceled", "abandoned", 0)
    conforms(canceled)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.cancel_async(pi.id)
    assert info.value.code == "payment_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError):
        await served.client.v1.payment_intents.cancel_async(
            (await served.pi()).id, params={"cancellation_reason": "bored"}
        )


@pytest.mark.parametrize(
    ("number", "brand", "window"),
    [
        ("4242424242424242", "visa", 4 * DAY + 18 * 3600),
        ("5555555555554444", "mastercard", 2 * DAY),
        ("378282246310005", "amex", 2 * DAY),
        ("6011111111111117", "discover", 2 * DAY),
    ],
)
async def test_authorisation_expires_by_brand(served: Served, number: str, brand: str, window: float) -> None:
    _, pi = await served.paid(1000, number)
    charge = await served.client.v1.payment_intents.retrieve_async(pi.id, params={"expand": ["latest_charge"]})
    assert isinstance(charge.latest_charge, stripe.Charge)
    details = charge.latest_charge.payment_method_details
    assert details is not None
    assert details.card_present is not None
    assert details.card_present.brand == brand
    assert details.card_present.last4 == number[-4:]
    capture_before = details.card_present.capture_before
    assert capture_before is not None
    assert capture_before - charge.latest_charge.created == pytest.approx(window, abs=1)
    served.sim.advance(window - 120)
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_capture"
    served.sim.advance(240)
    expired = await served.client.v1.payment_intents.retrieve_async(pi.id)
    assert (expired.status, expired.cancellation_reason) == ("canceled", "automatic")
    assert served.sim.ledger().intents[-1].cancels[0].expired
