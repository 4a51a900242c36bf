"""Fault rules that send `Stripe-Should-Retry`, in process and through the control API."""

from __future__ import annotations

import httpx
import pytest

from kiosk.simulator import Simulator
from tests.simulator.conftest import Served

FORM = {
    "amount": "1000",
    "currency": "usd",
    "capture_method": "manual",
    "allowed_payment_method_types[0]": "card_present",
}


async def test_a_stored_500_says_should_retry_false_on_the_replay_too(served: Served) -> None:
    served.sim.add_fault(method="POST", path="/v1/payment_intents", status=500, should_retry=False, count=1)
    first = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "k"})
    again = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "k"})
    assert (first.status_code, first.headers["Stripe-Should-Retry"]) == (500, "false")
    assert (again.status_code, again.headers["Stripe-Should-Retry"]) == (500, "false")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert served.sim.ledger().intents == ()


@pytest.mark.parametrize(("status", "code"), [(409, "idempotency_key_in_use"), (429, "lock_timeout")])
async def test_a_conflict_that_should_be_retried_is_not_stored(served: Served, status: int, code: str) -> None:
    served.sim.add_fault(
        method="POST", path="/v1/payment_intents", status=status, code=code, should_retry=True, count=1
    )
    first = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "c"})
    assert (first.status_code, first.headers["Stripe-Should-Retry"]) == (status, "true")
    again = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "c"})
    assert again.status_code == 200
    assert "Stripe-Should-Retry" not in again.headers
    assert len(served.sim.ledger().intents) == 1


async def test_no_header_unless_the_rule_says_so(served: Served) -> None:
    served.sim.add_fault(method="POST", path="/v1/payment_intents", status=503, count=1)
    response = await served.http.post("/v1/payment_intents", data=FORM)
    assert response.status_code == 503
    assert "Stripe-Should-Retry" not in response.headers


async def test_a_rate_limit_can_say_false(served: Served) -> None:
    served.sim.add_fault(path="/v1/payment_intents", rate_limited_reason="endpoint-rate", should_retry=False, count=2)
    response = await served.http.get("/v1/payment_intents")
    assert (response.status_code, response.headers["Stripe-Should-Retry"]) == (429, "false")
    served.sim.clear_faults()
    served.sim.add_fault(path="/v1/payment_intents", rate_limited_reason="endpoint-rate", count=1)
    response = await served.http.get("/v1/payment_intents")
    assert response.headers["Stripe-Should-Retry"] == "true"  # a rate limit says true unless told


def test_should_retry_needs_an_error_answer() -> None:
    with pytest.raises(ValueError, match="should_retry"):
        Simulator().add_fault(path="/v1/*", latency_s=1.0, should_retry=True)


async def test_control_api_takes_should_retry(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url + "/_simulator") as control:
        rule = await control.post(
            "/faults", json={"method": "POST", "path": "/v1/payment_intents", "status": 500, "should_retry": False}
        )
        assert rule.json()["should_retry"] is False
        bad = await control.post("/faults", json={"path": "/v1/*", "should_retry": True})
        assert bad.status_code == 400
    response = await served.http.post("/v1/payment_intents", data=FORM)
    assert response.headers["Stripe-Should-Retry"] == "false"
