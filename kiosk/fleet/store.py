"""kiosk.fleet's tables in the journal (migration 2): event outbox, remote config, answered requests.

Each method is one short transaction; callers run them on the journal's thread
(`await store.journal.call(store.append, …)`), in turn with the orders' own journal work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from kiosk.journal import Journal


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; `key` makes the append idempotent (one event per order ending)."""

    id: str
    type: str
    data: dict[str, Any]
    key: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event in the outbox, not yet acknowledged by the fleet."""

    seq: int
    id: str
    type: str
    data: dict[str, Any]
    created_at: float
    sent_at: float | None


@dataclass(frozen=True, slots=True)
class EventStats:
    """Unacknowledged events: how many, the oldest, and when the next re-send is due."""

    depth: int
    oldest_at: float | None
    last_sent_at: float | None


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    """One remote configuration version as received."""

    version: int
    status: str
    config: dict[str, Any]
    errors: list[dict[str, str]]


class FleetStore:
    """The fleet's durable state, in the same SQLite journal as the orders."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    # -- events ------------------------------------------------------------------------------

    def append(self, events: Sequence[NewEvent], now: float) -> list[int]:
        """Add events atomically; an event whose `key` is already stored is skipped. Returns new seqs."""
        seqs = []
        with self.journal.writing() as conn:
            for event in events:
                cursor = conn.execute(
                    "INSERT INTO fleet_events (id, key, type, data_json, created_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (event.id, event.key, event.type, json.dumps(event.data, separators=(",", ":")), now),
                )
                if cursor.rowcount:
                    seqs.append(int(cursor.lastrowid or 0))
        return seqs

    def has_key(self, key: str) -> bool:
        """Whether an event with this key was ever appended (and not yet pruned)."""
        with self.journal.reading() as conn:
            return conn.execute("SELECT 1 FROM fleet_events WHERE key = ?", (key,)).fetchone() is not None

    def due(self, resend_before: float, limit: int = 100) -> list[StoredEvent]:
        """Unacknowledged events never sent, or last sent at or before `resend_before`, by seq."""
        with self.journal.reading() as conn:
            rows = conn.execute(
                "SELECT seq, id, type, data_json, created_at, sent_at FROM fleet_events"
                " WHERE acked = 0 AND (sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT ?",
                (resend_before, limit),
            ).fetchall()
        return [
            StoredEvent(r["seq"], r["id"], r["type"], json.loads(r["data_json"]), r["created_at"], r["sent_at"])
            for r in rows
        ]

    def mark_sent(self, seqs: Iterable[int], at: float) -> None:
        """Record that the broker acknowledged these events (they are re-sent later unless acked).

        Not synced on its own (one fsync less per event): a power cut may undo the mark, and the
        event is sent again, as events are anyway until the fleet acknowledges them.
        """
        batch = [(at, s) for s in seqs]
        if batch:
            with self.journal.writing(durable=False) as conn:
                conn.executemany("UPDATE fleet_events SET sent_at = ? WHERE seq = ?", batch)

    def unsend(self) -> None:
        """Make every unacknowledged event due now (after a reconnect: the broker may have lost them)."""
        with self.journal.writing() as conn:
            conn.execute("UPDATE fleet_events SET sent_at = NULL WHERE acked = 0 AND sent_at IS NOT NULL")

    def ack(self, upto_seq: int) -> int | None:
        """Forget events up to `upto_seq`; returns how many, or None if it is above every seq issued.

        An acknowledgement above the last seq means the fleet remembers a journal this kiosk lost:
        the sequence jumps past it, so new events are never taken as acknowledged already.
        """
        with self.journal.writing() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'fleet_events'").fetchone()
            last = int(row[0]) if row is not None else 0
            if upto_seq > last:
                if row is None:
                    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('fleet_events', ?)", (upto_seq,))
                else:
                    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'fleet_events'", (upto_seq,))
                return None
            cursor = conn.execute("UPDATE fleet_events SET acked = 1 WHERE acked = 0 AND seq <= ?", (upto_seq,))
            return cursor.rowcount

    def prune(self, before: float) -> None:
        """Delete acknowledged events created before `before` (their keys go with them)."""
        with self.journal.writing() as conn:
            conn.execute("DELETE FROM fleet_events WHERE acked = 1 AND created_at < ?", (before,))
            conn.execute("DELETE FROM fleet_requests WHERE at < ?", (before,))

    def stats(self) -> EventStats:
        """The outbox figures for the health message and the sender's next wake-up."""
        with self.journal.reading() as conn:
            row = conn.execute(
                "SELECT count(*) AS depth, min(created_at) AS oldest, min(sent_at) AS sent"
                " FROM fleet_events WHERE acked = 0"
            ).fetchone()
        return EventStats(row["depth"], row["oldest"], row["sent"])

    def last_seq(self) -> int:
        """The highest seq ever issued (0 before the first event)."""
        with self.journal.reading() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'fleet_events'").fetchone()
        return int(row[0]) if row is not None else 0

    # -- remote configuration -----------------------------------------------------------------

    def record_config(self, record: ConfigRecord, now: float) -> None:
        """Store a processed `config/desired` version with its outcome."""
        with self.journal.writing() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO fleet_config (version, status, config_json, errors_json, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (record.version, record.status, json.dumps(record.config), json.dumps(record.errors), now),
            )

    def latest_config(self) -> ConfigRecord | None:
        """The highest version processed, whatever its outcome."""
        return self._config("SELECT * FROM fleet_config ORDER BY version DESC LIMIT 1")

    def applied_config(self) -> ConfigRecord | None:
        """The highest version that was accepted (applied or waiting for a restart)."""
        return self._config(
            "SELECT * FROM fleet_config WHERE status IN ('applied', 'pending_restart') ORDER BY version DESC LIMIT 1"
        )

    def _config(self, sql: str) -> ConfigRecord | None:
        with self.journal.reading() as conn:
            row = conn.execute(sql).fetchone()
        if row is None:
            return None
        return ConfigRecord(
            row["version"], row["status"], json.loads(row["config_json"]), json.loads(row["errors_json"])
        )

    # -- answered requests --------------------------------------------------------------------

    def answered(self, request_id: str) -> bytes | None:
        """The response already given to a request id (b"" when none was stored), or None if new."""
        with self.journal.reading() as conn:
            row = conn.execute("SELECT response FROM fleet_requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        return bytes(row[0]) if row[0] is not None else b""

    def remember(self, request_id: str, kind: str, response: bytes | None, now: float) -> bool:
        """Record a request id and its response; False if it was recorded already (a replay)."""
        with self.journal.writing() as conn:
            cursor = conn.execute(
                "INSERT INTO fleet_requests (request_id, kind, response, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (request_id, kind, response, now),
            )
            return bool(cursor.rowcount)

    def set_response(self, request_id: str, response: bytes) -> None:
        """Store the response of a request recorded earlier (a command that ran in the background)."""
        with self.journal.writing() as conn:
            conn.execute("UPDATE fleet_requests SET response = ? WHERE request_id = ?", (response, request_id))

    # -- orders ----------------------------------------------------------------------------

    def terminal_orders(self, since: float) -> list[str]:
        """Order data (JSON) of orders that ended since `since` and have no event yet."""
        with self.journal.reading() as conn:
            rows = conn.execute(
                "SELECT o.data_json FROM orders o WHERE o.terminal = 1 AND o.updated_at >= ?"
                " AND NOT EXISTS (SELECT 1 FROM fleet_events e WHERE e.key = 'order:' || o.order_id || ':' || o.state)"
                " ORDER BY o.updated_at",
                (since,),
            ).fetchall()
        return [str(r[0]) for r in rows]
