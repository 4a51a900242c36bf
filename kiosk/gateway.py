"""The Stripe gateway: the only code in kiosk that imports `stripe`.

House rules:
- One method call is one HTTP attempt. No retries here (`max_network_retries=0`): after a timeout
  the next step for that order must be a read, and only the runner knows which read. (One
  exception, once per process: `retrieve_reader` reads again unexpanded when Stripe refuses its
  expansion; a read changes nothing.)
- Every mutating call carries the caller's idempotency key, which the runner persisted before it
  asked (design invariant 8). The gateway never makes up a key.
- Every call is bounded twice: httpx's timeouts and an `asyncio.timeout` around the whole call, so
  a server that trickles bytes cannot hold a payment forever.
- Stripe's exceptions are translated here into `kiosk.errors.UpstreamError` subclasses, grouped by
  what the caller does next; Stripe's objects into frozen values. No stripe type leaves this file.
- The API key never appears in an error message or a log line.
"""

from __future__ import annotations

import asyncio
import collections
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import httpx

# stripe-python chooses its default synchronous HTTP client when it is imported, by importing
# `requests`: about 60 ms and 4.6 MB of RSS on every start (bench/RESULTS.md) for a client kiosk
# never uses (the gateway gives stripe an httpx client). Hide `requests` from that probe only.
_HIDE_REQUESTS = "requests" not in sys.modules and "stripe" not in sys.modules
if _HIDE_REQUESTS:
    sys.modules["requests"] = None  # type: ignore[assignment]  # makes `import requests` fail
try:
    import stripe
finally:
    if _HIDE_REQUESTS:
        del sys.modules["requests"]

from kiosk import logs  # noqa: E402 - after stripe, imported above with requests hidden
from kiosk.errors import (  # noqa: E402
    IdempotencyMisuse,
    StripeAuthError,
    StripeRefused,
    Throttled,
    UnknownOutcome,
    UpstreamError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from pydantic import SecretStr
    from stripe.params import (
        PaymentIntentCancelParams,
        PaymentIntentCaptureParams,
        PaymentIntentCreateParams,
        PaymentIntentSearchParams,
    )
    from stripe.params.test_helpers.terminal import ReaderPresentPaymentMethodParams

    from kiosk.settings import Settings

log = logs.get("gateway")

T = TypeVar("T")

# The API version stripe-python 16 pins; used when the configuration does not name one.
SDK_API_VERSION: str = stripe.api_version
# From this version PaymentIntents take `allowed_payment_method_types`; from 2026-09-30 the old
# `payment_method_types` on create is refused (stripe-notes.md, "The flow").
ALLOWED_TYPES_SINCE = "2026-07-29"
# The reader actions `collect_payment_method` and `confirm_payment_intent` exist from this version.
SPLIT_FLOW_SINCE = "2025-06-30"
# Reader reads ask for the action's PaymentIntent with its latest charge (depth 4, Stripe's
# maximum), so that a finished action needs no separate PaymentIntent read. A path through a
# branch the current action does not have (another action type, no action) is expected to stop
# there, as at a null; Stripe does not document it, so a refusal makes `retrieve_reader` fall back.
READER_EXPAND = "action.process_payment_intent.payment_intent.latest_charge"
READER_EXPAND_SPLIT = "action.confirm_payment_intent.payment_intent.latest_charge"
CancelReason = Literal["abandoned", "duplicate", "fraudulent", "requested_by_customer"]
_SECRET = re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9*]+")
_KIOSK_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SEARCH_PAGES = 10  # 1,000 PIs: more open authorisations than one kiosk can ever hold


@dataclass(frozen=True, slots=True)
class Card:
    """What kiosk may know about a card: never the number."""

    brand: str | None
    last4: str | None
    funding: str | None = None
    wallet: str | None = None


@dataclass(frozen=True, slots=True)
class DeclineInfo:
    """Why Stripe or the issuer refused (from `last_payment_error` or a reader action's error)."""

    code: str | None
    decline_code: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class Intent:
    """A PaymentIntent as kiosk sees it."""

    id: str
    status: str
    amount: int
    amount_capturable: int
    amount_received: int
    currency: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    card: Card | None = None
    capture_before: int | None = None
    last_error: DeclineInfo | None = None
    cancellation_reason: str | None = None
    created: int | None = None


@dataclass(frozen=True, slots=True)
class ReaderAction:
    """The reader's current (or last) action; `payment_intent` is the PI id it works on."""

    type: str
    status: str
    failure_code: str | None = None
    failure_message: str | None = None
    payment_intent: str | None = None
    card: Card | None = None
    error: DeclineInfo | None = None


@dataclass(frozen=True, slots=True)
class Reader:
    """A Terminal reader as kiosk sees it; `intent` is the action's PI when the read expanded it."""

    id: str
    status: str | None
    device_type: str | None
    serial_number: str | None
    action: ReaderAction | None = None
    intent: Intent | None = None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _id(value: Any) -> str | None:
    """An expandable field's id, whether it came expanded or not."""
    if isinstance(value, dict):
        return _str(value.get("id"))
    return _str(value)


def _card(details: Any) -> Card | None:
    if not isinstance(details, dict):
        return None
    wallet = details.get("wallet")
    return Card(
        brand=_str(details.get("brand")),
        last4=_str(details.get("last4")),
        funding=_str(details.get("funding")),
        wallet=_str(wallet.get("type")) if isinstance(wallet, dict) else None,
    )


def _present_details(holder: Any) -> dict[str, Any] | None:
    """The card-present part of a charge's or payment method's details."""
    if not isinstance(holder, dict):
        return None
    for kind in ("card_present", "interac_present"):
        details = holder.get(kind)
        if isinstance(details, dict):
            return details
    return None


def _decline(error: Any) -> DeclineInfo | None:
    if not isinstance(error, dict):
        return None
    return DeclineInfo(
        code=_str(error.get("code")),
        decline_code=_str(error.get("decline_code")),
        message=_str(error.get("message")),
    )


def intent_from_dict(data: Mapping[str, Any]) -> Intent:
    """Translate a PaymentIntent's JSON (with `latest_charge` expanded or not)."""
    charge = data.get("latest_charge")
    details = None
    if isinstance(charge, dict):
        details = _present_details(charge.get("payment_method_details"))
    metadata = data.get("metadata") or {}
    capture_before = details.get("capture_before") if details else None
    return Intent(
        id=str(data["id"]),
        status=str(data["status"]),
        amount=int(data.get("amount") or 0),
        amount_capturable=int(data.get("amount_capturable") or 0),
        amount_received=int(data.get("amount_received") or 0),
        currency=str(data.get("currency") or ""),
        metadata={str(k): str(v) for k, v in metadata.items()},
        card=_card(details),
        capture_before=capture_before if isinstance(capture_before, int) else None,
        last_error=_decline(data.get("last_payment_error")),
        cancellation_reason=_str(data.get("cancellation_reason")),
        created=data.get("created") if isinstance(data.get("created"), int) else None,
    )


def _action_from_dict(action: Any) -> ReaderAction | None:
    if not isinstance(action, dict) or not isinstance(action.get("type"), str):
        return None
    kind = action["type"]
    body = action.get(kind)
    body = body if isinstance(body, dict) else {}
    card = None
    if kind == "collect_payment_method":
        method = body.get("payment_method")
        if isinstance(method, dict):
            card = _card(_present_details(method))
    return ReaderAction(
        type=kind,
        status=str(action.get("status") or ""),
        failure_code=_str(action.get("failure_code")),
        failure_message=_str(action.get("failure_message")),
        payment_intent=_id(body.get("payment_intent")),
        card=card,
        error=_decline(action.get("api_error")),
    )


def _action_intent(action: Any) -> Intent | None:
    """The action's PaymentIntent when the read expanded it (an id only: None)."""
    if not isinstance(action, dict) or not isinstance(action.get("type"), str):
        return None
    body = action.get(action["type"])
    pi = body.get("payment_intent") if isinstance(body, dict) else None
    if not isinstance(pi, dict) or not isinstance(pi.get("id"), str) or not isinstance(pi.get("status"), str):
        return None
    return intent_from_dict(pi)


def reader_from_dict(data: Mapping[str, Any]) -> Reader:
    """Translate a terminal.reader's JSON (with the action's PaymentIntent expanded or not)."""
    return Reader(
        id=str(data["id"]),
        status=_str(data.get("status")),
        device_type=_str(data.get("device_type")),
        serial_number=_str(data.get("serial_number")),
        action=_action_from_dict(data.get("action")),
        intent=_action_intent(data.get("action")),
    )


def reader_expand_paths(api_version: str) -> tuple[str, ...]:
    """The `expand[]` of a reader read: each payment action's PI (the split flow's since 2025-06-30)."""
    if api_version[:10] >= SPLIT_FLOW_SINCE:
        return (READER_EXPAND, READER_EXPAND_SPLIT)
    return (READER_EXPAND,)


def _expand_refused(error: UpstreamError) -> bool:
    return isinstance(error, StripeRefused) and error.http_status == 400 and error.param == "expand"


_WITH_CHARGE = {"expand": ["latest_charge"]}


def _path(collection: str, ident: str, verb: str | None = None) -> str:
    path = f"/v1/{collection}/{urllib.parse.quote(ident, safe='')}"
    return f"{path}/{verb}" if verb else path


def uses_allowed_types(api_version: str) -> bool:
    """Whether this API version takes `allowed_payment_method_types` on PaymentIntent create."""
    return api_version[:10] >= ALLOWED_TYPES_SINCE


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    return value if isinstance(value, str) else None


def _should_retry(headers: Any) -> bool | None:
    value = (_header(headers, "stripe-should-retry") or "").lower()
    return {"true": True, "false": False}.get(value)


def _retry_after(headers: Any) -> float | None:
    try:
        value = float(_header(headers, "retry-after") or "")
    except ValueError:
        return None
    return value if value >= 0 else None


class _HTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client, sending the encoded body as `content=`.

    stripe-python 16 hands httpx the already-encoded form body as `data=`, which httpx 0.28
    deprecates (and will drop); the warning would also surface inside stripe as a network error
    wherever warnings are errors.
    """

    def _get_request_args_kwargs(self, method: str, url: str, headers: Mapping[str, str], post_data: Any) -> list[Any]:
        args: list[Any] = super()._get_request_args_kwargs(method, url, headers, post_data)
        kwargs = args[1]
        data = kwargs.get("data")
        if isinstance(data, str | bytes):
            del kwargs["data"]
            if data:
                kwargs["content"] = data
        elif not data:
            kwargs.pop("data", None)
        return args


class Gateway:
    """Stripe's PaymentIntents and one Terminal reader, one attempt per call.

    `calls` counts the requests made, by endpoint name (for benchmarks).
    """

    def __init__(
        self,
        *,
        api_key: SecretStr,
        api_base: str,
        api_version: str | None,
        reader_id: str,
        request_timeout_s: float,
    ) -> None:
        self._secret = api_key.get_secret_value()
        self._reader = reader_id
        self._timeout_s = request_timeout_s
        self.api_version = api_version or SDK_API_VERSION
        self._http = _HTTPXClient(timeout=httpx.Timeout(request_timeout_s))
        self._client = stripe.StripeClient(
            self._secret,
            http_client=self._http,
            stripe_version=self.api_version,
            base_addresses={"api": api_base},
            max_network_retries=0,
        )
        self.calls: collections.Counter[str] = collections.Counter()
        # Emptied for the rest of the process's life if Stripe refuses the expansion.
        self._reader_expand: tuple[str, ...] = reader_expand_paths(self.api_version)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """A gateway for the configured account and reader."""
        return cls(
            api_key=settings.stripe.api_key,
            api_base=settings.stripe.api_base,
            api_version=settings.stripe.api_version,
            reader_id=settings.stripe.reader_id,
            request_timeout_s=settings.payments.request_timeout_s,
        )

    @property
    def reader_id(self) -> str:
        """The reader this gateway drives."""
        return self._reader

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._http.close_async()  # type: ignore[no-untyped-call]  # stripe left it untyped

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- PaymentIntents ------------------------------------------------------------------------

    async def create_intent(
        self,
        *,
        amount: int,
        currency: str,
        metadata: Mapping[str, str],
        description: str | None = None,
        key: str,
    ) -> Intent:
        """Create a card-present, manually captured PaymentIntent."""
        methods = ["interac_present", "card_present"] if currency == "cad" else ["card_present"]
        params: PaymentIntentCreateParams = {
            "amount": amount,
            "currency": currency,
            "capture_method": "manual",
            "metadata": dict(metadata),
        }
        if uses_allowed_types(self.api_version):
            params["allowed_payment_method_types"] = methods
        else:
            params["payment_method_types"] = methods  # type: ignore[typeddict-unknown-key]
        if description is not None:
            params["description"] = description
        return intent_from_dict(
            await self._send("payment_intents.create", "post", "/v1/payment_intents", params, key=key)
        )

    async def retrieve_intent(self, pi_id: str) -> Intent:
        """Read a PaymentIntent, with its latest charge (card and `capture_before`)."""
        data = await self._send("payment_intents.retrieve", "get", _path("payment_intents", pi_id), _WITH_CHARGE)
        return intent_from_dict(data)

    async def search_intents(
        self, kiosk_id: str, status: str | None = None, *, open_only: bool = False
    ) -> list[Intent]:
        """PaymentIntents whose `metadata.kiosk_id` is this kiosk (Search lags: recovery only).

        `open_only`: only those neither captured nor canceled, so that a kiosk's past sales (one
        PaymentIntent each) stay out of the answer.
        """
        if not _KIOSK_ID.fullmatch(kiosk_id) or (status is not None and not status.isidentifier()):
            raise ValueError("kiosk id or status cannot be put into a search query")
        query = f"metadata['kiosk_id']:'{kiosk_id}'"
        if status is not None:
            query += f" AND status:'{status}'"
        if open_only:
            query += " AND -status:'succeeded' AND -status:'canceled'"
        found: list[Intent] = []
        page: str | None = None
        for _ in range(_SEARCH_PAGES):
            params: PaymentIntentSearchParams = {"query": query, "limit": 100}
            if page is not None:
                params["page"] = page
            result = await self._send("payment_intents.search", "get", "/v1/payment_intents/search", params)
            found.extend(intent_from_dict(pi) for pi in result.get("data") or () if isinstance(pi, dict))
            page = _str(result.get("next_page")) if result.get("has_more") else None
            if not page:
                break
        return found

    async def capture_intent(self, pi_id: str, *, amount_to_capture: int | None = None, key: str) -> Intent:
        """Capture an authorised PaymentIntent, fully or `amount_to_capture` of it."""
        params: PaymentIntentCaptureParams = {"expand": ["latest_charge"]}
        if amount_to_capture is not None:
            params["amount_to_capture"] = amount_to_capture
        path = _path("payment_intents", pi_id, "capture")
        return intent_from_dict(await self._send("payment_intents.capture", "post", path, params, key=key))

    async def cancel_intent(self, pi_id: str, *, reason: CancelReason = "abandoned", key: str) -> Intent:
        """Cancel a PaymentIntent; an authorised one has its hold released."""
        params: PaymentIntentCancelParams = {
            "cancellation_reason": reason,
            "expand": ["latest_charge"],
        }
        path = _path("payment_intents", pi_id, "cancel")
        return intent_from_dict(await self._send("payment_intents.cancel", "post", path, params, key=key))

    # -- readers of the account ----------------------------------------------------------------

    async def register_reader(
        self, registration_code: str, *, label: str | None = None, location: str | None = None
    ) -> Reader:
        """Register a reader with the code it shows (or `simulated-wpe` in test mode)."""
        params: dict[str, Any] = {"registration_code": registration_code}
        if label is not None:
            params["label"] = label
        if location is not None:
            params["location"] = location
        reader = await self._call(
            "readers.create",
            lambda: self._client.v1.terminal.readers.create_async(params=params),  # type: ignore[arg-type]
        )
        return reader_from_dict(reader.to_dict())

    async def list_readers(self) -> list[tuple[Reader, str | None]]:
        """Every reader of the account (up to 100), with its label."""
        page = await self._call(
            "readers.list", lambda: self._client.v1.terminal.readers.list_async(params={"limit": 100})
        )
        return [(reader_from_dict(r.to_dict()), r.to_dict().get("label")) for r in page.data]

    # -- the reader ----------------------------------------------------------------------------

    async def retrieve_reader(self) -> Reader:
        """Read the reader: its status, current action, and the action's PaymentIntent.

        The PI comes expanded (with its latest charge) on the same request. Should Stripe refuse
        the expansion (400, `param=expand`), the reader is read again without it, at once (a read
        changes nothing), and never expanded again by this gateway: the caller then gets no
        `intent` and reads the PI itself. That one time, the call makes two requests.
        """
        expand = self._reader_expand
        if expand:
            try:
                data = await self._send(
                    "readers.retrieve", "get", self._reader_path(), {"expand": list(expand)}, expected=_expand_refused
                )
            except StripeRefused as exc:
                if not _expand_refused(exc):
                    raise
                if self._reader_expand:
                    self._reader_expand = ()
                    log.warning(
                        "gateway.reader_expand_refused",
                        expand=list(expand),
                        code=exc.code,
                        request_id=exc.request_id,
                        detail=exc.message,
                    )
            else:
                return reader_from_dict(data)
        return reader_from_dict(await self._send("readers.retrieve", "get", self._reader_path()))

    async def process_intent(
        self,
        pi_id: str,
        *,
        key: str,
        enable_customer_cancellation: bool = True,
        skip_tipping: bool = True,
    ) -> Reader:
        """Ask the reader to take a card for this PI. The answer only means it got the command."""
        config = {"enable_customer_cancellation": enable_customer_cancellation, "skip_tipping": skip_tipping}
        return await self._take_card("process_payment_intent", "process_config", pi_id, config, key)

    async def collect_payment_method(
        self,
        pi_id: str,
        *,
        key: str,
        enable_customer_cancellation: bool = True,
        skip_tipping: bool = True,
    ) -> Reader:
        """Split flow, step 1: read a card without authorising (confirm or cancel within 30 s)."""
        config = {"enable_customer_cancellation": enable_customer_cancellation, "skip_tipping": skip_tipping}
        return await self._take_card("collect_payment_method", "collect_config", pi_id, config, key)

    async def _take_card(self, action: str, config_name: str, pi_id: str, config: dict[str, bool], key: str) -> Reader:
        params = {"payment_intent": pi_id, config_name: config}
        return reader_from_dict(
            await self._send(f"readers.{action}", "post", self._reader_path(action), params, key=key)
        )

    async def confirm_intent(self, pi_id: str, *, key: str) -> Reader:
        """Split flow, step 2: authorise the collected card."""
        path = self._reader_path("confirm_payment_intent")
        params = {"payment_intent": pi_id}
        return reader_from_dict(await self._send("readers.confirm_payment_intent", "post", path, params, key=key))

    async def cancel_action(self, *, key: str) -> Reader:
        """Clear the reader's action (refused with `terminal_reader_busy` during authorisation)."""
        path = self._reader_path("cancel_action")
        return reader_from_dict(await self._send("readers.cancel_action", "post", path, key=key))

    async def set_display(
        self,
        currency: str,
        line_items: Sequence[tuple[str, int, int]],
        total: int,
        *,
        key: str,
    ) -> Reader:
        """Show a cart: `line_items` are (description, amount, quantity). Replaces any action."""
        params = {
            "type": "cart",
            "cart": {
                "currency": currency,
                "line_items": [{"description": d, "amount": a, "quantity": q} for d, a, q in line_items],
                "total": total,
            },
        }
        path = self._reader_path("set_reader_display")
        return reader_from_dict(await self._send("readers.set_reader_display", "post", path, params, key=key))

    async def present_card(self, number: str = "4242424242424242", *, amount_tip: int | None = None) -> Reader:
        """Test mode only: present a card to a simulated reader."""
        params: ReaderPresentPaymentMethodParams = {"type": "card_present", "card_present": {"number": number}}
        if amount_tip is not None:
            params["amount_tip"] = amount_tip
        reader = await self._call(
            "test_helpers.present_payment_method",
            lambda: self._client.v1.test_helpers.terminal.readers.present_payment_method_async(
                self._reader, params=params
            ),
        )
        return reader_from_dict(reader.to_dict())

    # -- the edge ------------------------------------------------------------------------------

    def _reader_path(self, verb: str | None = None) -> str:
        return _path("terminal/readers", self._reader, verb)

    async def _send(  # noqa: PLR0913 - the request, then how it is made
        self,
        name: str,
        method: Literal["get", "post"],
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        expected: Callable[[UpstreamError], bool] | None = None,
    ) -> dict[str, Any]:
        """One request through the stripe client; Stripe's JSON answer as plain dicts.

        The client does what it does for its typed calls (authentication, API version, encoding,
        the idempotency key, errors as StripeError) but builds no StripeObject tree: kiosk reads
        the answer once, and building one costs more CPU than the rest of the request
        (bench/RESULTS.md).
        """
        args: dict[str, Any] = dict(params or {})
        if key is not None:
            args["idempotency_key"] = key
        response = await self._call(
            name, lambda: self._client.raw_request_async(method, path, **args), expected=expected
        )
        data = response.data
        if not isinstance(data, dict):
            raise UnknownOutcome(f"Stripe {name} answered with something other than an object", code="bad_response")
        return data

    async def _call(
        self,
        name: str,
        request: Callable[[], Awaitable[T]],
        *,
        expected: Callable[[UpstreamError], bool] | None = None,
    ) -> T:
        """One attempt; `expected` errors are raised without the `gateway.call_failed` warning."""
        self.calls[name] += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                return await request()
        except TimeoutError as exc:
            error: UpstreamError = UnknownOutcome(
                f"Stripe {name} got no answer within {self._timeout_s:g} s; the outcome is unknown", code="timeout"
            )
            log.warning("gateway.call_failed", call=name, error="UnknownOutcome", code="timeout")
            raise error from exc
        except stripe.StripeError as exc:
            error = self._translate(name, exc)
            if expected is not None and expected(error):
                raise error from exc
            log.warning(
                "gateway.call_failed",
                call=name,
                error=type(error).__name__,
                code=error.code,
                http_status=error.http_status,
                request_id=error.request_id,
            )
            raise error from exc

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "[REDACTED]")
        return _SECRET.sub("[REDACTED]", text)

    def _translate(self, name: str, exc: stripe.StripeError) -> UpstreamError:
        status = exc.http_status
        headers = exc.headers
        body = exc.json_body.get("error") if isinstance(exc.json_body, dict) else None
        error: dict[str, Any] = body if isinstance(body, dict) else {}
        code = exc.code or _str(error.get("code"))
        facts: dict[str, Any] = {
            "code": code,
            "http_status": status,
            "request_id": exc.request_id,
            "should_retry": _should_retry(headers),
            "replayed": _header(headers, "idempotent-replayed") == "true",
        }
        where = f"Stripe {name}"
        detail = self._scrub(_str(error.get("message")) or exc.user_message or "no message")
        if isinstance(exc, stripe.APIConnectionError):
            timed_out = isinstance(exc.__cause__, httpx.TimeoutException)
            facts["code"] = "timeout" if timed_out else "connection_error"
            what = "timed out" if timed_out else "lost its connection"
            return UnknownOutcome(f"{where} {what}; the outcome is unknown", **facts)
        if status is None or status < 400 or status >= 500:
            # No answer, an answer kiosk cannot read (even a 200), or a server error: the call may
            # have taken effect.
            return UnknownOutcome(f"{where} failed (HTTP {status}): {detail}", **facts)
        # A concurrent request with the same key is a 409 of type idempotency_error: wait, not a bug.
        if isinstance(exc, stripe.RateLimitError) or status in {409, 429}:
            return Throttled(
                f"{where} was throttled (HTTP {status}, {code}): {detail}",
                retry_after=_retry_after(headers),
                **facts,
            )
        if isinstance(exc, stripe.IdempotencyError) or error.get("type") == "idempotency_error":
            return IdempotencyMisuse(f"{where}: idempotency key reused with other parameters", **facts)
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError) or status in {401, 403}:
            return StripeAuthError(f"{where} refused the API key (HTTP {status}): {detail}", **facts)
        return StripeRefused(
            f"{where} refused (HTTP {status}, {code}): {detail}",
            decline_code=_str(error.get("decline_code")),
            param=_str(error.get("param")),
            **facts,
        )
