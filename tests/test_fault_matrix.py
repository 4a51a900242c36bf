"""The fault matrix: every fault of stripe-notes.md's failure table at every step where it can occur.

Each cell injects one fault (through the simulator: HTTP faults, reader faults, the clock) into
one order driven by the real runner over real HTTP, then checks design.md's invariants against
the simulator's ledger and that the NEXT order on the same kiosk simply works. The matrix is
printed (fault x step -> outcome); run with `-s` to see it. Cells run on several lanes (a kiosk
and its own simulator each) at once.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest

from tests.faultrig import ENDED, FAST, Lane, happy_order, lane, money_problems

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

LANES = 6
SPLIT = replace(FAST, flow="collect_confirm")

# Where each step's request goes (the simulator matches fnmatch patterns; `*` spans slashes).
ROUTES = {
    "create": ("POST", "/v1/payment_intents"),
    "display": ("POST", "/v1/terminal/readers/*/set_reader_display"),
    "process": ("POST", "/v1/terminal/readers/*/process_payment_intent"),
    "collect": ("POST", "/v1/terminal/readers/*/collect_payment_method"),
    "confirm": ("POST", "/v1/terminal/readers/*/confirm_payment_intent"),
    "read_reader": ("GET", "/v1/terminal/readers/*"),
    "read_intent": ("GET", "/v1/payment_intents/*"),
    "cancel_action": ("POST", "/v1/terminal/readers/*/cancel_action"),
    "capture": ("POST", "/v1/payment_intents/*/capture"),
    "cancel": ("POST", "/v1/payment_intents/*/cancel"),
}
STEPS = list(ROUTES)
# The customer's script for a step: what makes the order reach it.
SCRIPT = {"cancel_action": "cancel_waiting", "cancel": "vend_fail"}
Outcome = frozenset[tuple[str, str | None]]
NORMAL: dict[str, Outcome] = {
    "pay": frozenset({("completed", None)}),
    "cancel_waiting": frozenset({("canceled", "controller_canceled")}),
    "vend_fail": frozenset({("canceled", "vend_failed")}),
}
BUDGET: Outcome = frozenset({("failed", "payments_unavailable")})


@dataclass(frozen=True)
class Cell:
    """One fault at one step."""

    fault: str
    step: str
    arm: Callable[[Lane], None] | None = None  # before the order
    script: str = "pay"
    expect: frozenset[tuple[str, str | None]] = frozenset()
    unavailable: bool = False  # payments must be reported unavailable right after
    items: bool = False
    split: bool = False
    during: Callable[[Lane, str], Awaitable[None]] | None = None  # once the order awaits a card
    sticky: bool = False  # payments stay unavailable after the simulator is repaired, until a person acts
    stale: str | None = None  # an earlier order's payment left on the reader: "waiting" or "authorising"


@dataclass
class Result:
    """What a cell did."""

    cell: Cell
    outcome: str = "?"
    problems: list[str] = field(default_factory=list)


def http_fault(step: str, **rule: Any) -> Callable[[Lane], None]:
    """Arm a simulator fault rule for `step`'s request."""
    method, path = ROUTES[step]

    def arm(the_lane: Lane) -> None:
        the_lane.sim.add_fault(method=method, path=path, **rule)

    return arm


HTTP_FAULTS: dict[str, dict[str, Any]] = {
    "timeout (applied late)": {"latency_s": 1.5, "count": 1},
    "dropped reply (applied)": {"drop_connection": True, "count": 1},
    "500 (stored)": {"status": 500, "count": 1},
    "503 twice": {"status": 503, "count": 2},
    "429 rate_limit": {"status": 429, "code": "rate_limit", "count": 2},
    "429 lock_timeout": {"status": 429, "code": "lock_timeout", "count": 2},
    "429 Should-Retry": {"rate_limited_reason": "endpoint-rate", "count": 2},
    "409 key in use": {"status": 409, "code": "idempotency_key_in_use", "count": 2},
    "500 Should-Retry: false": {"status": 500, "should_retry": False, "count": 1},
}


def _expect(step: str, fault: str) -> frozenset[tuple[str, str | None]]:
    normal = NORMAL[SCRIPT.get(step, "pay")]
    if step == "create" and fault in {"500 (stored)", "503 twice"}:
        # Stripe stores a server error under the key and replays it; a create is never re-sent
        # under a new key (it could make a second PaymentIntent): the step's budget ends it.
        return BUDGET
    if step == "create" and fault == "500 Should-Retry: false":
        # Stripe says a resend will not help: the order ends at once, nothing sent again.
        return BUDGET
    return normal


def cells() -> list[Cell]:
    """The whole matrix."""
    out: list[Cell] = [
        Cell(
            fault,
            step,
            http_fault(step, **rule),
            script=SCRIPT.get(step, "pay"),
            expect=_expect(step, fault),
            items=step == "display",
            split=step in {"collect", "confirm"},
        )
        for fault, rule in HTTP_FAULTS.items()
        for step in STEPS
    ]
    for step in ("create", "process", "collect"):
        out.append(
            Cell(
                "Stripe down (5xx, step budget)",
                step,
                http_fault(step, status=500),
                expect=BUDGET,
                unavailable=True,
                split=step == "collect",
            )
        )
        out.append(
            Cell(
                "throttled on (429, step budget)",
                step,
                http_fault(step, status=429, code="rate_limit"),
                expect=BUDGET,
                unavailable=True,
                split=step == "collect",
            )
        )
    out += reader_cells()
    return out


def reader_timeout(*, false_negative: bool, count: int = 1) -> Callable[[Lane], None]:
    def arm(the_lane: Lane) -> None:
        the_lane.sim.reader_timeout(the_lane.reader, false_negative=false_negative, count=count)

    return arm


def reader_cells() -> list[Cell]:
    """terminal_reader_* codes, the reader's own endings, PI states."""
    out: list[Cell] = []
    completed = NORMAL["pay"]
    for step, split in (("process", False), ("collect", True), ("display", False)):
        out.append(
            Cell(
                "reader timeout, false negative",
                step,
                reader_timeout(false_negative=True),
                expect=completed,
                split=split,
                items=step == "display",
            )
        )
        out.append(
            Cell(
                "reader timeout, real",
                step,
                reader_timeout(false_negative=False),
                expect=completed,
                split=split,
                items=step == "display",
            )
        )
    out.append(
        Cell(
            "reader timeout, false negative",
            "cancel_action",
            script="cancel_waiting",
            during=_after_awaiting(lambda la: la.sim.reader_timeout(la.reader, false_negative=True)),
            expect=NORMAL["cancel_waiting"],
        )
    )
    out.append(
        Cell(
            "reader timeout, real",
            "cancel_action",
            script="cancel_waiting",
            during=_after_awaiting(lambda la: la.sim.reader_timeout(la.reader, false_negative=False, count=2)),
            expect=NORMAL["cancel_waiting"],
        )
    )
    out.append(
        Cell(
            "reader timeout, keeps failing",
            "process",
            reader_timeout(false_negative=False, count=1000),
            expect=BUDGET,
        )
    )
    out.append(
        Cell(
            "reader busy (card left inserted)",
            "process",
            http_fault("process", status=400, code="terminal_reader_busy", count=2),
            expect=completed,
        )
    )
    out.append(
        Cell(
            "reader busy (card left inserted)",
            "collect",
            http_fault("collect", status=400, code="terminal_reader_busy", count=2),
            expect=completed,
            split=True,
        )
    )
    for step, split in (("process", False), ("collect", True)):
        # Its PaymentIntent is not being authorised: kiosk clears the action, then takes the payment.
        out.append(
            Cell(
                "reader busy (earlier order's action)",
                step,
                script="present_when_awaiting",
                expect=completed,
                split=split,
                stale="waiting",
            )
        )
    # A card is being authorised on it: kiosk waits for that to end (never cancels it), then pays.
    out.append(
        Cell(
            "reader busy (earlier order's card authorising)",
            "process",
            script="present_when_awaiting",
            expect=completed,
            stale="authorising",
        )
    )
    out.append(
        Cell(
            "reader offline",
            "before the order",
            expect=frozenset({("rejected", "payments_unavailable")}),
            unavailable=True,
        )
    )
    out.append(
        Cell(
            "reader offline",
            "awaiting card",
            script="no_card",
            during=_after_awaiting(_go_offline),
            expect=frozenset({("canceled", "reader_offline")}),
            unavailable=True,
        )
    )
    out.append(
        Cell(
            "reader offline",
            "cancel_action",
            script="no_card",
            during=_after_awaiting(lambda la: la.sim.set_reader_online(la.reader, online=False)),
            expect=frozenset({("canceled", "card_timeout")}),
        )
    )
    out.append(
        Cell(
            "reader hardware fault",
            "process",
            lambda la: la.sim.reader_hardware_fault(la.reader),
            expect=frozenset({("canceled", "reader_unavailable")}),
            unavailable=True,
            sticky=True,
        )
    )
    out.append(
        Cell(
            "reader hardware fault",
            "collect",
            lambda la: la.sim.reader_hardware_fault(la.reader),
            expect=frozenset({("canceled", "reader_unavailable")}),
            unavailable=True,
            sticky=True,
            split=True,
        )
    )
    out.append(
        Cell(
            "reader hardware fault",
            "cancel_action",
            script="cancel_waiting",
            during=_after_awaiting(lambda la: la.sim.reader_hardware_fault(la.reader)),
            expect=NORMAL["cancel_waiting"],
            unavailable=True,
            sticky=True,
        )
    )
    for step, split in (("process", False), ("confirm", True)):
        out.append(
            Cell(
                "customer cancels on the reader",
                step if not split else "collect",
                script="no_card",
                split=split,
                during=_after_awaiting(lambda la: la.sim.customer_cancel(la.reader)),
                expect=frozenset({("canceled", "customer_canceled")}),
            )
        )
        out.append(
            Cell(
                "connection_error, authorised",
                step,
                lambda la: la.sim.reader_connection_error(la.reader, authorised=True),
                split=split,
                expect=completed,
            )
        )
        out.append(
            Cell(
                "connection_error, not authorised",
                step,
                lambda la: la.sim.reader_connection_error(la.reader, authorised=False),
                split=split,
                expect=completed,
            )
        )
    out.append(
        Cell(
            "cancel_action busy (authorising)",
            "cancel_action",
            lambda la: la.sim.set_authorisation_delay(la.reader, 1.5),
            script="cancel_authorising",
            expect=frozenset({("canceled", "controller_canceled")}),
        )
    )
    for step, split in (("process", False), ("confirm", True)):
        out.append(
            Cell(
                "intent_invalid_state",
                step,
                http_fault(step, status=400, code="intent_invalid_state", count=1),
                split=split,
                expect=completed,
            )
        )
    out.append(
        Cell(
            "idempotency_error (a bug)",
            "process",
            http_fault("process", status=400, code="idempotency_error", count=1),
            expect=frozenset({("failed", "idempotency_error")}),
        )
    )
    out.append(
        Cell(
            "authorisation expired",
            "capture",
            script="pay_late",
            expect=frozenset({("failed", "authorization_expired")}),
        )
    )
    return out


def _after_awaiting(act: Callable[[Lane], object]) -> Callable[[Lane, str], Awaitable[None]]:
    async def during(the_lane: Lane, order_id: str) -> None:
        await the_lane.wait_for(order_id, "awaiting_card")
        act(the_lane)

    return during


def _go_offline(the_lane: Lane) -> None:
    the_lane.sim.set_reader_online(the_lane.reader, online=False)
    the_lane.sim.advance(121)  # two minutes without a signal: Stripe says offline


async def _offline_before_async(the_lane: Lane) -> None:
    _go_offline(the_lane)
    await the_lane.check_reader()  # the service's idle check


# --- running a cell ------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


STALE_AUTHORISATION_S = 1.0  # how long the earlier order's card takes to authorise (simulated)


async def _arm_stale(the_lane: Lane, order_id: str, kind: str) -> str:
    """An earlier order's payment still running on the reader (made straight through the API).

    `authorising`: a card was presented to it and is being authorised for a second.
    """
    gw = the_lane.gateway
    pi = await gw.create_intent(
        amount=700,
        currency="usd",
        metadata={"kiosk_id": "k1", "order_id": f"{order_id}-earlier"},
        key=f"stale-{order_id}",
    )
    await gw.process_intent(pi.id, key=f"stale-process-{order_id}")
    if kind == "authorising":
        the_lane.sim.set_authorisation_delay(the_lane.reader, STALE_AUTHORISATION_S)
        the_lane.sim.present_card(the_lane.reader)
    return pi.id


async def _check_stale(the_lane: Lane, pi_id: str, kind: str) -> list[str]:
    """What kiosk did to the earlier order's payment; then it is released (a person would)."""
    problems = []
    ledger = the_lane.sim.ledger()
    intent = next(i for i in ledger.intents if i.id == pi_id)
    actions = [a.status for a in ledger.reader_actions if a.payment_intent == pi_id]
    # Only its action may be cleared, and only while no card was being authorised on it.
    want = ("requires_payment_method", ["canceled"]) if kind == "waiting" else ("requires_capture", ["succeeded"])
    if (intent.status, actions) != want:
        problems.append(f"earlier order's payment: PI {intent.status}, actions {actions}, want {want}")
    await the_lane.gateway.cancel_intent(pi_id, key=f"stale-cancel-{pi_id}")
    return problems


async def run_cell(the_lane: Lane, cell: Cell, n: int) -> Result:  # noqa: C901, PLR0912, PLR0915 - one scenario per script
    """Run one cell on a lane, then the next order; returns what happened."""
    result = Result(cell)
    order_id = f"{n:03d}-{_slug(cell.fault)}-{_slug(cell.step)}"[:64]
    sim = the_lane.sim
    the_lane.run.policy = SPLIT if cell.split else FAST
    stale = None
    vended: int | None = None
    amount = 500
    try:
        if cell.stale is not None:
            stale = await _arm_stale(the_lane, order_id, cell.stale)
        elif cell.fault == "reader offline" and cell.step == "before the order":
            await _offline_before_async(the_lane)
        elif cell.arm is not None:
            cell.arm(the_lane)
        present = cell.script in {"pay", "vend_fail", "pay_late", "cancel_authorising"}
        if present:
            sim.auto_present(the_lane.reader, 0.2)
        await the_lane.request(order_id, amount, items=cell.items)
        if cell.during is not None:
            await cell.during(the_lane, order_id)
        match cell.script:
            case "pay" | "vend_fail" | "pay_late":
                status = await the_lane.wait_for(order_id, "approved", "completed", "canceled", "failed", "rejected")
                if status["state"] == "approved":
                    if cell.script == "pay_late":
                        sim.advance(5 * 24 * 3600)  # every authorisation has expired by now
                    if cell.script == "vend_fail":
                        await the_lane.vend(order_id, "failure")
                    else:
                        vended = amount
                        await the_lane.vend(order_id)
            case "cancel_waiting":
                await the_lane.wait_for(order_id, "awaiting_card", "canceled", "failed", "rejected")
                await the_lane.cancel(order_id)
            case "cancel_authorising":
                await the_lane.wait_for(order_id, "awaiting_card")
                await the_lane.wait_until(lambda: any(a.card for a in sim.ledger().reader_actions))
                await the_lane.cancel(order_id)
            case "present_when_awaiting":
                # No automatic card: it would be presented to the earlier order's payment too.
                status = await the_lane.wait_for(order_id, "awaiting_card", *ENDED)
                if status["state"] == "awaiting_card":
                    sim.present_card(the_lane.reader)
                    status = await the_lane.wait_for(order_id, "approved", *ENDED)
                if status["state"] == "approved":
                    vended = amount
                    await the_lane.vend(order_id)
            case "no_card":
                pass
        final = await the_lane.wait_settled(order_id, timeout=30)
        reason = (final.get("reason") or {}).get("code")
        result.outcome = final["state"] if reason is None else f"{final['state']}/{reason}"
        if (final["state"], reason) not in cell.expect:
            result.problems.append(f"ended {result.outcome}, expected {sorted(cell.expect, key=str)}")
        result.problems += money_problems(the_lane, order_id, vended=vended)
        if cell.unavailable and the_lane.availability.refusal() is None:
            result.problems.append("payments were not reported unavailable")
        if stale is not None and cell.stale is not None:
            result.problems += await _check_stale(the_lane, stale, cell.stale)
        if cell.sticky:
            sim.reader_hardware_fault(the_lane.reader, faulty=False)
            await the_lane.check_reader()
            if the_lane.availability.refusal() is None:
                result.problems.append("a hardware fault cleared itself without anyone acting")
        sim.auto_present(the_lane.reader, None)
        await the_lane.restore()
        the_lane.run.policy = FAST
        result.problems += await happy_order(the_lane, f"{order_id[:56]}-next")
    except Exception as exc:  # noqa: BLE001 - a cell that breaks is reported in the matrix
        result.problems.append(f"{type(exc).__name__}: {exc}")
        result.outcome = "ERROR"
        the_lane.run.policy = FAST
    return result


def render(results: list[Result]) -> str:
    """The matrix as text: a row per fault, a column per step."""
    steps: list[str] = []
    faults: list[str] = []
    for r in results:
        if r.cell.step not in steps:
            steps.append(r.cell.step)
        if r.cell.fault not in faults:
            faults.append(r.cell.fault)
    grid = {(r.cell.fault, r.cell.step): r.outcome + (" !!" if r.problems else "") for r in results}
    width = max(len(f) for f in faults)
    lines = []
    for step in steps:
        lines.append(f"\n[{step}]")
        lines.extend(f"  {fault:<{width}}  -> {grid[fault, step]}" for fault in faults if (fault, step) in grid)
    bad = [r for r in results if r.problems]
    lines.append(f"\n{len(results)} cells, {len(bad)} with a violation (each followed by a clean order)")
    lines.extend(f"  !! {r.cell.fault} @ {r.cell.step}: {'; '.join(r.problems)}" for r in bad)
    return "\n".join(lines)


@pytest.mark.timeout(300)
async def test_fault_matrix(tmp_path: Path) -> None:
    every = cells()
    queues: list[list[tuple[int, Cell]]] = [[] for _ in range(LANES)]
    for n, cell in enumerate(every):
        queues[n % LANES].append((n, cell))

    async def work(index: int) -> list[Result]:
        out = []
        async with lane(tmp_path / f"lane{index}", seed=index) as the_lane:
            for n, cell in queues[index]:
                out.append(await run_cell(the_lane, cell, n))
            # No authorisation is left hanging anywhere on this lane's Stripe, whatever happened.
            left = [(i.id, i.order_id, i.status) for i in the_lane.sim.ledger().uncaptured()]
            assert not left, f"lane {index}: uncaptured authorisations left {left}"
        return out

    done = await asyncio.gather(*(work(i) for i in range(LANES)))
    results = sorted((r for rs in done for r in rs), key=lambda r: every.index(r.cell))
    print(render(results))
    assert not [r for r in results if r.problems], render([r for r in results if r.problems])
