"""The fleet agent `kiosk run` starts: protocol.md §5 on the daemon's own broker connection.

One task per concern: health every `fleet.health_period_s`, the event outbox's sender, and a
small second connection that carries nothing but the fleet Will (see "Why two Wills" below).
Everything else happens when a message arrives or the engine calls a hook.

Why two Wills: an MQTT connection has exactly one Will, and kiosk needs two — the local bus's
`vend/v1/kioskd/state` (the vending controller must stop selling at once when the daemon dies;
protocol.md §1) and the fleet's `state`. The daemon's connection keeps the local Will, as before;
a second connection (client id `kioskd-{id}-fleet`, no subscriptions, one keep-alive per
`mqtt.keepalive_s`) holds the fleet Will. Both sockets belong to the same process, so a crash
or a power cut fires both; every fleet message still travels on the daemon's connection, and the
local Mosquitto bridges `state` to the cloud like any other fleet topic.

Sessions: each start takes the next value of the durable counter `fleet.session`; `state`
(online, and the Will's offline) carries it. A Will can land late — after the next start's
`online` — when the broker notices a dead connection only at its keep-alive timeout, or when a
bridge delivers a queued message after reconnecting. So (1) the agent subscribes to its own
`state` and answers any `offline` with a session not above its own by publishing `online` again
(Sparkplug's rebirth), which puts the retained value right within one round trip, and
(2) consumers order `state` messages by `session` and ignore one older than the newest seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from kiosk import __version__, crashpoints, logs, messages
from kiosk.bus import Bus, Publication
from kiosk.errors import BusUnavailable, UpstreamError
from kiosk.fleet import health, payloads, remote_config, signing
from kiosk.fleet.commands import CommandFailed, Desk
from kiosk.fleet.events import KEEP_ACKED_S, RESEND_AFTER_S, EventOutbox, order_event
from kiosk.fleet.store import ConfigRecord, FleetStore, NewEvent
from kiosk.fleet.topics import COMMANDS, Topics
from kiosk.journal import OutboxMessage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from kiosk.availability import Availability, Snapshot
    from kiosk.journal import Journal
    from kiosk.model import OrderData
    from kiosk.reconciler import Reconciler
    from kiosk.runner import Runner
    from kiosk.settings import Settings

log = logs.get("fleet")

EXIT_RESTART = 75  # EX_TEMPFAIL: "run me again"; systemd's Restart=always (or on-failure) does
RESTART_DRAIN_S = 5.0
PRUNE_EVERY_S = 3600.0
CATCH_UP_S = 24 * 3600.0


class Host(Protocol):
    """What the agent needs of the running service (kiosk.service.Service)."""

    settings: Settings
    local_settings: Settings
    journal: Journal
    bus: Bus
    runner: Runner
    availability: Availability
    reconciler: Reconciler
    boot_id: str

    def request_stop(self, exit_code: int) -> None:
        """Stop gracefully and exit with this code."""

    def announce_soon(self) -> None:
        """Re-publish kioskd/state (maintenance changed)."""

    def outbox_ready(self) -> None:
        """Wake the journal outbox's publisher."""


class Jobs(Protocol):
    """Where `jobs/{job_id}/doc` documents go once checked (signature, expiry, run-at-most-once)."""

    def busy(self) -> bool:
        """Whether a job is in progress (a restart command is then refused with `busy`)."""

    async def start(self, job_id: str, doc: dict[str, Any]) -> None:
        """Take a checked job; report through `FleetAgent.job_update`."""


class NoJobs:
    """Until software updates are installed by kiosk, every job is answered REJECTED."""

    def __init__(self, update: Callable[..., Awaitable[None]]) -> None:
        self._update = update

    def busy(self) -> bool:
        """Never busy."""
        return False

    async def start(self, job_id: str, doc: dict[str, Any]) -> None:
        """Refuse the job, saying why."""
        del doc
        await self._update(job_id, "REJECTED", reason="unsupported: this kiosk version does not run jobs")


class FleetAgent:
    """Publishes the kiosk's fleet topics and serves the fleet's messages.

    Args:
        host: the running service.
        clock: wall-clock seconds.
        monotonic: for uptime.
        resend_after_s: unacknowledged events are sent again this long after their last send.
    """

    def __init__(
        self,
        host: Host,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        resend_after_s: float = RESEND_AFTER_S,
    ) -> None:
        settings = host.settings
        self.host = host
        self.topics = Topics(settings.fleet.topic_prefix, settings.id)
        self.store = FleetStore(host.journal)
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self.session = host.journal.next_value("fleet.session")
        self.since = clock()
        key_text = settings.fleet.signing_public_key
        self.key = signing.public_key(key_text) if key_text else None
        self.events = EventOutbox(self.store, self.topics.events, resend_after_s=resend_after_s, clock=clock)
        self.maintenance = remote_config.load_maintenance(host.journal)
        host.availability.maintenance = self.maintenance.reason()
        self.config_record: ConfigRecord | None = self.store.latest_config()
        self.jobs: Jobs = NoJobs(self.job_update)
        self.desk = Desk(self.store, self._respond, self.key, clock=clock)
        self.desk.register("ping", self._ping)
        self.desk.register("rebirth", self._rebirth)
        self.desk.register("set_maintenance", self._set_maintenance)
        self.desk.register("reconcile", self._reconcile, background=True)
        self.desk.register("cancel_order", self._cancel_order)
        self.desk.register("restart", self._restart)
        self._health_bell = asyncio.Event()
        self._health_seq = 0
        self._pruned_at = 0.0
        self._stopping = False
        self._restart_asked = False
        self._reader: str | None = None
        self._payments: str | None = None
        self._device_type: str | None = None
        self._serial: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # The idle connection that holds the fleet Will (entered in `run`). `state` says online
        # only while it is up, so a kiosk killed at any moment after saying online leaves offline.
        self._sentinel = Bus(settings.mqtt, client_id=f"kioskd-{settings.id}-fleet", will=self.will())

    # -- wiring --------------------------------------------------------------------------------

    @property
    def subscriptions(self) -> list[str]:
        """Topic filters for the daemon's bus."""
        return self.topics.subscriptions()

    def owns(self, topic: str) -> bool:
        """Whether a delivered message is for the agent."""
        return self.topics.owns(topic)

    @property
    def config_version(self) -> int | None:
        """The version of the remote configuration in force, if any."""
        record = self.store.applied_config()
        return record.version if record else None

    def will(self) -> Publication:
        """The fleet Will: `state` offline with this session."""
        return Publication(
            self.topics.state, self._state(online=False, config_version=self.config_version), retain=True
        )

    def _state(self, *, online: bool, config_version: int | None) -> bytes:
        return payloads.state(
            online=online,
            boot_id=self.host.boot_id,
            session=self.session,
            config_version=config_version,
            since=self.since,
            ts=self._clock(),
        )

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """The agent's tasks, until cancelled."""
        await self._catch_up()
        await crashpoints.pause("fleet_will_connection")
        async with self._sentinel, asyncio.TaskGroup() as tasks:
            tasks.create_task(self.events.run(self._publish_event, self.host.bus.wait_connected), name="fleet-events")
            tasks.create_task(self._health_loop(), name="fleet-health")

    async def _catch_up(self) -> None:
        """Events for orders that ended while the process died between their save and the event."""
        from kiosk.runner import decode  # noqa: PLC0415 - the runner imports the fleet hook's caller

        since = self._clock() - CATCH_UP_S
        rows = await self.host.journal.call(self.store.terminal_orders, since)
        events = [order_event(decode(row)) for row in rows]
        if events:
            await self.events.add(*events)

    # -- hooks from the service and the runner --------------------------------------------------

    def on_terminal(self, order: OrderData) -> None:
        """The runner saved an order in its final state: queue its event."""
        self._keep(self.events.add_soon(order_event(order)))

    def on_availability(self, snap: Snapshot) -> None:
        """kioskd/state or reader/state is being published: turn changes into events."""
        found: list[NewEvent] = []
        reader = "offline" if snap.reader_status == "offline" else "online" if snap.reader_status != "unknown" else None
        if reader is not None and reader != self._reader:
            if self._reader is not None or reader == "offline":
                data: dict[str, Any] = {"reader": self.host.availability.reader_id, "status": snap.reader_status}
                found.append(NewEvent(uuid.uuid4().hex, f"reader.{reader}", data))
            self._reader = reader
        if snap.payments != self._payments:
            if self._payments is not None or snap.payments == "unavailable":
                alert: dict[str, Any] = {"payments": snap.payments, "code": snap.code, "message": snap.message}
                found.append(NewEvent(uuid.uuid4().hex, "alert", alert))
            self._payments = snap.payments
        if found:
            self._keep(self.events.add_soon(*found))
        if snap.device_type != self._device_type:
            self._device_type = snap.device_type
            self._keep(asyncio.get_running_loop().create_task(self._quietly(self.publish_info())))

    def _say_online_soon(self, config_version: int | None) -> None:
        """`state` online, retained, from a task of its own once the Will's connection is up.

        Never awaited where messages are handled: waiting there for the Will's connection would
        hold up the orders' messages behind it.
        """
        self._keep(asyncio.get_running_loop().create_task(self._say_online(config_version), name="fleet-online"))

    async def _say_online(self, config_version: int | None) -> None:
        await self._sentinel.wait_connected()
        if self._stopping:
            return  # `say_offline` has spoken: an online now would outlive the stop
        with contextlib.suppress(BusUnavailable):
            await self._publish(self.topics.state, self._state(online=True, config_version=config_version), retain=True)
            crashpoints.reached("fleet_said_online")

    async def on_connect(self) -> None:
        """Connected (again): unacknowledged events are due; state, info, health, config re-published."""
        await self.events.reconnected()
        await self.publish_all()

    async def say_offline(self) -> None:
        """Graceful stop: `state` offline from this session (the fleet Will's connection closes without it)."""
        self._stopping = True
        body = self._state(online=False, config_version=self.config_version)
        with contextlib.suppress(BusUnavailable, TimeoutError):
            async with asyncio.timeout(2):
                await self.host.bus.publish(self.topics.state, body, qos=1, retain=True)

    # -- publishing ----------------------------------------------------------------------------

    async def _publish(self, topic: str, body: bytes, *, retain: bool, expiry_s: int | None = None) -> None:
        await self.host.bus.publish(topic, body, qos=1, retain=retain, expiry_s=expiry_s)

    async def _publish_event(self, topic: str, body: bytes) -> None:
        await self._publish(topic, body, retain=False)

    async def _quietly(self, publishing: Awaitable[None]) -> None:
        # Retained current state: if the connection is down, on_connect publishes it again.
        with contextlib.suppress(BusUnavailable):
            await publishing

    async def publish_all(self) -> list[str]:
        """state, info, health and config/reported, retained; returns what was published.

        `state` goes from a task of its own once the fleet Will's connection is up (`_say_online_soon`).
        """
        version = await self.host.journal.call(lambda: self.config_version)
        self._say_online_soon(version)
        await self.publish_info()
        await self.publish_health()
        await self.publish_reported()
        return ["state", "info", "health", "config/reported"]

    async def publish_info(self) -> None:
        """`info`, retained."""
        reader = {"id": self.host.availability.reader_id, "device_type": self._device_type, "serial_number": None}
        capabilities = [
            "state",
            "info",
            "health",
            "events",
            "config",
            *(f"cmd:{name}" for name in COMMANDS),
            "signatures" if self.key is not None else "unsigned",
        ]
        if not isinstance(self.jobs, NoJobs):
            capabilities.append("jobs:software_update")
        await self._publish(
            self.topics.info, payloads.info(reader=reader, capabilities=capabilities, ts=self._clock()), retain=True
        )

    async def health_payload(self) -> dict[str, Any]:
        """The `health` message's fields, measured now."""
        host = self.host
        now = self._clock()
        period = host.settings.fleet.health_period_s
        recent = await host.journal.call(host.journal.recent, now - health.DAY_S)
        outbox = await host.journal.call(self.store.stats)
        snap = host.availability.snapshot()
        last_ok = host.availability.last_ok
        self._health_seq += 1
        return {
            **payloads.envelope(now),
            "seq": self._health_seq,
            "session": self.session,
            "uptime_s": round(self._monotonic() - self._started, 1),
            "period_s": period,
            "rss_mb": health.rss_mb(),
            "disk_free_mb": health.disk_free_mb(host.settings.state_dir),
            "cpu_temp_c": health.cpu_temp_c(),
            "mqtt": {"reconnects": host.bus.reconnects, "connected": host.bus.connected},
            # What kioskd/state tells the controller, for `kiosk fleet status`'s PAYMENTS column.
            "payments": snap.payments,
            "reader": {
                "status": snap.reader_status,
                # The reader answers every check while Stripe answers: its last sighting is Stripe's last OK.
                "last_seen_s": health.since(now, last_ok) if snap.reader_status in {"online", "busy"} else None,
            },
            "stripe": {
                "last_ok_s": health.since(now, last_ok),
                "errors_1h": health.recent_errors(host.availability.errors, now),
            },
            "orders": {
                "open": host.runner.open_orders,
                "completed_24h": recent.get("completed", 0),
                "canceled_24h": recent.get("canceled", 0),
                "failed_24h": recent.get("failed", 0),
            },
            "outbox": {"depth": outbox.depth, "oldest_s": health.since(now, outbox.oldest_at)},
        }

    async def publish_health(self) -> None:
        """`health`, retained, expiring after three periods (MQTT 5) so a silent kiosk's goes stale."""
        body = await self.health_payload()
        period = int(body["period_s"])
        await self._publish(self.topics.health, messages.dumps(body), retain=True, expiry_s=3 * period)

    async def publish_reported(self) -> None:
        """`config/reported`, retained."""
        record = self.config_record
        host = self.host
        status = "applied"
        errors: list[dict[str, str]] = []
        if record is not None:
            status, errors = record.status, record.errors
            if status == "pending_restart":
                try:
                    desired = remote_config.validate(host.local_settings, record.config).settings
                except remote_config.Invalid:
                    desired = host.settings
                if not remote_config.needs_restart(host.settings, desired):
                    status = "applied"
        body = {
            **payloads.envelope(self._clock()),
            "version": record.version if record else 0,
            "status": status,
            "errors": errors,
            "effective": remote_config.effective(host.settings, self.maintenance),
        }
        await self._publish(self.topics.config_reported, messages.dumps(body), retain=True)

    async def job_update(
        self,
        job_id: str,
        status: str,
        *,
        step: str | None = None,
        progress: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Report a job's progress on `jobs/{job_id}/update` (retained, through the durable outbox)."""
        body = payloads.job_update(status=status, step=step, progress=progress, reason=reason, ts=self._clock())
        message = OutboxMessage(self.topics.job_update(job_id), body, retain=True)
        await self.host.journal.call(self.host.journal.enqueue, [message])
        self.host.outbox_ready()

    async def _respond(self, name: str, body: bytes) -> None:
        message = OutboxMessage(self.topics.cmd_res(name), body, retain=False)
        await self.host.journal.call(self.host.journal.enqueue, [message])
        self.host.outbox_ready()
        if name == "restart" and self._restart_asked:
            self._keep(asyncio.get_running_loop().create_task(self._restart_when_sent(), name="fleet-restart"))

    # -- the periodic task ---------------------------------------------------------------------

    async def _health_loop(self) -> None:
        # The first health goes out with the connection (on_connect); then one per period, and
        # one at once when the period is changed.
        while True:
            self._health_bell.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.host.settings.fleet.health_period_s):
                    await self._health_bell.wait()
            if self.host.bus.connected:
                await self._quietly(self.publish_health())
            now = self._clock()
            if now - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = now
                await self.host.journal.call(self.store.prune, now - KEEP_ACKED_S)

    # -- messages from the fleet ---------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Serve one fleet message; returns once its effect is durable (then ack it)."""
        what = self.topics.parse(topic)
        if what is None:
            log.warning("fleet.bad_topic", topic=topic[:200])
            return
        match what.kind:
            case "ack":
                await self._on_ack(payload)
            case "desired":
                await self._on_desired(payload)
            case "cmd":
                await self.desk.handle(what.name or "", payload)
            case "job":
                await self._on_job(what.name or "", payload)
            case "state":
                await self._on_own_state(payload)

    async def _on_ack(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            upto = payloads.load(payload).get("upto_seq")
        except payloads.BadPayload as exc:
            log.warning("fleet.bad_ack", problem=str(exc))
            return
        if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0:
            log.warning("fleet.bad_ack", problem="upto_seq must be a whole number")
            return
        await self.events.ack(upto)

    async def _on_own_state(self, payload: bytes) -> None:
        if not payload or self._stopping:
            return
        try:
            data = payloads.load(payload)
        except payloads.BadPayload:
            data = {}
        session = data.get("session")
        if data.get("state") == "online" and session == self.session:
            return  # our own
        if isinstance(session, int) and session > self.session:
            log.error("fleet.newer_session", session=session, ours=self.session, detail="two kiosks share this id?")
            return
        log.info("fleet.rebirth", seen_state=data.get("state"), seen_session=session, session=self.session)
        version = await self.host.journal.call(lambda: self.config_version)
        self._say_online_soon(version)

    def _signed(self, data: dict[str, Any]) -> bool:
        return self.key is None or signing.verify(data, self.key)

    async def _on_desired(self, payload: bytes) -> None:  # noqa: C901 - each refusal in protocol order
        if not payload:
            return  # the retained desired configuration was cleared: keep what is in force
        try:
            data = payloads.load(payload)
        except payloads.BadPayload as exc:
            log.warning("fleet.config_unreadable", problem=str(exc))
            return
        version = data.get("version")
        if not self._signed(data):
            log.warning("fleet.config_bad_signature", version=version)
            await self.events.add(
                NewEvent(
                    uuid.uuid4().hex, "alert", {"code": "bad_signature", "topic": "config/desired", "version": version}
                )
            )
            return
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            log.warning("fleet.config_unreadable", problem="version must be a whole number from 1")
            return
        latest = self.config_record
        if latest is not None and version <= latest.version:
            log.info("fleet.config_ignored", version=version, processed=latest.version)
            return
        config = data.get("config")
        host = self.host
        try:
            desired = remote_config.validate(host.local_settings, config)
        except remote_config.Invalid as exc:
            record = ConfigRecord(version, "rejected", config if isinstance(config, dict) else {}, exc.errors)
            log.warning("fleet.config_rejected", version=version, errors=exc.errors)
        else:
            restart = remote_config.needs_restart(host.settings, desired.settings)
            record = ConfigRecord(version, "pending_restart" if restart else "applied", config or {}, [])
            await self.host.journal.call(self.store.record_config, record, self._clock())
            self._apply(desired)
            if desired.maintenance is not None:
                await self._set_maint(desired.maintenance)
            log.info("fleet.config_applied", version=version, status=record.status)
        if record.status == "rejected":
            await self.host.journal.call(self.store.record_config, record, self._clock())
        self.config_record = record
        await self._quietly(self.publish_reported())
        if record.status != "rejected":
            self._say_online_soon(version)

    def _apply(self, desired: remote_config.Desired) -> None:
        """Put the live subset in force: new orders use it; orders in flight keep their own policy."""
        from kiosk.service import policy_from  # noqa: PLC0415 - service imports this module

        host = self.host
        running = host.settings
        new = desired.settings
        # request_timeout_s is the Stripe client's, fixed until a restart (pending_restart).
        payments = new.payments.model_copy(update={"request_timeout_s": running.payments.request_timeout_s})
        live = new.model_copy(update={"payments": payments})
        policy = policy_from(live)
        runner = host.runner
        runner.config = replace(runner.config, currencies=live.currency, max_amount=live.max_amount, policy=policy)
        runner.policy = policy
        period_changed = live.fleet.health_period_s != running.fleet.health_period_s
        host.settings = live
        if period_changed:
            self._health_bell.set()

    async def _set_maint(self, maintenance: remote_config.Maintenance) -> None:
        await self.host.journal.call(remote_config.save_maintenance, self.host.journal, maintenance)
        self.maintenance = maintenance
        self.host.availability.maintenance = maintenance.reason()
        self.host.announce_soon()
        log.info("fleet.maintenance", enabled=maintenance.enabled, message=maintenance.message)

    async def _on_job(self, job_id: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            doc = payloads.load(payload)
        except payloads.BadPayload as exc:
            await self.job_update(job_id, "REJECTED", reason=f"bad_request: {exc}")
            return
        if not self._signed(doc):
            # Not recorded: a correctly signed document with this id may still come.
            await self.job_update(
                job_id, "REJECTED", reason="bad_signature: the job is not signed with the fleet's key"
            )
            return
        key = f"job:{job_id}"
        if await self.host.journal.call(self.store.answered, key) is not None:
            return  # a job id runs at most once; the retained document comes back at every connect
        now = self._clock()
        await self.host.journal.call(self.store.remember, key, "job", b"", now)
        try:
            not_after = payloads.timestamp(doc.get("not_after"), "not_after")
        except payloads.BadPayload as exc:
            await self.job_update(job_id, "REJECTED", reason=f"bad_request: {exc}")
            return
        if doc.get("job_id") != job_id:
            await self.job_update(job_id, "REJECTED", reason="bad_request: job_id differs from the topic's")
        elif not_after is not None and not_after <= now:
            await self.job_update(job_id, "REJECTED", reason="expired: not_after has passed")
        else:
            log.info("fleet.job", job_id=job_id, type=doc.get("type"))
            await self.jobs.start(job_id, doc)

    # -- commands ------------------------------------------------------------------------------

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return {
            "pong": True,
            "session": self.session,
            "version": __version__,
            "uptime_s": round(self._monotonic() - self._started, 1),
        }

    async def _rebirth(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        try:
            return {"republished": await self.publish_all()}
        except BusUnavailable as exc:
            raise CommandFailed("mqtt_unavailable", str(exc)) from None

    async def _set_maintenance(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            maintenance = remote_config.parse_maintenance(args, "args")
        except remote_config.Invalid as exc:
            raise CommandFailed("bad_request", str(exc)) from None
        await self._set_maint(maintenance)
        await self._quietly(self.publish_reported())
        return {"maintenance": {"enabled": maintenance.enabled, "message": maintenance.message}}

    async def _reconcile(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        try:
            report = await self.host.reconciler.run_once()
        except UpstreamError as exc:
            raise CommandFailed("stripe_unavailable", exc.message) from None
        return {"seen": report.seen, "released": list(report.released), "failed": list(report.failed)}

    async def _cancel_order(self, args: dict[str, Any]) -> dict[str, Any]:
        order_id = args.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise CommandFailed("bad_request", "args.order_id must name an order")
        outcome = await self.host.runner.abandon(order_id, "operator_canceled", "canceled by an operator")
        if outcome == "not_open":
            raise CommandFailed("unknown_order", f"order {order_id[:64]} is not open")
        if outcome == "too_late":
            raise CommandFailed("too_late", f"order {order_id[:64]} is being captured: its product was dispensed")
        return {"order_id": order_id, "canceled": True}

    async def _restart(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        if self.jobs.busy():
            raise CommandFailed("busy", "a job is in progress; restart when it has ended")
        self._restart_asked = True
        return {"restarting": True, "exit_code": EXIT_RESTART}

    async def _restart_when_sent(self) -> None:
        """Stop once the response left the journal outbox (bounded: it is durable there anyway)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESTART_DRAIN_S):
                while (await self.host.journal.call(self.host.journal.outbox_stats)).depth:  # noqa: ASYNC110 - in SQLite
                    await asyncio.sleep(0.05)
        log.info("fleet.restart", exit_code=EXIT_RESTART)
        self.host.request_stop(EXIT_RESTART)
