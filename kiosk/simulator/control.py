"""`/_simulator/…`: what Stripe does not have — fault injection, the clock, the ledger.

JSON (or form-encoded) bodies in, JSON out, no authentication (the simulator listens on loopback).
Each endpoint mirrors a `Simulator` method; docs/simulator.md lists them with curl examples.
"""

# Every handler has the same signature; most use only part of it.
# ruff: noqa: ARG001

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kiosk.simulator import cards
from kiosk.simulator.wire import StripeError, decode_form, decode_json, to_bool, to_int, to_str

if TYPE_CHECKING:
    from kiosk.simulator.app import Simulator
    from kiosk.simulator.httpserver import Request

Result = tuple[int, Any]
_Control = Callable[["Simulator", dict[str, Any], tuple[str, ...]], Any]
_ROUTES: list[tuple[str, re.Pattern[str], _Control]] = []


def _route(method: str, path: str) -> Callable[[_Control], _Control]:
    def register(fn: _Control) -> _Control:
        _ROUTES.append((method, re.compile("^/_simulator" + path.replace("{}", "([^/]+)") + "$"), fn))
        return fn

    return register


def handle(sim: Simulator, request: Request) -> Result:
    """Answer one control request (called under the simulator's lock)."""
    try:
        body = _body(request)
        for method, pattern, fn in _ROUTES:
            m = pattern.match(request.path)
            if m and method == request.method:
                return 200, fn(sim, body, m.groups())
        raise StripeError(  # noqa: TRY301 - answered below like every other error
            404, f"No simulator endpoint {request.method} {request.path}; see docs/simulator.md."
        )
    except StripeError as err:
        return err.status, err.body()
    except (ValueError, KeyError, TypeError) as exc:
        return 400, {"error": {"type": "invalid_request_error", "message": f"{type(exc).__name__}: {exc}"}}


def _body(request: Request) -> dict[str, Any]:
    if request.method == "GET":
        return decode_form(request.query)
    if not request.body:
        return {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return decode_form(request.body.decode())
    return decode_json(request.body)


def _float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise StripeError(400, f"{name} must be a number", param=name) from exc


def _opt_float(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    return None if value in (None, "", "null") else _float(value, name)


@_route("GET", "")
@_route("GET", "/health")
def _health(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    return {"ok": True, "now": sim.clock.now(), "readers": list(sim.readers.by_id)}


@_route("GET", "/ledger")
def _ledger(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    return sim.ledger().as_json()


@_route("GET", "/clock")
def _clock(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    return {"now": sim.clock.now(), "offset": sim.clock.offset}


@_route("POST", "/clock/advance")
def _advance(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    now = sim.advance(_float(body.get("seconds"), "seconds"))
    return {"now": now, "offset": sim.clock.offset}


@_route("POST", "/readers")
def _register(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    reader_id = sim.register_reader(
        to_str(body.get("registration_code", "simulated-wpe"), "registration_code"),
        label=body.get("label"),
        location=body.get("location"),
    )
    return {"id": reader_id}


@_route("POST", "/readers/{}/online")
def _online(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.set_reader_online(ids[0], online=to_bool(body.get("online", True), "online"))
    return {"id": ids[0], "online": sim.readers.get(ids[0]).online}


@_route("POST", "/readers/{}/timeout")
def _timeout(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    false_negative = to_bool(body.get("false_negative", False), "false_negative")
    sim.reader_timeout(ids[0], false_negative=false_negative, count=to_int(body.get("count", 1), "count"))
    return {"id": ids[0], "pending_timeouts": len(sim.readers.get(ids[0]).timeouts)}


@_route("POST", "/readers/{}/hardware_fault")
def _hardware(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.reader_hardware_fault(ids[0], faulty=to_bool(body.get("faulty", True), "faulty"))
    return {"id": ids[0], "hardware_fault": sim.readers.get(ids[0]).hardware_fault}


@_route("POST", "/readers/{}/connection_error")
def _connection_error(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    authorised = to_bool(body.get("authorised", True), "authorised")
    sim.reader_connection_error(ids[0], authorised=authorised, count=to_int(body.get("count", 1), "count"))
    return {"id": ids[0], "pending_connection_errors": len(sim.readers.get(ids[0]).connection_errors)}


@_route("POST", "/readers/{}/leave_unconfirmed")
def _leave_unconfirmed(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.reader_leave_unconfirmed(ids[0], count=to_int(body.get("count", 1), "count"))
    return {"id": ids[0], "pending_connection_errors": len(sim.readers.get(ids[0]).connection_errors)}


@_route("POST", "/readers/{}/authorisation_delay")
def _delay(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.set_authorisation_delay(ids[0], _float(body.get("seconds", 0), "seconds"))
    return {"id": ids[0], "seconds": sim.readers.get(ids[0]).auth_delay}


@_route("POST", "/readers/{}/customer_cancel")
def _customer_cancel(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    return {"id": ids[0], "canceled": sim.customer_cancel(ids[0])}


@_route("POST", "/readers/{}/auto_present")
def _auto(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    after = _opt_float(body, "after_s")
    card = to_str(body.get("card", cards.DEFAULT_CARD), "card")
    tip = to_int(body.get("amount_tip", 0), "amount_tip")
    sim.auto_present(ids[0], after, card=card, amount_tip=tip)
    return {"id": ids[0], "after_s": after, "card": card, "amount_tip": tip}


@_route("POST", "/readers/{}/present")
def _present(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.present_card(
        ids[0],
        to_str(body.get("card", cards.DEFAULT_CARD), "card"),
        amount_tip=to_int(body.get("amount_tip", 0), "amount_tip"),
    )
    return {"id": ids[0], "presented": True}


@_route("GET", "/faults")
def _faults(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    return {"rules": [r.as_json() for r in sim.faults.rules]}


@_route("POST", "/faults")
def _add_fault(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    status = body.get("status")
    count = body.get("count")
    rule_id = sim.add_fault(
        method=to_str(body.get("method", "*"), "method"),
        path=to_str(body.get("path", "*"), "path"),
        latency_s=_float(body.get("latency_s", 0), "latency_s"),
        status=None if status in (None, "") else to_int(status, "status"),
        code=body.get("code"),
        message=body.get("message"),
        drop_connection=to_bool(body.get("drop_connection", False), "drop_connection"),
        rate_limited_reason=body.get("rate_limited_reason"),
        should_retry=None if body.get("should_retry") in (None, "") else to_bool(body["should_retry"], "should_retry"),
        count=None if count in (None, "") else to_int(count, "count"),
        probability=_float(body.get("probability", 1.0), "probability"),
    )
    return next(r.as_json() for r in sim.faults.rules if r.id == rule_id)


@_route("DELETE", "/faults")
def _clear_faults(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.clear_faults()
    return {"rules": []}


@_route("DELETE", "/faults/{}")
def _remove_fault(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    return {"deleted": sim.remove_fault(to_int(ids[0], "id"))}


@_route("POST", "/rate_limit")
def _rate(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    per_second = _opt_float(body, "per_second")
    sim.set_rate_limit(per_second)
    return {"per_second": per_second}


@_route("POST", "/search_lag")
def _lag(sim: Simulator, body: dict[str, Any], ids: tuple[str, ...]) -> Any:
    sim.set_search_lag(_float(body.get("seconds", 0), "seconds"))
    return {"seconds": sim.intents.search_lag}
