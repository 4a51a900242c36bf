"""What every kiosk benchmark needs: a private Mosquitto, the simulator, `kiosk run`, a controller.

Everything runs on loopback. The simulator serves from a thread of the benchmark process and logs
every request's arrival (monotonic clock, which on Linux is shared by all processes, so it can be
compared with the daemon's and the controller's timestamps). The daemon is a real `kiosk run`
subprocess with a real AF_UNIX datagram socket as `NOTIFY_SOCKET`. The controller is an aiomqtt
client that timestamps every status as it arrives and answers at once.

Nothing here asserts on time: the scripts print what they measured.
"""

# The waits take a `timeout` argument on purpose: each script says how long it allows.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from kiosk.mosquitto import Mosquitto
from kiosk.simulator import Simulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

API_KEY = "sk_test_kioskBench000000000000000"
PREFIX = "vend/v1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_ID = re.compile(r"/(pi|tmr|ch|pm)_[A-Za-z0-9]+")


# --- the simulator's request log ----------------------------------------------------------------


def endpoint(method: str, path: str) -> str:
    """`POST /v1/payment_intents/{id}/capture`: a request's endpoint, ids taken out."""
    return f"{method} {_ID.sub('/{id}', path)}"


@dataclass
class RequestLog:
    """Every API request the simulator received: (monotonic arrival, endpoint)."""

    entries: list[tuple[float, str]] = field(default_factory=list)

    def __call__(self, method: str, path: str) -> None:
        self.entries.append((time.monotonic(), endpoint(method, path)))

    def mark(self) -> int:
        """A position in the log, for `since`."""
        return len(self.entries)

    def since(self, mark: int) -> list[tuple[float, str]]:
        """The requests received after `mark`."""
        return self.entries[mark:]

    def first_after(self, name: str, after: float, start: int = 0) -> float | None:
        """When the first request to `name` arrived at or after `after` (monotonic)."""
        for at, seen in self.entries[start:]:
            if at >= after and seen == name:
                return at
        return None


def by_endpoint(entries: list[tuple[float, str]]) -> Counter[str]:
    """How many requests per endpoint."""
    return Counter(name for _, name in entries)


# --- /proc ----------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM): resident memory now and at its peak, in MB (10^6 bytes)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024 / 1e6
    return found["VmRSS"], found["VmHWM"]


def machine() -> str:
    """One line about the machine the figures come from."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    load = os.getloadavg()
    return (
        f"{model}, {os.cpu_count()} CPUs, {int(mem) // 1024} MB RAM, Python {sys.version.split()[0]}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def percentiles(values: list[float]) -> str:
    """`p50 … p99 … max …` in milliseconds."""
    if not values:
        return "no samples"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return (
        f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms   "
        f"max {ordered[-1] * 1000:7.1f} ms   (n={len(ordered)})"
    )


# --- the daemon ------------------------------------------------------------------------------------


class Daemon:
    """`kiosk run` as a child process configured by environment, with a notify socket."""

    def __init__(self, workdir: Path, *, broker_url: str, api_base: str, reader_id: str, **settings: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "daemon.log"
        self.notify_path = workdir / "notify.sock"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")},
            "KIOSK_ID": "bench",
            "KIOSK_STATE_DIR": str(workdir / "state"),
            "KIOSK_MQTT__URL": broker_url,
            "KIOSK_STRIPE__API_KEY": API_KEY,
            "KIOSK_STRIPE__API_BASE": api_base,
            "KIOSK_STRIPE__READER_ID": reader_id,
            "KIOSK_FLEET__ENABLED": "false",
            "NOTIFY_SOCKET": str(self.notify_path),
            **{f"KIOSK_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._wrapped = False
        self.started_at = 0.0
        self.ready_at: float | None = None
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None  # noqa: S101 - started first
        return self.proc.pid

    def start(self, *, wrapper: list[str] | None = None) -> None:
        """Start `kiosk run` (under `wrapper`, e.g. strace, when given)."""
        self.notify_path.unlink(missing_ok=True)
        self._wrapped = bool(wrapper)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*(wrapper or []), sys.executable, "-m", "kiosk", "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def wait_ready(self, timeout: float = 30) -> float:
        """Block until the daemon sends READY=1; returns seconds from process start."""
        assert self._sock is not None  # noqa: S101
        deadline = time.monotonic() + timeout
        while True:
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self._sock.recv(4096)
            except TimeoutError as exc:
                raise RuntimeError(f"no READY=1 within {timeout} s; log:\n{self.log()[-3000:]}") from exc
            if b"READY=1" in data.split(b"\n"):
                self.ready_at = time.monotonic()
                return self.ready_at - self.started_at

    def stop(self) -> int | None:
        """SIGTERM and wait.

        Under a wrapper that runs the daemon as its child (strace), the signal goes to the child,
        the daemon itself: strace would detach on SIGTERM and leave the daemon running. A wrapper
        that becomes the daemon (valgrind) has no child and gets the signal itself.
        """
        code = None
        if self.proc is not None and self.proc.poll() is None:
            children = self._children()
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            if not children:
                self.proc.terminate()
            try:
                code = self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return code

    def _children(self) -> list[int]:
        if not self._wrapped or self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def log(self) -> str:
        """What the daemon wrote to stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- the controller --------------------------------------------------------------------------------


def _envelope() -> dict[str, Any]:
    return {"v": 1, "id": uuid.uuid4().hex, "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


class Controller:
    """A vending controller that timestamps every status it receives (monotonic)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: dict[str, dict[str, float]] = defaultdict(dict)
        self.last: dict[str, dict[str, Any]] = {}
        self.daemon_state: dict[str, Any] | None = None
        self._waiters: dict[tuple[str, str], asyncio.Future[float]] = {}
        self._changed = asyncio.Event()

    async def listen(self) -> None:
        """Read statuses until cancelled."""
        async for message in self.client.messages:
            at = time.monotonic()
            topic = message.topic.value
            payload = json.loads(message.payload) if message.payload else {}
            if topic == f"{PREFIX}/kioskd/state":
                self.daemon_state = payload
                self._changed.set()
                continue
            if not topic.endswith("/status"):
                continue
            order_id, state = payload["order_id"], payload["state"]
            self.seen[order_id].setdefault(state, at)
            self.last[order_id] = payload
            waiter = self._waiters.pop((order_id, state), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(at)
            if state in ("canceled", "failed", "rejected", "declined"):
                for (oid, _), fut in list(self._waiters.items()):
                    if oid == order_id and not fut.done():
                        fut.set_exception(RuntimeError(f"order {order_id} ended {state}: {payload.get('reason')}"))

    def expect(self, order_id: str, state: str) -> asyncio.Future[float]:
        """A future that resolves with the monotonic time `state` arrived for the order."""
        if state in self.seen.get(order_id, {}):
            fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            fut.set_result(self.seen[order_id][state])
            return fut
        fut = asyncio.get_running_loop().create_future()
        self._waiters[(order_id, state)] = fut
        return fut

    async def wait_payments(self, timeout: float = 30) -> None:
        """Wait until the daemon says payments are available."""
        async with asyncio.timeout(timeout):
            while not (self.daemon_state and self.daemon_state.get("payments") == "available"):
                self._changed.clear()
                await self._changed.wait()

    async def request(self, order_id: str, amount: int = 250) -> float:
        """Publish an order; returns the monotonic time just before publishing."""
        body = json.dumps({**_envelope(), "order_id": order_id, "amount": amount, "currency": "usd"})
        at = time.monotonic()
        await self.client.publish(f"{PREFIX}/order/{order_id}/request", body, qos=1)
        return at

    async def vend(self, order_id: str, result: str = "success") -> float:
        """Publish the vend result; returns the monotonic time just before publishing."""
        body = json.dumps({**_envelope(), "order_id": order_id, "result": result})
        at = time.monotonic()
        await self.client.publish(f"{PREFIX}/order/{order_id}/vend_result", body, qos=1)
        return at

    def forget(self, order_id: str) -> None:
        """Drop what was kept about an ended order (keeps the benchmark's own memory flat)."""
        self.seen.pop(order_id, None)
        self.last.pop(order_id, None)


@asynccontextmanager
async def controller(broker: Mosquitto, *, nodelay: bool = True) -> AsyncIterator[Controller]:
    """A connected controller following every status and the daemon's state (TCP_NODELAY)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"bench-{uuid.uuid4().hex[:8]}") as client:
        if nodelay:
            # A controller on paho has Nagle on: its publish waits ~40 ms for the broker's delayed
            # ACK of its previous PUBACK. That is the controller's delay, not kiosk's.
            sock = client._client.socket()  # noqa: SLF001 - paho's socket
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctl = Controller(client)
        await client.subscribe(f"{PREFIX}/order/+/status", qos=1)
        await client.subscribe(f"{PREFIX}/kioskd/state", qos=1)
        task = asyncio.create_task(ctl.listen())
        try:
            yield ctl
        finally:
            task.cancel()


async def sale(ctl: Controller, order_id: str, timeout: float = 60) -> tuple[float, float, float, float]:
    """One order, the controller answering at once: (requested, approved, vended, completed) times."""
    approved = ctl.expect(order_id, "approved")
    completed = ctl.expect(order_id, "completed")
    async with asyncio.timeout(timeout):
        requested = await ctl.request(order_id)
        approved_at = await approved
        vended = await ctl.vend(order_id)
        completed_at = await completed
    return requested, approved_at, vended, completed_at


# --- everything together ----------------------------------------------------------------------------


@dataclass
class Setup:
    """A running simulator (with its request log), broker and reader; the daemon not yet started."""

    sim: Simulator
    url: str
    reader: str
    broker: Mosquitto
    requests: RequestLog
    workdir: Path

    def daemon(self, name: str = "daemon", **settings: str) -> Daemon:
        """A daemon for this setup (not started)."""
        return Daemon(
            self.workdir / name, broker_url=self.broker.url, api_base=self.url, reader_id=self.reader, **settings
        )


@contextmanager
def setup(workdir: Path, seed: int = 7, *, broker_nodelay: bool = True) -> Iterator[Setup]:
    """Start the simulator (in a thread of this process) and a private Mosquitto on loopback.

    `broker_nodelay` sets `set_tcp_nodelay true`, as config/mosquitto/mosquitto.conf does (Mosquitto's
    default is false: Nagle on).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sim = Simulator(seed=seed)
    log = RequestLog()
    sim.on_request = log
    handle = sim.start_in_thread()
    broker = Mosquitto(workdir / "mosquitto", extra_config=["set_tcp_nodelay true"] if broker_nodelay else ())
    broker.start()
    try:
        reader = sim.register_reader("simulated-wpe")
        yield Setup(sim, handle.url, reader, broker, log, workdir)
    finally:
        broker.stop()
        handle.stop()


def fast(**extra: str) -> dict[str, str]:
    """Settings for bulk runs: quick polling, short timeouts (the card is there at once)."""
    return {
        "PAYMENTS__POLL_INTERVAL_S": "0.01",
        "PAYMENTS__CARD_TIMEOUT_S": "10",
        "PAYMENTS__VEND_RESULT_TIMEOUT_S": "10",
        "PAYMENTS__REQUEST_TIMEOUT_S": "5",
        **extra,
    }
