"""The rig of the crash and recovery tests: like tests/harness.py's, but the daemon starts later.

A crash test must arm the crash point on the daemon's first start, and a recovery test may first
put something in the journal or in Stripe, so `crash_rig` sets everything up except `kiosk run`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from kiosk.gateway import Gateway, Intent
from kiosk.journal import Journal
from kiosk.mosquitto import Mosquitto
from kiosk.simulator import Simulator
from tests.harness import API_KEY, Controller, Daemon, controller

FINAL = ("completed", "canceled", "failed")


@dataclass
class CrashRig:
    """Mosquitto, the simulator with a registered reader, a controller and a not yet started daemon."""

    sim: Simulator
    url: str
    reader: str
    daemon: Daemon
    ctl: Controller

    async def start_and_order(self, crash_at: str | None, order_id: str, amount: int) -> None:
        """Start the daemon (armed with `crash_at`), wait until it serves, publish the request."""
        self.daemon.start(crash_at=crash_at)
        await self.ctl.wait_daemon("online")
        await self.ctl.request(order_id, amount)

    async def crash(self, step: str) -> None:
        """Wait for the daemon armed with `step` to die there, by SIGKILL."""
        code = await self.daemon.wait_exit()
        assert code == -9, self.daemon.log()[-3000:]
        assert f"crash point {step} reached" in self.daemon.log()

    async def crash_through(self, steps: tuple[str, ...]) -> None:
        """The daemon was started armed with steps[0]: let it die there and at each later step, then restart it."""
        await self.crash(steps[0])
        for step in steps[1:]:
            self.daemon.start(crash_at=step)
            await self.crash(step)
        self.daemon.start()

    def journal(self) -> Journal:
        """The daemon's journal, opened from the test (SQLite WAL allows a second connection)."""
        return Journal.in_dir(Path(self.daemon.env["KIOSK_STATE_DIR"]))

    async def authorised_intent(self, amount: int, metadata: dict[str, str]) -> Intent:
        """A PaymentIntent authorised on a second reader, made with the real stripe client, not by kiosk."""
        spare = self.sim.register_reader("simulated-wpe", label="spare")
        async with Gateway(
            api_key=SecretStr(API_KEY), api_base=self.url, api_version=None, reader_id=spare, request_timeout_s=5
        ) as stripe:
            key = f"test:{spare}"
            intent = await stripe.create_intent(amount=amount, currency="usd", metadata=metadata, key=f"{key}:create")
            await stripe.process_intent(intent.id, key=f"{key}:process")
            self.sim.present_card(spare)
            self.sim.tick()
            intent = await stripe.retrieve_intent(intent.id)
        assert intent.status == "requires_capture", intent
        return intent

    def status_of(self, pi_id: str) -> str:
        """A PaymentIntent's status in the ledger."""
        return next(i.status for i in self.sim.ledger().intents if i.id == pi_id)


@asynccontextmanager
async def crash_rig(workdir: Path, broker: Mosquitto, **settings: Any) -> AsyncIterator[CrashRig]:
    """A CrashRig; `settings` are environment names without `KIOSK_` (`PAYMENTS__CARD_TIMEOUT_S="3"`)."""
    handle = Simulator(seed=11).start_in_thread()
    try:
        reader = handle.simulator.register_reader("simulated-wpe")
        daemon = Daemon(
            workdir,
            broker_url=broker.url,
            api_base=handle.url,
            reader_id=reader,
            **{"PAYMENTS__CARD_TIMEOUT_S": "10", "PAYMENTS__VEND_RESULT_TIMEOUT_S": "20", **settings},
        )
        async with controller(broker.host, broker.port) as ctl:
            try:
                yield CrashRig(handle.simulator, handle.url, reader, daemon, ctl)
            finally:
                if daemon.alive():
                    daemon.terminate()
                print(daemon.log()[-6000:])  # pytest shows it when the test fails
    finally:
        handle.stop()


async def vend_when_approved(ctl: Controller, order_id: str, result: str, vended: int | None = None) -> dict[str, Any]:
    """The controller's side of one sale: dispense on `approved`, report, wait for the end."""
    await ctl.wait_for(order_id, "approved", timeout=30)
    await ctl.vend(order_id, result, vended)
    return await ctl.wait_for(order_id, *FINAL, timeout=30)
