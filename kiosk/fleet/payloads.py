"""The fleet payloads kiosk publishes (protocol.md §5), and the small parsers of what it receives."""

from __future__ import annotations

import json
import platform
import uuid
from datetime import datetime
from typing import Any

from kiosk import __version__
from kiosk.messages import dumps, now_rfc3339

MAX_PAYLOAD = 64 * 1024
REQUEST_ID_MAX = 64


def envelope(ts: float) -> dict[str, Any]:
    """`v`, `id`, `ts` as on the local bus: kiosk's messages all carry them."""
    return {"v": 1, "id": uuid.uuid4().hex, "ts": now_rfc3339(ts)}


def state(  # noqa: PLR0913 - the fields of the message
    *,
    online: bool,
    boot_id: str,
    session: int,
    config_version: int | None,
    since: float,
    ts: float,
) -> bytes:
    """`state`: online/offline with the session that said so."""
    return dumps(
        {
            **envelope(ts),
            "state": "online" if online else "offline",
            "boot_id": boot_id,
            "session": session,
            "version": __version__,
            "config_version": config_version,
            "since": now_rfc3339(since),
        }
    )


def info(*, reader: dict[str, Any], capabilities: list[str], ts: float) -> bytes:
    """`info`: what this kiosk is and can do."""
    return dumps(
        {
            **envelope(ts),
            "version": __version__,
            "python": platform.python_version(),
            "os": platform.platform(terse=True),
            "machine": platform.machine(),
            "reader": reader,
            "capabilities": capabilities,
        }
    )


def response(
    request_id: str | None,
    *,
    ts: float,
    data: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
) -> bytes:
    """`cmd/{name}/res`: exactly one per request."""
    return dumps(
        {
            **envelope(ts),
            "request_id": request_id,
            "status": "ok" if error is None else "error",
            "data": data,
            "error": None if error is None else {"code": error[0], "message": error[1]},
        }
    )


def event(*, seq: int, event_id: str, type_: str, created_at: float, data: dict[str, Any]) -> bytes:
    """`events`: one business event; `id` and `seq` are the same on every re-send."""
    return dumps({"v": 1, "id": event_id, "seq": seq, "type": type_, "ts": now_rfc3339(created_at), "data": data})


def job_update(*, status: str, step: str | None, progress: float | None, reason: str | None, ts: float) -> bytes:
    """`jobs/{job_id}/update`."""
    return dumps({**envelope(ts), "status": status, "step": step, "progress": progress, "reason": reason})


class BadPayload(ValueError):  # noqa: N818 - reads as what it is, like InvalidInput
    """A fleet message that cannot be read; the text says why."""


def load(payload: bytes) -> dict[str, Any]:
    """A JSON object from the wire.

    Raises:
        BadPayload: too large, not UTF-8 JSON, or not an object.
    """
    if len(payload) > MAX_PAYLOAD:
        raise BadPayload(f"the payload is larger than {MAX_PAYLOAD // 1024} KiB")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise BadPayload("the payload is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise BadPayload("the payload is not a JSON object")
    return data


def request_id(data: dict[str, Any]) -> str | None:
    """A usable `request_id` (1 to 64 characters), or None."""
    value = data.get("request_id")
    return value if isinstance(value, str) and 0 < len(value) <= REQUEST_ID_MAX else None


def timestamp(value: Any, field: str) -> float | None:
    """An RFC 3339 time (with a zone) as epoch seconds; None when absent.

    Raises:
        BadPayload: present but not an RFC 3339 time with a zone.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadPayload(f"{field} must be an RFC 3339 time, like 2026-01-01T12:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadPayload(f"{field} must be an RFC 3339 time, like 2026-01-01T12:00:00Z") from None
    if parsed.tzinfo is None:
        raise BadPayload(f"{field} must name its time zone, like 2026-01-01T12:00:00Z")
    return parsed.timestamp()
