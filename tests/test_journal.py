"""The journal against real SQLite files on tmp_path: durability, atomicity, schema, outbox."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kiosk.errors import JournalError
from kiosk.journal import FILENAME, SCHEMA_VERSION, Journal, OutboxMessage, StoredOrder
from tests.journalkit import Clock, new_order, status


@pytest.fixture(name="db")
def fixture_db(tmp_path: Path) -> Path:
    return tmp_path / FILENAME


def test_save_survives_close_and_reopen(db: Path) -> None:
    with Journal.open(db) as journal:
        assert new_order(journal, "o1") == 1
        journal.save(
            "o1",
            state="approved",
            terminal=False,
            data_json='{"state":"approved","pi":"pi_1"}',
            transition=("received", "approved", "authorised"),
            outbox=[status("o1", 2)],
        )
    with Journal.open(db) as journal:
        order = journal.get("o1")
        assert order is not None
        assert (order.state, order.terminal, order.status_seq) == ("approved", False, 2)
        assert order.data_json == '{"state":"approved","pi":"pi_1"}'
        assert order.request_hash == "h-o1"
        assert [(t.seq, t.from_state, t.to_state, t.event) for t in journal.history("o1")] == [
            (1, None, "received", "request"),
            (2, "received", "approved", "authorised"),
        ]
        assert [row.topic for row in journal.pending_outbox(10)] == ["vend/v1/order/o1/status"] * 2
        assert journal.get("nope") is None


def test_failed_save_writes_nothing(db: Path) -> None:
    with Journal.open(db) as journal:
        new_order(journal, "o1")
        commits = journal.commits
        # The order update and transition are executed before the outbox row breaks a CHECK
        # constraint: the whole save must be undone.
        bad = OutboxMessage(topic="vend/v1/order/o1/status", payload=b"{}", expiry_s=-1)
        with pytest.raises(JournalError, match="nothing written"):
            journal.save(
                "o1",
                state="approved",
                terminal=False,
                data_json="{}",
                transition=("received", "approved", "authorised"),
                outbox=[OutboxMessage(topic="a", payload=b"1"), bad],
            )
        assert journal.commits == commits
    with Journal.open(db) as journal:
        order = journal.get("o1")
        assert order is not None
        assert order.state == "received"
        assert len(journal.history("o1")) == 1
        assert len(journal.pending_outbox(10)) == 1


def test_new_order_without_request_is_refused(db: Path) -> None:
    with Journal.open(db) as journal:
        with pytest.raises(JournalError, match="request_hash"):
            journal.save("o1", state="received", terminal=False, data_json="{}")
        assert journal.get("o1") is None


def test_status_seq_must_increase_by_one(db: Path) -> None:
    with Journal.open(db) as journal:
        new_order(journal, "o1")
        with pytest.raises(JournalError, match="expected 2"):
            journal.save("o1", state="x", terminal=False, data_json="{}", outbox=[status("o1", 1)])
        with pytest.raises(JournalError, match="expected 2"):
            journal.save("o1", state="x", terminal=False, data_json="{}", outbox=[status("o1", 3)])
        # Two status messages in one step (a conflict rejection, then the current status).
        seq = journal.save(
            "o1",
            state="received",
            terminal=False,
            data_json="{}",
            outbox=[status("o1", 2), status("o1", 3)],
        )
        assert seq == 3
        # A re-publication without a new seq leaves it alone.
        plain = OutboxMessage(topic="vend/v1/order/o1/status", payload=b"{}", retain=True)
        assert journal.save("o1", state="received", terminal=False, data_json="{}", outbox=[plain]) == 3
        order = journal.get("o1")
        assert order is not None
        assert order.next_status_seq == 4


def test_wal_and_synchronous_full_are_set(db: Path) -> None:
    with Journal.open(db) as journal:
        conn = journal._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        # A bounded page cache: SQLite's default (2 MB) fills with old orders as the journal grows.
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -512


def test_journal_from_a_newer_kiosk_is_refused(db: Path) -> None:
    Journal.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer kiosk"):
        Journal.open(db)


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not sqlite, just text long enough to be read as a header" * 10)
    with pytest.raises(JournalError, match="cannot"):
        Journal.open(db)


def test_in_dir_creates_the_state_directory(tmp_path: Path) -> None:
    with Journal.in_dir(tmp_path / "state" / "kiosk") as journal:
        assert journal.path == tmp_path / "state" / "kiosk" / FILENAME
        assert journal.path.exists()


def test_outbox_is_oldest_first_and_forgets_what_was_sent(db: Path) -> None:
    clock = Clock()
    with Journal.open(db, clock=clock) as journal:
        new_order(journal, "o1")
        clock.now += 5
        journal.enqueue([OutboxMessage(topic="vend/v1/kioskd/state", payload=b"online", retain=True)])
        new_order(journal, "o2")
        rows = journal.pending_outbox(10)
        assert [(r.order_id, r.topic) for r in rows] == [
            ("o1", "vend/v1/order/o1/status"),
            (None, "vend/v1/kioskd/state"),
            ("o2", "vend/v1/order/o2/status"),
        ]
        assert rows[0].retain
        assert rows[0].expiry_s == 86_400
        assert rows[1].expiry_s is None
        assert [r.id for r in journal.pending_outbox(2)] == [rows[0].id, rows[1].id]
        stats = journal.outbox_stats()
        assert (stats.depth, stats.oldest_at) == (3, 1_000_000.0)
        journal.mark_sent([rows[0].id, 9999])
        journal.mark_sent([])
        assert [r.id for r in journal.pending_outbox(10)] == [rows[1].id, rows[2].id]
        assert journal.outbox_stats().oldest_at == 1_000_005.0
    with Journal.open(db) as journal:
        assert len(journal.pending_outbox(10)) == 2


def test_open_orders_and_recent_counts(db: Path) -> None:
    clock = Clock()
    with Journal.open(db, clock=clock) as journal:
        for order_id in ("a", "b", "c", "d", "e"):
            new_order(journal, order_id)
            clock.now += 1
        journal.save("a", state="completed", terminal=True, data_json="{}")
        clock.now += 100
        journal.save("b", state="canceled", terminal=True, data_json="{}")
        journal.save("c", state="completed", terminal=True, data_json="{}")
        assert [o.order_id for o in journal.open_orders()] == ["d", "e"]
        assert journal.open_count() == 2
        assert journal.recent(0) == {"completed": 2, "canceled": 1}
        assert journal.recent(clock.now) == {"completed": 1, "canceled": 1}


def test_counters_are_durable_and_increasing(db: Path) -> None:
    with Journal.open(db) as journal:
        assert journal.next_value("session") == 1
        assert journal.next_value("session") == 2
        assert journal.next_value("events") == 1
        assert journal.get_meta("config_version") is None
        journal.set_meta("config_version", "7")
        journal.set_meta("config_version", "8")
    with Journal.open(db) as journal:
        assert journal.next_value("session") == 3
        assert journal.get_meta("config_version") == "8"


def test_commits_are_counted(db: Path) -> None:
    with Journal.open(db) as journal:
        new_order(journal, "o1")
        journal.get("o1")
        journal.pending_outbox()
        journal.mark_sent([1])
        assert journal.commits == 2


def test_a_transaction_that_changes_nothing_is_not_counted(db: Path) -> None:
    with Journal.open(db) as journal:
        journal.mark_sent([99])  # no such message: nothing deleted
        assert journal.commits == 0


def add(journal: Journal, order_id: str, *, request_hash: str, state: str, seq: int) -> StoredOrder | None:
    return journal.add(
        order_id,
        request_hash=request_hash,
        request_json=f'{{"order_id":"{order_id}"}}',
        state=state,
        terminal=False,
        data_json=f'{{"state":"{state}"}}',
        transition=(None, state, "request"),
        outbox=[status(order_id, seq)],
    )


def test_add_records_a_new_order_and_answers_a_known_id_without_writing(db: Path) -> None:
    with Journal.open(db) as journal:
        assert add(journal, "o1", request_hash="h1", state="received", seq=1) is None
        first = journal.get("o1")
        assert first is not None
        assert (first.request_hash, first.state, first.status_seq) == ("h1", "received", 1)
        assert len(journal.history("o1")) == 1
        commits, queued = journal.commits, journal.pending_outbox()
        # The same id again, whatever the content: the order held is returned, nothing written.
        assert add(journal, "o1", request_hash="h2", state="approved", seq=1) == first
        assert journal.get("o1") == first
        assert len(journal.history("o1")) == 1
        assert journal.pending_outbox() == queued
        assert journal.commits == commits


def test_add_keeps_the_status_seq_rule(db: Path) -> None:
    with Journal.open(db) as journal:
        with pytest.raises(JournalError, match="status seq 2 out of order"):
            add(journal, "o1", request_hash="h1", state="received", seq=2)
        assert journal.get("o1") is None
        assert journal.commits == 0


def test_threads_share_one_connection(db: Path) -> None:
    with Journal.open(db) as journal:

        def work(prefix: str) -> None:
            for i in range(25):
                new_order(journal, f"{prefix}{i}")

        threads = [threading.Thread(target=work, args=(p,)) for p in "abcd"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert journal.open_count() == 100
        assert journal.commits == 100


CHILD = """
import sys
from kiosk.journal import Journal, OutboxMessage

journal = Journal.open(sys.argv[1])
i = 0
while True:
    oid = f"o{i}"
    for seq, (old, new) in enumerate([(None, "received"), ("received", "approved")], start=1):
        journal.save(
            oid,
            request_hash="h", request_json="{}",
            state=new, terminal=False, data_json="{" + '"pad":"' + "x" * 2000 + '"}',
            transition=(old, new, "e"),
            outbox=[OutboxMessage(f"t/{oid}", b"p" * 500, retain=True, status_seq=seq)],
        )
    print(i, flush=True)
    i += 1
"""


def test_sigkill_mid_write_leaves_a_consistent_journal(db: Path) -> None:
    Journal.open(db).close()
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            for _ in range(60):
                line = child.stdout.readline()
                assert line, child.stderr.read()
            # The child is somewhere inside its next transactions: kill it without warning.
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    with Journal.open(db) as journal:
        assert journal.integrity_check() == "ok"
        conn = journal._conn
        orders = conn.execute("SELECT order_id, state, status_seq FROM orders").fetchall()
        assert len(orders) >= 60
        for order_id, state, status_seq in orders:
            history = journal.history(order_id)
            # Every committed step has its transition and its outbox row, and nothing more.
            assert len(history) == status_seq
            assert history[-1].to_state == state
            outbox = conn.execute("SELECT count(*) FROM outbox WHERE order_id = ?", (order_id,)).fetchone()[0]
            assert outbox == status_seq
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
