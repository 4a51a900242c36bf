"""The journal's one non-durable write: outbox marks skip their fsync, and nothing else does."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
