"""The Stripe endpoints the simulator serves: routes from (method, path) to the state stores."""

# Every handler has the same signature; most use only part of it.
# ruff: noqa: ARG001

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiosk.simulator.intents import Intent
from kiosk.simulator.readers import Reader
from kiosk.simulator.wire import StripeError

if TYPE_CHECKING:
    from kiosk.simulator.app import Simulator

# A handler gets the simulator, the parameters, the API version, `now` and the path's ids, and
# returns the resource to answer with (rendered and expanded by the caller).
Handler = Callable[["Simulator", dict[str, Any], str, float, tuple[str, ...]], Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler


_ROUTES: list[Route] = []
_ID = r"([^/]+)"


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register a handler for `method path` (`{}` stands for an id)."""

    def register(handler: Handler) -> Handler:
        _ROUTES.append(Route(method, re.compile("^" + path.replace("{}", _ID) + "$"), handler))
        return handler

    return register


def match(method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
    """The handler for a request, or Stripe's 404 for an unknown URL."""
    for r in _ROUTES:
        if r.method == method:
            m = r.pattern.match(path)
            if m:
                return r.handler, m.groups()
    raise StripeError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
    )


# -- PaymentIntents ------------------------------------------------------------------------------
@route("POST", "/v1/payment_intents")
def _pi_create(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Intent:
    return sim.intents.create(p, v, now)


@route("GET", "/v1/payment_intents")
def _pi_list(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Any:
    return sim.intents.page(p)


@route("GET", "/v1/payment_intents/search")
def _pi_search(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Any:
    return sim.intents.search(p, now)


@route("GET", "/v1/payment_intents/{}")
def _pi_get(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Intent:
    p.pop("client_secret", None)
    if p:
        raise StripeError(400, f"Received unknown parameter: {next(iter(p))}", code="parameter_unknown")
    return sim.intents.get(ids[0])


@route("POST", "/v1/payment_intents/{}")
def _pi_update(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Intent:
    intent = sim.intents.get(ids[0])
    sim.intents.update(intent, p, now)
    return intent


@route("POST", "/v1/payment_intents/{}/capture")
def _pi_capture(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Intent:
    intent = sim.intents.get(ids[0])
    sim.intents.capture(intent, p, now)
    return intent


@route("POST", "/v1/payment_intents/{}/cancel")
def _pi_cancel(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Intent:
    intent = sim.intents.get(ids[0])
    sim.intents.cancel(intent, p, now)
    sim.readers.intent_canceled(intent, now)
    return intent


# -- Terminal readers ------------------------------------------------------------------------------
@route("POST", "/v1/terminal/readers")
def _reader_create(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Reader:
    return sim.readers.register(p, now)


@route("GET", "/v1/terminal/readers")
def _reader_list(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Any:
    return sim.readers.page(p, now)


@route("GET", "/v1/terminal/readers/{}")
def _reader_get(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Reader:
    if p:
        raise StripeError(400, f"Received unknown parameter: {next(iter(p))}", code="parameter_unknown")
    return sim.readers.get(ids[0])


@route("POST", "/v1/terminal/readers/{}")
def _reader_update(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Reader:
    reader = sim.readers.get(ids[0])
    sim.readers.update(reader, p)
    return reader


def _reader_command(name: str) -> Handler:
    def handler(sim: Simulator, p: dict[str, Any], v: str, now: float, ids: tuple[str, ...]) -> Reader:
        reader = sim.readers.get(ids[0])
        getattr(sim.readers, name)(reader, p, now)
        return reader

    return handler


for _path, _name in (
    ("process_payment_intent", "process"),
    ("collect_payment_method", "collect"),
    ("confirm_payment_intent", "confirm"),
    ("cancel_action", "cancel_action"),
    ("set_reader_display", "set_display"),
):
    route("POST", f"/v1/terminal/readers/{{}}/{_path}")(_reader_command(_name))

route("POST", "/v1/test_helpers/terminal/readers/{}/present_payment_method")(_reader_command("present"))


# -- rendering and expansion -----------------------------------------------------------------------
def render(sim: Simulator, obj: Any, version: str, now: float) -> Any:
    """The JSON-ready form of a resource, a list of them, or a plain dict."""
    if isinstance(obj, Intent):
        return obj.render()
    if isinstance(obj, Reader):
        return sim.readers.render(obj, now, version)
    if isinstance(obj, dict) and obj.get("object") in ("list", "search_result"):
        return {**obj, "data": [render(sim, item, version, now) for item in obj["data"]]}
    return obj


# The reader action's per-type sub-hashes: an action carries only the one of its type.
ACTION_BRANCHES = frozenset(
    {
        "process_payment_intent",
        "process_setup_intent",
        "collect_payment_method",
        "confirm_payment_intent",
        "set_reader_display",
        "refund_payment",
    }
)


def expand(sim: Simulator, body: Any, paths: list[str]) -> Any:
    """Replace ids by objects along each `expand[]` path, as Stripe does."""
    for path in paths:
        parts = path.split(".")
        if isinstance(body, dict) and body.get("object") in ("list", "search_result") and parts[0] == "data":
            for item in body["data"]:
                _expand_one(sim, item, parts[1:], path)
        else:
            _expand_one(sim, body, parts, path)
    return body


def _expand_one(sim: Simulator, node: Any, parts: list[str], path: str) -> None:
    """Expand one path; stop quietly where the object has no such branch or a null on the way.

    A reader action of another type (or no action) has nothing to expand there: the path stops,
    as Stripe stops at a PI without a charge. With `sim.strict_expand` those are refused instead.
    A property that exists nowhere is refused either way (below a null action too: only the action
    types' sub-hashes can be there).
    """
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            raise _cannot_expand(sim, path)
        if part not in node:
            if i > 0 and parts[i - 1] == "action" and part in ACTION_BRANCHES and not sim.strict_expand:
                return
            raise _cannot_expand(sim, path)
        value = node[part]
        if i == len(parts) - 1:
            if isinstance(value, str):
                node[part] = _lookup(sim, value, path)
            return
        if value is None:
            if sim.strict_expand or (part == "action" and parts[i + 1] not in ACTION_BRANCHES):
                raise _cannot_expand(sim, path)
            return
        if isinstance(value, str):
            # An id on the way down is expanded too, as Stripe does (`a.b.c`: b is expanded first).
            node[part] = value = _lookup(sim, value, path)
        node = value


def _cannot_expand(sim: Simulator, path: str) -> StripeError:
    sim.expand_refusals += 1
    return StripeError(400, f"This property cannot be expanded ({path}).", param="expand")


def _lookup(sim: Simulator, ident: str, path: str) -> Any:
    if ident.startswith("pi_") and ident in sim.intents.by_id:
        return sim.intents.by_id[ident].render()
    if ident.startswith("ch_") and ident in sim.intents.charges:
        return dict(sim.intents.charges[ident])
    if ident.startswith("pm_") and ident in sim.intents.methods:
        return dict(sim.intents.methods[ident])
    raise _cannot_expand(sim, path)
