"""A validator for the part of OpenAPI 3 that Stripe's schemas use (no new dependency)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED

REFERENCE = SHARED / "stripe-reference"
OPENAPI = REFERENCE / "openapi-2023-08-16-terminal-subset.json"
FIXTURES = REFERENCE / "fixtures3.json"

# What Stripe added after 2023-08-16 (stripe-notes, stripe-reference/README): allowed although the
# schema subset does not know it. Each entry is "schema.property" or "schema.property=value".
LATER_ADDITIONS = {
    "payment_intent.customer_account",
    "payment_intent.excluded_payment_method_types",
    "payment_intent.managed_payments",
    "payment_intent.payment_method_configuration_details",
    "payment_intent.source",
    "terminal.reader.last_seen_at",
    "terminal.reader.device_type=simulated_stripe_s700",
    "terminal_reader_reader_resource_reader_action.api_error",
    "terminal_reader_reader_resource_reader_action.collect_payment_method",
    "terminal_reader_reader_resource_reader_action.confirm_payment_intent",
    "payment_method_card_present.description",
    "payment_method_card_present.brand_product",
    "payment_method_card_present.wallet",
}


def require_reference() -> None:
    if not OPENAPI.exists() or not FIXTURES.exists():
        pytest.skip(f"Stripe reference data not found at {REFERENCE} (shared checkout absent)")


@cache
def _openapi() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(OPENAPI).read_text())
    return data


@cache
def fixture_keys(resource: str) -> frozenset[str]:
    data = json.loads(Path(FIXTURES).read_text())
    return frozenset(data["resources"][resource])


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    extras: set[str] = field(default_factory=set)


def validate(value: Any, schema_name: str) -> Report:
    report = Report()
    _check(value, {"$ref": f"#/components/schemas/{schema_name}"}, schema_name, "$", report)
    return report


def _resolve(schema: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = _openapi()["components"]["schemas"][name]
    return schema, name


def _check(value: Any, schema: dict[str, Any], name: str, path: str, report: Report) -> None:  # noqa: C901, PLR0912
    schema, name = _resolve(schema, name)
    if value is None:
        if not schema.get("nullable"):
            report.problems.append(f"{path}: null but not nullable ({name})")
        return
    if "anyOf" in schema:
        best: Report | None = None
        for option in schema["anyOf"]:
            attempt = Report()
            _check(value, option, name, path, attempt)
            if not attempt.problems:
                best = attempt
                break
        if best is None:
            report.problems.append(f"{path}: matches no anyOf alternative ({name})")
        else:
            report.extras |= best.extras
        return
    kind = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if kind is not None and not checks[kind](value):
        report.problems.append(f"{path}: expected {kind}, got {type(value).__name__} ({name})")
        return
    if "enum" in schema and value not in schema["enum"] and not schema.get("x-stripeBypassValidation"):
        report.extras.add(f"{name}={value}")
    if kind == "string" and "maxLength" in schema and len(value) > schema["maxLength"]:
        report.problems.append(f"{path}: longer than {schema['maxLength']}")
    if kind == "array":
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), name, f"{path}[{i}]", report)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                report.problems.append(f"{path}: required {key!r} missing ({name})")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{name}.{key}" if "$ref" not in props[key] else name, f"{path}.{key}", report)
            elif isinstance(schema.get("additionalProperties"), dict):
                _check(item, schema["additionalProperties"], name, f"{path}.{key}", report)
            elif not props and schema.get("additionalProperties") is not False:
                continue
            else:
                report.extras.add(f"{name}.{key}")


def assert_conforms(obj: dict[str, Any], schema_name: str, fixture: str) -> None:
    report = validate(obj, schema_name)
    assert report.problems == []
    assert report.extras <= LATER_ADDITIONS, f"fields unknown to the schema: {report.extras - LATER_ADDITIONS}"
    assert fixture_keys(fixture) <= set(obj), f"missing top-level keys: {fixture_keys(fixture) - set(obj)}"
