"""`kiosk demo`: the whole system on one machine, scripted scenarios, a live timeline and a ledger.

Set-up: an MQTT broker (a private Mosquitto when one is installed, else the embedded broker), the
Stripe simulator in a thread with one simulated reader, the daemon as a real `kiosk run` child
process, and the simulated vending controller. The scenarios run one after the other (one order
owns the reader at a time); then every PaymentIntent in the simulator's ledger is listed and each
scenario is judged. Exit 0 only when every scenario ended as expected and no hold is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from kiosk import logs
from kiosk.demo import controller as controller_mod
from kiosk.demo.daemon import DEMO_API_KEY, DaemonProcess
from kiosk.demo.scenarios import SCENARIOS, Scenario, Stage, Verdict, judge
from kiosk.demo.timeline import BOLD, DIM, GREEN, RED, Timeline, money, want_colour

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

    from kiosk.simulator import Ledger, Simulator

BrokerKind = Literal["auto", "embedded", "mosquitto"]

KIOSK_ID = "demo-kiosk"
CARD_TIMEOUT_S = 3
VEND_RESULT_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 5
DAEMON_READY_TIMEOUT_S = 30.0
SCENARIO_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a demo run found."""

    verdicts: tuple[Verdict, ...]
    leftovers: tuple[str, ...]  # problems outside any one scenario (holds left, stray intents)

    @property
    def ok(self) -> bool:
        """Every scenario as expected and nothing left over."""
        return bool(self.verdicts) and all(v.ok for v in self.verdicts) and not self.leftovers


class _Broker:
    """The broker the demo uses, whichever kind; `.url`, `.describe`, `.stop()`."""

    def __init__(self, kind: BrokerKind, workdir: Path) -> None:
        from kiosk import mosquitto  # noqa: PLC0415 - only the demo and the tests spawn brokers

        binary = mosquitto.find_binary()
        if kind == "mosquitto" and binary is None:
            raise mosquitto.BrokerError("mosquitto is not installed; install it or run 'kiosk demo --broker embedded'")
        self._stop: Any
        if kind == "mosquitto" or (kind == "auto" and binary is not None):
            spawned = mosquitto.Mosquitto(workdir / "mosquitto").start()
            self.url = spawned.url
            self.describe = f"Mosquitto ({binary}), a private instance on {self.url}"
            self._stop = spawned.stop
        else:
            from kiosk.demo.broker import EmbeddedBroker  # noqa: PLC0415

            handle = EmbeddedBroker().start_in_thread()
            self.url = handle.url
            missing = " (no mosquitto installed)" if binary is None else ""
            self.describe = f"kiosk's embedded MQTT broker{missing} on {self.url}"
            self._stop = handle.stop

    def stop(self) -> None:
        self._stop()


def run(  # noqa: PLR0913 - every option of the command, by name
    out: TextIO,
    *,
    broker: BrokerKind = "auto",
    colour: bool | None = None,
    workdir: Path | None = None,
    scenarios: Sequence[Scenario] = SCENARIOS,
    capture_logs: bool = False,
) -> int:
    """Run the demo; returns the exit code (0: every scenario ended as expected).

    Args:
        out: where the timeline, the ledger and the verdicts go.
        broker: `auto` (Mosquitto when installed, else embedded), `embedded` or `mosquitto`.
        colour: ANSI colours; None decides from `out` (a terminal, and `NO_COLOR` unset).
        workdir: keep the daemon's state and logs here; by default a temporary directory, removed
            after a successful run and kept (and named) after a failed one.
        scenarios: which scenarios to play (all by default).
        capture_logs: send this process's own log lines (simulator, embedded broker) to
            `demo.log` in the work directory instead of stderr, so they stay out of the timeline.
    """
    started = time.monotonic()
    keep = workdir is not None
    work = workdir or Path(tempfile.mkdtemp(prefix="kiosk-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    timeline = Timeline(out, colour=want_colour(out) if colour is None else colour)
    ok = False
    with contextlib.ExitStack() as stack:
        if capture_logs:
            log_file = stack.enter_context((work / "demo.log").open("a", encoding="utf-8"))
            logs.configure(level="info", json=True, stream=log_file)
            stack.callback(logs.configure, level="info")  # back to stderr before the file closes
        try:
            outcome, daemon = _play(timeline, broker, work, scenarios, stack)
        except KeyboardInterrupt:
            timeline.text()
            timeline.text(f"kiosk demo: interrupted; the daemon's journal and log are kept in {work}", BOLD)
            raise
        ok = outcome.ok
        _print_verdicts(timeline, outcome, time.monotonic() - started)
        if not ok:
            timeline.text()
            timeline.text(f"daemon log ({daemon.log_path}), last lines:", BOLD)
            timeline.text(daemon.log_tail() or "(empty)")
    if ok and not keep:
        shutil.rmtree(work, ignore_errors=True)
    elif not ok:
        timeline.text(f"kept for inspection: {work}")
    return 0 if ok else 1


def _play(
    timeline: Timeline, broker_kind: BrokerKind, work: Path, scenarios: Sequence[Scenario], stack: contextlib.ExitStack
) -> tuple[Outcome, DaemonProcess]:
    from kiosk.simulator import Simulator  # noqa: PLC0415 - the simulator is a demo and test part

    broker = _Broker(broker_kind, work)
    stack.callback(broker.stop)
    sim_handle = Simulator(seed=0).start_in_thread()
    stack.callback(sim_handle.stop)
    sim = sim_handle.simulator
    reader = sim.register_reader("simulated-wpe", label="demo vending machine")
    daemon = DaemonProcess(
        work,
        {
            "ID": KIOSK_ID,
            "MQTT__URL": broker.url,
            "STRIPE__API_KEY": DEMO_API_KEY,
            "STRIPE__API_BASE": sim_handle.url,
            "STRIPE__READER_ID": reader,
            "PAYMENTS__CARD_TIMEOUT_S": str(CARD_TIMEOUT_S),
            "PAYMENTS__VEND_RESULT_TIMEOUT_S": str(VEND_RESULT_TIMEOUT_S),
            "PAYMENTS__REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
            "FLEET__ENABLED": "false",
        },
    )
    stack.callback(daemon.stop)

    timeline.text("kiosk demo: the whole system on this machine, no Stripe account, reader or broker needed", BOLD)
    timeline.text(f"  MQTT broker     {broker.describe}")
    timeline.text(f"  Stripe          kiosk's Stripe simulator on {sim_handle.url}, simulated reader {reader}")
    timeline.text(
        f"  daemon          kiosk run (child process), log in {daemon.log_path}"
        " (kept if a sale fails, or with --workdir)"
    )
    timeline.text("  controller      a simulated vending controller on the local bus (protocol.md §1)")
    timeline.text(
        f"  timeouts scaled for the demo: card timeout {CARD_TIMEOUT_S} s (30 s by default), "
        f"vend result timeout {VEND_RESULT_TIMEOUT_S} s (300 s by default)",
        DIM,
    )
    timeline.text()
    timeline.columns()

    daemon.start()
    finals = asyncio.run(_scenarios(_Rig(broker.url, sim, reader, daemon, timeline), scenarios))
    ledger = sim.ledger()
    _print_ledger(timeline, ledger)
    verdicts = tuple(judge(sc, finals.get(sc.key), ledger) for sc in scenarios)
    return Outcome(verdicts, _leftovers(ledger, scenarios)), daemon


@dataclass(frozen=True, slots=True)
class _Rig:
    broker_url: str
    sim: Simulator
    reader: str
    daemon: DaemonProcess
    timeline: Timeline


async def _scenarios(rig: _Rig, scenarios: Sequence[Scenario]) -> dict[str, dict[str, Any]]:
    """Play the scenarios one after the other; the final status of each that finished in time."""
    timeline, sim, reader = rig.timeline, rig.sim, rig.reader
    url = urlsplit(rig.broker_url)
    hooks = controller_mod.Hooks(
        on_status=timeline.status,
        on_daemon=timeline.daemon,
        on_note=lambda order_id, text: timeline.note(order_id, "controller", text),
    )
    finals: dict[str, dict[str, Any]] = {}
    async with controller_mod.connect(url.hostname or "127.0.0.1", url.port or 1883, hooks=hooks) as ctl:
        stage = Stage(sim, reader, ctl, rig.daemon, timeline)
        for number, scenario in enumerate(scenarios, 1):
            if not await _daemon_ready(ctl, rig.daemon, timeline):
                break
            sim.auto_present(reader, None)
            timeline.heading(f"{number}/{len(scenarios)}  {scenario.title}")
            try:
                async with asyncio.timeout(SCENARIO_TIMEOUT_S):
                    finals[scenario.key] = await scenario.play(stage, scenario)
            except TimeoutError:
                timeline.text(f"   no final state after {SCENARIO_TIMEOUT_S:g} s", RED)
            sim.auto_present(reader, None)
    return finals


async def _daemon_ready(ctl: controller_mod.VendingController, daemon: DaemonProcess, timeline: Timeline) -> bool:
    """Wait for kioskd to be online with payments available; False (said on screen) if it is not."""
    online = asyncio.ensure_future(ctl.wait_daemon())
    exited = asyncio.ensure_future(daemon.wait_exit())
    done, _ = await asyncio.wait({online, exited}, timeout=DAEMON_READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    online.cancel()
    exited.cancel()
    if online in done:
        return True
    if exited in done:
        timeline.text(f"kioskd exited with code {exited.result()} (see its log below)", RED)
    else:
        timeline.text(f"kioskd is not online with payments available after {DAEMON_READY_TIMEOUT_S:g} s", RED)
    return False


def _leftovers(ledger: Ledger, scenarios: Sequence[Scenario]) -> tuple[str, ...]:
    problems = [f"{i.id} still holds {money(i.amount_capturable, i.currency)} uncaptured" for i in ledger.uncaptured()]
    ours = {sc.order.order_id for sc in scenarios}
    problems += [f"{i.id} belongs to no demo order ({i.order_id})" for i in ledger.intents if i.order_id not in ours]
    return tuple(problems)


def _print_ledger(timeline: Timeline, ledger: Ledger) -> None:
    timeline.text()
    timeline.text("Ledger: every PaymentIntent in the simulated Stripe account", BOLD)
    rows = [("PaymentIntent", "order", "status", "amount", "captured", "released")]
    for intent in ledger.intents:
        captured = sum(c.amount for c in intent.captures)
        held = intent.authorised and intent.status in {"succeeded", "canceled"}
        rows.append(
            (
                intent.id,
                intent.order_id or "-",
                intent.status,
                money(intent.amount, intent.currency),
                money(captured, intent.currency) if captured else "-",
                money(intent.amount - captured, intent.currency) if held and intent.amount > captured else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [
            f"{cell:<{widths[i]}}" if i < 3 else f"{cell:>{widths[i]}}"  # text left, money right
            for i, cell in enumerate(row)
        ]
        timeline.text("  " + "  ".join(cells).rstrip(), BOLD if index == 0 else "")
    if not ledger.intents:
        timeline.text("  (no PaymentIntents)")


def _print_verdicts(timeline: Timeline, outcome: Outcome, elapsed: float) -> None:
    timeline.text()
    timeline.text("Verdicts", BOLD)
    for number, verdict in enumerate(outcome.verdicts, 1):
        mark = timeline.paint("PASS", BOLD + GREEN) if verdict.ok else timeline.paint("FAIL", BOLD + RED)
        timeline.text(f"  {mark}  {number}. {verdict.scenario.title}")
        timeline.text(f"           {verdict.summary}", "" if verdict.ok else RED)
    for problem in outcome.leftovers:
        timeline.text(f"  {timeline.paint('FAIL', BOLD + RED)}  {problem}")
    timeline.text()
    total = len(outcome.verdicts)
    if outcome.ok:
        timeline.text(f"kiosk demo: all {total} scenarios ended as expected ({elapsed:.1f} s)", BOLD + GREEN)
    else:
        failed = sum(not v.ok for v in outcome.verdicts) + len(outcome.leftovers)
        timeline.text(f"kiosk demo: {failed} problem(s) found, see above ({elapsed:.1f} s)", BOLD + RED)
