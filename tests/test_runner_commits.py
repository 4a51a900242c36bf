"""A sale's synced commits: six, and every idempotency key in the journal before its call.

A new order's first commit also holds its create call, and a vend result's commit its capture
call (`Runner._save_and_plan`): two commits fewer per sale than one per step. These tests run a
real Runner on a real journal and the simulator over HTTP; a gateway in between reads the journal
at the moment of each mutating call.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from kiosk import runner as runner_module
from kiosk.gateway import Gateway
from kiosk.journal import FILENAME, Journal
from kiosk.model import Policy
from kiosk.runner import Runner, RunnerConfig
from tests.harness import envelope
from tests.simgateway import sim_gateway

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PREFIX = "vend/v1"
CONFIG = RunnerConfig(
    kiosk_id="k1",
    topic_prefix=PREFIX,
    currencies=("usd",),
    max_amount=10_000,
    policy=Policy(kiosk_id="k1", poll_interval_s=0.05),
)


class Witness:
    """Wraps the gateway: before each mutating call, the key the journal holds for it."""

    def __init__(self, gateway: Gateway, journal: Journal, *, hold: str | None = None) -> None:
        self._gateway = gateway
        self._journal = journal
        self.order_id = ""
        self.calls: list[tuple[str, str, str | None]] = []  # (call, key used, key in the journal)
        # The call named `hold` waits for `release`; `reached` says it is waiting.
        self.hold = hold
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    def _journaled_key(self) -> str | None:
        stored = self._journal.get(self.order_id)
        if stored is None:
            return None
        inflight = runner_module.decode(stored.data_json).inflight
        return inflight.key if inflight is not None else None

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._gateway, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if "key" in kwargs:
                self.calls.append((name, kwargs["key"], self._journaled_key()))
            if name == self.hold:
                self.reached.set()
                await self.release.wait()
            return await real(*args, **kwargs)

        return call


def message(order_id: str, **body: Any) -> bytes:
    return json.dumps({**envelope(), "order_id": order_id, **body}).encode()


async def wait_state(journal: Journal, order_id: str, state: str) -> None:
    async with asyncio.timeout(10):
        while True:
            stored = journal.get(order_id)
            if stored is not None and stored.state == state:
                return
            await asyncio.sleep(0.01)


async def sale(
    tmp_path: Path,
    vend: dict[str, Any],
    *,
    hold: str | None = None,
    meanwhile: Callable[[Runner, Witness], Awaitable[None]] | None = None,
) -> tuple[Journal, Witness, int]:
    """One order through a real Runner: (journal, witness, commits the order took).

    `meanwhile` runs after the vend result was applied (with the call named `hold` held).
    """
    journal = Journal.open(tmp_path / FILENAME)
    async with sim_gateway() as rig:
        rig.sim.auto_present(rig.reader, 0.0)
        witness = Witness(rig.gw, journal, hold=hold)
        runner = Runner(CONFIG, journal, cast("Gateway", witness))  # a gateway in all it is asked
        task = asyncio.create_task(runner.run())
        try:
            witness.order_id = "o-1"
            before = journal.commits
            await runner.on_message(f"{PREFIX}/order/o-1/request", message("o-1", amount=250, currency="usd"))
            await wait_state(journal, "o-1", "approved")
            await runner.on_message(f"{PREFIX}/order/o-1/vend_result", message("o-1", **vend))
            if meanwhile is not None:
                await meanwhile(runner, witness)
            await wait_state(journal, "o-1", "completed" if vend["result"] != "failure" else "canceled")
            commits = journal.commits - before
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    return journal, witness, commits


async def test_a_sale_takes_six_commits_and_each_key_is_journaled_before_its_call(tmp_path: Path) -> None:
    journal, witness, commits = await sale(tmp_path, {"result": "success"})
    try:
        # request + create key; created + process key; processing; approved; vend + capture key; captured.
        assert commits == 6
        assert [name for name, _, _ in witness.calls] == ["create_intent", "process_intent", "capture_intent"]
        for name, used, journaled in witness.calls:
            assert used == journaled, f"{name} was called with a key the journal did not hold yet"
        history = [(t.from_state, t.to_state, t.event) for t in journal.history("o-1")]
        assert history[0] == (None, "received", "request")
        assert ("approved", "capturing", "VendReported") in history
        assert history[-1][1] == "completed"
    finally:
        journal.close()


async def test_a_partial_vend_captures_with_the_key_saved_beside_the_vend_result(tmp_path: Path) -> None:
    journal, witness, commits = await sale(tmp_path, {"result": "partial", "vended_amount": 100})
    try:
        assert commits == 6
        name, used, journaled = witness.calls[-1]
        assert name == "capture_intent"
        assert used == journaled
        stored = journal.get("o-1")
        assert stored is not None
        assert json.loads(stored.data_json)["captured_amount"] == 100
    finally:
        journal.close()


async def test_an_operators_cancel_while_capturing_is_refused_and_the_sale_is_captured(tmp_path: Path) -> None:
    # Fleet `cancel_order` between a vend result and its capture: the product was dispensed.
    answers: list[str] = []

    async def cancel_while_capturing(runner: Runner, witness: Witness) -> None:
        async with asyncio.timeout(10):
            await witness.reached.wait()
        answers.append(await runner.abandon("o-1", "operator_canceled", "canceled by an operator"))
        witness.release.set()

    journal, _, _ = await sale(tmp_path, {"result": "success"}, hold="capture_intent", meanwhile=cancel_while_capturing)
    try:
        assert answers == ["too_late"]
        stored = journal.get("o-1")
        assert stored is not None
        assert stored.state == "completed"
        assert json.loads(stored.data_json)["captured_amount"] == 250
    finally:
        journal.close()


# --- A request's journal calls ------------------------------------------------------------------


def record_calls(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the journal methods the runner calls from now on, in order."""
    names: list[str] = []
    real = journal.call

    async def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        names.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(journal, "call", call)
    return names


def published(journal: Journal) -> list[tuple[str, str | None]]:
    """What the runner queued since the last look: (state, reason code) of each status."""
    statuses = [json.loads(row.payload) for row in journal.take_fresh()]
    return [(s["state"], s["reason"]["code"] if s["reason"] else None) for s in statuses]


async def test_a_request_is_one_journal_call_and_a_used_order_id_is_answered_from_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, _, _ = await sale(tmp_path, {"result": "success"})  # o-1: completed, no longer live
    try:
        ended = journal.get("o-1")
        async with sim_gateway() as rig:
            rig.sim.auto_present(rig.reader, 0.0)
            runner = Runner(CONFIG, journal, rig.gw)
            task = asyncio.create_task(runner.run())
            try:
                calls = record_calls(journal, monkeypatch)
                published(journal)
                # A new order: one call, which both finds the id unused and records the order.
                await runner.on_message(f"{PREFIX}/order/o-2/request", message("o-2", amount=300, currency="usd"))
                assert calls == ["add"]
                assert published(journal) == [("received", None)]
                await wait_state(journal, "o-2", "approved")
                published(journal)
                # o-1 again while o-2 holds the reader: not `busy`, the ended order's status.
                calls.clear()
                await runner.on_message(f"{PREFIX}/order/o-1/request", message("o-1", amount=250, currency="usd"))
                assert published(journal) == [("completed", None)]
                assert calls == ["get", "enqueue"]
                # o-2 ends; then o-1 again would be served as new, but the journal knows the id.
                await runner.on_message(f"{PREFIX}/order/o-2/vend_result", message("o-2", result="success"))
                await wait_state(journal, "o-2", "completed")
                published(journal)
                commits = journal.commits
                calls.clear()
                await runner.on_message(f"{PREFIX}/order/o-1/request", message("o-1", amount=250, currency="usd"))
                assert calls == ["add", "enqueue"]
                assert published(journal) == [("completed", None)]
                await runner.on_message(f"{PREFIX}/order/o-1/request", message("o-1", amount=999, currency="usd"))
                assert published(journal) == [("rejected", "order_conflict"), ("completed", None)]
                # Only the two answers were written; the ended order is as it was, and o-1 was
                # never charged again (one PaymentIntent, captured once).
                assert journal.commits - commits == 2
                assert journal.get("o-1") == ended
                assert [i.amount for i in rig.sim.ledger().intents] == [300]
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
    finally:
        journal.close()
