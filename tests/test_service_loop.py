"""`kiosk run`'s stop: the journal's last calls finish before the event loop ends."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, cast

from kiosk import service
from kiosk.journal import Journal

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from kiosk.settings import Settings


def test_a_journal_call_left_running_at_the_stop_ends_before_the_loop_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller cancelled by the stop leaves its journal call running on the journal's thread; the
    # stop waits for it inside the loop, so its result reaches a loop that still runs.
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
