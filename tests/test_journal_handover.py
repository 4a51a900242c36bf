"""The journal hands the publisher what it commits (no reading the outbox back), and deletes
acknowledged messages with its next write instead of a commit of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiosk.errors import JournalError
from kiosk.journal import Journal, OutboxMessage


def _status(order_id: str, seq: int) -> OutboxMessage:
    return OutboxMessage(topic=f"p/order/{order_id}/status", payload=b'{"seq":%d}' % seq, retain=True, status_seq=seq)


def _save(journal: Journal, order_id: str, seq: int) -> None:
    journal.save(
        order_id,
        request_hash="h",
        request_json="{}",
        state="received",
        terminal=False,
        data_json="{}",
        outbox=[_status(order_id, seq)],
    )


def test_take_outbox_then_take_fresh_hand_over_each_message_once(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path) as journal:
        _save(journal, "o1", 1)
        journal.enqueue([OutboxMessage(topic="p/x", payload=b"x")])
        first = journal.take_outbox()
        assert [row.topic for row in first] == ["p/order/o1/status", "p/x"]
        assert journal.take_fresh() == []  # already handed over by take_outbox
        _save(journal, "o1", 2)
        fresh = journal.take_fresh()
        assert [(row.topic, row.payload) for row in fresh] == [("p/order/o1/status", b'{"seq":2}')]
        assert fresh[0].id > first[-1].id
        assert fresh[0].order_id == "o1"
        assert journal.take_fresh() == []
        # The table still holds all three until they are marked.
        assert len(journal.pending_outbox(10)) == 3


def test_a_rolled_back_write_hands_over_nothing(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path) as journal:
        _save(journal, "o1", 1)
        journal.take_outbox()
        with pytest.raises(JournalError, match="out of order"):
            _save(journal, "o1", 5)  # a status seq out of order: nothing is written
        assert journal.take_fresh() == []
        assert len(journal.pending_outbox(10)) == 1


def test_marks_ride_along_with_the_next_write(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path) as journal:
        ids = journal.enqueue([OutboxMessage(topic="a", payload=b"1"), OutboxMessage(topic="b", payload=b"2")])
        commits = journal.commits
        journal.mark_sent_later(ids[:1])
        assert journal.marks_pending == 1
        assert journal.commits == commits  # nothing written yet …
        assert [row.topic for row in journal.pending_outbox()] == ["b"]  # … but it counts as sent
        assert journal.outbox_stats().depth == 1
        journal.set_meta("k", "v")  # any write transaction takes the marks with it
        assert journal.commits == commits + 1
        assert journal.marks_pending == 0
        assert journal._conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    with Journal.in_dir(tmp_path) as reopened:
        assert [row.topic for row in reopened.pending_outbox()] == ["b"]


def test_flush_marks_writes_what_an_idle_journal_holds(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path) as journal:
        ids = journal.enqueue([OutboxMessage(topic="a", payload=b"1")])
        commits = journal.commits
        journal.flush_marks()
        assert journal.commits == commits  # nothing held: no write at all
        journal.mark_sent_later(ids)
        journal.flush_marks()
        assert journal.commits == commits + 1
        assert journal.marks_pending == 0
    with Journal.in_dir(tmp_path) as reopened:
        assert reopened.pending_outbox() == []


def test_marks_survive_a_failed_write_for_the_next_one(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path) as journal:
        _save(journal, "o1", 1)
        ids = [row.id for row in journal.take_outbox()]
        journal.mark_sent_later(ids)
        with pytest.raises(JournalError):
            _save(journal, "o1", 7)  # rolled back: the marks go back to be written next time
        assert journal.marks_pending == 1
        journal.flush_marks()
        assert journal._conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_a_crash_before_the_marks_are_written_publishes_again(tmp_path: Path) -> None:
    journal = Journal.in_dir(tmp_path)
    _save(journal, "o1", 1)
    journal.mark_sent_later([row.id for row in journal.take_outbox()])
    journal._conn.close()  # the process dies with the mark in memory
    with Journal.in_dir(tmp_path) as reopened:
        assert [row.topic for row in reopened.take_outbox()] == ["p/order/o1/status"]
