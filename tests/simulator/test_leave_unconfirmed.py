"""The "temporary connectivity problem" switch: a payment left `requires_confirmation`, then processed again."""

from __future__ import annotations

from tests.simulator.conftest import Served


async def _status(served: Served, pi: str) -> str:
    return (await served.client.v1.payment_intents.retrieve_async(pi)).status


async def test_leaves_the_intent_unconfirmed_then_authorises_on_the_same_intent(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1000)
    served.sim.reader_leave_unconfirmed(reader)

    await served.process(reader, pi.id)
    after = await served.present(reader)
    assert after.action is not None
    assert (after.action.status, after.action.failure_code) == ("failed", "connection_error")
    assert await _status(served, pi.id) == "requires_confirmation"

    # Stripe's guidance: process again with the same PaymentIntent. The reader reads the card again.
    again = await served.process(reader, pi.id)
    assert again.action is not None
    assert again.action.status == "in_progress"
    done = await served.present(reader)
    assert done.action is not None
    assert done.action.status == "succeeded"
    intent = await served.client.v1.payment_intents.retrieve_async(pi.id)
    assert (intent.status, intent.amount_capturable) == ("requires_capture", 1000)

    ledger = served.sim.ledger()
    actions = [(a.type, a.status, a.failure_code) for a in ledger.reader_actions if a.payment_intent == pi.id]
    assert actions == [
        ("process_payment_intent", "failed", "connection_error"),
        ("process_payment_intent", "succeeded", None),
    ]
    [record] = ledger.intents
    assert not record.captures


async def test_count_and_the_control_endpoint(served: Served) -> None:
    reader = await served.reader()
    armed = await served.http.post(f"/_simulator/readers/{reader}/leave_unconfirmed", json={"count": 2})
    assert armed.status_code == 200
    assert armed.json() == {"id": reader, "pending_connection_errors": 2}

    pi = await served.pi()
    for _ in range(2):
        await served.process(reader, pi.id)
        await served.present(reader)
        assert await _status(served, pi.id) == "requires_confirmation"
    await served.process(reader, pi.id)
    await served.present(reader)
    assert await _status(served, pi.id) == "requires_capture"


async def test_control_endpoint_for_an_unknown_reader_is_404(served: Served) -> None:
    answer = await served.http.post("/_simulator/readers/tmr_nope/leave_unconfirmed", json={})
    assert answer.status_code == 404
