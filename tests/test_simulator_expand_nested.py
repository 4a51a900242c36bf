"""The simulator expands ids on the way down a path, as Stripe does (depth 4 from a reader)."""

from __future__ import annotations

import httpx

from kiosk.simulator import Simulator

AUTH = ("sk_test_expandNested000000", "")
PATH = "action.process_payment_intent.payment_intent.latest_charge"


def test_reader_read_expands_the_actions_intent_and_its_charge() -> None:
    sim = Simulator(seed=11)
    with sim.start_in_thread() as handle, httpx.Client(base_url=handle.url, auth=AUTH) as http:
        reader = sim.register_reader("simulated-wpe")
        pi = http.post(
            "/v1/payment_intents",
            data={
                "amount": "250",
                "currency": "usd",
                "capture_method": "manual",
                "allowed_payment_method_types[0]": "card_present",
            },
        ).json()["id"]
        http.post(f"/v1/terminal/readers/{reader}/process_payment_intent", data={"payment_intent": pi})
        sim.present_card(reader)
        body = http.get(f"/v1/terminal/readers/{reader}", params={"expand[]": PATH}).json()
        intent = body["action"]["process_payment_intent"]["payment_intent"]
        assert intent["id"] == pi
        assert intent["status"] == "requires_capture"
        assert intent["latest_charge"]["payment_method_details"]["card_present"]["last4"] == "4242"
        plain = http.get(f"/v1/terminal/readers/{reader}").json()
        assert plain["action"]["process_payment_intent"]["payment_intent"] == pi
