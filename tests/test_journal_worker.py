"""The journal's own thread (`Journal.call`): results, errors, order, cancellation, closing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from kiosk.errors import JournalError
from kiosk.journal import FILENAME, Journal
from tests.journalkit import Clock, new_order


@pytest.fixture(name="journal")
def fixture_journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / FILENAME, clock=Clock())


async def test_a_call_runs_on_the_journals_thread_and_returns_its_result(journal: Journal) -> None:
    seen: list[str] = []

    def where() -> str:
        seen.append(threading.current_thread().name)
        return journal.path.name

    try:
        assert await journal.call(where) == FILENAME
        assert await journal.call(new_order, journal, "o-1") == 1
        assert seen == [f"journal-{FILENAME}"]
        assert seen[0] != threading.current_thread().name
        stored = journal.get("o-1")
        assert stored is not None
        assert stored.state == "received"
    finally:
        journal.close()


async def test_an_error_reaches_the_caller_and_the_thread_goes_on(journal: Journal) -> None:
    try:
        with pytest.raises(JournalError, match="is new: save needs its request_hash"):
            await journal.call(journal.save, "o-1", state="received", terminal=False, data_json="{}")
        assert journal.get("o-1") is None
        with pytest.raises(KeyboardInterrupt):  # not only Exception: whatever the call raised
            await journal.call(_interrupt)
        assert await journal.call(new_order, journal, "o-2") == 1
    finally:
        journal.close()


def _interrupt() -> None:
    raise KeyboardInterrupt


async def test_calls_run_one_at_a_time_in_the_order_asked(journal: Journal) -> None:
    done: list[int] = []
    inside = threading.Lock()

    def step(i: int) -> None:
        assert inside.acquire(blocking=False), "two journal calls at once"
        try:
            done.append(i)
        finally:
            inside.release()

    try:
        await asyncio.gather(*(journal.call(step, i) for i in range(200)))
        assert done == list(range(200))
    finally:
        journal.close()


async def test_a_cancelled_caller_does_not_undo_a_write_that_began(journal: Journal) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow_save() -> int:
        started.set()
        assert release.wait(10)
        return new_order(journal, "o-1")

    try:
        task = asyncio.create_task(journal.call(slow_save))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # The next call runs after it: by then the order is there, whole.
        assert await journal.call(journal.get, "o-1") is not None
        assert journal.commits == 1
    finally:
        journal.close()


def test_a_call_whose_loop_has_ended_still_completes_and_the_thread_serves_on(journal: Journal) -> None:
    release = threading.Event()

    async def leave_it_running() -> None:
        def slow_save() -> int:
            assert release.wait(10)
            return new_order(journal, "o-1")

        asyncio.get_running_loop().create_task(journal.call(slow_save))
        await asyncio.sleep(0)  # submitted; asyncio.run cancels the task and closes the loop

    try:
        asyncio.run(leave_it_running())
        release.set()  # its result now has no loop to go to

        async def next_call() -> int:
            async with asyncio.timeout(10):
                return await journal.call(new_order, journal, "o-2")

        assert asyncio.run(next_call()) == 1
        assert journal.get("o-1") is not None
    finally:
        journal.close()


async def test_close_finishes_what_was_asked_then_ends_the_thread(journal: Journal) -> None:
    release = threading.Event()

    def slow_save() -> int:
        assert release.wait(10)
        return new_order(journal, "o-1")

    pending = asyncio.ensure_future(journal.call(slow_save))
    await asyncio.sleep(0.01)
    threading.Timer(0.05, release.set).start()
    await asyncio.to_thread(journal.close)  # waits for slow_save, then closes the connection
    assert await pending == 1
    assert not any(t.name == f"journal-{FILENAME}" and t.is_alive() for t in threading.enumerate())
    journal.close()  # again: nothing to do
    reopened = Journal.open(journal.path)
    try:
        assert reopened.get("o-1") is not None
    finally:
        reopened.close()


async def test_a_call_after_close_is_refused_and_starts_no_thread(journal: Journal) -> None:
    journal.close()
    with pytest.raises(JournalError, match="is closed"):
        await journal.call(journal.get, "o-1")
    assert not any(t.name == f"journal-{FILENAME}" for t in threading.enumerate())


def _stop_iteration() -> None:
    raise StopIteration


async def test_a_call_raising_what_a_future_cannot_carry_still_answers(journal: Journal) -> None:
    try:
        async with asyncio.timeout(10):
            with pytest.raises(JournalError, match="StopIteration"):
                await journal.call(_stop_iteration)
    finally:
        journal.close()
