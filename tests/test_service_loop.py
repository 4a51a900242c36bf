"""`kiosk run`'s event loop: uvloop when it is installed, asyncio's otherwise, and the journal's last
calls finished before the loop ends, whichever it is."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TYPE_CHECKING, cast

import pytest
import uvloop
from structlog.testing import capture_logs

from kiosk import service
from kiosk.journal import Journal

if TYPE_CHECKING:
    from pathlib import Path

    from kiosk.settings import Settings


def test_uvloop_runs_the_daemon_when_installed() -> None:
    assert service._event_loop_runner() is uvloop.run


def test_without_uvloop_asyncio_runs_it_and_a_warning_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets when it is not installed
    with capture_logs() as logged:
        assert service._event_loop_runner() is asyncio.run
    assert [(e["event"], e["log_level"], e["event_loop"]) for e in logged] == [
        ("service.uvloop_missing", "warning", "asyncio")
    ]


@pytest.mark.parametrize("installed", [True, False], ids=["uvloop", "asyncio"])
def test_a_journal_call_left_running_at_the_stop_ends_before_the_loop_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, installed: bool
) -> None:
    # A caller cancelled by the stop leaves its journal call running on the journal's thread. Its
    # result must reach a loop that still runs: handed to a closing loop, uvloop refuses to close.
    if not installed:
        monkeypatch.setitem(sys.modules, "uvloop", None)
    journal = Journal.open(tmp_path / "journal.db")
    release = threading.Event()
    loop_running_when_done: list[bool] = []

    class LeavesACallRunning:
        def __init__(self, settings: Settings) -> None:
            del settings
            self.journal = journal
            self.notifier = self
            self.left_running: asyncio.Task[None] | None = None

        def close(self) -> None:
            """The notifier's close."""

        async def run(self) -> int:
            loop = asyncio.get_running_loop()

            def slow() -> None:
                assert release.wait(10)
                loop_running_when_done.append(loop.is_running())

            self.left_running = loop.create_task(journal.call(slow))
            await asyncio.sleep(0)  # asked; the stop now cancels its caller
            threading.Timer(0.3, release.set).start()  # it ends a while after the service returned
            return 0

    monkeypatch.setattr(service, "Service", LeavesACallRunning)
    assert service.run(cast("Settings", None)) == 0
    assert loop_running_when_done == [True]
