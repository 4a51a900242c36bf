"""The demo's scripted scenarios: what the customer and the machine do, and what must come of it.

Each scenario drives the simulated reader through the simulator's API (a card presented
automatically, the customer pressing cancel, or nothing at all), sells one order through the
simulated controller, and is judged against the simulator's ledger: the expected final state and
reason, exactly one PaymentIntent for the order, the captured amount, and no hold left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiosk.demo.controller import Order, VendingController, VendOutcome
from kiosk.demo.timeline import Timeline, money

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from kiosk.demo.daemon import DaemonProcess
    from kiosk.simulator import Ledger, Simulator

GOOD_CARD = "4242424242424242"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
PRESENT_AFTER_S = 0.3  # the customer taps this long after the reader asks
RESTART_AFTER_S = 1.0  # how long the daemon stays dead in the crash scenario
CUSTOMER_CANCEL_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Expect:
    """How a scenario must end."""

    state: str
    reason: str | None = None
    captured: int = 0
    intent_status: str = "canceled"


@dataclass(slots=True)
class Stage:
    """Everything a scenario acts on."""

    sim: Simulator
    reader: str
    ctl: VendingController
    daemon: DaemonProcess
    timeline: Timeline

    def present(self, order_id: str, card: str | None, what: str) -> None:
        """Script the customer: tap `card` whenever the reader asks (None: never)."""
        self.sim.auto_present(self.reader, None if card is None else PRESENT_AFTER_S, card=card or GOOD_CARD)
        self.timeline.note(order_id, "customer", what)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scripted sale."""

    key: str
    title: str
    order: Order
    expect: Expect
    play: Callable[[Stage, Scenario], Awaitable[dict[str, Any]]]


def _dispense(outcome: VendOutcome) -> Callable[[Mapping[str, Any]], Awaitable[VendOutcome]]:
    async def dispense(_approved: Mapping[str, Any]) -> VendOutcome:
        return outcome

    return dispense


async def _until(stage: Stage, sale: asyncio.Task[dict[str, Any]], order_id: str, state: str) -> bool:
    """Wait until the order reaches `state`; False when the sale ended first."""
    waiter = asyncio.ensure_future(stage.ctl.wait_for(order_id, state))
    await asyncio.wait({sale, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if waiter.done():
        return True
    waiter.cancel()
    return False


async def _approved_and_dispensed(stage: Stage, sc: Scenario) -> dict[str, Any]:
    stage.present(sc.order.order_id, GOOD_CARD, f"taps visa {GOOD_CARD[-4:]} when the reader asks")
    return await stage.ctl.buy(sc.order, _dispense(VendOutcome("success")))


async def _declined_then_good_card(stage: Stage, sc: Scenario) -> dict[str, Any]:
    order_id = sc.order.order_id
    stage.present(order_id, INSUFFICIENT_FUNDS_CARD, f"taps card {INSUFFICIENT_FUNDS_CARD[-4:]} (insufficient funds)")
    sale = asyncio.create_task(stage.ctl.buy(sc.order, _dispense(VendOutcome("success"))))
    if await _until(stage, sale, order_id, "declined"):
        stage.present(order_id, GOOD_CARD, f"tries another card: visa {GOOD_CARD[-4:]}")
    return await sale


async def _no_card(stage: Stage, sc: Scenario) -> dict[str, Any]:
    stage.present(sc.order.order_id, None, "walks away without presenting a card")
    return await stage.ctl.buy(sc.order, _dispense(VendOutcome("success")))


async def _dispense_jam(stage: Stage, sc: Scenario) -> dict[str, Any]:
    stage.present(sc.order.order_id, GOOD_CARD, f"taps visa {GOOD_CARD[-4:]}")

    async def jam(_approved: Mapping[str, Any]) -> VendOutcome:
        stage.timeline.note(sc.order.order_id, "machine", "the spiral jams: nothing comes out")
        return VendOutcome("failure")

    return await stage.ctl.buy(sc.order, jam)


async def _partial_vend(stage: Stage, sc: Scenario) -> dict[str, Any]:
    stage.present(sc.order.order_id, GOOD_CARD, f"taps visa {GOOD_CARD[-4:]} for two items")
    vended = sc.expect.captured

    async def partial(_approved: Mapping[str, Any]) -> VendOutcome:
        stage.timeline.note(sc.order.order_id, "machine", "the first item comes out, the second is stuck")
        return VendOutcome("partial", vended)

    return await stage.ctl.buy(sc.order, partial)


async def _customer_cancels(stage: Stage, sc: Scenario) -> dict[str, Any]:
    order_id = sc.order.order_id
    stage.present(order_id, None, "changes their mind at the reader")
    sale = asyncio.create_task(stage.ctl.buy(sc.order, _dispense(VendOutcome("success"))))
    if await _until(stage, sale, order_id, "awaiting_card"):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CUSTOMER_CANCEL_WAIT_S
        # The reader may still be starting the payment: press again until the press lands.
        while not sale.done() and loop.time() < deadline:
            await asyncio.sleep(0.3)
            if stage.sim.customer_cancel(stage.reader):
                stage.timeline.note(order_id, "customer", "presses cancel on the reader")
                break
    return await sale


async def _daemon_killed_mid_order(stage: Stage, sc: Scenario) -> dict[str, Any]:
    order_id = sc.order.order_id
    stage.present(order_id, GOOD_CARD, f"taps visa {GOOD_CARD[-4:]}")
    restarted: list[asyncio.Task[None]] = []

    async def restart() -> None:
        stage.timeline.note(order_id, "demo", "kioskd is down: the broker keeps the vend_result for it")
        await asyncio.sleep(RESTART_AFTER_S)
        stage.daemon.start()
        stage.timeline.note(order_id, "demo", f"starts kioskd again on the same journal (pid {stage.daemon.pid})")

    async def dispense_while_daemon_dies(_approved: Mapping[str, Any]) -> VendOutcome:
        pid = stage.daemon.pid
        stage.daemon.kill()
        stage.timeline.note(order_id, "demo", f"SIGKILL kioskd (pid {pid}) while the machine dispenses")
        restarted.append(asyncio.create_task(restart()))
        return VendOutcome("success")

    try:
        return await stage.ctl.buy(sc.order, dispense_while_daemon_dies)
    finally:
        for task in restarted:
            await task


async def _daemon_dies_after_capture(stage: Stage, sc: Scenario) -> dict[str, Any]:
    order_id = sc.order.order_id
    ctl, daemon, timeline = stage.ctl, stage.daemon, stage.timeline
    booted = (ctl.daemon_state or {}).get("boot_id")
    timeline.note(order_id, "demo", "restarts kioskd set to die right after Stripe captures, before it records that")
    daemon.stop()
    daemon.start(crash_at="after_capture")
    await ctl.wait_daemon(not_boot=booted)
    stage.present(order_id, GOOD_CARD, f"taps visa {GOOD_CARD[-4:]}")

    async def restart_when_dead() -> None:
        await daemon.wait_exit()
        timeline.note(order_id, "demo", "kioskd died after the capture: its journal still says capturing")
        await asyncio.sleep(RESTART_AFTER_S)
        daemon.start()
        timeline.note(order_id, "demo", f"starts kioskd again (pid {daemon.pid}): it must not capture twice")

    watcher = asyncio.create_task(restart_when_dead())
    try:
        return await ctl.buy(sc.order, _dispense(VendOutcome("success")))
    finally:
        if not watcher.done():
            watcher.cancel()  # the crash point was never reached: the verdict says what happened
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "approved",
        "approved and dispensed → completed",
        Order("demo-1-coffee", 250, items=({"sku": "coffee", "name": "Coffee", "quantity": 1, "unit_amount": 250},)),
        Expect("completed", captured=250, intent_status="succeeded"),
        _approved_and_dispensed,
    ),
    Scenario(
        "declined",
        "insufficient funds, then a good card → completed on the same PaymentIntent",
        Order("demo-2-sandwich", 450),
        Expect("completed", captured=450, intent_status="succeeded"),
        _declined_then_good_card,
    ),
    Scenario(
        "no_card",
        "no card presented → canceled (card_timeout)",
        Order("demo-3-water", 150),
        Expect("canceled", "card_timeout"),
        _no_card,
    ),
    Scenario(
        "jam",
        "dispense jam → canceled (vend_failed), hold released",
        Order("demo-4-chocolate", 200),
        Expect("canceled", "vend_failed"),
        _dispense_jam,
    ),
    Scenario(
        "partial",
        "partial vend → only what came out is captured",
        Order(
            "demo-5-snacks",
            500,
            items=(
                {"sku": "cola", "name": "Cola", "quantity": 1, "unit_amount": 300},
                {"sku": "crisps", "name": "Crisps", "quantity": 1, "unit_amount": 200},
            ),
        ),
        Expect("completed", captured=300, intent_status="succeeded"),
        _partial_vend,
    ),
    Scenario(
        "customer_cancel",
        "customer presses cancel on the reader → canceled (customer_canceled)",
        Order("demo-6-juice", 300),
        Expect("canceled", "customer_canceled"),
        _customer_cancels,
    ),
    Scenario(
        "crash",
        "kioskd killed (SIGKILL) after approved, restarted → completed, captured once",
        Order("demo-7-tea", 350),
        Expect("completed", captured=350, intent_status="succeeded"),
        _daemon_killed_mid_order,
    ),
    Scenario(
        "crash_after_capture",
        "kioskd dies right after Stripe captured, restarted → completed, captured once",
        Order("demo-8-cookies", 280),  # not 275: amounts ending in 75 are Stripe's PIN decline
        Expect("completed", captured=280, intent_status="succeeded"),
        _daemon_dies_after_capture,
    ),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one scenario ended, judged."""

    scenario: Scenario
    ok: bool
    summary: str
    problems: tuple[str, ...]


def judge(scenario: Scenario, final: Mapping[str, Any] | None, ledger: Ledger) -> Verdict:
    """Compare a scenario's final status and its ledger entries with what was expected."""
    expect = scenario.expect
    order = scenario.order
    problems: list[str] = []
    if final is None:
        problems.append("the order reached no final state")
        state, reason, reported = "unfinished", None, None
    else:
        state = str(final.get("state"))
        raw_reason = final.get("reason")
        reason = raw_reason.get("code") if isinstance(raw_reason, dict) else None
        reported = final.get("captured_amount")
        if state != expect.state or reason != expect.reason:
            want = expect.state + (f" ({expect.reason})" if expect.reason else "")
            got = state + (f" ({reason})" if reason else "")
            problems.append(f"ended {got}, expected {want}")
        if expect.state == "completed" and reported != expect.captured:
            problems.append(f"status says captured {reported}, expected {expect.captured}")
    intents = ledger.for_order(order.order_id)
    captures = [c.amount for i in intents for c in i.captures]
    if len(intents) != 1:
        problems.append(f"{len(intents)} PaymentIntents for the order, expected exactly one")
    problems.extend(
        f"{i.id} is {i.status}, expected {expect.intent_status}" for i in intents if i.status != expect.intent_status
    )
    if sum(captures) != expect.captured or len(captures) != (1 if expect.captured else 0):
        shown = " + ".join(str(c) for c in captures) or "nothing"
        problems.append(f"captured {shown}, expected {expect.captured or 'nothing'}")
    if problems:
        return Verdict(scenario, ok=False, summary="; ".join(problems), problems=tuple(problems))
    return Verdict(scenario, ok=True, summary=_summary(state, reason, expect, order, intents), problems=())


def _summary(state: str, reason: str | None, expect: Expect, order: Order, intents: tuple[Any, ...]) -> str:
    head = state + (f" ({reason})" if reason else "")
    intent = intents[0]
    if expect.captured:
        text = f"{head}, captured {money(expect.captured, order.currency)} once"
        if expect.captured < order.amount:
            text += f" of {money(order.amount, order.currency)}"
    elif intent.authorised:
        text = f"{head}, hold of {money(order.amount, order.currency)} released, nothing captured"
    else:
        text = f"{head}, nothing charged"
    return f"{text}, 1 PaymentIntent ({intent.id})"
