"""The simulator's `expand[]` at a reader: absent action branches stop the path, unknown properties do not.

A reader read asks for both payment actions' PaymentIntents; the action carries only the sub-hash
of its own type, or there is no action at all. Stripe is known to stop at a null; whether it also
stops at an absent sub-hash is not documented, so `strict_expand` refuses those, as Stripe might.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from kiosk.simulator import Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

AUTH = ("sk_test_expandBranches00000", "")
PROCESS = "action.process_payment_intent.payment_intent.latest_charge"
CONFIRM = "action.confirm_payment_intent.payment_intent.latest_charge"


class Rig:
    def __init__(self, sim: Simulator, http: httpx.Client, reader: str) -> None:
        self.sim = sim
        self.http = http
        self.reader = reader

    def intent(self) -> str:
        body = {
            "amount": "250",
            "currency": "usd",
            "capture_method": "manual",
            "allowed_payment_method_types[0]": "card_present",
        }
        return str(self.http.post("/v1/payment_intents", data=body).json()["id"])

    def read(self, *paths: str) -> httpx.Response:
        return self.http.get(f"/v1/terminal/readers/{self.reader}", params=[("expand[]", p) for p in paths])

    def command(self, name: str, **data: str) -> None:
        response = self.http.post(f"/v1/terminal/readers/{self.reader}/{name}", data=data)
        assert response.status_code == 200, response.text


@pytest.fixture(name="rig")
def fixture_rig() -> Iterator[Rig]:
    sim = Simulator(seed=12)
    with sim.start_in_thread() as handle, httpx.Client(base_url=handle.url, auth=AUTH) as http:
        yield Rig(sim, http, sim.register_reader("simulated-wpe"))


def refused(response: httpx.Response) -> bool:
    error: dict[str, Any] = response.json().get("error") or {}
    return response.status_code == 400 and error.get("param") == "expand"


def test_an_idle_reader_and_other_action_types_stop_the_path_quietly(rig: Rig) -> None:
    idle = rig.read(PROCESS, CONFIRM)
    assert idle.status_code == 200, idle.text
    assert idle.json()["action"] is None
    pi = rig.intent()
    rig.command("collect_payment_method", payment_intent=pi)
    rig.sim.present_card(rig.reader)
    collected = rig.read(PROCESS, CONFIRM)
    assert collected.status_code == 200, collected.text
    assert collected.json()["action"]["collect_payment_method"]["payment_intent"] == pi  # not asked for
    rig.command("confirm_payment_intent", payment_intent=pi)
    confirmed = rig.read(PROCESS, CONFIRM)
    assert confirmed.status_code == 200, confirmed.text
    intent = confirmed.json()["action"]["confirm_payment_intent"]["payment_intent"]
    assert (intent["id"], intent["status"]) == (pi, "requires_capture")
    assert intent["latest_charge"]["payment_method_details"]["card_present"]["last4"] == "4242"
    rig.command(
        "set_reader_display",
        **{
            "type": "cart",
            "cart[currency]": "usd",
            "cart[line_items][0][description]": "Water",
            "cart[line_items][0][amount]": "250",
            "cart[line_items][0][quantity]": "1",
            "cart[total]": "250",
        },
    )
    display = rig.read(PROCESS, CONFIRM)
    assert display.status_code == 200, display.text
    assert display.json()["action"]["type"] == "set_reader_display"
    assert rig.sim.expand_refusals == 0


def test_a_pi_without_a_charge_stops_the_path(rig: Rig) -> None:
    pi = rig.intent()
    rig.command("process_payment_intent", payment_intent=pi)
    waiting = rig.read(PROCESS, CONFIRM)
    assert waiting.status_code == 200, waiting.text
    intent = waiting.json()["action"]["process_payment_intent"]["payment_intent"]
    assert (intent["id"], intent["latest_charge"]) == (pi, None)


@pytest.mark.parametrize(
    "path",
    [
        "action.bogus.payment_intent",
        "action.process_payment_intent.bogus",
        "action.process_payment_intent.payment_intent.bogus",
        "bogus",
        "action.process_payment_intent.process_config.bogus",
    ],
)
def test_an_unknown_property_is_still_refused(rig: Rig, path: str) -> None:
    pi = rig.intent()
    rig.command("process_payment_intent", payment_intent=pi)
    rig.sim.present_card(rig.reader)
    assert refused(rig.read(path))
    assert refused(rig.read(PROCESS, path))  # one bad path refuses the request


def test_an_unknown_action_branch_is_refused_below_no_action_too(rig: Rig) -> None:
    assert refused(rig.read("action.bogus.payment_intent"))
    assert rig.sim.expand_refusals == 1


def test_strict_expand_refuses_an_absent_branch_and_a_null_action(rig: Rig) -> None:
    rig.sim.strict_expand = True
    assert refused(rig.read(PROCESS))  # no action
    pi = rig.intent()
    rig.command("process_payment_intent", payment_intent=pi)
    rig.sim.present_card(rig.reader)
    assert rig.read(PROCESS).status_code == 200  # the branch is there
    assert refused(rig.read(PROCESS, CONFIRM))  # the confirm branch is not
    assert rig.read().status_code == 200
    assert rig.sim.expand_refusals == 2
    rig.sim.strict_expand = False
    assert rig.read(PROCESS, CONFIRM).status_code == 200
