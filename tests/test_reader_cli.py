"""`kiosk reader register|list` against the simulator over HTTP, as an operator runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kiosk.simulator import Simulator, ThreadHandle

KEY = "sk_test_readercli0000000000"


@pytest.fixture(name="sim")
def fixture_sim() -> Iterator[ThreadHandle]:
    with Simulator(seed=3).start_in_thread() as handle:
        yield handle


def kiosk(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
    return subprocess.run(
        [sys.executable, "-m", "kiosk", *args],
        env={**clean, "KIOSK_CONFIG": os.devnull, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_register_then_list_without_a_reader_id_configured(sim: ThreadHandle) -> None:
    env = {"KIOSK_STRIPE__API_KEY": KEY, "KIOSK_STRIPE__API_BASE": sim.url}
    done = kiosk("reader", "register", "simulated-wpe", "--label", "lobby", **env)
    assert done.returncode == 0, done.stderr
    match = re.search(r"registered (tmr_\w+) \(simulated_wisepos_e, online\)", done.stdout)
    assert match, done.stdout
    reader_id = match.group(1)
    assert f"KIOSK_STRIPE__READER_ID={reader_id}" in done.stdout
    assert KEY not in done.stdout + done.stderr

    listed = kiosk("reader", "list", **env, KIOSK_STRIPE__READER_ID=reader_id)
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if reader_id in line]
    assert line.startswith("*")
    assert "lobby" in line


def test_a_bad_registration_code_is_one_sentence_and_exit_1(sim: ThreadHandle) -> None:
    done = kiosk("reader", "register", "not-a-code", KIOSK_STRIPE__API_KEY=KEY, KIOSK_STRIPE__API_BASE=sim.url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "registration" in done.stderr.lower()


def test_without_an_api_key_it_names_the_setting_and_exits_78() -> None:
    done = kiosk("reader", "list")
    assert done.returncode == 78
    assert "stripe.api_key" in done.stderr
    assert "stripe.reader_id" not in done.stderr
