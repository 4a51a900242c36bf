"""The journal: kiosk's durable memory in SQLite, one transaction per decision.

House rules:
- Every write is ONE transaction (`BEGIN IMMEDIATE` … `COMMIT`) on a WAL database with
  `synchronous=FULL`: once a method returns, the change survives a power cut; if it raises, none of
  it was written. (The exceptions are marks of what was sent: the outbox's `mark_sent` and
  `mark_sent_later`, and kiosk.fleet's event marks. A lost mark only means a message sent again.)
- The journal does not know the order state machine: it stores the order's state name and the
  whole serialized core state as JSON text, an append-only list of transitions, and an outbox of
  MQTT messages that are published after the commit and forgotten once the broker acknowledged them.
- Calls are synchronous and short. The daemon makes them on the journal's own thread
  (`await journal.call(journal.save, …)`), so the event loop never waits for an fsync; one
  connection, shared between threads under a lock. One dedicated thread rather than
  `asyncio.to_thread`: the hand-off costs half the CPU (bench/RESULTS.md), and the journal's work
  runs in the order it was asked for. kiosk.fleet's store calls go through it too.
- The schema is versioned with `PRAGMA user_version` and only migrates forward; a journal written
  by a newer kiosk is refused rather than misread.
- Ended orders are kept for a bounded time (`prune`, settings `journal.keep_days`), open orders
  for as long as they are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, Self, TypeVar, cast

from kiosk.errors import JournalError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

P = ParamSpec("P")
T = TypeVar("T")

FILENAME = "kiosk.db"
# SQLite's page cache, per connection, in KiB (`PRAGMA cache_size`; SQLite's default is 2000).
# Each step of an order touches a few pages at the right edge of each table and index, so a small
# cache serves it; a larger one only fills with pages of old orders as the journal grows, and that
# memory is never given back (bench/RESULTS.md, "Memory").
CACHE_KIB = 512
# Orders deleted per `prune` transaction: the journal is not held long by any one of them.
PRUNE_BATCH = 200

# Each entry migrates from version i to i + 1. Append only; never edit a released step.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE orders (
        order_id     TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        request_json TEXT NOT NULL,
        state        TEXT NOT NULL,
        terminal     INTEGER NOT NULL CHECK (terminal IN (0, 1)),
        data_json    TEXT NOT NULL,
        status_seq   INTEGER NOT NULL DEFAULT 0 CHECK (status_seq >= 0),
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    ) STRICT;
    CREATE INDEX orders_open ON orders (created_at) WHERE terminal = 0;
    CREATE INDEX orders_updated ON orders (updated_at) WHERE terminal = 1;

    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id   TEXT NOT NULL REFERENCES orders (order_id),
        seq        INTEGER NOT NULL CHECK (seq >= 1),
        from_state TEXT,
        to_state   TEXT NOT NULL,
        event      TEXT NOT NULL,
        at         REAL NOT NULL,
        UNIQUE (order_id, seq)
    ) STRICT;

    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id   TEXT REFERENCES orders (order_id),
        topic      TEXT NOT NULL CHECK (topic <> ''),
        payload    BLOB NOT NULL,
        retain     INTEGER NOT NULL CHECK (retain IN (0, 1)),
        expiry_s   INTEGER CHECK (expiry_s IS NULL OR expiry_s > 0),
        created_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value ANY
    ) STRICT;
    """,
    # 2: fleet management (kiosk.fleet.store): the event outbox, whose AUTOINCREMENT seq is never
    # reused, even after rows are deleted; every remote configuration version received; and the
    # fleet requests (commands, jobs) already answered, so a replay changes nothing.
    """
    CREATE TABLE fleet_events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        key        TEXT UNIQUE,
        type       TEXT NOT NULL CHECK (type <> ''),
        data_json  TEXT NOT NULL,
        created_at REAL NOT NULL,
        sent_at    REAL,
        acked      INTEGER NOT NULL DEFAULT 0 CHECK (acked IN (0, 1))
    ) STRICT;
    CREATE INDEX fleet_events_pending ON fleet_events (seq) WHERE acked = 0;

    CREATE TABLE fleet_config (
        version     INTEGER PRIMARY KEY,
        status      TEXT NOT NULL,
        config_json TEXT NOT NULL,
        errors_json TEXT NOT NULL,
        received_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE fleet_requests (
        request_id TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        response   BLOB,
        at         REAL NOT NULL
    ) STRICT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as the journal holds it."""

    order_id: str
    request_hash: str
    request_json: str
    state: str
    terminal: bool
    data_json: str
    status_seq: int
    created_at: float
    updated_at: float

    @property
    def next_status_seq(self) -> int:
        """The `seq` the next status message of this order must carry."""
        return self.status_seq + 1


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded step of an order (`from_state` is None for the first)."""

    order_id: str
    seq: int
    from_state: str | None
    to_state: str
    event: str
    at: float


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """An MQTT message to publish once the transaction that produced it is committed.

    `status_seq` marks the order's status message: it must be the order's next status seq (the
    stored one plus one, or plus two for a second status message in the same save); the journal
    records it as the order's `status_seq`, so seqs are strictly increasing across restarts.
    """

    topic: str
    payload: bytes
    retain: bool = False
    expiry_s: int | None = None
    status_seq: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message waiting in the outbox; `id` orders them and is what `mark_sent` takes."""

    id: int
    order_id: str | None
    topic: str
    payload: bytes
    retain: bool
    expiry_s: int | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one `prune` call deleted."""

    orders: int
    transitions: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """How far the outbox is behind: for the health message."""

    depth: int
    oldest_at: float | None


_SELECT_ORDERS = (
    "SELECT order_id, request_hash, request_json, state, terminal, data_json, status_seq,"
    " created_at, updated_at FROM orders"
)
_INSERT_ORDER = (
    "INSERT INTO orders (order_id, request_hash, request_json, state, terminal, data_json,"
    " status_seq, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_ORDER = (
    "UPDATE orders SET request_hash = coalesce(?, request_hash),"
    " request_json = coalesce(?, request_json), state = ?, terminal = ?, data_json = ?,"
    " status_seq = ?, updated_at = ? WHERE order_id = ?"
)
_APPEND_TRANSITION = (
    "INSERT INTO transitions (order_id, seq, from_state, to_state, event, at)"
    " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM transitions WHERE order_id = ?"
)


def _order(row: sqlite3.Row) -> StoredOrder:
    return StoredOrder(
        order_id=row["order_id"],
        request_hash=row["request_hash"],
        request_json=row["request_json"],
        state=row["state"],
        terminal=bool(row["terminal"]),
        data_json=row["data_json"],
        status_seq=row["status_seq"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class _Worker:
    """One thread that runs the journal's calls in the order they were asked for.

    A call is queued when asked and then runs to its end even if its caller is cancelled (a
    transaction is all or nothing either way); its result is dropped. Once stopped, it takes no
    more calls.
    """

    def __init__(self, name: str, path: Path) -> None:
        self._name = name
        self._path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def submit(self, job: _Job) -> None:
        """Queue `job`, starting the thread on first use.

        Raises:
            JournalError: the journal is closed.
        """
        with self._lock:
            if self._stopped:
                raise JournalError(f"journal {self._path} is closed")
            if self._thread is None:
                # A daemon thread: an interpreter that exits without close() must not hang on
                # it; a transaction cut short by that is rolled back by SQLite.
                thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                thread.start()
                self._thread = thread
            self._jobs.put(job)

    def stop(self) -> None:
        """Finish what was asked, then end the thread (idempotent)."""
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)  # behind every job already queued
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()


class _Job:
    __slots__ = ("args", "fn", "future", "kwargs", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[object] = loop.create_future()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
            self._settle(None, exc)
        else:
            self._settle(result, None)

    def _settle(self, result: object, exc: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(_resolve, self.future, result, exc)


def _resolve(future: asyncio.Future[object], result: object, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is None:
        future.set_result(result)
        return
    try:
        future.set_exception(exc)
    except TypeError:  # StopIteration cannot travel in a future: the caller must not wait forever
        future.set_exception(JournalError(f"journal call raised {exc!r}"))


class Journal:
    """The SQLite journal. Build with `Journal.open(path)`; close with `close()`.

    `commits` counts committed write transactions that changed something (for benchmarks:
    commits per order).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self.commits = 0
        # Outbox rows the open transaction wrote; once it commits they join `_fresh`, where the
        # publisher takes them without reading the table back (`take_fresh`).
        self._staged: list[OutboxRow] = []
        self._fresh: deque[OutboxRow] = deque()
        # Ids the broker acknowledged, deleted by the next write transaction (`mark_sent_later`).
        self._marks: deque[int] = deque()
        self._worker = _Worker(f"journal-{path.name}", path)

    @classmethod
    def in_dir(cls, state_dir: Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open `{state_dir}/kiosk.db`, creating the directory if needed."""
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"state directory {state_dir} cannot be created ({exc.strerror})") from exc
        return cls.open(state_dir / FILENAME, clock=clock)

    @classmethod
    def open(cls, path: Path | str, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating or migrating) the journal at `path`.

        Args:
            path: the database file.
            clock: wall-clock seconds since the epoch, for the timestamps it records.

        Raises:
            JournalError: the file cannot be opened, is not a journal, or was written by a newer
                kiosk.
        """
        path = Path(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
            # what the method says it is.
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path} cannot be opened ({exc})") from exc
        conn.row_factory = sqlite3.Row
        try:
            _configure(conn, path)
            _migrate(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise JournalError(f"journal {path} cannot be used ({exc}); is it a kiosk journal?") from exc
        except JournalError:
            conn.close()
            raise
        return cls(conn, path, clock)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Finish the calls already asked for, then close the connection (idempotent)."""
        self._worker.stop()
        with self._lock:
            self._conn.close()

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` (a method of this journal, or of a store on it) on the journal's thread.

        Raises what `fn` raises, and JournalError once the journal is closed. Cancelling the
        caller does not stop a call once asked: it runs in its turn, and its result is dropped.
        """
        job = _Job(asyncio.get_running_loop(), fn, args, kwargs)
        self._worker.submit(job)
        return cast("T", await job.future)  # fn's own result, set by _Job.run

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self._path} cannot be read ({exc})") from exc

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock, self._synchronous(durable=durable):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self._path} cannot start a write ({exc})") from exc
            marks = [self._marks.popleft() for _ in range(len(self._marks))]
            changes = self._conn.total_changes
            try:
                if marks:
                    # Acknowledged messages ride along with whatever this transaction writes.
                    self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in marks])
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                # Anything at all, including cancellation of the calling thread's task: undo.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._staged.clear()
                self._marks.extend(marks)
                if isinstance(exc, sqlite3.Error):
                    raise JournalError(f"journal {self._path} write failed, nothing written ({exc})") from exc
                raise
            self._fresh.extend(self._staged)
            self._staged.clear()
            if self._conn.total_changes != changes:  # one that wrote nothing did not touch the disk
                self.commits += 1

    @contextlib.contextmanager
    def _synchronous(self, *, durable: bool) -> Iterator[None]:
        """Without `durable`, the commit skips its fsync (WAL + synchronous=NORMAL).

        Such a change reaches the disk with the next durable commit (the WAL is synced as a whole)
        or a checkpoint; a power cut before that undoes it, and nothing else.
        """
        if durable:
            yield
            return
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA synchronous=FULL")

    @contextlib.contextmanager
    def writing(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction for tables kept by other modules (kiosk.fleet.store).

        Without `durable`, its commit skips the fsync (see `_synchronous`): only for what a power
        cut may undo at no cost but a repetition.
        """
        with self._write(durable=durable) as conn:
            yield conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Reads under the journal's lock for tables kept by other modules (kiosk.fleet.store)."""
        with self._read() as conn:
            yield conn

    # -- orders --------------------------------------------------------------------------------

    def get(self, order_id: str) -> StoredOrder | None:
        """The order, or None when the journal has never seen it."""
        with self._read() as conn:
            row = conn.execute(_SELECT_ORDERS + " WHERE order_id = ?", (order_id,)).fetchone()
        return None if row is None else _order(row)

    def open_orders(self) -> list[StoredOrder]:
        """Orders not yet in a terminal state, oldest first: what recovery must settle."""
        with self._read() as conn:
            rows = conn.execute(_SELECT_ORDERS + " WHERE terminal = 0 ORDER BY created_at, order_id").fetchall()
        return [_order(row) for row in rows]

    def history(self, order_id: str) -> list[Transition]:
        """The order's transitions in the order they were recorded."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT order_id, seq, from_state, to_state, event, at FROM transitions"
                " WHERE order_id = ? ORDER BY seq",
                (order_id,),
            ).fetchall()
        return [Transition(**dict(row)) for row in rows]

    def save(  # noqa: PLR0913 - one transaction takes everything that must be written together
        self,
        order_id: str,
        *,
        request_hash: str | None = None,
        request_json: str | None = None,
        state: str,
        terminal: bool,
        data_json: str,
        transition: tuple[str | None, str, str] | None = None,
        outbox: Sequence[OutboxMessage] = (),
    ) -> int:
        """Record the order's new state, its transition and its outbox messages, atomically.

        A new order needs `request_hash` and `request_json`; for an existing one they are kept
        unless given (a retryable rejection's order id may be considered afresh).

        Args:
            order_id: the order.
            request_hash: digest of the canonical request, to tell duplicates from conflicts.
            request_json: the request as accepted.
            state: the order's state name after this step.
            terminal: whether that state is final.
            data_json: the whole serialized core state (keys of operations in flight included).
            transition: (from_state, to_state, event) to append to the order's history.
            outbox: messages to publish after the commit; the order's status messages carry
                `status_seq`.

        Returns:
            The order's status seq after the save.

        Raises:
            JournalError: nothing was written (a constraint, a status seq out of order, a new
                order without its request, or the disk).
        """
        now = self._clock()
        with self._write() as conn:
            row = conn.execute("SELECT status_seq FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            return self._record(
                conn,
                order_id,
                None if row is None else int(row["status_seq"]),
                now,
                request_hash=request_hash,
                request_json=request_json,
                state=state,
                terminal=terminal,
                data_json=data_json,
                transition=transition,
                outbox=outbox,
            )

    def add(  # noqa: PLR0913 - `save` for a new order
        self,
        order_id: str,
        *,
        request_hash: str,
        request_json: str,
        state: str,
        terminal: bool,
        data_json: str,
        transition: tuple[str | None, str, str] | None = None,
        outbox: Sequence[OutboxMessage] = (),
    ) -> StoredOrder | None:
        """Record a new order as `save` does, unless the journal already holds one by that id.

        One transaction both asks whether the id is new and, when it is, records the order: a
        request costs one journal call, not a read and then a write.

        Returns:
            None when the order was recorded; the order already held by that id otherwise (and
            then nothing was written).

        Raises:
            JournalError: nothing was written (as for `save`).
        """
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(_SELECT_ORDERS + " WHERE order_id = ?", (order_id,)).fetchone()
            if row is not None:
                return _order(row)
            self._record(
                conn,
                order_id,
                None,
                now,
                request_hash=request_hash,
                request_json=request_json,
                state=state,
                terminal=terminal,
                data_json=data_json,
                transition=transition,
                outbox=outbox,
            )
        return None

    def _record(  # noqa: PLR0913 - inside `_write`: what `save` and `add` write
        self,
        conn: sqlite3.Connection,
        order_id: str,
        status_seq: int | None,
        now: float,
        *,
        request_hash: str | None,
        request_json: str | None,
        state: str,
        terminal: bool,
        data_json: str,
        transition: tuple[str | None, str, str] | None,
        outbox: Sequence[OutboxMessage],
    ) -> int:
        # `status_seq` is the journaled order's, None when the order is new.
        new = status_seq is None
        if new and (request_hash is None or request_json is None):
            raise JournalError(f"order {order_id} is new: save needs its request_hash and request_json")
        seq = status_seq or 0
        for message in outbox:
            if message.status_seq is None:
                continue
            if message.status_seq != seq + 1:
                raise JournalError(
                    f"order {order_id} status seq {message.status_seq} out of order;"
                    f" expected {seq + 1}; nothing written"
                )
            seq = message.status_seq
        if new:
            conn.execute(
                _INSERT_ORDER,
                (order_id, request_hash, request_json, state, int(terminal), data_json, seq, now, now),
            )
        else:
            conn.execute(
                _UPDATE_ORDER,
                (request_hash, request_json, state, int(terminal), data_json, seq, now, order_id),
            )
        if transition is not None:
            from_state, to_state, event = transition
            conn.execute(_APPEND_TRANSITION, (order_id, from_state, to_state, event, now, order_id))
        self._enqueue(conn, order_id, outbox, now)
        return seq

    # -- outbox --------------------------------------------------------------------------------

    def enqueue(self, messages: Sequence[OutboxMessage]) -> list[int]:
        """Queue messages that belong to no order (daemon state, fleet events), atomically."""
        if any(m.status_seq is not None for m in messages):
            raise JournalError("a status message belongs to an order: queue it with save")
        with self._write() as conn:
            return self._enqueue(conn, None, messages, self._clock())

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        order_id: str | None,
        messages: Iterable[OutboxMessage],
        now: float,
    ) -> list[int]:
        ids = []
        for m in messages:
            cursor = conn.execute(
                "INSERT INTO outbox (order_id, topic, payload, retain, expiry_s, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (order_id, m.topic, m.payload, int(m.retain), m.expiry_s, now),
            )
            row_id = int(cursor.lastrowid or 0)
            ids.append(row_id)
            self._staged.append(OutboxRow(row_id, order_id, m.topic, m.payload, m.retain, m.expiry_s, now))
        return ids

    def take_outbox(self) -> list[OutboxRow]:
        """Every message waiting in the outbox, oldest first; from now on `take_fresh` has the rest.

        For the publisher's start: each message is in exactly one of the two.
        """
        with self._read() as conn:
            rows = self._pending_rows(conn, None)
            self._fresh.clear()
        return rows

    def take_fresh(self) -> list[OutboxRow]:
        """Messages committed since the last `take_outbox` or `take_fresh`, oldest first.

        Reads no table and takes no lock (it never waits for a commit in progress), so the
        event loop may call it directly.
        """
        return [self._fresh.popleft() for _ in range(len(self._fresh))]

    def pending_outbox(self, limit: int = 100) -> list[OutboxRow]:
        """Messages not yet acknowledged by the broker, oldest first."""
        with self._read() as conn:
            return self._pending_rows(conn, limit)

    def _pending_rows(self, conn: sqlite3.Connection, limit: int | None) -> list[OutboxRow]:
        # Inside `_read`. Rows whose mark is still held in memory count as sent.
        marked = set(self._marks)
        rows = conn.execute(
            "SELECT id, order_id, topic, payload, retain, expiry_s, created_at FROM outbox ORDER BY id LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [
            OutboxRow(
                id=row["id"],
                order_id=row["order_id"],
                topic=row["topic"],
                payload=bytes(row["payload"]),
                retain=bool(row["retain"]),
                expiry_s=row["expiry_s"],
                created_at=row["created_at"],
            )
            for row in rows
            if row["id"] not in marked
        ]

    def mark_sent(self, ids: Iterable[int]) -> None:
        """Forget these outbox rows: the broker acknowledged them (unknown ids are ignored).

        Not synced to disk on its own (one fsync less per message, 6 per sale; bench/RESULTS.md):
        a power cut may undo the latest marks, and those messages are published again, which
        `kiosk.service` already expects of marks lost in a crash (newest per topic, same id and
        seq). The next durable commit or checkpoint makes them permanent.
        """
        batch = [(i,) for i in ids]
        if not batch:
            return
        with self._write(durable=False) as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", batch)

    def mark_sent_later(self, ids: Iterable[int]) -> None:
        """Like `mark_sent`, but written with the next write transaction, whatever it is.

        The publisher calls this from the event loop for each acknowledged message: no thread
        hand-off, no commit of its own while orders are being saved. `flush_marks` writes what an
        idle journal still holds. Until written, a mark is lost in a crash like an unsynced one.
        """
        self._marks.extend(ids)

    @property
    def marks_pending(self) -> int:
        """Acknowledged messages not yet deleted from the outbox."""
        return len(self._marks)

    def flush_marks(self) -> None:
        """Write the marks `mark_sent_later` holds (without an fsync, like `mark_sent`)."""
        if self._marks:
            with self._write(durable=False):
                pass

    def outbox_stats(self) -> OutboxStats:
        """Depth of the outbox and when its oldest message was queued (acknowledged ones left out)."""
        with self._read() as conn:
            waiting = [row.created_at for row in self._pending_rows(conn, None)]
        return OutboxStats(depth=len(waiting), oldest_at=min(waiting, default=None))

    # -- retention -----------------------------------------------------------------------------

    def prune(self, keep_s: float, *, limit: int = PRUNE_BATCH) -> Pruned:
        """Delete up to `limit` orders that ended more than `keep_s` ago, with their transitions.

        Open orders are never deleted, whatever their age; nor is an ended order with a message
        still waiting in the outbox (the broker has not acknowledged it): it goes once it is sent.
        The oldest go first. One transaction, not synced on its own (like `mark_sent`): a power
        cut may undo it, and the next call deletes them again. Call again while it returns
        `limit` orders; other writes get their turn in between.

        Once deleted, an order id is unknown: a request reusing it is a new order.
        """
        if keep_s < 0 or limit < 1:
            raise ValueError("keep_s must be at least 0 and limit at least 1")
        before = self._clock() - keep_s
        with self._write(durable=False) as conn:
            ids = [
                (row[0],)
                for row in conn.execute(
                    # The outbox is read once (a list), not once per order.
                    "SELECT order_id FROM orders WHERE terminal = 1 AND updated_at < ?"
                    " AND order_id NOT IN (SELECT order_id FROM outbox WHERE order_id IS NOT NULL)"
                    " ORDER BY updated_at LIMIT ?",
                    (before, limit),
                )
            ]
            if not ids:
                return Pruned(orders=0, transitions=0)
            transitions = conn.executemany("DELETE FROM transitions WHERE order_id = ?", ids).rowcount
            conn.executemany("DELETE FROM orders WHERE order_id = ?", ids)
        return Pruned(orders=len(ids), transitions=transitions)

    # -- counters and metadata -----------------------------------------------------------------

    def next_value(self, name: str) -> int:
        """Increment the durable counter `name` and return its new value (1 the first time)."""
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, 1)"
                " ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
                (f"counter.{name}",),
            ).fetchone()
        return int(row[0])

    def get_meta(self, key: str) -> str | None:
        """A stored metadata value (e.g. the applied fleet config version), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"meta.{key}",)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a metadata value durably."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"meta.{key}", value),
            )

    # -- health --------------------------------------------------------------------------------

    def recent(self, since_ts: float) -> dict[str, int]:
        """Terminal orders last updated at or after `since_ts`, counted by final state."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT state, count(*) AS n FROM orders WHERE terminal = 1 AND updated_at >= ? GROUP BY state",
                (since_ts,),
            ).fetchall()
        return {row["state"]: row["n"] for row in rows}

    def open_count(self) -> int:
        """How many orders are not yet terminal."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM orders WHERE terminal = 0").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` answer: "ok" when the file is sound."""
        with self._read() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise JournalError(f"journal {path} cannot use WAL mode (got {mode}); use a local disk")
    # FULL: a commit is on the disk before save() returns; NORMAL would lose the last commits
    # in a power cut, and the broker would already have been told about them.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path} has schema version {version}, newer than this kiosk's"
            f" {SCHEMA_VERSION}: it was written by a newer kiosk;"
            " run that version again or move the file away"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        # executescript commits first and runs its own statements; wrapping the step and the
        # version bump in one explicit transaction keeps a half-migrated file impossible.
        conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[target - 1]}\nPRAGMA user_version = {target};\nCOMMIT;")
