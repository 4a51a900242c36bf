"""Stripe's wire protocol: form nesting, JSON bodies, errors, Request-Id, auth, API versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
import stripe

from kiosk.simulator.wire import StripeError, decode_form

if TYPE_CHECKING:
    from tests.simulator.conftest import Served


def test_form_nesting_like_stripe() -> None:
    body = "a[b][c]=1&l[]=x&l[]=y&i[0]=p&i[1]=q&expand[0]=latest_charge&m[k]=&plain=v%20w"
    assert decode_form(body) == {
        "a": {"b": {"c": "1"}},
        "l": ["x", "y"],
        "i": ["p", "q"],
        "expand": ["latest_charge"],
        "m": {"k": ""},
        "plain": "v w",
    }


def test_list_of_hashes() -> None:
    body = "cart[line_items][0][amount]=100&cart[line_items][0][quantity]=1&cart[line_items][1][amount]=5"
    assert decode_form(body) == {"cart": {"line_items": [{"amount": "100", "quantity": "1"}, {"amount": "5"}]}}


def test_conflicting_shapes_are_a_400() -> None:
    with pytest.raises(StripeError) as info:
        decode_form("a[b]=1&a[b][c]=2")
    assert info.value.status == 400


async def test_no_key_is_401(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as raw:
        response = await raw.get("/v1/payment_intents")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["Request-Id"].startswith("req_")


@pytest.mark.parametrize("key", ["sk_live_abcdef123456", "pk_test_abc", "nonsense"])
async def test_non_test_keys_are_401(served: Served, key: str) -> None:
    http_client = stripe.HTTPXClient()
    client = stripe.StripeClient(
        key, http_client=http_client, base_addresses={"api": served.url}, max_network_retries=0
    )
    try:
        with pytest.raises(stripe.AuthenticationError):
            await client.v1.payment_intents.list_async()
    finally:
        await http_client.close_async()  # type: ignore[no-untyped-call]
    assert key not in str(await _raw_401(served.url, key))


async def _raw_401(url: str, key: str) -> str:
    async with httpx.AsyncClient(base_url=url) as raw:
        response = await raw.get("/v1/payment_intents", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    return response.text


async def test_restricted_test_key_and_basic_auth(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, auth=("rk_test_abc", "")) as raw:
        assert (await raw.get("/v1/payment_intents")).status_code == 200


async def test_json_body_accepted(served: Served) -> None:
    response = await served.http.post(
        "/v1/payment_intents",
        json={
            "amount": 700,
            "currency": "usd",
            "allowed_payment_method_types": ["card_present"],
            "metadata": {"a": "b"},
        },
    )
    assert response.status_code == 200
    assert response.json()["metadata"] == {"a": "b"}


async def test_unknown_url_is_404_with_error_object(served: Served) -> None:
    response = await served.http.get("/v1/nothing")
    assert response.status_code == 404
    assert "Unrecognized request URL" in response.json()["error"]["message"]


async def test_unknown_parameter(served: Served) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.create_async(params={"amount": 100, "currency": "usd", "bogus": "x"})  # type: ignore[typeddict-unknown-key]
    assert info.value.code == "parameter_unknown"


async def test_version_header_echoed_and_bad_version_rejected(served: Served) -> None:
    ok = await served.http.get("/v1/payment_intents", headers={"Stripe-Version": "2023-08-16"})
    assert ok.headers["Stripe-Version"] == "2023-08-16"
    bad = await served.http.get("/v1/payment_intents", headers={"Stripe-Version": "yesterday"})
    assert bad.status_code == 400


async def test_new_versions_refuse_payment_method_types(served: Served) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.payment_intents.create_async(
            params={"amount": 500, "currency": "usd", "payment_method_types": ["card_present"]}  # type: ignore[typeddict-unknown-key]
        )
    assert info.value.code == "payment_method_types_no_longer_supported"


async def test_old_versions_take_payment_method_types(served: Served) -> None:
    form = {"amount": "500", "currency": "usd", "payment_method_types[0]": "card_present"}
    old = await served.http.post("/v1/payment_intents", data=form, headers={"Stripe-Version": "2025-06-30.basil"})
    assert old.status_code == 200
    assert old.json()["payment_method_types"] == ["card_present"]
    newer_param = {"amount": "500", "currency": "usd", "allowed_payment_method_types[0]": "card_present"}
    refused = await served.http.post(
        "/v1/payment_intents", data=newer_param, headers={"Stripe-Version": "2025-06-30.basil"}
    )
    assert refused.json()["error"]["code"] == "parameter_unknown"


async def test_expand_latest_charge(served: Served) -> None:
    _, pi = await served.paid()
    expanded = await served.client.v1.payment_intents.retrieve_async(
        pi.id, params={"expand": ["latest_charge", "payment_method"]}
    )
    assert isinstance(expanded.latest_charge, stripe.Charge)
    assert expanded.latest_charge.payment_method_details is not None
    assert expanded.payment_method is not None
    response = await served.http.get(f"/v1/payment_intents/{pi.id}", params={"expand[]": "nope"})
    assert response.status_code == 400
