"""A reader read carries the action's PaymentIntent, so a sale needs no separate PaymentIntent read.

The gateway reads the reader with the payment actions' PaymentIntents expanded (with their latest
charge); the runner hands the PI to the core with the reader. Should Stripe refuse the expansion,
the gateway reads again without it and never asks again: the core then reads the PI itself, as
before. Real simulator over HTTP, real stripe client, the real runner (tests/faultrig.py).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from kiosk.errors import StripeRefused
from kiosk.gateway import READER_EXPAND, READER_EXPAND_SPLIT, Gateway, reader_expand_paths
from kiosk.runner import reader_view
from tests.faultrig import Lane, lane, money_problems, with_policy
from tests.simgateway import SimRig as Rig
from tests.simgateway import sim_gateway
from tests.simulator.schema import LATER_ADDITIONS, OPENAPI

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from pathlib import Path

API_KEY = "sk_test_kioskReaderExpand000000000"
DECLINED = "4000000000000002"


@pytest.fixture(name="rig")
async def fixture_rig() -> AsyncIterator[Rig]:
    async with sim_gateway(seed=5, api_key=API_KEY) as rig:
        yield rig


async def new_intent(gw: Gateway, key: str) -> str:
    intent = await gw.create_intent(amount=250, currency="usd", metadata={"kiosk_id": "k1", "order_id": key}, key=key)
    return intent.id


def events(logged: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logged if e["event"] == name]


# -- the gateway -----------------------------------------------------------------------------------


def test_the_split_flows_path_is_asked_for_only_where_the_api_version_has_it() -> None:
    assert reader_expand_paths("2026-10-28.endive") == (READER_EXPAND, READER_EXPAND_SPLIT)
    assert reader_expand_paths("2025-06-30") == (READER_EXPAND, READER_EXPAND_SPLIT)
    assert reader_expand_paths("2024-06-20") == (READER_EXPAND,)


async def test_a_read_after_the_card_carries_the_authorised_intent_with_its_card(rig: Rig) -> None:
    gw = rig.gw
    pi = await new_intent(gw, "o1")
    await gw.process_intent(pi, key="o1:process")
    waiting = await gw.retrieve_reader()
    assert waiting.intent is not None
    assert (waiting.intent.id, waiting.intent.status, waiting.intent.card) == (pi, "requires_payment_method", None)
    await gw.present_card()
    reader = await gw.retrieve_reader()
    assert reader.action is not None
    assert (reader.action.status, reader.action.payment_intent) == ("succeeded", pi)  # still the id
    intent = reader.intent
    assert intent is not None
    assert (intent.id, intent.status, intent.amount_capturable) == (pi, "requires_capture", 250)
    assert intent.card is not None
    assert (intent.card.brand, intent.card.last4) == ("visa", "4242")
    assert intent.capture_before is not None
    assert intent.capture_before > rig.sim.now()
    assert intent.metadata == {"kiosk_id": "k1", "order_id": "o1"}
    assert intent == await gw.retrieve_intent(pi)  # what a separate read would have said
    view = reader_view(reader)
    assert view.intent is not None
    assert (view.intent.id, view.intent.status, view.intent.order_id) == (pi, "requires_capture", "o1")
    assert view.intent.card is not None
    assert view.intent.card.last4 == "4242"
    assert gw.calls["readers.retrieve"] == 2
    assert rig.sim.expand_refusals == 0


async def test_a_declined_read_carries_the_intent_with_its_error(rig: Rig) -> None:
    gw = rig.gw
    pi = await new_intent(gw, "o2")
    await gw.process_intent(pi, key="o2:process")
    await gw.present_card(DECLINED)
    reader = await gw.retrieve_reader()
    assert reader.action is not None
    assert (reader.action.status, reader.action.failure_code) == ("failed", "card_declined")
    assert reader.intent is not None
    assert (reader.intent.id, reader.intent.status) == (pi, "requires_payment_method")
    error = reader.intent.last_error
    assert error is not None
    assert (error.code, error.decline_code) == ("card_declined", "generic_decline")
    view = reader_view(reader)
    assert view.intent is not None
    assert view.intent.decline is not None
    assert view.intent.decline.code == "card_declined"


async def test_the_split_flows_confirm_carries_the_intent(rig: Rig) -> None:
    gw = rig.gw
    pi = await new_intent(gw, "o3")
    await gw.collect_payment_method(pi, key="o3:collect")
    await gw.present_card("5555555555554444")
    collected = await gw.retrieve_reader()
    assert collected.action is not None
    assert (collected.action.type, collected.action.status) == ("collect_payment_method", "succeeded")
    assert collected.action.card is not None
    assert collected.intent is None  # the collect action's PI is not asked for: the core needs the card only
    await gw.confirm_intent(pi, key="o3:confirm")
    confirmed = await gw.retrieve_reader()
    assert confirmed.action is not None
    assert (confirmed.action.type, confirmed.action.payment_intent) == ("confirm_payment_intent", pi)
    assert confirmed.intent is not None
    assert (confirmed.intent.id, confirmed.intent.status) == (pi, "requires_capture")
    assert confirmed.intent.card is not None
    assert confirmed.intent.card.brand == "mastercard"


async def test_an_idle_reader_and_a_display_read_as_before(rig: Rig) -> None:
    gw = rig.gw
    idle = await gw.retrieve_reader()
    assert (idle.status, idle.action, idle.intent) == ("online", None, None)
    await gw.set_display("usd", [("Water", 250, 1)], 250, key="d1")
    display = await gw.retrieve_reader()
    assert display.action is not None
    assert (display.action.type, display.intent) == ("set_reader_display", None)
    assert rig.sim.expand_refusals == 0


async def test_a_refused_expansion_falls_back_to_a_plain_read_for_good(rig: Rig) -> None:
    gw = rig.gw
    rig.sim.strict_expand = True
    with capture_logs() as logged:
        idle = await gw.retrieve_reader()
        assert (idle.status, idle.action) == ("online", None)
        pi = await new_intent(gw, "o4")
        await gw.process_intent(pi, key="o4:process")
        await gw.present_card()
        reader = await gw.retrieve_reader()
    assert reader.action is not None
    assert (reader.action.status, reader.action.payment_intent) == ("succeeded", pi)
    assert reader.intent is None  # the caller reads the PI itself
    [warning] = events(logged, "gateway.reader_expand_refused")
    assert warning["log_level"] == "warning"
    assert warning["expand"] == [READER_EXPAND, READER_EXPAND_SPLIT]
    assert events(logged, "gateway.call_failed") == []
    assert rig.sim.expand_refusals == 1  # the second read asked for no expansion
    assert gw.calls["readers.retrieve"] == 3  # the refused read, its plain repeat, the plain read


async def test_another_refusal_of_a_read_is_not_taken_for_a_refused_expansion(rig: Rig) -> None:
    gw = rig.gw
    rig.sim.add_fault(method="GET", path=f"/v1/terminal/readers/{rig.reader}", status=400, code="lock_timeout", count=1)
    with pytest.raises(StripeRefused) as refused:
        await gw.retrieve_reader()
    assert (refused.value.code, refused.value.param) == ("lock_timeout", None)
    pi = await new_intent(gw, "o5")
    await gw.process_intent(pi, key="o5:process")
    await gw.present_card()
    reader = await gw.retrieve_reader()
    assert reader.intent is not None  # still expanded
    assert gw.calls["readers.retrieve"] == 2


# -- a sale through the runner ------------------------------------------------------------------------


PI_READ = "GET /v1/payment_intents/{id}"
READER_READ = "GET /v1/terminal/readers/{id}"
_ID = re.compile(r"/(?:pi|tmr)_\w+")


def watch(the_lane: Lane) -> Counter[str]:
    """Every API request the lane's simulator serves from now on, by endpoint."""
    seen: Counter[str] = Counter()

    def count(method: str, path: str) -> None:
        seen[f"{method} {_ID.sub('/{id}', path)}"] += 1

    the_lane.sim.on_request = count
    return seen


async def sale(the_lane: Lane, order_id: str, *, declined_first: bool = False) -> dict[str, Any]:
    """An order paid (after a declined card with `declined_first`), vended and settled."""
    the_lane.sim.auto_present(the_lane.reader, 0.2, card=DECLINED if declined_first else "4242424242424242")
    await the_lane.request(order_id, 400)
    if declined_first:
        await the_lane.wait_for(order_id, "declined")
        the_lane.sim.auto_present(the_lane.reader, 0.2)  # the customer tries another card
    await the_lane.wait_for(order_id, "approved")
    await the_lane.vend(order_id)
    final = await the_lane.wait_settled(order_id)
    the_lane.sim.auto_present(the_lane.reader, None)
    assert money_problems(the_lane, order_id, vended=400) == []
    return final


async def test_a_sale_makes_no_separate_intent_read(tmp_path: Path) -> None:
    async with lane(tmp_path) as the_lane:
        seen = watch(the_lane)
        final = await sale(the_lane, "x-sale")
        assert final["state"] == "completed"
        print(f"requests for one sale: {seen.total()} {dict(seen)}")
        assert seen.pop(READER_READ) >= 1
        assert seen == {
            "POST /v1/payment_intents": 1,
            "POST /v1/terminal/readers/{id}/process_payment_intent": 1,
            "POST /v1/payment_intents/{id}/capture": 1,
        }
        assert the_lane.sim.expand_refusals == 0


async def test_a_split_flow_sale_makes_no_separate_intent_read(tmp_path: Path) -> None:
    async with lane(tmp_path, policy=with_policy(flow="collect_confirm")) as the_lane:
        seen = watch(the_lane)
        final = await sale(the_lane, "x-split")
        assert final["state"] == "completed"
        assert seen[PI_READ] == 0
        assert seen["POST /v1/terminal/readers/{id}/confirm_payment_intent"] == 1


async def test_a_declined_card_reprompts_without_an_intent_read(tmp_path: Path) -> None:
    async with lane(tmp_path) as the_lane:
        seen = watch(the_lane)
        final = await sale(the_lane, "x-declined", declined_first=True)
        assert final["state"] == "completed"
        assert "declined" in the_lane.states("x-declined")
        assert seen[PI_READ] == 0
        assert seen["POST /v1/terminal/readers/{id}/process_payment_intent"] == 2
        (intent,) = the_lane.intents("x-declined")
        assert [a.payment_intent for a in the_lane.sim.ledger().reader_actions] == [intent.id, intent.id]


async def test_a_sale_completes_when_stripe_refuses_the_expansion(tmp_path: Path) -> None:
    async with lane(tmp_path) as the_lane:
        the_lane.sim.strict_expand = True
        seen = watch(the_lane)
        reads_before = the_lane.gateway.calls["readers.retrieve"]
        with capture_logs() as logged:
            first = await sale(the_lane, "x-fallback")
            second = await sale(the_lane, "x-fallback-next")
        assert (first["state"], second["state"]) == ("completed", "completed")
        assert len(events(logged, "gateway.reader_expand_refused")) == 1
        assert events(logged, "gateway.call_failed") == []
        assert events(logged, "payment.call_failed") == []
        # Refused once; every later read asked for no expansion (strict_expand refuses each one that does).
        assert the_lane.sim.expand_refusals == 1
        assert seen[READER_READ] == the_lane.gateway.calls["readers.retrieve"] - reads_before
        assert seen[PI_READ] == 2  # the core reads each sale's PI itself, as before


# -- the paths against Stripe's schema ---------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    if not OPENAPI.exists():
        pytest.skip(f"Stripe's OpenAPI subset not found at {OPENAPI} (the shared reference data is absent)")
    schemas: dict[str, Any] = json.loads(OPENAPI.read_text())["components"]["schemas"]
    return schemas


def _target(schemas: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    """The object schema a property points at (through `$ref` and `anyOf`)."""
    refs = [prop.get("$ref")] + [alt.get("$ref") for alt in prop.get("anyOf", []) + prop.get("oneOf", [])]
    [ref] = [r for r in refs if r]
    target: dict[str, Any] = schemas[ref.rsplit("/", 1)[-1]]
    return target


def _check(schemas: dict[str, Any], start: str, parts: list[str]) -> None:
    schema = schemas[start]
    for i, part in enumerate(parts):
        assert part in schema.get("x-expandableFields", []), f"{'.'.join(parts[: i + 1])} is not expandable"
        if i < len(parts) - 1:
            schema = _target(schemas, schema["properties"][part])


def test_the_reader_expand_paths_are_expandable_in_stripes_schema() -> None:
    schemas = _schemas()
    parts = READER_EXPAND.split(".")
    assert len(parts) <= 4  # Stripe's maximum depth
    _check(schemas, "terminal.reader", parts)
    # The action's sub-hash is optional: present only on an action of that type.
    assert "process_payment_intent" not in schemas["terminal_reader_reader_resource_reader_action"]["required"]
    # The split flow's action came after this schema (API 2025-06-30); its tail is the same.
    split = READER_EXPAND_SPLIT.split(".")
    assert len(split) <= 4
    assert split[0] == parts[0]
    assert split[2:] == parts[2:]
    assert f"terminal_reader_reader_resource_reader_action.{split[1]}" in LATER_ADDITIONS
