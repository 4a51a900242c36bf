"""`kiosk demo`: the whole system with each broker kind, its timeline, ledger and verdicts."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kiosk.demo import run as demo_run
from kiosk.demo.controller import Order, is_final
from kiosk.demo.scenarios import SCENARIOS, Expect, judge
from kiosk.demo.timeline import Timeline, describe, want_colour
from kiosk.mosquitto import find_binary
from kiosk.simulator.ledger import Capture, IntentRecord, Ledger

ANSI = re.compile(r"\x1b\[")
ROOT = Path(__file__).resolve().parents[1]

# The ledger row each scenario must leave: order, status, amount, captured, released.
LEDGER_ROWS = {
    "demo-1-coffee": ("succeeded", "2.50 USD", "2.50 USD", "-"),
    "demo-2-sandwich": ("succeeded", "4.50 USD", "4.50 USD", "-"),
    "demo-3-water": ("canceled", "1.50 USD", "-", "-"),
    "demo-4-chocolate": ("canceled", "2.00 USD", "-", "2.00 USD"),
    "demo-5-snacks": ("succeeded", "5.00 USD", "3.00 USD", "2.00 USD"),
    "demo-6-juice": ("canceled", "3.00 USD", "-", "-"),
    "demo-7-tea": ("succeeded", "3.50 USD", "3.50 USD", "-"),
    "demo-8-cookies": ("succeeded", "2.80 USD", "2.80 USD", "-"),
}


def _run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_") and k != "NO_COLOR"}
    return subprocess.run(
        [sys.executable, "-m", "kiosk", "demo", "--workdir", str(tmp_path / "work"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )


def _assert_demo_passed(result: subprocess.CompletedProcess[str], broker_line: str) -> None:
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Piped: plain text, and the daemon's logs went to its file, not into the timeline.
    assert not ANSI.search(out)
    assert result.stderr == ""
    assert broker_line in out
    assert "timeouts scaled for the demo: card timeout 3 s" in out
    for number, scenario in enumerate(SCENARIOS, 1):
        assert f"  PASS  {number}. {scenario.title}\n" in out
    assert "FAIL" not in out
    assert f"kiosk demo: all {len(SCENARIOS)} scenarios ended as expected" in out
    ledger = out.split("Ledger: every PaymentIntent in the simulated Stripe account\n", 1)[1].split("\n\n", 1)[0]
    lines = ledger.splitlines()
    assert lines[0].split() == ["PaymentIntent", "order", "status", "amount", "captured", "released"]
    rows = [_ledger_row(line) for line in lines[1:]]
    assert {order: rest for _, order, *rest in rows} == {k: list(v) for k, v in LEDGER_ROWS.items()}
    assert all(intent.startswith("pi_") for intent, *_ in rows)
    # The timeline shows each order reaching its final state, and the crash and restart.
    assert re.search(r"demo-1-coffee +completed +2\.50 USD +captured 2\.50 USD", out)
    assert re.search(r"demo-3-water +canceled +1\.50 USD +card_timeout", out)
    assert re.search(r"demo-6-juice +canceled +3\.00 USD +customer_canceled", out)
    assert re.search(r"demo-7-tea +\S demo +SIGKILL kioskd", out)
    assert re.search(r"demo-8-cookies +\S demo +kioskd died after the capture", out)
    assert re.search(r"demo-8-cookies +completed +2\.80 USD +captured 2\.80 USD", out)
    assert re.search(r"kioskd +offline", out)


def _ledger_row(line: str) -> list[str]:
    # Money cells hold a space ("2.50 USD"): split on two or more spaces.
    return re.split(r" {2,}", line.strip())


@pytest.mark.slow
def test_demo_with_the_embedded_broker(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, "--broker", "embedded")
    _assert_demo_passed(result, "kiosk's embedded MQTT broker")
    daemon_log = (tmp_path / "work" / "daemon.log").read_text()
    assert "daemon start 4 (crash point: none)" in daemon_log
    assert "crash point after_capture reached" in daemon_log


@pytest.mark.slow
@pytest.mark.skipif(find_binary() is None, reason="mosquitto is not installed (apt-get install mosquitto)")
def test_demo_with_a_spawned_mosquitto(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, "--broker", "mosquitto")
    _assert_demo_passed(result, "Mosquitto (")


@pytest.mark.slow
def test_a_scenario_that_does_not_end_as_expected_fails_the_demo(tmp_path: Path) -> None:
    # The same sale, judged against a wrong expectation: the demo must say so and exit 1.
    wrong = replace(SCENARIOS[0], expect=Expect("completed", captured=999, intent_status="succeeded"))
    out = io.StringIO()
    code = demo_run.run(out, broker="embedded", colour=False, workdir=tmp_path / "work", scenarios=[wrong])
    text = out.getvalue()
    assert code == 1
    assert f"  FAIL  1. {wrong.title}\n" in text
    assert "captured 250, expected 999" in text
    assert "daemon log (" in text
    assert "kept for inspection" in text


def test_colour_only_on_a_terminal_without_no_color() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert want_colour(Tty(), {}) is True
    assert want_colour(Tty(), {"NO_COLOR": "1"}) is False
    assert want_colour(Tty(), {"NO_COLOR": ""}) is True  # no-color.org: set and not empty
    assert want_colour(io.StringIO(), {}) is False


def _status(state: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"order_id": "o-1", "seq": seq, "state": state, "amount": 250, "currency": "usd", **extra}


def test_timeline_colours_states_only_when_asked() -> None:
    for colour in (True, False):
        out = io.StringIO()
        timeline = Timeline(out, colour=colour, clock=lambda: 0.0)
        timeline.status(_status("completed", 5, captured_amount=250))
        assert bool(ANSI.search(out.getvalue())) is colour
        assert "completed" in out.getvalue()
        assert "captured 2.50 USD" in out.getvalue()


def test_timeline_shows_a_republished_status_once() -> None:
    out = io.StringIO()
    timeline = Timeline(out, colour=False, clock=lambda: 0.0)
    assert timeline.status(_status("approved", 4)) is True
    assert timeline.status(_status("approved", 4)) is False
    assert timeline.status(_status("capturing", 5)) is True
    assert out.getvalue().count("approved") == 1
    state = {"state": "online", "payments": "available", "reason": None, "boot_id": "b1"}
    timeline.daemon(state)
    timeline.daemon(state)
    timeline.daemon({**state, "boot_id": "b2"})
    assert out.getvalue().count("online") == 2


def test_timeline_plain_ascii_where_the_stream_cannot_encode_unicode() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    timeline = Timeline(out, colour=False, clock=lambda: 0.0)
    timeline.heading("1/1  approved → completed")
    timeline.status(_status("approved", 1, payment={"intent": "pi_1", "card": {"brand": "visa", "last4": "4242"}}))
    out.flush()
    assert b"-- 1/1  approved > completed" in raw.getvalue()
    assert b"visa **** 4242" in raw.getvalue()


def test_describe_names_the_reason_and_retryability() -> None:
    declined = _status("declined", 3, reason={"code": "insufficient_funds", "message": "", "retryable": True})
    assert describe(declined) == "insufficient_funds (retryable)"
    assert describe(_status("received", 1)) == "journaled, nothing charged yet"


def test_a_retryable_rejection_is_not_final() -> None:
    assert is_final(_status("rejected", 1, reason={"code": "busy", "retryable": True})) is False
    assert is_final(_status("rejected", 1, reason={"code": "invalid_order", "retryable": False})) is True
    assert is_final(_status("completed", 6)) is True
    assert is_final(_status("approved", 4)) is False


def _intent(order_id: str, status: str, captures: tuple[int, ...] = ()) -> IntentRecord:
    return IntentRecord(
        id=f"pi_{order_id}_{len(captures)}",
        status=status,
        amount=250,
        currency="usd",
        amount_capturable=0,
        amount_received=sum(captures),
        metadata={"order_id": order_id},
        created=0,
        capture_before=None,
        captures=tuple(Capture(a, 0.0) for a in captures),
        cancels=(),
        history=({"event": "authorised"},),
    )


def test_judge_wants_one_intent_and_one_capture_of_the_right_amount() -> None:
    scenario = replace(SCENARIOS[0], order=Order("o-1", 250))
    final = _status("completed", 6, captured_amount=250)
    good = Ledger(0.0, (_intent("o-1", "succeeded", (250,)),), ())
    assert judge(scenario, final, good).ok
    twice = Ledger(0.0, (_intent("o-1", "succeeded", (125, 125)),), ())
    assert "captured 125 + 125, expected 250" in judge(scenario, final, twice).summary
    two_intents = Ledger(0.0, (_intent("o-1", "succeeded", (250,)), _intent("o-1", "canceled")), ())
    assert "2 PaymentIntents for the order" in judge(scenario, final, two_intents).summary
    assert (
        "ended canceled (vend_failed), expected completed"
        in judge(scenario, _status("canceled", 6, reason={"code": "vend_failed"}), good).summary
    )
    assert not judge(scenario, None, good).ok


@pytest.mark.slow
def test_a_daemon_that_cannot_start_fails_the_demo_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_run, "KIOSK_ID", "not a valid id!")
    out = io.StringIO()
    code = demo_run.run(out, broker="embedded", colour=False, workdir=tmp_path / "work", scenarios=SCENARIOS[:1])
    text = out.getvalue()
    assert code == 1
    assert "kioskd exited with code 78" in text
    assert "configuration error" in text  # the daemon's own sentence, from its log
    assert "the order reached no final state" in text
