"""A fleet operator in the tests: follows one kiosk's fleet topics and sends it requests."""

# ruff: noqa: ASYNC109 - each wait takes the timeout its test allows

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiomqtt

from kiosk.fleet import signing

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BASE = "fleet/v1/k1"


def rfc3339(delta_s: float) -> str:
    """Now plus `delta_s`, as RFC 3339 UTC."""
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


class Operator:
    """Everything published under `fleet/v1/k1/#`, by topic, in arrival order."""

    def __init__(self, client: aiomqtt.Client, key: Ed25519PrivateKey | None, base: str) -> None:
        self.client = client
        self.key = key
        self.base = base
        self.seen: list[tuple[str, dict[str, Any], bool]] = []
        self._changed = asyncio.Event()

    async def _listen(self) -> None:
        async for message in self.client.messages:
            raw = message.payload
            try:
                payload = json.loads(raw) if raw else {}
            except ValueError:
                payload = {"_raw": str(raw)}
            if not isinstance(payload, dict):
                payload = {"_value": payload}  # a bridge's notification flag is a bare 1 or 0
            self.seen.append((message.topic.value, payload, bool(message.retain)))
            self._changed.set()
            await asyncio.sleep(0)  # waiters look at each message before the next (as in tests/harness.py)

    def on(self, suffix: str) -> list[dict[str, Any]]:
        """Payloads seen on `{base}/{suffix}`."""
        return [p for t, p, _ in self.seen if t == f"{self.base}/{suffix}"]

    def last(self, suffix: str) -> dict[str, Any] | None:
        """The latest payload on a topic, or None."""
        found = self.on(suffix)
        return found[-1] if found else None

    async def wait_until(self, check: Callable[[], Any], timeout: float = 20) -> Any:
        """Wait until `check()` returns something true (checked after each message); returns it."""
        async with asyncio.timeout(timeout):
            while not (result := check()):
                self._changed.clear()
                await self._changed.wait()
            return result

    async def wait_for(
        self, suffix: str, check: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """The first payload on a topic that satisfies `check`."""

        def found() -> dict[str, Any] | None:
            return next((p for p in self.on(suffix) if check(p)), None)

        result: dict[str, Any] = await self.wait_until(found, timeout)
        return result

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Signed with the operator's key (unchanged without one)."""
        return signing.sign(payload, self.key) if self.key is not None else payload

    async def publish(self, suffix: str, payload: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        """Publish on `{base}/{suffix}`."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(f"{self.base}/{suffix}", body, qos=1, retain=retain)

    def request(
        self, args: dict[str, Any] | None = None, *, expires_in: float = 60, sign: bool = True
    ) -> dict[str, Any]:
        """A command request body."""
        body = {"request_id": uuid.uuid4().hex, "expires_at": rfc3339(expires_in), "args": args or {}}
        return self.sign(body) if sign else body

    async def command(
        self, name: str, args: dict[str, Any] | None = None, *, body: dict[str, Any] | None = None, timeout: float = 20
    ) -> dict[str, Any]:
        """Send a command and wait for its response."""
        body = body if body is not None else self.request(args)
        await self.publish(f"cmd/{name}/req", body)
        return await self.wait_for(f"cmd/{name}/res", lambda p: p.get("request_id") == body["request_id"], timeout)

    async def desired(self, version: int, config: dict[str, Any], *, sign: bool = True) -> None:
        """Publish a retained desired configuration."""
        body: dict[str, Any] = {"version": version, "config": config}
        await self.publish("config/desired", self.sign(body) if sign else body, retain=True)

    async def wait_reported(self, version: int, timeout: float = 20) -> dict[str, Any]:
        """The first config/reported for `version`."""
        return await self.wait_for("config/reported", lambda p: p.get("version") == version, timeout)

    async def wait_online(self, session: int | None = None, timeout: float = 20) -> dict[str, Any]:
        """The latest `state` once it says online (with `session`, if given)."""

        def check() -> dict[str, Any] | None:
            state = self.last("state")
            if state and state["state"] == "online" and (session is None or state["session"] == session):
                return state
            return None

        result: dict[str, Any] = await self.wait_until(check, timeout)
        return result


@asynccontextmanager
async def operator(
    host: str, port: int, *, key: Ed25519PrivateKey | None = None, base: str = BASE, **client: Any
) -> AsyncIterator[Operator]:
    """An operator subscribed to one kiosk's fleet topics."""
    async with aiomqtt.Client(
        host, port, identifier=f"operator-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5, **client
    ) as mqtt:
        op = Operator(mqtt, key, base)
        await mqtt.subscribe(f"{base}/#", qos=1)
        task = asyncio.create_task(op._listen())
        try:
            yield op
        finally:
            task.cancel()
