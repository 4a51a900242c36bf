"""Readers and their actions, test cards and amounts, reader errors, through the stripe client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import stripe

from tests.simulator.schema import assert_conforms, require_reference

if TYPE_CHECKING:
    from tests.simulator.conftest import Served


def conforms(reader: stripe.terminal.Reader) -> None:
    require_reference()
    assert_conforms(reader.to_dict(), "terminal.reader", "terminal.reader")


async def retrieve(served: Served, reader: str) -> stripe.terminal.Reader:
    return await served.client.v1.terminal.readers.retrieve_async(reader)


@pytest.mark.parametrize(
    ("code", "device"), [("simulated-wpe", "simulated_wisepos_e"), ("simulated-s700", "simulated_stripe_s700")]
)
async def test_register_retrieve_list(served: Served, code: str, device: str) -> None:
    reader_id = await served.reader(code)
    reader = await retrieve(served, reader_id)
    assert (reader.device_type, reader.status, reader.action) == (device, "online", None)
    assert reader.last_seen_at is not None
    conforms(reader)
    listed = await served.client.v1.terminal.readers.list_async(params={"device_type": device})
    assert [r.id for r in listed.data] == [reader_id]


async def test_bad_registration_code(served: Served) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.terminal.readers.create_async(params={"registration_code": "puppy-kitten"})
    assert info.value.param == "registration_code"


async def test_process_then_present_authorises(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    started = await served.process(reader, pi.id, skip_tipping=True)
    assert started.action is not None
    assert (started.action.type, started.action.status) == ("process_payment_intent", "in_progress")
    assert started.action.process_payment_intent is not None
    assert started.action.process_payment_intent.payment_intent == pi.id
    conforms(started)
    done = await served.present(reader)
    assert done.action is not None
    assert done.action.status == "succeeded"
    conforms(done)
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_capture"


TEST_AMOUNTS = {
    1: "call_issuer",
    5: "generic_decline",
    55: "incorrect_pin",
    60: "online_or_offline_pin_required",
    65: "withdrawal_count_limit_exceeded",
    75: "pin_try_exceeded",
}


@pytest.mark.parametrize(("cents", "decline_code"), [(0, None), *TEST_AMOUNTS.items()])
async def test_test_amounts(served: Served, cents: int, decline_code: str | None) -> None:
    reader = await served.reader()
    pi = await served.pi(1000 + cents)
    await served.process(reader, pi.id)
    after = await served.present(reader)
    assert after.action is not None
    intent = await served.client.v1.payment_intents.retrieve_async(pi.id)
    if decline_code is None:
        assert after.action.status == "succeeded"
        assert intent.status == "requires_capture"
        return
    assert (after.action.status, after.action.failure_code) == ("failed", "card_declined")
    assert after.action.api_error is not None
    assert after.action.api_error.decline_code == decline_code
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error is not None
    assert intent.last_payment_error.decline_code == decline_code
    conforms(after)


@pytest.mark.parametrize(
    ("number", "code", "decline_code"),
    [
        ("4000000000000002", "card_declined", "generic_decline"),
        ("4000000000009995", "card_declined", "insufficient_funds"),
        ("4000000000009987", "card_declined", "lost_card"),
        ("4000000000009979", "card_declined", "stolen_card"),
        ("4000000000000069", "expired_card", "expired_card"),
        ("4000000000000119", "processing_error", "processing_error"),
    ],
)
async def test_decline_cards_then_retry_same_pi(served: Served, number: str, code: str, decline_code: str) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    await served.process(reader, pi.id)
    failed = await served.present(reader, number)
    assert failed.action is not None
    assert (failed.action.status, failed.action.failure_code) == ("failed", code)
    intent = await served.client.v1.payment_intents.retrieve_async(pi.id)
    assert intent.last_payment_error is not None
    assert (intent.last_payment_error.code, intent.last_payment_error.decline_code) == (code, decline_code)
    await served.process(reader, pi.id)
    await served.present(reader)
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_capture"


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("5555555555554444", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("4242424242424242", "visa"),
    ],
)
async def test_brands(served: Served, number: str, brand: str) -> None:
    _, pi = await served.paid(1000, number)
    intent = await served.client.v1.payment_intents.retrieve_async(pi.id, params={"expand": ["latest_charge"]})
    assert isinstance(intent.latest_charge, stripe.Charge)
    assert intent.latest_charge.payment_method_details is not None
    assert intent.latest_charge.payment_method_details.card_present is not None
    assert intent.latest_charge.payment_method_details.card_present.brand == brand


async def test_interac(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000, currency="cad", allowed_payment_method_types=["card_present", "interac_present"])
    await served.process(reader, pi.id)
    params: dict[str, Any] = {"type": "interac_present", "interac_present": {"number": "4506445006931933"}}
    done = await served.client.v1.test_helpers.terminal.readers.present_payment_method_async(reader, params=params)  # type: ignore[arg-type]
    assert done.action is not None
    assert done.action.status == "succeeded"
    charge = (
        await served.client.v1.payment_intents.retrieve_async(pi.id, params={"expand": ["latest_charge"]})
    ).latest_charge
    assert isinstance(charge, stripe.Charge)
    assert charge.payment_method_details is not None
    assert charge.payment_method_details.type == "interac_present"


async def test_collect_then_confirm(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    await served.client.v1.terminal.readers.collect_payment_method_async(reader, params={"payment_intent": pi.id})
    collected = await served.present(reader, "5555555555554444")
    assert collected.action is not None
    assert collected.action.type == "collect_payment_method"
    assert collected.action.collect_payment_method is not None
    method = collected.action.collect_payment_method.payment_method
    assert method is not None
    assert method.card_present is not None
    assert method.card_present.brand == "mastercard"
    conforms(collected)
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_confirmation"
    confirmed = await served.client.v1.terminal.readers.confirm_payment_intent_async(
        reader, params={"payment_intent": pi.id}
    )
    assert confirmed.action is not None
    assert (confirmed.action.type, confirmed.action.status) == ("confirm_payment_intent", "succeeded")
    conforms(confirmed)
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_capture"


async def test_confirm_window_is_30_seconds(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    await served.client.v1.terminal.readers.collect_payment_method_async(reader, params={"payment_intent": pi.id})
    await served.present(reader)
    served.sim.advance(31)
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_payment_method"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.terminal.readers.confirm_payment_intent_async(reader, params={"payment_intent": pi.id})
    assert info.value.code == "intent_invalid_state"


async def test_cancel_action_clears_and_busy_during_authorisation(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    await served.process(reader, pi.id)
    cleared = await served.client.v1.terminal.readers.cancel_action_async(reader)
    assert cleared.action is None
    served.sim.set_authorisation_delay(reader, 5)
    await served.process(reader, pi.id)
    authorising = await served.present(reader)
    assert authorising.action is not None
    assert authorising.action.status == "in_progress"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.client.v1.terminal.readers.cancel_action_async(reader)
    assert info.value.code == "terminal_reader_busy"
    served.sim.advance(5)
    done = await retrieve(served, reader)
    assert done.action is not None
    assert done.action.status == "succeeded"


async def test_busy_when_another_payment_runs(served: Served) -> None:
    reader = await served.reader()
    await served.process(reader, (await served.pi()).id)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.process(reader, (await served.pi()).id)
    assert info.value.code == "terminal_reader_busy"


async def test_intent_invalid_state(served: Served) -> None:
    _, pi = await served.paid()
    reader = await served.reader()
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.process(reader, pi.id)
    assert info.value.code == "intent_invalid_state"


async def test_set_reader_display_replaces_unstarted_payment(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    await served.process(reader, pi.id)
    cart = {
        "currency": "usd",
        "line_items": [{"amount": 1000, "description": "Cola", "quantity": 1}],
        "tax": 0,
        "total": 1000,
    }
    shown = await served.client.v1.terminal.readers.set_reader_display_async(
        reader,
        params={"type": "cart", "cart": cart},  # type: ignore[typeddict-item]
    )
    assert shown.action is not None
    assert (shown.action.type, shown.action.status) == ("set_reader_display", "succeeded")
    assert shown.action.set_reader_display is not None
    assert shown.action.set_reader_display.cart is not None
    assert shown.action.set_reader_display.cart.total == 1000
    conforms(shown)
    replaced = [a for a in served.sim.ledger().reader_actions if a.type == "process_payment_intent"]
    assert replaced[0].status == "replaced"
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "requires_payment_method"


async def test_offline_after_two_minutes(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi()
    served.sim.set_reader_online(reader, online=False)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.process(reader, pi.id)
    assert info.value.code == "terminal_reader_timeout"
    served.sim.advance(120)
    assert (await retrieve(served, reader)).status == "offline"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.process(reader, pi.id)
    assert info.value.code == "terminal_reader_offline"
    served.sim.set_reader_online(reader, online=True)
    await served.process(reader, pi.id)


@pytest.mark.parametrize("false_negative", [False, True])
async def test_reader_timeout(served: Served, false_negative: bool) -> None:  # noqa: FBT001
    reader = await served.reader()
    pi = await served.pi()
    served.sim.reader_timeout(reader, false_negative=false_negative)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.process(reader, pi.id)
    assert info.value.code == "terminal_reader_timeout"
    action = (await retrieve(served, reader)).action
    if false_negative:
        assert action is not None
        assert action.process_payment_intent is not None
        assert action.process_payment_intent.payment_intent == pi.id
    else:
        assert action is None


async def test_hardware_fault(served: Served) -> None:
    reader = await served.reader()
    served.sim.reader_hardware_fault(reader)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.process(reader, (await served.pi()).id)
    assert info.value.code == "terminal_reader_hardware_fault"


async def test_customer_cancel(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi()
    await served.process(reader, pi.id)
    assert not served.sim.customer_cancel(reader)  # the cancel button was not enabled
    await served.client.v1.terminal.readers.cancel_action_async(reader)
    await served.process(reader, pi.id, enable_customer_cancellation=True)
    assert served.sim.customer_cancel(reader)
    action = (await retrieve(served, reader)).action
    assert action is not None
    assert (action.status, action.failure_code) == ("failed", "customer_canceled")


@pytest.mark.parametrize(("authorised", "status"), [(True, "requires_capture"), (False, "requires_confirmation")])
async def test_connection_error(served: Served, authorised: bool, status: str) -> None:  # noqa: FBT001
    reader = await served.reader()
    pi = await served.pi()
    served.sim.reader_connection_error(reader, authorised=authorised)
    await served.process(reader, pi.id)
    after = await served.present(reader)
    assert after.action is not None
    assert (after.action.status, after.action.failure_code) == ("failed", "connection_error")
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == status


async def test_auto_present_after_n_seconds(served: Served) -> None:
    reader = await served.reader()
    served.sim.auto_present(reader, 3.0, card="4000000000000002")
    pi = await served.pi()
    await served.process(reader, pi.id)
    served.sim.advance(2)
    action = (await retrieve(served, reader)).action
    assert action is not None
    assert action.status == "in_progress"
    served.sim.advance(1.5)
    action = (await retrieve(served, reader)).action
    assert action is not None
    assert (action.status, action.failure_code) == ("failed", "card_declined")
