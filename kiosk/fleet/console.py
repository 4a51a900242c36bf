"""`kiosk fleet status|config|cmd|update`: the operators' console, over any MQTT broker.

It speaks protocol.md §5 from the fleet's side: reads every kiosk's retained `state`, `info`,
`health` and `config/reported`, publishes signed `config/desired`, command requests and job
documents, and follows the answers. It keeps no state of its own: the broker's retained messages
are the fleet's current picture.

A snapshot of retained messages ends with a marker: after subscribing, the console publishes to
`{prefix}/_console/{random}/marker` and takes everything that arrives before the marker comes
back (a broker delivers one connection's messages in order), so it never waits on a guess. With
an ACL on the broker the console's user needs to publish there (and to the kiosks' topics).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiomqtt
from pydantic import SecretStr, ValidationError

from kiosk.errors import KioskError, UsageError
from kiosk.fleet import signing
from kiosk.settings import ID_PATTERN, MqttSettings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

COMMANDS = ("status", "config", "cmd", "update")
FINAL = ("SUCCEEDED", "FAILED", "REJECTED")
EX_OK = 0
EX_FAILED = 1


class ConsoleError(KioskError):
    """The broker cannot be reached, or a kiosk did not answer in time."""


# -- arguments -------------------------------------------------------------------------------


def _broker_options(parser: argparse.ArgumentParser, wait: float) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument(
        "--broker",
        metavar="URL",
        default="mqtt://127.0.0.1:1883",
        help="mqtt://host:port, mqtts://host:port or unix:///path (default mqtt://127.0.0.1:1883)",
    )
    group.add_argument("--username", help="broker login")
    group.add_argument("--password-file", metavar="PATH", help="file holding the broker password")
    group.add_argument("--ca", metavar="PEM", help="CA bundle for mqtts://")
    group.add_argument("--cert", metavar="PEM", help="client certificate for mqtts://")
    group.add_argument("--client-key", metavar="PEM", help="the client certificate's key")
    group.add_argument("--prefix", default="fleet/v1", help="fleet topic prefix (default fleet/v1)")
    group.add_argument("--wait", type=float, default=wait, metavar="S", help=f"how long to wait (default {wait:g} s)")


def add_arguments(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `status`, `config`, `cmd` and `update` to the `fleet` subcommands."""
    status = sub.add_parser("status", help="every kiosk's state and health, as a table")
    status.add_argument("--json", action="store_true", help="one JSON object per kiosk instead of a table")
    _broker_options(status, 5)

    config = sub.add_parser("config", help="show or change a kiosk's remote configuration (signed)")
    config_sub = config.add_subparsers(dest="config_command", metavar="show|set", required=True)
    show = config_sub.add_parser("show", help="the configuration a kiosk reports, and the desired one")
    show.add_argument("kiosk_id", metavar="KIOSK_ID")
    _broker_options(show, 5)
    setter = config_sub.add_parser("set", help="publish a new desired configuration and wait for the report")
    setter.add_argument("kiosk_id", metavar="KIOSK_ID")
    setter.add_argument(
        "assignments",
        nargs="+",
        metavar="KEY=VALUE",
        help="like payments.card_timeout_s=45 or maintenance.enabled=true; VALUE is JSON or text; null removes",
    )
    setter.add_argument("--key", metavar="PRIVATE.pem", required=True, help="the operator's signing key")
    _broker_options(setter, 30)

    cmd = sub.add_parser("cmd", help="send a signed command and print its response")
    cmd.add_argument("kiosk_id", metavar="KIOSK_ID")
    cmd.add_argument("name", metavar="NAME", help="ping, rebirth, set_maintenance, reconcile, cancel_order, restart")
    cmd.add_argument("args", nargs="?", default="{}", metavar="JSON", help="the command's args (default {})")
    cmd.add_argument("--key", metavar="PRIVATE.pem", required=True, help="the operator's signing key")
    cmd.add_argument("--expires-in", type=float, default=60, metavar="S", help="refused after this (default 60 s)")
    _broker_options(cmd, 30)

    update = sub.add_parser("update", help="publish a signed software update job and follow it")
    update.add_argument("kiosk_id", metavar="KIOSK_ID")
    update.add_argument("--wheel", metavar="PATH", required=True, help="the kiosk wheel (for its sha256 and size)")
    update.add_argument("--url", metavar="URL", required=True, help="where kiosks download that wheel (http/https)")
    update.add_argument("--key", metavar="PRIVATE.pem", required=True, help="the operator's signing key")
    update.add_argument("--version", help="the release's version (default: from the wheel's file name)")
    update.add_argument("--job-id", help="default update-<version>-<random>")
    update.add_argument("--not-after-in", type=float, default=3600, metavar="S", help="job expiry (default 1 h)")
    update.add_argument("--keep-doc", action="store_true", help="leave the retained job document after the end")
    _broker_options(update, 900)


# -- the connection ----------------------------------------------------------------------------


def broker_settings(args: argparse.Namespace) -> MqttSettings:
    """The console's broker connection from its options, checked like kiosk.toml's `mqtt`."""
    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file} cannot be read ({exc.strerror})") from None
    try:
        return MqttSettings(
            url=args.broker,
            username=args.username,
            password=SecretStr(password) if password is not None else None,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.client_key,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--broker: {str(first['msg']).removeprefix('Value error, ')}") from None


class Session:
    """One connection to the broker; every message on the subscribed topics, in arrival order."""

    def __init__(self, client: aiomqtt.Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.seen: list[tuple[str, dict[str, Any] | None]] = []
        self._changed = asyncio.Event()

    async def listen(self) -> None:
        """Collect messages until cancelled."""
        async for message in self.client.messages:
            raw = message.payload
            payload: dict[str, Any] | None = None
            if isinstance(raw, bytes) and raw:
                with contextlib.suppress(ValueError):
                    data = json.loads(raw)
                    payload = data if isinstance(data, dict) else None
            self.seen.append((message.topic.value, payload))
            self._changed.set()

    async def wait_until(self, check: Callable[[], Any], timeout_s: float) -> Any:
        """The first true value of `check()` (tried after each message); raises TimeoutError."""
        async with asyncio.timeout(timeout_s):
            while not (found := check()):
                self._changed.clear()
                await self._changed.wait()
            return found

    async def subscribe(self, *filters: str) -> None:
        """Subscribe with QoS 1."""
        for topic in filters:
            await self.client.subscribe(topic, qos=1)

    async def publish(self, topic: str, body: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1."""
        payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        await self.client.publish(topic, payload, qos=1, retain=retain)

    async def snapshot(self, timeout_s: float) -> int:
        """Wait until the retained messages of the subscriptions so far have arrived; returns how many were seen."""
        marker = f"{self.prefix}/_console/{uuid.uuid4().hex}/marker"
        await self.subscribe(marker)
        await self.publish(marker, b"1")
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda: any(t == marker for t, _ in self.seen), timeout_s)
        self.seen = [(t, p) for t, p in self.seen if t != marker]
        return len(self.seen)

    def last(self, topic: str) -> dict[str, Any] | None:
        """The latest payload on a topic."""
        return next((p for t, p in reversed(self.seen) if t == topic), None)


@contextlib.asynccontextmanager
async def session(args: argparse.Namespace) -> Any:
    """A connected Session with its listener running."""
    settings = broker_settings(args)
    from kiosk.bus import describe_broker, tls_context  # noqa: PLC0415 - the console needs only these

    unix_path = settings.unix_path
    client = aiomqtt.Client(
        unix_path if unix_path is not None else settings.host,
        settings.port,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password is not None else None,
        identifier=f"kiosk-console-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        transport="unix" if unix_path is not None else "tcp",
        tls_context=tls_context(settings),
        timeout=10,
    )
    try:
        async with client:
            console = Session(client, args.prefix)
            task = asyncio.get_running_loop().create_task(console.listen())
            try:
                yield console
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
    except aiomqtt.MqttError as exc:
        raise ConsoleError(f"the broker at {describe_broker(settings)} cannot be used: {exc}") from None


def _key(path: str) -> Ed25519PrivateKey:
    try:
        return signing.load_private(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"--key {path} cannot be read ({exc.strerror})") from None


def _kiosk_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise UsageError(f"KIOSK_ID {value[:70]!r} is not a kiosk id (letters, digits, '.', '_', '-')")
    return value


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(ts: Any, now: float) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(ts).timestamp())
    except ValueError:
        return None


def _clock() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S")


# -- status --------------------------------------------------------------------------------------


def fleet_rows(seen: list[tuple[str, dict[str, Any] | None]], prefix: str, now: float) -> list[dict[str, Any]]:
    """One row per kiosk from retained `state`, `info`, `health` and `config/reported`, by kiosk id."""
    kiosks: dict[str, dict[str, dict[str, Any]]] = {}
    for topic, payload in seen:
        if payload is None or not topic.startswith(f"{prefix}/"):
            continue
        kiosk_id, _, kind = topic[len(prefix) + 1 :].partition("/")
        if kind in {"state", "info", "health", "config/reported"} and kiosk_id != "_console":
            kiosks.setdefault(kiosk_id, {})[kind] = payload
    rows = []
    for kiosk_id in sorted(kiosks):
        parts = kiosks[kiosk_id]
        state, health, info = parts.get("state", {}), parts.get("health", {}), parts.get("info", {})
        reported = parts.get("config/reported", {})
        orders = health.get("orders") or {}
        age = _age(health.get("ts"), now)
        period = health.get("period_s")
        online = state.get("state") == "online"
        rows.append(
            {
                "kiosk": kiosk_id,
                "state": state.get("state", "?"),
                "session": state.get("session"),
                "version": state.get("version") or info.get("version"),
                "config_version": state.get("config_version"),
                "config_status": reported.get("status"),
                "payments": health.get("payments"),
                "reader": (health.get("reader") or {}).get("status"),
                "orders": {k: orders.get(k) for k in ("open", "completed_24h", "canceled_24h", "failed_24h")},
                "outbox": (health.get("outbox") or {}).get("depth"),
                "health_age_s": None if age is None else round(age, 1),
                "stale": bool(online and age is not None and isinstance(period, int | float) and age > 3 * period),
            }
        )
    return rows


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "-"
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.0f}h ago"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The status table's lines."""
    header = (
        "KIOSK",
        "STATE",
        "VERSION",
        "CONFIG",
        "PAYMENTS",
        "READER",
        "ORDERS open/ok/cxl/fail",
        "OUTBOX",
        "HEALTH",
    )
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        orders = row["orders"]
        config = "-" if row["config_version"] is None else str(row["config_version"])
        if row["config_status"] and row["config_status"] != "applied":
            config += f" ({row['config_status']})"
        lines.append(
            (
                row["kiosk"],
                row["state"] + (" (stale)" if row["stale"] else ""),
                str(row["version"] or "?"),
                config,
                str(row["payments"] or "-"),
                str(row["reader"] or "-"),
                "/".join("-" if orders[k] is None else str(orders[k]) for k in orders),
                "-" if row["outbox"] is None else str(row["outbox"]),
                _fmt_age(row["health_age_s"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]


async def _status(args: argparse.Namespace, out: TextIO) -> int:
    prefix = args.prefix
    async with session(args) as console:
        await console.subscribe(*(f"{prefix}/+/{kind}" for kind in ("state", "info", "health", "config/reported")))
        await console.snapshot(args.wait)
        rows = fleet_rows(console.seen, prefix, time.time())
    if args.json:
        for row in rows:
            print(json.dumps(row), file=out)
    elif rows:
        for line in table(rows):
            print(line, file=out)
    else:
        print(f"no kiosk has published under {prefix}/ on this broker", file=out)
    return EX_OK


# -- config ----------------------------------------------------------------------------------------


def parse_assignments(assignments: list[str], base: dict[str, Any]) -> dict[str, Any]:
    """`base` with each KEY=VALUE laid over it (dotted keys nest; VALUE is JSON or else text; null removes)."""
    config = copy.deepcopy(base)
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"{item!r} is not KEY=VALUE, like payments.card_timeout_s=45")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return config


async def _config(args: argparse.Namespace, out: TextIO) -> int:
    base = f"{args.prefix}/{_kiosk_id(args.kiosk_id)}"
    key = _key(args.key) if args.config_command == "set" else None
    async with session(args) as console:
        await console.subscribe(f"{base}/config/desired", f"{base}/config/reported")
        await console.snapshot(min(args.wait, 5))
        desired = console.last(f"{base}/config/desired") or {}
        reported = console.last(f"{base}/config/reported") or {}
        if key is None:
            print(json.dumps({"reported": reported, "desired": desired}, indent=2), file=out)
            return EX_OK
        versions = [v for v in (desired.get("version"), reported.get("version")) if isinstance(v, int)]
        version = max(versions, default=0) + 1
        previous = desired.get("config")
        config = parse_assignments(args.assignments, previous if isinstance(previous, dict) else {})
        body = signing.sign({"version": version, "config": config}, key)
        await console.publish(f"{base}/config/desired", body, retain=True)
        print(f"{_clock()} {args.kiosk_id}: config/desired version {version} published: {json.dumps(config)}", file=out)
        topic = f"{base}/config/reported"
        try:
            report: dict[str, Any] = await console.wait_until(
                lambda: next((p for t, p in console.seen if t == topic and p and p.get("version") == version), None),
                args.wait,
            )
        except TimeoutError:
            print(
                f"{_clock()} {args.kiosk_id}: no config/reported for version {version} within {args.wait:g} s;"
                " the kiosk applies the retained configuration when it connects",
                file=out,
            )
            return EX_FAILED
    print(f"{_clock()} {args.kiosk_id}: version {version} {report.get('status')}", file=out)
    for error in report.get("errors") or []:
        print(f"  {error.get('path')}: {error.get('message')}", file=out)
    print(json.dumps(report.get("effective"), indent=2), file=out)
    return EX_OK if report.get("status") in {"applied", "pending_restart"} else EX_FAILED


# -- cmd -------------------------------------------------------------------------------------------


async def _cmd(args: argparse.Namespace, out: TextIO) -> int:
    base = f"{args.prefix}/{_kiosk_id(args.kiosk_id)}"
    key = _key(args.key)
    try:
        command_args = json.loads(args.args)
    except ValueError:
        raise UsageError(f"args {args.args[:60]!r} is not JSON; give an object like '{{\"enabled\": true}}'") from None
    if not isinstance(command_args, dict):
        raise UsageError("args must be a JSON object")
    if not args.name or any(c in args.name for c in "/#+"):
        raise UsageError(f"{args.name!r} is not a command name")
    request_id = uuid.uuid4().hex
    body = signing.sign(
        {"request_id": request_id, "expires_at": rfc3339(time.time() + args.expires_in), "args": command_args}, key
    )
    res = f"{base}/cmd/{args.name}/res"
    async with session(args) as console:
        await console.subscribe(res)
        await console.publish(f"{base}/cmd/{args.name}/req", body)
        try:
            response: dict[str, Any] = await console.wait_until(
                lambda: next(
                    (p for t, p in console.seen if t == res and p and p.get("request_id") == request_id), None
                ),
                args.wait,
            )
        except TimeoutError:
            raise ConsoleError(
                f"{args.kiosk_id} did not answer {args.name} within {args.wait:g} s"
                " (offline? `kiosk fleet status` shows it)"
            ) from None
    print(json.dumps(response, indent=2), file=out)
    return EX_OK if response.get("status") == "ok" else EX_FAILED


# -- update ----------------------------------------------------------------------------------------


def job_document(  # noqa: PLR0913 - the fields of the document
    *, job_id: str, version: str, url: str, wheel: bytes, not_after: float, key: Ed25519PrivateKey
) -> dict[str, Any]:
    """A signed `software_update` job document for `wheel` served at `url`."""
    artifact = {"url": url, "sha256": hashlib.sha256(wheel).hexdigest(), "size": len(wheel)}
    doc = {
        "job_id": job_id,
        "type": "software_update",
        "version": version,
        "artifact": artifact,
        "not_after": rfc3339(not_after),
    }
    return signing.sign(doc, key)


def _describe(update: dict[str, Any]) -> str:
    parts = [str(update.get("status")), str(update.get("step") or "-")]
    if isinstance(update.get("progress"), int | float):
        parts.append(f"{update['progress']:g}%")
    if update.get("reason"):
        parts.append(str(update["reason"]))
    return " ".join(parts)


async def _follow(  # noqa: PLR0913, PLR0917 - where to listen and what to print
    console: Session, kiosk_id: str, updates: str, state: str, out: TextIO, wait_s: float
) -> dict[str, Any]:
    """Print the job's updates and the kiosk's state changes until a final status; returns it."""
    shown = [len(console.seen)]
    async with asyncio.timeout(wait_s):
        while True:
            await console.wait_until(lambda: len(console.seen) > shown[0], wait_s)
            for topic, payload in console.seen[shown[0] :]:
                if payload is None:
                    continue
                if topic == updates:
                    print(f"{_clock()} {kiosk_id}: {_describe(payload)}", file=out)
                    if payload.get("status") in FINAL:
                        return payload
                elif topic == state:
                    print(
                        f"{_clock()} {kiosk_id}: {payload.get('state')}, kiosk {payload.get('version')}"
                        f" (session {payload.get('session')})",
                        file=out,
                    )
            shown[0] = len(console.seen)
            out.flush()


async def _update(args: argparse.Namespace, out: TextIO) -> int:
    kiosk_id = _kiosk_id(args.kiosk_id)
    base = f"{args.prefix}/{kiosk_id}"
    key = _key(args.key)
    wheel_path = Path(args.wheel)
    try:
        wheel = await asyncio.to_thread(wheel_path.read_bytes)
    except OSError as exc:
        raise UsageError(f"--wheel {args.wheel} cannot be read ({exc.strerror})") from None
    version = args.version or (wheel_path.name.split("-")[1] if wheel_path.name.count("-") >= 2 else "")
    if not version:
        raise UsageError("--version is needed: the wheel's file name does not say it (name-version-tags.whl)")
    job_id = args.job_id or f"update-{version.replace('+', '_')}-{uuid.uuid4().hex[:6]}"
    if not ID_PATTERN.fullmatch(job_id):
        raise UsageError(f"--job-id {job_id[:70]!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    doc = job_document(
        job_id=job_id, version=version, url=args.url, wheel=wheel, not_after=time.time() + args.not_after_in, key=key
    )
    updates, state = f"{base}/jobs/{job_id}/update", f"{base}/state"
    async with session(args) as console:
        await console.subscribe(updates, state)
        await console.snapshot(5)
        await console.publish(f"{base}/jobs/{job_id}/doc", doc, retain=True)
        print(f"{_clock()} {kiosk_id}: job {job_id} published: kiosk {version}, {len(wheel)} bytes", file=out)
        try:
            final = await _follow(console, kiosk_id, updates, state, out, args.wait)
        except TimeoutError:
            print(f"{_clock()} {kiosk_id}: no final status within {args.wait:g} s; the job goes on", file=out)
            return EX_FAILED
        if not args.keep_doc:
            # The kiosk ran the job (once); the retained document would only be delivered again.
            await console.publish(f"{base}/jobs/{job_id}/doc", b"", retain=True)
    return EX_OK if final.get("status") == "SUCCEEDED" else EX_FAILED


# -- entry -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run a console subcommand; returns the exit code."""
    handlers = {"status": _status, "config": _config, "cmd": _cmd, "update": _update}
    return asyncio.run(handlers[args.fleet_command](args, out))
