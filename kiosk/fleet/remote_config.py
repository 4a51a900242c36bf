"""Remote configuration (`config/desired`): the subset of kiosk.toml an operator may set over MQTT.

The desired `config` has kiosk.toml's shape, limited to these keys:

    currency, max_amount,
    payments.card_timeout_s, payments.max_card_attempts, payments.vend_result_timeout_s,
    payments.request_timeout_s, fleet.health_period_s, maintenance.enabled, maintenance.message

It is validated by kiosk.settings' own models (the local settings with the desired values laid
over them), so a value refused in the file is refused over MQTT with the same sentence. A key
left out of `config` falls back to the local setting; `maintenance` left out is not touched
(the `set_maintenance` command shares it). Secrets and connection settings are never settable.

`payments.request_timeout_s` is the Stripe client's timeout, fixed when the client is built: a
change is stored and reported `pending_restart` until the next start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kiosk import logs
from kiosk.fleet.store import FleetStore
from kiosk.settings import Settings

if TYPE_CHECKING:
    from kiosk.journal import Journal

log = logs.get("fleet")

LIVE_KEYS = frozenset(
    {
        "currency",
        "max_amount",
        "payments.card_timeout_s",
        "payments.max_card_attempts",
        "payments.vend_result_timeout_s",
        "fleet.health_period_s",
    }
)
RESTART_KEYS = frozenset({"payments.request_timeout_s"})
SETTABLE = LIVE_KEYS | RESTART_KEYS
MAINTENANCE_META = "fleet.maintenance"
MAINTENANCE_MESSAGE_MAX = 200


@dataclass(frozen=True, slots=True)
class Maintenance:
    """Whether new orders are refused with `maintenance`, and what they are told."""

    enabled: bool
    message: str = ""

    def reason(self) -> str | None:
        """What Availability.maintenance takes: the message, or None when not in maintenance."""
        return (self.message or "the kiosk is under maintenance") if self.enabled else None


@dataclass(frozen=True, slots=True)
class Desired:
    """A validated desired configuration: the settings it makes, and maintenance if it says so."""

    settings: Settings
    maintenance: Maintenance | None


class Invalid(Exception):  # noqa: N818 - carries the per-field errors of a refused configuration
    """The desired configuration was refused; `errors` are `{path, message}` objects."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        self.errors = errors


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "maintenance":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_maintenance(value: Any, path: str = "maintenance") -> Maintenance:
    """`{enabled, message}` from a config or a command.

    Raises:
        Invalid: not that shape.
    """
    errors: list[dict[str, str]] = []
    if not isinstance(value, dict):
        raise Invalid([{"path": path, "message": 'must be an object like {"enabled": true, "message": "…"}'}])
    unknown = sorted(set(value) - {"enabled", "message"})
    errors += [{"path": f"{path}.{k}", "message": "is not a maintenance setting (enabled, message)"} for k in unknown]
    enabled = value.get("enabled")
    if not isinstance(enabled, bool):
        errors.append({"path": f"{path}.enabled", "message": "must be true or false"})
    message = value.get("message", "")
    if message is None:
        message = ""
    if not isinstance(message, str) or len(message) > MAINTENANCE_MESSAGE_MAX:
        errors.append(
            {"path": f"{path}.message", "message": f"must be text of at most {MAINTENANCE_MESSAGE_MAX} characters"}
        )
    if errors:
        raise Invalid(errors)
    return Maintenance(bool(enabled), str(message))


def validate(local: Settings, config: Any) -> Desired:
    """The settings `config` makes when laid over the local settings.

    Raises:
        Invalid: with one `{path, message}` per problem; nothing is applied then.
    """
    if not isinstance(config, dict):
        raise Invalid([{"path": "config", "message": "must be an object with the settings to apply"}])
    flat = _flatten(config)
    errors: list[dict[str, str]] = []
    maintenance = None
    if "maintenance" in flat:
        try:
            maintenance = parse_maintenance(flat.pop("maintenance"))
        except Invalid as exc:
            errors += exc.errors
    for key in sorted(set(flat) - SETTABLE):
        errors.append(
            {"path": key, "message": "cannot be set remotely; remotely settable: " + ", ".join(sorted(SETTABLE))}
        )
    tree = local.model_dump()
    for key in set(flat) & SETTABLE:
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = flat[key]
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        for error in exc.errors():
            path = ".".join(str(p) for p in error["loc"])
            errors.append({"path": path, "message": str(error["msg"]).removeprefix("Value error, ")})
        settings = local
    if errors:
        raise Invalid(errors)
    return Desired(settings, maintenance)


def effective(settings: Settings, maintenance: Maintenance) -> dict[str, Any]:
    """The remotely settable values now in force, in `config/desired`'s shape."""
    p = settings.payments
    return {
        "currency": list(settings.currency),
        "max_amount": settings.max_amount,
        "payments": {
            "card_timeout_s": p.card_timeout_s,
            "max_card_attempts": p.max_card_attempts,
            "vend_result_timeout_s": p.vend_result_timeout_s,
            "request_timeout_s": p.request_timeout_s,
        },
        "fleet": {"health_period_s": settings.fleet.health_period_s},
        "maintenance": {"enabled": maintenance.enabled, "message": maintenance.message},
    }


def needs_restart(running: Settings, desired: Settings) -> bool:
    """Whether a setting that only a restart applies differs from the running one."""
    return running.payments.request_timeout_s != desired.payments.request_timeout_s


def load_maintenance(journal: Journal) -> Maintenance:
    """The maintenance switch as last set (config or command); off when never set."""
    text = journal.get_meta(MAINTENANCE_META)
    if not text:
        return Maintenance(enabled=False)
    try:
        return parse_maintenance(json.loads(text))
    except (ValueError, Invalid):
        log.warning("fleet.maintenance_unreadable")
        return Maintenance(enabled=False)


def save_maintenance(journal: Journal, maintenance: Maintenance) -> None:
    """Store the maintenance switch durably."""
    journal.set_meta(MAINTENANCE_META, json.dumps({"enabled": maintenance.enabled, "message": maintenance.message}))


def startup_settings(local: Settings, journal: Journal) -> Settings:
    """The local settings with the last accepted remote configuration laid over them.

    A stored configuration that the local settings now make invalid is dropped with a warning:
    kiosk starts on its local settings rather than not at all.
    """
    record = FleetStore(journal).applied_config()
    if record is None:
        return local
    try:
        return validate(local, record.config).settings
    except Invalid as exc:
        log.warning("fleet.stored_config_invalid", version=record.version, problem=str(exc))
        return local
