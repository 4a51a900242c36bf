"""Ended orders leave the journal after `journal.keep_days`; open orders and unsent messages never.

A real SQLite file on tmp_path, the journal's clock injected. The runner test goes through the
real Runner: a repeated request is recognised as long as its ended order is kept. The last test
starts the real `kiosk run` on a journal with orders that ended long ago.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from kiosk.gateway import Gateway
from kiosk.journal import FILENAME, PRUNE_BATCH, Journal, OutboxMessage
from kiosk.model import Policy
from kiosk.runner import Runner, RunnerConfig
from tests.harness import start_rig
from tests.journalkit import Clock, new_order, status

if TYPE_CHECKING:
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto

DAY_S = 86_400.0
KEEP_S = 180 * DAY_S
PREFIX = "vend/v1"
NOW = 1_800_000_000.0  # 2027: after the test requests' expires_at


def end_order(journal: Journal, order_id: str) -> None:
    journal.save(
        order_id,
        state="completed",
        terminal=True,
        data_json='{"state":"completed"}',
        transition=("received", "completed", "vend_result"),
        outbox=[status(order_id, 2)],
    )


def send_all(journal: Journal) -> None:
    """The broker acknowledged every message queued so far."""
    journal.mark_sent(row.id for row in journal.pending_outbox(10_000))


def ids(journal: Journal) -> list[str]:
    with journal.reading() as conn:
        return [row[0] for row in conn.execute("SELECT order_id FROM orders ORDER BY order_id")]


def transitions(journal: Journal) -> int:
    with journal.reading() as conn:
        return int(conn.execute("SELECT count(*) FROM transitions").fetchone()[0])


@pytest.fixture(name="db")
def fixture_db(tmp_path: Path) -> Path:
    return tmp_path / FILENAME


def test_ended_orders_go_after_the_retention_with_their_history(db: Path) -> None:
    clock = Clock(NOW)
    with Journal.open(db, clock=clock) as journal:
        new_order(journal, "old")
        end_order(journal, "old")
        clock.now += 10 * DAY_S
        new_order(journal, "young")
        end_order(journal, "young")
        send_all(journal)
        clock.now += KEEP_S - 5 * DAY_S  # "old" ended 185 days ago, "young" 175
        pruned = journal.prune(KEEP_S)
        assert (pruned.orders, pruned.transitions) == (1, 2)
        assert ids(journal) == ["young"]
        assert journal.get("old") is None
        assert journal.history("old") == []
        assert [t.to_state for t in journal.history("young")] == ["received", "completed"]
        # Nothing more to do until "young" is old enough.
        clock.now += 5 * DAY_S  # "young" ended exactly 180 days ago: not more
        assert journal.prune(KEEP_S).orders == 0
        clock.now += 1
        assert journal.prune(KEEP_S).orders == 1
        assert ids(journal) == []
        assert transitions(journal) == 0
    with Journal.open(db) as journal:
        assert ids(journal) == []


def test_an_open_order_is_never_pruned_however_old(db: Path) -> None:
    clock = Clock(NOW)
    with Journal.open(db, clock=clock) as journal:
        new_order(journal, "open")
        new_order(journal, "ended")
        end_order(journal, "ended")
        send_all(journal)
        clock.now += 10 * KEEP_S
        assert journal.prune(0).orders == 1
        assert ids(journal) == ["open"]
        assert [o.order_id for o in journal.open_orders()] == ["open"]
        assert len(journal.history("open")) == 1


def test_an_ended_order_stays_while_a_message_of_it_waits_in_the_outbox(db: Path) -> None:
    clock = Clock(NOW)
    with Journal.open(db, clock=clock) as journal:
        new_order(journal, "o1")
        end_order(journal, "o1")
        clock.now += KEEP_S + DAY_S
        assert journal.prune(KEEP_S).orders == 0
        rows = journal.pending_outbox(10)
        assert [row.order_id for row in rows] == ["o1", "o1"]
        # Sent, but the marks are still held in memory: the prune's own transaction writes
        # them first, then the order goes.
        journal.mark_sent_later(row.id for row in rows)
        assert journal.prune(KEEP_S).orders == 1
        assert journal.pending_outbox(10) == []
        assert ids(journal) == []


def test_messages_of_no_order_are_left_alone(db: Path) -> None:
    clock = Clock(NOW)
    with Journal.open(db, clock=clock) as journal:
        journal.enqueue([OutboxMessage(topic=f"{PREFIX}/kioskd/state", payload=b"online", retain=True)])
        new_order(journal, "o1")
        end_order(journal, "o1")
        journal.mark_sent(row.id for row in journal.pending_outbox(10) if row.order_id == "o1")
        clock.now += KEEP_S + DAY_S
        assert journal.prune(KEEP_S).orders == 1
        assert [row.topic for row in journal.pending_outbox(10)] == [f"{PREFIX}/kioskd/state"]


def test_pruning_goes_in_batches_oldest_first(db: Path) -> None:
    clock = Clock(NOW)
    with Journal.open(db, clock=clock) as journal:
        for n in range(5):
            new_order(journal, f"o{n}")
            end_order(journal, f"o{n}")
            clock.now += DAY_S
        send_all(journal)
        clock.now += KEEP_S
        commits = journal.commits
        assert [journal.prune(KEEP_S, limit=2).orders for _ in range(4)] == [2, 2, 1, 0]
        assert journal.commits == commits + 3  # one transaction per batch; the empty one wrote nothing
        assert ids(journal) == []
        first = journal.prune(KEEP_S, limit=2)
        assert (first.orders, first.transitions) == (0, 0)


def test_bad_arguments_are_refused(db: Path) -> None:
    with Journal.open(db) as journal:
        with pytest.raises(ValueError, match="keep_s"):
            journal.prune(-1)
        with pytest.raises(ValueError, match="limit"):
            journal.prune(KEEP_S, limit=0)


# --- through the runner: a repeated order id, before and after its order is pruned -------------


def request(order_id: str, amount: int) -> bytes:
    # Expired on arrival: the order ends `canceled` at once, without a call to Stripe.
    body = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "ts": "2027-01-15T08:00:00Z",
        "order_id": order_id,
        "amount": amount,
        "currency": "usd",
        "expires_at": "2020-01-01T00:00:00Z",
    }
    return json.dumps(body).encode()


def statuses(journal: Journal, order_id: str) -> list[dict[str, Any]]:
    """The order's messages queued so far (none was sent), oldest first."""
    topic = f"{PREFIX}/order/{order_id}/status"
    return [json.loads(row.payload) for row in journal.pending_outbox(10_000) if row.topic == topic]


async def test_a_repeated_request_is_a_duplicate_while_kept_and_a_new_order_once_pruned(tmp_path: Path) -> None:
    clock = Clock(NOW)
    journal = Journal.open(tmp_path / FILENAME, clock=clock)
    # Never called: every order here ends before it reaches Stripe.
    gateway = Gateway(
        api_key=SecretStr("sk_test_kioskRetention0000000000"),
        api_base="http://127.0.0.1:9",
        api_version=None,
        reader_id="tmr_retention",
        request_timeout_s=1.0,
    )
    config = RunnerConfig(
        kiosk_id="k1", topic_prefix=PREFIX, currencies=("usd",), max_amount=10_000, policy=Policy(kiosk_id="k1")
    )
    runner = Runner(config, journal, gateway, clock=clock)
    topic = f"{PREFIX}/order/r1/request"
    try:
        await runner.on_message(topic, request("r1", 300))
        first = journal.get("r1")
        assert first is not None
        assert (first.state, first.terminal) == ("canceled", True)
        assert [s["state"] for s in statuses(journal, "r1")] == ["canceled"]

        # A day before the retention ends: the same request is recognised, nothing new is made.
        clock.now += KEEP_S - DAY_S
        assert journal.prune(KEEP_S).orders == 0
        await runner.on_message(topic, request("r1", 300))
        said = statuses(journal, "r1")
        assert [(s["state"], s["seq"]) for s in said] == [("canceled", 1), ("canceled", 1)]
        assert journal.get("r1") == first
        # Other content under the same id is still a conflict.
        await runner.on_message(topic, request("r1", 900))
        conflict = statuses(journal, "r1")[-2]
        assert conflict["state"] == "rejected"
        assert conflict["reason"]["code"] == "order_conflict"

        # Past the retention (and every message of it sent): the order and its id are forgotten.
        send_all(journal)
        clock.now += 2 * DAY_S
        assert journal.prune(KEEP_S).orders == 1
        assert journal.get("r1") is None
        await runner.on_message(topic, request("r1", 900))
        again = journal.get("r1")
        assert again is not None
        assert again.created_at == clock.now
        assert again.request_hash != first.request_hash
    finally:
        await gateway.close()
        journal.close()


# --- the daemon prunes at start ------------------------------------------------------------------


@pytest.mark.slow
async def test_kiosk_run_prunes_what_ended_before_the_retention_at_start(tmp_path: Path, broker: Mosquitto) -> None:
    now = time.time()
    db = tmp_path / "state" / FILENAME
    db.parent.mkdir()
    with Journal.open(db, clock=lambda: now - 91 * DAY_S) as journal:
        for n in range(PRUNE_BATCH + 1):  # two batches
            new_order(journal, f"old-{n}", state="completed", queued=False)
    with Journal.open(db, clock=lambda: now - 89 * DAY_S) as journal:
        new_order(journal, "kept", state="completed", queued=False)
    async with start_rig(tmp_path, broker, JOURNAL__KEEP_DAYS="90") as rig:
        async with asyncio.timeout(30):
            while '"journal.pruned"' not in rig.daemon.log():  # noqa: ASYNC110 - a line in a file
                await asyncio.sleep(0.05)
        [line] = [json.loads(x) for x in rig.daemon.log().splitlines() if '"journal.pruned"' in x]
        assert (line["orders"], line["transitions"], line["keep_days"]) == (PRUNE_BATCH + 1, PRUNE_BATCH + 1, 90)
    with Journal.open(db) as journal:
        assert ids(journal) == ["kept"]
