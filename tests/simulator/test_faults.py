"""Idempotency, fault injection, rate limits, the clock, the ledger and the control API."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
import stripe

from kiosk.simulator import Simulator
from tests.simulator.conftest import KEY, Served

FORM = {
    "amount": "1000",
    "currency": "usd",
    "capture_method": "manual",
    "allowed_payment_method_types[0]": "card_present",
}


async def test_idempotent_replay(served: Served) -> None:
    first = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "k1"})
    again = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "k1"})
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert first.headers["Request-Id"] != again.headers["Request-Id"]
    assert len(served.sim.ledger().intents) == 1


async def test_keys_are_per_api_key(served: Served) -> None:
    a = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "k"})
    async with httpx.AsyncClient(base_url=served.url, auth=("sk_test_other", "")) as other:
        b = await other.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "k"})
    assert a.json()["id"] != b.json()["id"]


async def test_same_key_other_params(served: Served) -> None:
    await served.pi()
    await served.client.v1.payment_intents.create_async(
        params={"amount": 500, "currency": "usd"}, options={"idempotency_key": "x"}
    )
    with pytest.raises(stripe.IdempotencyError):
        await served.client.v1.payment_intents.create_async(
            params={"amount": 600, "currency": "usd"}, options={"idempotency_key": "x"}
        )


async def test_validation_failures_are_not_stored(served: Served) -> None:
    bad = await served.http.post(
        "/v1/payment_intents", data={"amount": "10", "currency": "usd"}, headers={"Idempotency-Key": "v"}
    )
    assert bad.status_code == 400
    good = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "v"})
    assert good.status_code == 200


async def test_key_in_use_while_first_runs(served: Served) -> None:
    served.sim.add_fault(method="POST", path="/v1/payment_intents", latency_s=0.3, count=1)
    first = asyncio.create_task(served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "slow"}))
    await asyncio.sleep(0.1)
    second = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "slow"})
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "idempotency_key_in_use"
    assert (await first).status_code == 200


async def test_500_is_stored_and_replayed(served: Served) -> None:
    served.sim.add_fault(method="POST", path="/v1/payment_intents", status=500, count=1)
    with pytest.raises(stripe.APIError):
        await served.client.v1.payment_intents.create_async(
            params={"amount": 500, "currency": "usd"}, options={"idempotency_key": "five"}
        )
    replay = await served.http.post(
        "/v1/payment_intents", data={"amount": "500", "currency": "usd"}, headers={"Idempotency-Key": "five"}
    )
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (500, "true")
    assert served.sim.ledger().intents == ()


async def test_keys_expire_after_ttl(served: Served) -> None:
    a = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "ttl"})
    served.sim.advance(24 * 3600 + 1)
    b = await served.http.post("/v1/payment_intents", data=FORM, headers={"Idempotency-Key": "ttl"})
    assert a.json()["id"] != b.json()["id"]


async def test_drop_connection_after_applying(served: Served) -> None:
    _, pi = await served.paid()
    served.sim.add_fault(method="POST", path="/v1/payment_intents/*/capture", drop_connection=True, count=1)
    with pytest.raises(stripe.APIConnectionError):
        await served.client.v1.payment_intents.capture_async(pi.id, options={"idempotency_key": "cap"})
    assert (await served.client.v1.payment_intents.retrieve_async(pi.id)).status == "succeeded"
    again = await served.client.v1.payment_intents.capture_async(pi.id, options={"idempotency_key": "cap"})
    assert again.status == "succeeded"
    assert len(served.sim.ledger().intents[-1].captures) == 1


async def test_injected_error_code_does_not_apply(served: Served) -> None:
    served.sim.add_fault(path="/v1/payment_intents", method="POST", status=400, code="lock_timeout", count=1)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await served.pi()
    assert info.value.code == "lock_timeout"
    assert served.sim.ledger().intents == ()
    await served.pi()


async def test_rate_limited_reason(served: Served) -> None:
    served.sim.add_fault(path="/v1/payment_intents*", rate_limited_reason="endpoint-rate", count=1)
    response = await served.http.get("/v1/payment_intents")
    assert response.status_code == 429
    assert response.headers["Stripe-Rate-Limited-Reason"] == "endpoint-rate"
    assert response.json()["error"]["code"] == "rate_limit"
    assert (await served.http.get("/v1/payment_intents")).status_code == 200


async def test_account_rate_limit(served: Served) -> None:
    served.sim.set_rate_limit(25)
    statuses = [(await served.http.get("/v1/payment_intents")).status_code for _ in range(30)]
    assert statuses.count(429) >= 1
    served.sim.set_rate_limit(None)
    assert (await served.http.get("/v1/payment_intents")).status_code == 200


def fault_pattern(seed: int) -> list[bool]:
    sim = Simulator(seed=seed)
    sim.add_fault(path="/v1/*", status=500, probability=0.5)
    return [sim.faults.pick("GET", "/v1/x") is not None for _ in range(40)]


def test_probabilistic_faults_repeat_with_the_seed() -> None:
    assert fault_pattern(3) == fault_pattern(3)
    assert fault_pattern(3) != fault_pattern(4)
    assert 5 < sum(fault_pattern(3)) < 35


async def test_ledger_shows_one_capture_per_order(served: Served) -> None:
    reader = await served.reader()
    pi = await served.pi(1200, metadata={"order_id": "o-9"})
    await served.process(reader, pi.id)
    await served.present(reader, "4000000000000002")
    await served.process(reader, pi.id)
    await served.present(reader)
    await served.client.v1.payment_intents.capture_async(pi.id)
    ledger = served.sim.ledger()
    (record,) = ledger.for_order("o-9")
    assert [c.amount for c in record.captures] == [1200]
    assert ledger.captured_total("o-9") == 1200
    assert ledger.uncaptured() == ()
    assert [a.status for a in ledger.reader_actions] == ["failed", "succeeded"]
    assert ledger.reader_actions[0].failure_code == "card_declined"


async def test_control_api_over_http(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url + "/_simulator") as control:
        reader = (await control.post("/readers", json={"registration_code": "simulated-s700"})).json()["id"]
        assert (await control.post(f"/readers/{reader}/auto_present", json={"after_s": 1})).status_code == 200
        rule = (await control.post("/faults", json={"path": "/v1/nothing", "status": 503})).json()
        assert rule["status"] == 503
        assert (await control.delete(f"/faults/{rule['id']}")).json() == {"deleted": True}
        pi = await served.pi(900, metadata={"order_id": "curl"})
        await served.process(reader, pi.id)
        before = (await control.get("/clock")).json()["offset"]
        assert (await control.post("/clock/advance", json={"seconds": 2})).json()["offset"] == before + 2
        ledger = (await control.get("/ledger")).json()
        assert ledger["intents"][0]["status"] == "requires_capture"
        assert (await control.post(f"/readers/{reader}/online", data={"online": "false"})).json()["online"] is False
        assert (await control.get("/nothing")).status_code == 404


def test_start_in_thread() -> None:
    sim = Simulator()
    handle = sim.start_in_thread()
    try:
        reader = sim.register_reader()
        response = httpx.get(f"{handle.url}/v1/terminal/readers/{reader}", auth=(KEY, ""))
        assert response.json()["id"] == reader
    finally:
        handle.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{handle.url}/v1/terminal/readers", auth=(KEY, ""))


@pytest.mark.slow
def test_cli_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "simulator", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = httpx.post(f"{url}/v1/terminal/readers", data={"registration_code": "simulated-wpe"}, auth=(KEY, ""))
        assert response.json()["object"] == "terminal.reader"
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
