"""`kiosk run`: the daemon — journal, Stripe, the bus and the runner under one task group.

Start-up order: open the journal and load every open order (local state restored: READY=1, not
waiting for the network), then connect to the broker and Stripe in the background. SIGTERM
tells systemd STOPPING=1 and stops within a bounded time; every order is saved at each step, so
whatever was in flight is resumed (read back from Stripe) at the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from kiosk import __version__, crashpoints, logs, messages
from kiosk.availability import Availability
from kiosk.bus import Bus, Publication
from kiosk.errors import BusUnavailable, JournalError, UpstreamError
from kiosk.fleet import remote_config
from kiosk.fleet.agent import FleetAgent
from kiosk.fleet.updates import Updater
from kiosk.gateway import Gateway
from kiosk.journal import PRUNE_BATCH, Journal, OutboxMessage
from kiosk.model import Call, CallFailed, CallSucceeded, Event, Op, OrderData, Policy
from kiosk.reconciler import Reconciler
from kiosk.runner import Runner, RunnerConfig, failure_event, reader_view
from kiosk.systemd import Notifier

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kiosk.journal import OutboxRow
    from kiosk.settings import Settings

log = logs.get("service")

SHUTDOWN_GRACE_S = 5.0
UNAVAILABLE_CHECK_S = 10.0  # at most this long between reader checks while payments are unavailable
RECONCILE_FIRST_S = 5.0
MARK_FLUSH_S = 1.0  # an idle outbox writes its acknowledged marks after this long
PRUNE_EVERY_S = 6 * 3600.0  # ended orders past journal.keep_days are deleted at start, then this often
PRUNE_PAUSE_S = 0.05  # between two batches of deletions, so that orders' own writes go first
DAY_S = 86_400.0


def policy_from(settings: Settings) -> Policy:
    """The per-order settings, as the core takes them."""
    p = settings.payments
    return Policy(
        kiosk_id=settings.id,
        card_timeout_s=p.card_timeout_s,
        max_card_attempts=p.max_card_attempts,
        vend_result_timeout_s=p.vend_result_timeout_s,
        flow=p.flow,
        poll_first_s=p.poll_interval_s,
        poll_interval_s=p.poll_interval_s,
        poll_slow_s=2 * p.poll_interval_s,
        step_budget_s=max(60.0, 2 * p.request_timeout_s),
        allowed_brands=p.allowed_brands,
        allowed_funding=p.allowed_funding,
        allow_wallets=p.allow_wallets,
    )


class Service:
    """One running daemon."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.boot_id = uuid.uuid4().hex
        self.prefix = settings.mqtt.topic_prefix
        self.journal = Journal.in_dir(settings.state_dir)
        self.local_settings = settings
        if settings.fleet.enabled:
            # The remote configuration accepted last time is in force from the start.
            settings = self.settings = remote_config.startup_settings(settings, self.journal)
        self.exit_code = 0
        self.gateway = Gateway.from_settings(settings)
        self.availability = Availability(settings.stripe.reader_id)
        self._outbox_bell = asyncio.Event()
        self._states: dict[str, bytes] = {}  # kioskd/state and reader/state not yet published
        self._announce_due = False  # a call's outcome changed what they say; not announced yet
        self._stop = asyncio.Event()
        self._published_state: tuple[Any, ...] | None = None
        self._published_reader: tuple[Any, ...] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.runner = Runner(
            RunnerConfig(
                kiosk_id=settings.id,
                topic_prefix=self.prefix,
                currencies=settings.currency,
                max_amount=settings.max_amount,
                policy=policy_from(settings),
            ),
            self.journal,
            self.gateway,
            outbox_ready=self._outbox_bell.set,
            on_outcome=self._observe,
            on_saved=self._announce_if_due,
            accepting=self.availability.refusal,
            on_terminal=self._on_terminal,
        )
        self.reconciler = Reconciler(
            settings.id, self.journal, self.gateway, is_open=lambda order_id: self.runner.order(order_id) is not None
        )
        # Fleet topics share this connection; the fleet Will rides a connection of its own
        # (kiosk/fleet/agent.py says why): this one keeps the local bus's Will.
        self.fleet = FleetAgent(self) if settings.fleet.enabled else None
        # Software updates: the fleet's `software_update` jobs, and the commit after a restart.
        self.updates = Updater(self, self.fleet) if self.fleet is not None else None
        if self.fleet is not None and self.updates is not None:
            self.fleet.jobs = self.updates
        self.bus = Bus(
            settings.mqtt,
            client_id=f"kioskd-{settings.id}",
            will=Publication(
                f"{self.prefix}/kioskd/state", messages.dumps(self._state_payload(online=False)), retain=True
            ),
            subscriptions=[
                *(f"{self.prefix}/order/+/{kind}" for kind in ("request", "cancel", "vend_result")),
                *(self.fleet.subscriptions if self.fleet else ()),
            ],
            on_connect=self._on_connect,
        )

    # -- state topics ---------------------------------------------------------------------------

    def _state_payload(self, *, online: bool) -> dict[str, Any]:
        snap = self.availability.snapshot()
        reason = None
        if not online:
            reason = {"code": "daemon_offline", "message": "kiosk is not running"}
        elif snap.code is not None:
            reason = {"code": snap.code, "message": snap.message or ""}
        return {
            "v": 1,
            "id": uuid.uuid4().hex,
            "ts": messages.now_rfc3339(time.time()),
            "state": "online" if online else "offline",
            "payments": snap.payments if online else "unavailable",
            "reason": reason,
            "version": __version__,
            "boot_id": self.boot_id,
        }

    def _reader_payload(self) -> dict[str, Any]:
        snap = self.availability.snapshot()
        return {
            "v": 1,
            "id": uuid.uuid4().hex,
            "ts": messages.now_rfc3339(time.time()),
            "reader": self.settings.stripe.reader_id,
            "status": snap.reader_status,
            "device_type": snap.device_type,
            "action": None if snap.action is None else {"type": snap.action[0], "status": snap.action[1]},
        }

    async def _announce(self, *, force: bool = False) -> None:
        """Publish kioskd/state and reader/state (retained) when what they say changed."""
        self._announce_due = False
        snap = self.availability.snapshot()
        daemon_key = (snap.payments, snap.code)
        reader_key = (snap.reader_status, snap.device_type, snap.action)
        out: list[OutboxMessage] = []
        if force or daemon_key != self._published_state:
            self._published_state = daemon_key
            if snap.payments == "unavailable":
                log.warning("payments.unavailable", code=snap.code, reason=snap.message)
            else:
                log.info("payments.available", reader=snap.reader_status)
            out.append(
                OutboxMessage(
                    f"{self.prefix}/kioskd/state", messages.dumps(self._state_payload(online=True)), retain=True
                )
            )
        if force or reader_key != self._published_reader:
            self._published_reader = reader_key
            out.append(
                OutboxMessage(f"{self.prefix}/reader/state", messages.dumps(self._reader_payload()), retain=True)
            )
        if out:
            # Published from memory by the outbox task, newest per topic: a state describes this
            # run alone (a restart announces itself afresh), so it is not journaled.
            for message in out:
                self._states[message.topic] = message.payload
            self._outbox_bell.set()
        if self.fleet is not None:
            self.fleet.on_availability(snap)

    def _observe(self, call: Call, event: Event) -> None:
        if self.availability.observe(call, event, time.time()):
            self._announce_due = True  # once the outcome is saved (`_announce_if_due`)

    def _announce_if_due(self) -> None:
        if self._announce_due:
            self._announce_due = False
            task = asyncio.get_running_loop().create_task(self._announce())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _on_connect(self) -> None:
        await self._announce(force=True)
        self._outbox_bell.set()
        if self.fleet is not None:
            await self.fleet.on_connect()

    # -- what the fleet agent asks of the service ------------------------------------------------

    def _on_terminal(self, order: OrderData) -> None:
        if self.availability.order_ended(order, time.time()):
            self.announce_soon()  # a step ran out of time: payments unavailable for a while
        if self.fleet is not None:
            self.fleet.on_terminal(order)

    def request_stop(self, exit_code: int) -> None:
        """Stop gracefully (as on SIGTERM) and exit with `exit_code`."""
        self.exit_code = exit_code
        self._stop.set()

    def announce_soon(self) -> None:
        """Re-publish kioskd/state soon (maintenance was switched)."""
        task = asyncio.get_running_loop().create_task(self._announce())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def outbox_ready(self) -> None:
        """Wake the outbox publisher."""
        self._outbox_bell.set()

    # -- tasks ----------------------------------------------------------------------------------

    async def _consume(self) -> None:
        async for message in self.bus.messages():
            try:
                if self.fleet is not None and self.fleet.owns(message.topic):
                    await self.fleet.on_message(message.topic, message.payload)
                else:
                    await self.runner.on_message(message.topic, message.payload)
            except JournalError:
                # Nothing was saved: the message must not be acknowledged. Stop; systemd restarts
                # kiosk and the broker delivers the message again.
                log.exception("bus.message_not_saved", topic=message.topic[:200])
                raise
            except Exception:
                # A bug must not turn one message into a crash loop: log it and let it go.
                log.exception("bus.message_failed", topic=message.topic[:200])
            message.ack()

    async def _publish_outbox(self) -> None:
        """Publish what the journal queued, in order, then the latest state messages.

        The journal hands over what it commits (`take_fresh`); the table is read once, here at the
        start. Acknowledged messages are deleted by the journal's next write (`mark_sent_later`),
        or after MARK_FLUSH_S of quiet.
        """
        # What the previous run left may have been published already: the marks of its last
        # batch died with it. Send only the newest retained message per topic again, so that no
        # controller sees an order's status go back (an old seq after a newer one).
        left = await self.journal.call(self.journal.take_outbox)
        drop = superseded(left)
        await self.journal.call(self.journal.mark_sent, drop)
        dropped = set(drop)
        queue = collections.deque(row for row in left if row.id not in dropped)
        while True:
            await self.bus.wait_connected()
            queue.extend(self.journal.take_fresh())
            if not queue and not self._states:
                self._outbox_bell.clear()
                await self._quiet_outbox()
                continue
            try:
                while queue:
                    row = queue[0]
                    await self.bus.publish(row.topic, row.payload, qos=1, retain=row.retain, expiry_s=row.expiry_s)
                    queue.popleft()
                    self.journal.mark_sent_later((row.id,))
                    if row.topic.endswith("/status") and b'"state":"approved"' in row.payload:
                        crashpoints.reached("approved_published")
                for topic, payload in list(self._states.items()):
                    await self.bus.publish(topic, payload, qos=1, retain=True)
                    if self._states.get(topic) is payload:
                        del self._states[topic]
            except BusUnavailable:
                await asyncio.sleep(0.1)

    async def _quiet_outbox(self) -> None:
        """Wait for the bell; write the held marks if it stays quiet for MARK_FLUSH_S."""
        if not self.journal.marks_pending:
            await self._outbox_bell.wait()
            return
        try:
            async with asyncio.timeout(MARK_FLUSH_S):
                await self._outbox_bell.wait()
        except TimeoutError:
            await self.journal.call(self.journal.flush_marks)

    async def _watch_reader(self) -> None:
        """When no order is using the reader, check now and then that it and Stripe answer."""
        while True:
            if self.runner.open_orders == 0:
                call = Call(Op.READ_READER)
                try:
                    reader = await self.gateway.retrieve_reader()
                    self.availability.set_device_type(reader.device_type)
                    event: Event = CallSucceeded(call, reader=reader_view(reader))
                except UpstreamError as exc:
                    event = failure_event(call, exc)
                self._observe(call, event)
                if isinstance(event, CallFailed):
                    log.warning("reader.check_failed", code=event.code, failure=event.failure.value)
            await self._announce()
            every = self.settings.payments.reader_check_s
            if self.availability.refusal() is not None:
                # Unavailable: look again sooner, so payments come back without waiting long.
                every = min(every, UNAVAILABLE_CHECK_S)
            await asyncio.sleep(every)

    async def _reconcile(self) -> None:
        every = self.settings.payments.reconcile_every_s
        await asyncio.sleep(min(RECONCILE_FIRST_S, every))
        while True:
            try:
                report = await self.reconciler.run_once()
                log.info("reconciler.pass", seen=report.seen, released=len(report.released), failed=len(report.failed))
            except UpstreamError as exc:
                log.warning("reconciler.search_failed", code=exc.code)
            await asyncio.sleep(every)

    async def _prune_journal(self) -> None:
        """Delete ended orders older than `journal.keep_days`, batch by batch; open ones stay."""
        while True:
            keep_days = self.settings.journal.keep_days
            orders = transitions = 0
            try:
                while True:
                    pruned = await self.journal.call(self.journal.prune, keep_days * DAY_S)
                    orders += pruned.orders
                    transitions += pruned.transitions
                    if pruned.orders < PRUNE_BATCH:
                        break
                    await asyncio.sleep(PRUNE_PAUSE_S)
            except JournalError as exc:
                # Housekeeping only: the orders stay, and the next pass tries again.
                log.warning("journal.prune_failed", error=str(exc))
            if orders:
                log.info("journal.pruned", orders=orders, transitions=transitions, keep_days=keep_days)
            await asyncio.sleep(PRUNE_EVERY_S)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        recovered = await self.runner.recover()
        await self._drop_stale_states()
        self.notifier.ready(status=f"serving; {recovered} open order(s) recovered")
        log.info("service.ready", kiosk_id=self.settings.id, recovered=recovered, version=__version__)
        try:
            async with self.bus, asyncio.TaskGroup() as tasks:
                tasks.create_task(self.runner.run(), name="runner")
                tasks.create_task(self._consume(), name="consume")
                outbox = tasks.create_task(self._publish_outbox(), name="outbox")
                watch = tasks.create_task(self._watch_reader(), name="reader-watch")
                tasks.create_task(self._reconcile(), name="reconciler")
                tasks.create_task(self._prune_journal(), name="journal-prune")
                if self.fleet is not None:
                    tasks.create_task(self.fleet.run(), name="fleet")
                if self.updates is not None:
                    tasks.create_task(self.updates.run(), name="updates")
                if self.notifier.watchdog_interval:
                    tasks.create_task(self._watchdog(self.notifier.watchdog_interval), name="watchdog")
                stopper = tasks.create_task(self._stop.wait(), name="stop")
                await stopper
                self.notifier.stopping(status="stopping")
                log.info("service.stopping")
                # Nothing may publish "online" after "offline": stop what announces states first.
                outbox.cancel()
                watch.cancel()
                await asyncio.wait({outbox, watch})
                await self._say_offline()
                with contextlib.suppress(JournalError):
                    await self.journal.call(self.journal.flush_marks)
                raise _Stopped  # noqa: TRY301 - leaving the task group cancels every task
        except* _Stopped:
            pass
        finally:
            with contextlib.suppress(Exception):
                await self.gateway.close()
        log.info("service.stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _drop_stale_states(self) -> None:
        """Drop state messages an earlier run queued but never saw acknowledged.

        They describe that run (its boot id, its reader); re-sent now they would announce a
        daemon that no longer exists. This run announces itself as soon as it connects.
        """
        topics = {f"{self.prefix}/kioskd/state", f"{self.prefix}/reader/state"}
        rows = await self.journal.call(self.journal.pending_outbox, 10_000)  # more than a run leaves
        stale = [row.id for row in rows if row.topic in topics]
        if stale:
            await self.journal.call(self.journal.mark_sent, stale)
            log.info("service.stale_states_dropped", count=len(stale))

    async def _say_offline(self) -> None:
        if self.fleet is not None:
            await self.fleet.say_offline()
        with contextlib.suppress(BusUnavailable, TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE_S / 2):
                await self.bus.publish(
                    f"{self.prefix}/kioskd/state",
                    messages.dumps(self._state_payload(online=False)),
                    qos=1,
                    retain=True,
                )


def superseded(rows: Sequence[OutboxRow]) -> list[int]:
    """Ids of retained messages that a later retained message on the same topic replaces."""
    newest = {row.topic: row.id for row in rows if row.retain}
    return [row.id for row in rows if row.retain and newest[row.topic] != row.id]


class _Stopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the task group to cancel every task on SIGTERM."""


def run(settings: Settings) -> int:
    """Run the daemon to completion."""
    service_box: list[Service] = []

    async def main() -> int:
        service = Service(settings)
        service_box.append(service)
        try:
            return await service.run()
        finally:
            # The journal's last calls (a caller cancelled by the stop may have left one running)
            # finish while the loop still runs, not after it has closed: the stop waits for them
            # either way, and their results then land on a loop that can still take them.
            await asyncio.to_thread(service.journal.close)

    try:
        return asyncio.run(main())
    except BaseExceptionGroup as group:
        # A task died: say which and why in the log (journald keeps it), then let the command
        # line print the first cause as one sentence and exit 1, so that systemd restarts kiosk.
        leaves = _leaves(group)
        for leaf in leaves:
            log.exception("service.crashed", error=type(leaf).__name__, message=str(leaf), exc_info=leaf)
        raise leaves[0] from group
    finally:
        for service in service_box:
            service.journal.close()
            service.notifier.close()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
