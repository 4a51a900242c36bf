"""The journal's non-durable writes: marks of what was sent skip their fsync, and nothing else does."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiosk.fleet.store import FleetStore, NewEvent
from kiosk.journal import Journal, OutboxMessage

FULL, NORMAL = 2, 1


def synchronous(journal: Journal) -> int:
    return int(journal._conn.execute("PRAGMA synchronous").fetchone()[0])


def test_mark_sent_commits_without_fsync_and_restores_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal.in_dir(tmp_path) as journal:
        ids = journal.enqueue([OutboxMessage(topic="a", payload=b"1"), OutboxMessage(topic="b", payload=b"2")])
        seen: list[int] = []
        conn = journal._conn

        def spy(sql: str, rows: Any) -> Any:
            seen.append(int(conn.execute("PRAGMA synchronous").fetchone()[0]))
            return conn.executemany(sql, rows)

        assert synchronous(journal) == FULL
        monkeypatch.setattr(journal, "_conn", _Wrapped(conn, spy))
        journal.mark_sent(ids[:1])
        monkeypatch.undo()
        assert seen == [NORMAL]
        assert synchronous(journal) == FULL
        assert [row.topic for row in journal.pending_outbox()] == ["b"]
    with Journal.in_dir(tmp_path) as reopened:
        assert [row.topic for row in reopened.pending_outbox()] == ["b"]


class _Wrapped:
    """The connection, with executemany replaced (sqlite3.Connection's attributes are read-only)."""

    def __init__(self, conn: sqlite3.Connection, executemany: Callable[[str, Any], Any]) -> None:
        self._conn = conn
        self.executemany = executemany

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_other_writes_stay_full(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path) as journal:
        ids = journal.enqueue([OutboxMessage(topic="a", payload=b"1")])
        journal.mark_sent(ids)
        journal.mark_sent([])
        assert synchronous(journal) == FULL
        journal.set_meta("k", "v")
        assert synchronous(journal) == FULL


def test_the_fleets_event_marks_commit_without_fsync_and_restore_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.in_dir(tmp_path) as journal:
        store = FleetStore(journal)
        seqs = store.append([NewEvent("e1", "order.completed", {"order_id": "o1"})], now=1.0)
        assert synchronous(journal) == FULL
        seen: list[int] = []
        conn = journal._conn

        def spy(sql: str, rows: Any) -> Any:
            seen.append(int(conn.execute("PRAGMA synchronous").fetchone()[0]))
            return conn.executemany(sql, rows)

        monkeypatch.setattr(journal, "_conn", _Wrapped(conn, spy))
        store.mark_sent(seqs, at=2.0)
        monkeypatch.undo()
        assert seen == [NORMAL]
        assert synchronous(journal) == FULL
        assert [(e.seq, e.sent_at) for e in store.due(resend_before=0.0)] == []  # sent, not due yet
        assert [(e.seq, e.sent_at) for e in store.due(resend_before=3.0)] == [(seqs[0], 2.0)]
