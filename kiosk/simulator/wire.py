"""Stripe's wire format: nested form parameters, typed values, error objects, API versions."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

# The version stripe-python 16.x pins, and the date-based changes the simulator honours.
DEFAULT_API_VERSION = "2026-10-28.endive"
ALLOWED_TYPES_SINCE = "2026-07-29"
PAYMENT_METHOD_TYPES_REMOVED = "2026-09-30"
API_ERROR_ON_ACTION_SINCE = "2026-05-27"
SPLIT_FLOW_SINCE = "2025-06-30"

_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_SEGMENT = re.compile(r"\[([^\]]*)\]")


class StripeError(Exception):
    """An error answered the way Stripe answers it: an HTTP status and an `error` object."""

    def __init__(  # noqa: PLR0913 - mirrors the fields of Stripe's error object
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        payment_intent: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.payment_intent = payment_intent
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body Stripe sends: `{"error": {...}}` without the absent fields."""
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = self.param
        if self.decline_code is not None:
            err["decline_code"] = self.decline_code
        if self.payment_intent is not None:
            err["payment_intent"] = self.payment_intent
        return {"error": err}


def missing(param: str) -> StripeError:
    """Stripe's answer to a required parameter that is absent."""
    return StripeError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def unknown(param: str) -> StripeError:
    """Stripe's answer to a parameter it does not know."""
    return StripeError(
        400,
        f"Received unknown parameter: {param}",
        code="parameter_unknown",
        param=param,
    )


def not_found(kind: str, ident: str, param: str = "id") -> StripeError:
    """Stripe's 404 for an object that does not exist."""
    return StripeError(
        404,
        f"No such {kind}: '{ident}'",
        code="resource_missing",
        param=param,
    )


def decode_form(body: str) -> dict[str, Any]:
    """Decode `a[b][c]=x`, `a[]=x` and `a[0]=x` into nested dicts and lists, as Stripe does."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        base, _, rest = raw_key.partition("[")
        segments = [base, *_SEGMENT.findall("[" + rest)] if rest else [base]
        _insert(root, segments, value, raw_key)
    result: dict[str, Any] = _listify(root)
    return result


def _insert(root: dict[str, Any], segments: list[str], value: str, raw_key: str) -> None:
    node: dict[Any, Any] = root
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        key: Any = len(node) if seg == "" else seg
        if last:
            if isinstance(node.get(key), dict):
                raise StripeError(400, f"Invalid hash: {raw_key}", param=raw_key)
            node[key] = value
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise StripeError(400, f"Invalid hash: {raw_key}", param=raw_key)
        node = child


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in items):
        return [v for _, v in sorted(items.items(), key=lambda kv: int(kv[0]))]
    return items


def decode_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON request body; anything but an object is a 400."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise StripeError(400, f"Invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise StripeError(400, "The JSON body must be an object.")
    return data


def check_version(version: str) -> str:
    """Return the version if Stripe would accept it, else the 400 Stripe answers."""
    if not _VERSION.match(version):
        raise StripeError(400, f"Invalid Stripe API version: {version}", param="Stripe-Version")
    return version


def at_least(version: str, date: str) -> bool:
    """True when the API version is `date` or later (compared by its date)."""
    return version[:10] >= date


def to_int(value: Any, param: str) -> int:
    """An integer parameter, from a form string or a JSON number."""
    if isinstance(value, bool):
        raise StripeError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise StripeError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param)


def to_bool(value: Any, param: str) -> bool:
    """A boolean parameter, from `true`/`false` or a JSON boolean."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise StripeError(400, f"Invalid boolean: {value}", param=param)


def to_str(value: Any, param: str) -> str:
    """A string parameter; nested objects are a 400."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise StripeError(400, f"Invalid string: {param}", param=param)


def to_dict(value: Any, param: str) -> dict[str, Any]:
    """A hash parameter."""
    if isinstance(value, dict):
        return value
    raise StripeError(400, f"Invalid object: {param}", param=param)


def to_list(value: Any, param: str) -> list[Any]:
    """An array parameter."""
    if isinstance(value, list):
        return value
    raise StripeError(400, f"Invalid array: {param}", param=param)


def reject_unknown(params: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    """Answer a 400 for the first parameter Stripe would not know."""
    for key in params:
        if key not in allowed:
            raise unknown(f"{prefix}[{key}]" if prefix else key)
