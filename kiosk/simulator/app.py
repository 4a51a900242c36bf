"""The simulator: Stripe's state, its HTTP front, and the in-process API tests drive it with.

Requests go through the layers Stripe has, in Stripe's order: authentication, API version, the
account rate limit and injected faults, parameter parsing, the idempotency layer, then the
endpoint. State changes happen under one lock, so the Python methods below may be called from any
thread while the server runs (for instance from a synchronous test while `start_in_thread` serves).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import unquote

from kiosk import logs
from kiosk.simulator import api, cards, control
from kiosk.simulator.clock import SimClock
from kiosk.simulator.faults import FaultRule, Faults, RateLimiter
from kiosk.simulator.httpserver import HttpServer, Request, Response
from kiosk.simulator.idempotency import DEFAULT_TTL, IdempotencyKeys, Stored
from kiosk.simulator.ids import Ids
from kiosk.simulator.intents import Intents
from kiosk.simulator.ledger import Cancel, Capture, IntentRecord, Ledger, ReaderAction
from kiosk.simulator.readers import AutoPresent, Readers
from kiosk.simulator.wire import DEFAULT_API_VERSION, StripeError, check_version, decode_form, decode_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

log = logs.get("simulator")

_TEST_KEY = re.compile(r"^(sk|rk)_test_[A-Za-z0-9_]+$")
TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a simulator listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL to give the stripe client (`base_addresses={"api": url}`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


class Simulator:
    """Stripe's test mode with simulated smart readers, fault injection and a ledger.

    Args:
        seed: makes object ids and probabilistic faults repeat exactly from run to run.
        default_api_version: the version used when a request sends no `Stripe-Version`.
        clock: the simulator's clock (wall time plus an offset tests can advance).
        idempotency_ttl: how long idempotency keys live, in simulated seconds.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        default_api_version: str = DEFAULT_API_VERSION,
        clock: SimClock | None = None,
        idempotency_ttl: float = DEFAULT_TTL,
    ) -> None:
        self.clock = clock or SimClock()
        self.default_api_version = default_api_version
        self._lock = threading.RLock()
        self._ids = Ids(seed)
        self._request_ids = Ids(seed + 1)
        self.intents = Intents(self._ids)
        self.readers = Readers(self._ids, self.intents)
        self.faults = Faults(seed)
        self.rate_limiter = RateLimiter()
        self.keys = IdempotencyKeys(idempotency_ttl)
        self.requests_served = 0
        # Stripe does not document what it does with an `expand[]` path through a branch the
        # object does not have (a reader action of another type, or no action). By default the
        # simulator stops there quietly, as Stripe does at a null; `strict_expand = True` refuses
        # such a path instead (400, `param=expand`), so a client's fallback can be tried.
        self.strict_expand = False
        self.expand_refusals = 0  # `expand[]` paths refused (400 "This property cannot be expanded")
        # Inspection hook for benchmarks: called with (method, path) as each API request arrives,
        # on the serving thread, before anything else happens to it; it must be quick.
        self.on_request: Callable[[str, str], None] | None = None

    # -- clock ---------------------------------------------------------------------------------
    def now(self) -> float:
        """The simulator's time (Unix seconds)."""
        return self.clock.now()

    def advance(self, seconds: float) -> float:
        """Advance the simulator's clock and let everything due happen; returns the new time."""
        with self._lock:
            now = self.clock.advance(seconds)
            self._tick(now)
            return now

    def tick(self) -> None:
        """Let everything due by now happen (the server also does this every 50 ms)."""
        with self._lock:
            self._tick(self.now())

    def _tick(self, now: float) -> None:
        self.readers.tick(now)
        self.intents.expire(now)
        self.keys.expire(now)

    # -- readers -------------------------------------------------------------------------------
    def register_reader(
        self, registration_code: str = "simulated-wpe", *, label: str | None = None, location: str | None = None
    ) -> str:
        """Register a simulated reader directly; returns its `tmr_…` id."""
        params: dict[str, Any] = {"registration_code": registration_code}
        if label is not None:
            params["label"] = label
        if location is not None:
            params["location"] = location
        with self._lock:
            return self.readers.register(params, self.now()).id

    def set_reader_online(self, reader_id: str, *, online: bool) -> None:
        """Give or take the reader's signal; after two minutes without it the reader is `offline`."""
        with self._lock:
            self.readers.set_online(self.readers.get(reader_id), online, self.now())

    def reader_timeout(self, reader_id: str, *, false_negative: bool = False, count: int = 1) -> None:
        """The next `count` reader commands answer `terminal_reader_timeout`.

        With `false_negative`, the reader did get each command: it takes effect all the same.
        """
        with self._lock:
            self.readers.get(reader_id).timeouts.extend([false_negative] * count)

    def reader_hardware_fault(self, reader_id: str, *, faulty: bool = True) -> None:
        """Reader commands answer `terminal_reader_hardware_fault` until cleared."""
        with self._lock:
            self.readers.get(reader_id).hardware_fault = faulty

    def reader_connection_error(self, reader_id: str, *, authorised: bool = True, count: int = 1) -> None:
        """The next `count` authorisations end with the action failed `connection_error`.

        With `authorised`, the card was authorised anyway (the PI is `requires_capture`);
        otherwise the PI is left `requires_confirmation`.
        """
        with self._lock:
            self.readers.get(reader_id).connection_errors.extend([authorised] * count)

    def reader_leave_unconfirmed(self, reader_id: str, *, count: int = 1) -> None:
        """The next `count` payments on the reader end like Stripe's "temporary connectivity problem".

        The card is read, the reader's action fails with `connection_error`, and the PaymentIntent
        is left `requires_confirmation` (not authorised). Processing the same PaymentIntent again
        is accepted: the reader asks for the card again and authorises it. The same switch as
        `reader_connection_error(authorised=False)`, named for the PaymentIntent state it leaves.
        """
        self.reader_connection_error(reader_id, authorised=False, count=count)

    def set_authorisation_delay(self, reader_id: str, seconds: float) -> None:
        """How long (simulated) an authorisation takes; `cancel_action` is busy meanwhile."""
        with self._lock:
            self.readers.get(reader_id).auth_delay = max(0.0, seconds)

    def customer_cancel(self, reader_id: str) -> bool:
        """The customer presses cancel; True when it ended the action (cancellation enabled)."""
        with self._lock:
            return self.readers.customer_cancel(self.readers.get(reader_id), self.now())

    def auto_present(
        self,
        reader_id: str,
        after_s: float | None,
        *,
        card: str = cards.DEFAULT_CARD,
        amount_tip: int = 0,
    ) -> None:
        """Present `card` automatically `after_s` seconds into every payment; None turns it off."""
        if card and cards.lookup(card) is None:
            raise ValueError(f"{card!r} is not a valid card number")
        with self._lock:
            auto = None if after_s is None else AutoPresent(after_s, card, amount_tip)
            self.readers.set_auto_present(self.readers.get(reader_id), auto, self.now())

    def present_card(self, reader_id: str, card: str = cards.DEFAULT_CARD, *, amount_tip: int = 0) -> None:
        """Present a card now, like the `present_payment_method` test helper."""
        with self._lock:
            now = self.now()
            self._tick(now)
            params = {"type": "card_present", "card_present": {"number": card}, "amount_tip": amount_tip}
            if (found := cards.lookup(card)) is not None and found.method_type == "interac_present":
                params = {"type": "interac_present", "interac_present": {"number": card}, "amount_tip": amount_tip}
            self.readers.present(self.readers.get(reader_id), params, now)

    # -- faults --------------------------------------------------------------------------------
    def add_fault(  # noqa: PLR0913 - every field of a rule, by name
        self,
        *,
        method: str = "*",
        path: str = "*",
        latency_s: float = 0.0,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        drop_connection: bool = False,
        rate_limited_reason: str | None = None,
        should_retry: bool | None = None,
        count: int | None = None,
        probability: float = 1.0,
    ) -> int:
        """Add a fault rule for matching requests (see `kiosk.simulator.faults`); returns its id."""
        rule = FaultRule(
            method=method,
            path=path,
            latency_s=latency_s,
            status=status,
            code=code,
            message=message,
            drop_connection=drop_connection,
            rate_limited_reason=rate_limited_reason,
            should_retry=should_retry,
            count=count,
            probability=probability,
        )
        with self._lock:
            return self.faults.add(rule).id

    def remove_fault(self, rule_id: int) -> bool:
        """Remove one fault rule."""
        with self._lock:
            return self.faults.remove(rule_id)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self.faults.clear()

    def set_rate_limit(self, per_second: float | None) -> None:
        """Throttle the account to `per_second` requests (test mode: 25); None turns it off."""
        with self._lock:
            self.rate_limiter.set(per_second)

    def set_search_lag(self, seconds: float) -> None:
        """Changes reach search results this many (simulated) seconds after they happen."""
        with self._lock:
            self.intents.search_lag = max(0.0, seconds)

    # -- inspection ----------------------------------------------------------------------------
    def ledger(self) -> Ledger:
        """Every PaymentIntent with its capture/cancel history, and every reader action."""
        with self._lock:
            now = self.now()
            self._tick(now)
            records = []
            for intent in self.intents.by_id.values():
                captures = tuple(Capture(e["amount"], e["at"]) for e in intent.history if e["event"] == "captured")
                cancels = tuple(
                    Cancel(e.get("reason"), e.get("released", 0), e["at"], e["event"] == "expired")
                    for e in intent.history
                    if e["event"] in ("canceled", "expired")
                )
                records.append(
                    IntentRecord(
                        id=intent.id,
                        status=intent.status,
                        amount=intent.amount,
                        currency=intent.currency,
                        amount_capturable=intent.amount_capturable,
                        amount_received=intent.amount_received,
                        metadata=dict(intent.metadata),
                        created=intent.created,
                        capture_before=intent.capture_before,
                        captures=captures,
                        cancels=cancels,
                        history=tuple(dict(e) for e in intent.history),
                    )
                )
            actions = tuple(ReaderAction(**a) for a in self.readers.actions)
            return Ledger(now=now, intents=tuple(records), reader_actions=actions)

    # -- serving -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Endpoint]:
        """Serve Stripe's API on host:port (0: a free port) for the duration of the block."""
        server = HttpServer(self.handle)
        await server.start(host, port)
        ticker = asyncio.create_task(self._ticker(), name="simulator-ticker")
        try:
            yield Endpoint(server.host, server.port)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await server.close()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> ThreadHandle:
        """Serve from a daemon thread with its own event loop; `.url`, `.stop()`."""
        return ThreadHandle(self, host, port)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    async def handle(self, request: Request) -> Response | None:
        """Answer one HTTP request (None: drop the connection without answering)."""
        try:
            if request.path.startswith("/_simulator/") or request.path == "/_simulator":
                with self._lock:
                    self._tick(self.now())
                    status, payload = control.handle(self, request)
                return _json(status, payload, [])
            if self.on_request is not None:
                self.on_request(request.method, request.path)
            return await self._api(request)
        except Exception as exc:
            log.exception("simulator.internal_error", path=request.path)
            err = StripeError(500, f"Simulator internal error: {type(exc).__name__}: {exc}", type_="api_error")
            return _json(500, err.body(), [])

    async def _api(self, request: Request) -> Response | None:  # noqa: C901 - Stripe's layers, in order
        headers: list[tuple[str, str]] = []
        version = request.headers.get("stripe-version") or self.default_api_version
        account = ""
        key = None
        try:
            account = _authenticate(request.headers.get("authorization", ""))
            check_version(version)
            headers.append(("Stripe-Version", version))
            with self._lock:
                now = self.now()
                self._tick(now)
                self.requests_served += 1
                if not self.rate_limiter.allow(account, now):
                    raise _rate_limited("global-rate")
                rule = self.faults.pick(request.method, request.path)
            if rule is not None and rule.rate_limited_reason is not None:
                raise _rate_limited(rule.rate_limited_reason, should_retry=rule.should_retry)
            params = self._params(request)
            handler, ids = api.match(request.method, request.path)
            expand_paths = [str(p) for p in params.pop("expand", [])] if isinstance(params.get("expand"), list) else []
            if "expand" in params:
                raise StripeError(400, "Invalid array: expand", param="expand")  # noqa: TRY301 - like every layer
            if request.method == "POST":
                key = request.headers.get("idempotency-key")
            if key:
                headers.append(("Idempotency-Key", key))
                fingerprint = (request.method, request.path, json.dumps([params, expand_paths], sort_keys=True))
                with self._lock:
                    stored = self.keys.begin(account, key, fingerprint, self.now())
                if stored is not None:
                    replay = [*stored.headers, ("Idempotent-Replayed", "true")]
                    return _json_bytes(stored.status, stored.body, self._with_request_id(replay))
        except StripeError as err:
            return _json(err.status, err.body(), self._with_request_id(headers + list(err.headers.items())))
        try:
            status, body, extra = await self._run(rule, handler, params, version, ids, expand_paths)
            headers += extra  # an injected error's own headers (Stripe-Should-Retry): stored with it
        except asyncio.CancelledError:
            if key:
                with self._lock:
                    self.keys.release(account, key)
            raise
        encoded = json.dumps(body).encode()
        if key:
            with self._lock:
                self.keys.finish(account, key, Stored(status, encoded, list(headers)))
        if rule is not None and rule.drop_connection:
            return None
        return _json_bytes(status, encoded, self._with_request_id(headers))

    async def _run(  # noqa: PLR0913, PLR0917 - one request, all of its parts
        self,
        rule: FaultRule | None,
        handler: api.Handler,
        params: dict[str, Any],
        version: str,
        ids: tuple[str, ...],
        expand_paths: list[str],
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        try:
            if rule is not None and rule.latency_s > 0:
                await asyncio.sleep(rule.latency_s)
            if rule is not None and rule.status is not None:
                raise _injected(rule)
            with self._lock:
                now = self.now()
                self._tick(now)
                resource = handler(self, params, version, now, tuple(unquote(i) for i in ids))
                body = api.expand(self, api.render(self, resource, version, now), expand_paths)
        except StripeError as err:
            return err.status, err.body(), list(err.headers.items())
        return 200, body, []

    @staticmethod
    def _params(request: Request) -> dict[str, Any]:
        if request.method in ("GET", "DELETE"):
            return decode_form(request.query)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            return decode_json(request.body) if request.body else {}
        return decode_form(request.body.decode("utf-8", "replace"))

    def _with_request_id(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        with self._lock:
            rid = self._request_ids.new("req", 14)
        return [("Request-Id", rid), *headers]


class ThreadHandle:
    """A simulator served from a daemon thread (for synchronous tests and subprocess tests)."""

    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        self._sim = sim
        self._host = host
        self._port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.endpoint: Endpoint | None = None
        self._thread = threading.Thread(target=self._main, name="stripe-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the simulator did not start within 10 seconds")
        if self._error is not None:
            raise RuntimeError(f"the simulator could not start: {self._error}") from self._error

    @property
    def simulator(self) -> Simulator:
        """The simulator being served."""
        return self._sim

    @property
    def url(self) -> str:
        """The base URL."""
        assert self.endpoint is not None  # noqa: S101 - set before __init__ returns
        return self.endpoint.url

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with self._sim.serve(self._host, self._port) as endpoint:
                self.endpoint = endpoint
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        """Stop serving and wait (up to 10 s) for the thread to end."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _authenticate(header: str) -> str:
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            credential = base64.b64decode(credential).decode().partition(":")[0]
    elif scheme.lower() != "bearer":
        credential = ""
    credential = credential.strip()
    if not credential:
        raise StripeError(
            401,
            "You did not provide an API key. You need to provide your API key in the Authorization "
            "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        )
    if not _TEST_KEY.match(credential):
        shown = credential[:8] + "*" * 8 + credential[-4:] if len(credential) > 12 else "****"
        raise StripeError(401, f"Invalid API Key provided: {shown}")
    return credential


def _rate_limited(reason: str, *, should_retry: bool | None = None) -> StripeError:
    return StripeError(
        429,
        "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers={
            "Stripe-Rate-Limited-Reason": reason,
            "Stripe-Should-Retry": "false" if should_retry is False else "true",
        },
    )


def _injected(rule: FaultRule) -> StripeError:
    status = rule.status or 500
    if status == 402:
        kind = "card_error"
    elif status >= 500:
        kind = "api_error"
    elif status == 400 and rule.code == "idempotency_error":
        kind = "idempotency_error"
    else:
        kind = "invalid_request_error"
    message = rule.message or (
        "An unknown error occurred" if status >= 500 else f"Injected error ({rule.code or status})"
    )
    return StripeError(status, message, type_=kind, code=rule.code, headers=rule.headers())


def _json(status: int, payload: Any, headers: list[tuple[str, str]]) -> Response:
    return _json_bytes(status, json.dumps(payload).encode(), headers)


def _json_bytes(status: int, body: bytes, headers: list[tuple[str, str]]) -> Response:
    return Response(status, body, [("Content-Type", "application/json"), *headers])
