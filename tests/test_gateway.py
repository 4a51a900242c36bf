"""The gateway with the real stripe client over real HTTP on 127.0.0.1.

A tiny scripted server plays Stripe's answers (bodies, statuses, headers, delays, dropped
connections) so every branch of the error translation is met the way production meets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import SecretStr

from kiosk.errors import (
    IdempotencyMisuse,
    StripeAuthError,
    StripeRefused,
    Throttled,
    UnknownOutcome,
    UpstreamError,
)
from kiosk.gateway import (
    SDK_API_VERSION,
    Gateway,
    intent_from_dict,
    reader_from_dict,
    uses_allowed_types,
)
from tests.conftest import SHARED
from tests.simgateway import SimRig, sim_gateway

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

API_KEY = "sk_test_51KioskSecretKeyForTestsOnly0123456789"
READER = "tmr_Kiosk0001"
TIMEOUT_S = 0.5


def pi_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": "requires_payment_method",
        "amount": 250,
        "amount_capturable": 0,
        "amount_received": 0,
        "currency": "usd",
        "capture_method": "manual",
        "metadata": {"kiosk_id": "k1", "order_id": "o1"},
        "latest_charge": None,
        "last_payment_error": None,
        "cancellation_reason": None,
        "created": 1_700_000_000,
    }
    body.update(over)
    return body


def reader_body(action: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": READER,
        "object": "terminal.reader",
        "status": "online",
        "device_type": "simulated_wisepos_e",
        "serial_number": "SN-1",
        "action": action,
    }


def error_body(**error: Any) -> dict[str, Any]:
    return {"error": error}


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = field(default_factory=pi_body)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0
    drop: bool = False  # close the connection without answering
    drip_s: float | None = None  # send the body one byte at a time, this far apart


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


class StubStripe:
    """Answers each request with the next scripted reply; records what it was asked."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.stop = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self.stop.set()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while not self.stop.is_set():
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                form = dict(parse_qsl(parts.query)) | dict(parse_qsl(raw.decode()))
                self.seen.append(Seen(method, parts.path, headers, form))
                await self._answer(writer, self.replies.popleft() if self.replies else Reply())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        if reply.drop:
            writer.close()
            raise ConnectionResetError
        await self._pause(reply.delay_s)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Request-Id": f"req_{len(self.seen)}",
            **reply.headers,
        }
        head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n")
        if reply.drip_s is None:
            writer.write(body)
            await writer.drain()
            return
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await self._pause(reply.drip_s)
            if self.stop.is_set():
                return


@pytest.fixture(name="stub")
async def fixture_stub() -> AsyncIterator[StubStripe]:
    stub = StubStripe()
    await stub.start()
    try:
        yield stub
    finally:
        await stub.close()


def make_gateway(url: str, api_version: str | None = None) -> Gateway:
    return Gateway(
        api_key=SecretStr(API_KEY),
        api_base=url,
        api_version=api_version,
        reader_id=READER,
        request_timeout_s=TIMEOUT_S,
    )


@pytest.fixture(name="gw")
async def fixture_gw(stub: StubStripe) -> AsyncIterator[Gateway]:
    gw = make_gateway(stub.url)
    try:
        yield gw
    finally:
        await gw.close()


async def create(gw: Gateway, key: str = "k1:o1:create:1") -> Any:
    return await gw.create_intent(
        amount=250,
        currency="usd",
        metadata={"kiosk_id": "k1", "order_id": "o1"},
        description="Order o1",
        key=key,
    )


# -- requests as sent ----------------------------------------------------------------------------


async def test_create_sends_a_manual_card_present_intent_with_our_key(stub: StubStripe, gw: Gateway) -> None:
    intent = await create(gw)
    [seen] = stub.seen
    assert (seen.method, seen.path) == ("POST", "/v1/payment_intents")
    assert seen.headers["idempotency-key"] == "k1:o1:create:1"
    assert seen.headers["stripe-version"] == SDK_API_VERSION
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert seen.form == {
        "amount": "250",
        "currency": "usd",
        "capture_method": "manual",
        "metadata[kiosk_id]": "k1",
        "metadata[order_id]": "o1",
        "description": "Order o1",
        "allowed_payment_method_types[0]": "card_present",
    }
    assert intent.id == "pi_1"
    assert intent.status == "requires_payment_method"
    assert intent.metadata == {"kiosk_id": "k1", "order_id": "o1"}
    assert gw.calls == {"payment_intents.create": 1}


async def test_older_api_versions_get_payment_method_types(stub: StubStripe) -> None:
    gw = make_gateway(stub.url, api_version="2025-06-30.basil")
    try:
        await create(gw)
    finally:
        await gw.close()
    [seen] = stub.seen
    assert seen.headers["stripe-version"] == "2025-06-30.basil"
    assert seen.form["payment_method_types[0]"] == "card_present"
    assert "allowed_payment_method_types[0]" not in seen.form


def test_the_method_parameter_follows_the_api_version() -> None:
    assert not uses_allowed_types("2023-08-16")
    assert not uses_allowed_types("2026-06-24.dahlia")
    assert uses_allowed_types("2026-07-29")
    assert uses_allowed_types("2026-09-30.endive")
    assert uses_allowed_types(SDK_API_VERSION)


async def test_canadian_orders_also_accept_interac(stub: StubStripe, gw: Gateway) -> None:
    await gw.create_intent(amount=250, currency="cad", metadata={}, key="k")
    assert stub.seen[0].form["allowed_payment_method_types[0]"] == "interac_present"
    assert stub.seen[0].form["allowed_payment_method_types[1]"] == "card_present"


async def test_retrieve_expands_the_charge_for_card_and_capture_deadline(stub: StubStripe, gw: Gateway) -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_method_details": {
            "type": "card_present",
            "card_present": {
                "brand": "visa",
                "last4": "4242",
                "funding": "credit",
                "capture_before": 1_700_400_000,
                "wallet": {"type": "apple_pay"},
            },
        },
    }
    stub.reply(Reply(body=pi_body(status="requires_capture", amount_capturable=250, latest_charge=charge)))
    intent = await gw.retrieve_intent("pi_1")
    [seen] = stub.seen
    assert (seen.method, seen.path) == ("GET", "/v1/payment_intents/pi_1")
    assert seen.form == {"expand[0]": "latest_charge"}
    assert "idempotency-key" not in seen.headers
    assert intent.card is not None
    assert (intent.card.brand, intent.card.last4, intent.card.funding, intent.card.wallet) == (
        "visa",
        "4242",
        "credit",
        "apple_pay",
    )
    assert intent.capture_before == 1_700_400_000
    assert intent.amount_capturable == 250


async def test_capture_and_cancel_carry_keys_and_parameters(stub: StubStripe, gw: Gateway) -> None:
    stub.reply(
        Reply(body=pi_body(status="succeeded", amount_received=200)),
        Reply(body=pi_body(status="canceled", cancellation_reason="abandoned")),
    )
    captured = await gw.capture_intent("pi_1", amount_to_capture=200, key="k1:o1:capture:1")
    canceled = await gw.cancel_intent("pi_1", reason="abandoned", key="k1:o1:cancel:1")
    capture, cancel = stub.seen
    assert capture.path == "/v1/payment_intents/pi_1/capture"
    assert capture.headers["idempotency-key"] == "k1:o1:capture:1"
    assert capture.form == {"amount_to_capture": "200", "expand[0]": "latest_charge"}
    assert cancel.path == "/v1/payment_intents/pi_1/cancel"
    assert cancel.headers["idempotency-key"] == "k1:o1:cancel:1"
    assert cancel.form == {"cancellation_reason": "abandoned", "expand[0]": "latest_charge"}
    assert (captured.status, captured.amount_received) == ("succeeded", 200)
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")


async def test_reader_commands_name_the_reader_and_the_intent(stub: StubStripe, gw: Gateway) -> None:
    in_progress = {
        "type": "process_payment_intent",
        "status": "in_progress",
        "failure_code": None,
        "failure_message": None,
        "process_payment_intent": {"payment_intent": "pi_1"},
    }
    stub.reply(Reply(body=reader_body(in_progress)))
    reader = await gw.process_intent("pi_1", key="k1:o1:process:1")
    [seen] = stub.seen
    assert seen.path == f"/v1/terminal/readers/{READER}/process_payment_intent"
    assert seen.headers["idempotency-key"] == "k1:o1:process:1"
    assert seen.form == {
        "payment_intent": "pi_1",
        "process_config[enable_customer_cancellation]": "true",
        "process_config[skip_tipping]": "true",
    }
    assert reader.action is not None
    assert (reader.action.type, reader.action.status, reader.action.payment_intent) == (
        "process_payment_intent",
        "in_progress",
        "pi_1",
    )


async def test_split_flow_reports_the_collected_card(stub: StubStripe, gw: Gateway) -> None:
    collected = {
        "type": "collect_payment_method",
        "status": "succeeded",
        "collect_payment_method": {
            "payment_intent": "pi_1",
            "payment_method": {
                "id": "pm_1",
                "type": "card_present",
                "card_present": {"brand": "mastercard", "last4": "4444", "funding": "debit"},
            },
        },
    }
    stub.reply(Reply(body=reader_body(collected)), Reply(body=reader_body(None)))
    reader = await gw.collect_payment_method("pi_1", key="c")
    await gw.confirm_intent("pi_1", key="f")
    collect, confirm = stub.seen
    assert collect.path.endswith("/collect_payment_method")
    assert collect.form["collect_config[skip_tipping]"] == "true"
    assert confirm.path.endswith("/confirm_payment_intent")
    assert confirm.form == {"payment_intent": "pi_1"}
    assert confirm.headers["idempotency-key"] == "f"
    assert reader.action is not None
    assert reader.action.card is not None
    assert (reader.action.card.brand, reader.action.card.last4, reader.action.card.funding) == (
        "mastercard",
        "4444",
        "debit",
    )


async def test_cancel_action_display_and_retrieve(stub: StubStripe, gw: Gateway) -> None:
    failed = {
        "type": "process_payment_intent",
        "status": "failed",
        "failure_code": "card_declined",
        "failure_message": "Your card was declined.",
        "process_payment_intent": {"payment_intent": "pi_1"},
        "api_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "no"},
    }
    stub.reply(Reply(body=reader_body(None)), Reply(body=reader_body(None)), Reply(body=reader_body(failed)))
    await gw.cancel_action(key="k1:o1:cancel_action:1")
    await gw.set_display("usd", [("Water", 150, 1), ("Chips", 100, 1)], 250, key="d")
    reader = await gw.retrieve_reader()
    cancel, display, retrieve = stub.seen
    assert cancel.path == f"/v1/terminal/readers/{READER}/cancel_action"
    assert cancel.headers["idempotency-key"] == "k1:o1:cancel_action:1"
    assert display.form == {
        "type": "cart",
        "cart[currency]": "usd",
        "cart[line_items][0][description]": "Water",
        "cart[line_items][0][amount]": "150",
        "cart[line_items][0][quantity]": "1",
        "cart[line_items][1][description]": "Chips",
        "cart[line_items][1][amount]": "100",
        "cart[line_items][1][quantity]": "1",
        "cart[total]": "250",
    }
    assert (retrieve.method, retrieve.path) == ("GET", f"/v1/terminal/readers/{READER}")
    assert reader.action is not None
    assert reader.action.failure_code == "card_declined"
    assert reader.action.error is not None
    assert reader.action.error.decline_code == "insufficient_funds"
    assert gw.calls == {"readers.cancel_action": 1, "readers.set_reader_display": 1, "readers.retrieve": 1}


async def test_search_follows_pages(stub: StubStripe, gw: Gateway) -> None:
    def page(ids: list[str], next_page: str | None) -> dict[str, Any]:
        return {
            "object": "search_result",
            "url": "/v1/payment_intents/search",
            "data": [pi_body(id=i, status="requires_capture") for i in ids],
            "has_more": next_page is not None,
            "next_page": next_page,
        }

    stub.reply(Reply(body=page(["pi_a", "pi_b"], "page_2")), Reply(body=page(["pi_c"], None)))
    found = await gw.search_intents("k1", status="requires_capture")
    assert [i.id for i in found] == ["pi_a", "pi_b", "pi_c"]
    first, second = stub.seen
    assert first.path == "/v1/payment_intents/search"
    assert first.form["query"] == "metadata['kiosk_id']:'k1' AND status:'requires_capture'"
    assert "page" not in first.form
    assert second.form["page"] == "page_2"
    with pytest.raises(ValueError, match="search query"):
        await gw.search_intents("k1' OR status:'canceled")


# -- errors as met -------------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        Reply(
            500,
            error_body(type="api_error", message="Something went wrong"),
            {"Stripe-Should-Retry": "true", "Idempotent-Replayed": "true"},
        ),
        UnknownOutcome,
        {"code": None, "http_status": 500, "should_retry": True, "replayed": True},
        id="500-replayed",
    ),
    pytest.param(
        Reply(502, b"<html>Bad gateway</html>", {"Content-Type": "text/html"}),
        UnknownOutcome,
        {"http_status": 502},
        id="502-html",
    ),
    pytest.param(
        Reply(200, b"{not json"),
        UnknownOutcome,
        {"http_status": 200},
        id="200-unreadable",
    ),
    pytest.param(
        Reply(
            429, error_body(type="invalid_request_error", code="rate_limit", message="Too many"), {"Retry-After": "2"}
        ),
        Throttled,
        {"code": "rate_limit", "http_status": 429, "retry_after": 2.0},
        id="429-rate-limit",
    ),
    pytest.param(
        Reply(429, error_body(type="invalid_request_error", code="lock_timeout", message="locked")),
        Throttled,
        {"code": "lock_timeout", "retry_after": None},
        id="429-lock-timeout",
    ),
    pytest.param(
        Reply(409, error_body(type="idempotency_error", code="idempotency_key_in_use", message="in use")),
        Throttled,
        {"code": "idempotency_key_in_use", "http_status": 409},
        id="409-key-in-use",
    ),
    pytest.param(
        Reply(
            400,
            error_body(
                type="idempotency_error",
                message="Keys for idempotent requests can only be used with the same parameters",
            ),
        ),
        IdempotencyMisuse,
        {"http_status": 400},
        id="400-idempotency-error",
    ),
    pytest.param(
        Reply(400, error_body(type="invalid_request_error", code="terminal_reader_busy", message="busy")),
        StripeRefused,
        {"code": "terminal_reader_busy", "http_status": 400},
        id="400-reader-busy",
    ),
    pytest.param(
        Reply(
            400,
            error_body(type="invalid_request_error", code="intent_invalid_state", message="state"),
            {"Stripe-Should-Retry": "false"},
        ),
        StripeRefused,
        {"code": "intent_invalid_state", "should_retry": False},
        id="400-invalid-state",
    ),
    pytest.param(
        Reply(
            402,
            error_body(type="card_error", code="card_declined", decline_code="insufficient_funds", message="declined"),
        ),
        StripeRefused,
        {"code": "card_declined", "decline_code": "insufficient_funds", "http_status": 402},
        id="402-declined",
    ),
    pytest.param(
        Reply(
            404,
            error_body(
                type="invalid_request_error",
                code="resource_missing",
                param="intent",
                message="No such payment_intent: 'pi_x'",
            ),
        ),
        StripeRefused,
        {"code": "resource_missing", "param": "intent", "http_status": 404},
        id="404-missing",
    ),
    pytest.param(
        Reply(401, error_body(type="invalid_request_error", message=f"Invalid API Key provided: {API_KEY}")),
        StripeAuthError,
        {"http_status": 401},
        id="401",
    ),
    pytest.param(
        Reply(
            403,
            error_body(
                type="invalid_request_error",
                message="The provided key 'rk_test_abc123XYZ' does not have the required permissions",
            ),
        ),
        StripeAuthError,
        {"http_status": 403},
        id="403",
    ),
]


@pytest.mark.parametrize(("reply", "kind", "facts"), ERROR_CASES)
async def test_errors_are_grouped_by_what_the_caller_does(
    stub: StubStripe, gw: Gateway, reply: Reply, kind: type[UpstreamError], facts: dict[str, Any]
) -> None:
    stub.reply(reply)
    with pytest.raises(kind) as caught:
        await create(gw)
    error = caught.value
    assert type(error) is kind
    for name, value in facts.items():
        assert getattr(error, name) == value, name
    if isinstance(reply.body, dict):  # stripe reads headers only from answers it could parse
        assert error.request_id == "req_1"
    assert "sk_test_" not in str(error)
    assert "rk_test_" not in str(error)
    assert error.__cause__ is not None  # translated at the edge, with the original kept
    assert len(stub.seen) == 1  # one call is one attempt: no retries inside the gateway


async def test_no_answer_in_time_is_an_unknown_outcome(stub: StubStripe, gw: Gateway) -> None:
    stub.reply(Reply(delay_s=30))
    with pytest.raises(UnknownOutcome) as caught:
        await create(gw)
    assert caught.value.code == "timeout"
    assert len(stub.seen) == 1


async def test_a_trickling_answer_is_cut_off_by_the_overall_deadline(stub: StubStripe, gw: Gateway) -> None:
    # Each byte arrives well within httpx's read timeout; only the asyncio guard ends the call.
    stub.reply(Reply(drip_s=TIMEOUT_S / 5))
    with pytest.raises(UnknownOutcome) as caught:
        await create(gw)
    assert caught.value.code == "timeout"


async def test_a_dropped_connection_is_an_unknown_outcome(stub: StubStripe, gw: Gateway) -> None:
    stub.reply(Reply(drop=True))
    with pytest.raises(UnknownOutcome) as caught:
        await gw.capture_intent("pi_1", key="k")
    assert caught.value.code == "connection_error"
    assert len(stub.seen) == 1


async def test_nobody_listening_is_an_unknown_outcome(stub: StubStripe) -> None:
    url = stub.url
    await stub.close()
    gw = make_gateway(url)
    try:
        with pytest.raises(UnknownOutcome) as caught:
            await gw.retrieve_reader()
    finally:
        await gw.close()
    assert caught.value.code == "connection_error"
    assert API_KEY not in str(caught.value)


async def test_the_gateway_works_again_after_a_failure(stub: StubStripe, gw: Gateway) -> None:
    stub.reply(Reply(500, error_body(type="api_error", message="x")), Reply(body=pi_body(status="requires_capture")))
    with pytest.raises(UnknownOutcome):
        await create(gw)
    intent = await gw.retrieve_intent("pi_1")
    assert intent.status == "requires_capture"
    assert gw.calls == {"payment_intents.create": 1, "payment_intents.retrieve": 1}


# -- Stripe's own example objects ----------------------------------------------------------------


def test_stripe_fixture_objects_translate() -> None:
    path = SHARED / "stripe-reference" / "fixtures3.json"
    if not path.exists():
        pytest.skip(f"Stripe's fixtures are not at {path} (shared reference data absent)")
    resources = json.loads(path.read_text())["resources"]
    intent = intent_from_dict(resources["payment_intent"])
    assert intent.id.startswith("pi_")
    assert intent.status == "requires_payment_method"
    assert intent.card is None
    assert intent.last_error is not None
    reader = reader_from_dict(resources["terminal.reader"])
    assert reader.id.startswith("tmr_")
    assert reader.action is not None
    assert (reader.action.type, reader.action.status) == ("refund_payment", "failed")


async def test_present_card_is_the_test_helper(stub: StubStripe, gw: Gateway) -> None:
    stub.reply(Reply(body=reader_body(None)))
    await gw.present_card("4000000000000002", amount_tip=50)
    [seen] = stub.seen
    assert seen.path == f"/v1/test_helpers/terminal/readers/{READER}/present_payment_method"
    assert seen.form == {"type": "card_present", "card_present[number]": "4000000000000002", "amount_tip": "50"}


# -- against the simulator: the whole flow, the real client, real HTTP ---------------------------


@pytest.fixture(name="rig")
async def fixture_rig() -> AsyncIterator[SimRig]:
    async with sim_gateway(api_key=API_KEY) as rig:
        yield rig


async def test_sim_process_present_capture(rig: SimRig) -> None:
    gw = rig.gw
    intent = await create(gw)
    assert intent.status == "requires_payment_method"
    reader = await gw.process_intent(intent.id, key="k1:o1:process:1")
    assert reader.action is not None
    assert (reader.action.type, reader.action.status, reader.action.payment_intent) == (
        "process_payment_intent",
        "in_progress",
        intent.id,
    )
    await gw.present_card()
    reader = await gw.retrieve_reader()
    assert reader.action is not None
    assert reader.action.status == "succeeded"
    authorised = await gw.retrieve_intent(intent.id)
    assert (authorised.status, authorised.amount_capturable) == ("requires_capture", 250)
    assert authorised.card is not None
    assert (authorised.card.brand, authorised.card.last4) == ("visa", "4242")
    assert authorised.capture_before is not None
    assert authorised.capture_before > rig.sim.now()
    captured = await gw.capture_intent(intent.id, amount_to_capture=200, key="k1:o1:capture:1")
    assert (captured.status, captured.amount_received) == ("succeeded", 200)
    [record] = rig.sim.ledger().intents
    assert [c.amount for c in record.captures] == [200]
    assert record.metadata == {"kiosk_id": "k1", "order_id": "o1"}


async def test_sim_same_key_replays_the_same_intent(rig: SimRig) -> None:
    first = await create(rig.gw, key="k1:o1:create:1")
    again = await create(rig.gw, key="k1:o1:create:1")
    other = await create(rig.gw, key="k1:o1:create:2")
    assert again.id == first.id
    assert other.id != first.id
    assert len(rig.sim.ledger().intents) == 2


async def test_sim_refusals_carry_stripes_code(rig: SimRig) -> None:
    intent = await create(rig.gw)
    with pytest.raises(StripeRefused) as first:
        await rig.gw.capture_intent(intent.id, key="k1:o1:capture:1")
    assert (first.value.code, first.value.http_status) == ("payment_intent_unexpected_state", 400)
    with pytest.raises(StripeRefused) as missing:
        await rig.gw.retrieve_intent("pi_doesnotexist")
    assert (missing.value.code, missing.value.http_status) == ("resource_missing", 404)


async def test_sim_decline_then_cancel(rig: SimRig) -> None:
    gw = rig.gw
    intent = await create(gw)
    await gw.process_intent(intent.id, key="p1")
    await gw.present_card("4000000000000002")
    reader = await gw.retrieve_reader()
    assert reader.action is not None
    assert (reader.action.status, reader.action.failure_code) == ("failed", "card_declined")
    declined = await gw.retrieve_intent(intent.id)
    assert declined.status == "requires_payment_method"
    assert declined.last_error is not None
    assert declined.last_error.code == "card_declined"
    # Re-present on the same PI, then give up: cancel the reader's action and the PI.
    await gw.process_intent(intent.id, key="p2")
    cleared = await gw.cancel_action(key="ca1")
    assert cleared.action is None
    canceled = await gw.cancel_intent(intent.id, reason="abandoned", key="c1")
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")


async def test_sim_split_flow(rig: SimRig) -> None:
    gw = rig.gw
    intent = await create(gw)
    await gw.collect_payment_method(intent.id, key="col")
    await gw.present_card("5555555555554444")
    reader = await gw.retrieve_reader()
    assert reader.action is not None
    assert reader.action.type == "collect_payment_method"
    assert reader.action.status == "succeeded"
    assert reader.action.card is not None
    assert reader.action.card.brand == "mastercard"
    await gw.confirm_intent(intent.id, key="conf")
    authorised = await gw.retrieve_intent(intent.id)
    assert authorised.status == "requires_capture"


async def test_sim_search_finds_this_kiosks_authorisations(rig: SimRig) -> None:
    gw = rig.gw
    mine = await create(gw, key="a")
    await gw.create_intent(amount=300, currency="usd", metadata={"kiosk_id": "k2", "order_id": "x"}, key="b")
    await gw.process_intent(mine.id, key="p")
    await gw.present_card()
    found = await gw.search_intents("k1", status="requires_capture")
    assert [i.id for i in found] == [mine.id]
    assert await gw.search_intents("k1", status="canceled") == []


async def test_sim_reader_offline_and_busy_are_refusals(rig: SimRig) -> None:
    gw = rig.gw
    first = await create(gw, key="a")
    second = await create(gw, key="b")
    await gw.process_intent(first.id, key="p1")
    with pytest.raises(StripeRefused) as busy:
        await gw.process_intent(second.id, key="p2")
    assert busy.value.code == "terminal_reader_busy"
    await gw.cancel_action(key="ca")
    rig.sim.set_reader_online(rig.reader, online=False)
    rig.sim.advance(121)
    with pytest.raises(StripeRefused) as offline:
        await gw.process_intent(second.id, key="p3")
    assert offline.value.code == "terminal_reader_offline"


async def test_sim_injected_faults_map_like_stripes(rig: SimRig) -> None:
    gw = rig.gw
    rig.sim.add_fault(path="/v1/payment_intents", status=500, count=1)
    with pytest.raises(UnknownOutcome) as failed:
        await create(gw, key="a")
    assert failed.value.http_status == 500
    before = len(rig.sim.ledger().intents)
    rig.sim.add_fault(path="/v1/payment_intents", drop_connection=True, count=1)
    with pytest.raises(UnknownOutcome) as dropped:
        await create(gw, key="b")
    assert dropped.value.code == "connection_error"
    # Whether or not the simulator applied the dropped request, sending it again with the same
    # key leaves exactly one new PaymentIntent.
    again = await create(gw, key="b")
    intents = rig.sim.ledger().intents
    assert len(intents) == before + 1
    assert intents[-1].id == again.id


async def test_sim_wrong_key_is_an_auth_error(rig: SimRig) -> None:
    bad = Gateway(
        api_key=SecretStr("sk_live_notatestkey1234"),
        api_base=rig.url,
        api_version=None,
        reader_id=rig.reader,
        request_timeout_s=5,
    )
    try:
        with pytest.raises(StripeAuthError) as caught:
            await bad.retrieve_reader()
    finally:
        await bad.close()
    assert caught.value.http_status == 401
    assert "sk_live_notatestkey1234" not in str(caught.value)


@pytest.mark.parametrize("version", ["2025-06-30.basil", "2026-07-29", SDK_API_VERSION])
async def test_sim_accepts_the_method_parameter_each_version_wants(rig: SimRig, version: str) -> None:
    gw = Gateway(
        api_key=SecretStr(API_KEY), api_base=rig.url, api_version=version, reader_id=rig.reader, request_timeout_s=5
    )
    try:
        intent = await create(gw)
        await gw.process_intent(intent.id, key="p")
    finally:
        await gw.close()
    assert intent.status == "requires_payment_method"
