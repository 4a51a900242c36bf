"""Logging: JSON lines off a terminal, a console on one, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import pytest

from kiosk import logs

if TYPE_CHECKING:
    from collections.abc import Iterator

# One of each kind of Stripe secret, as they appear in real keys.
STRIPE_SECRETS = [
    "sk_test_51KioskTestSecretValue0123456789",
    "sk_live_51KioskLiveSecretValue0123456789",
    "rk_test_51KioskRestrictedTestValue012345",
    "rk_live_51KioskRestrictedLiveValue012345",
    "whsec_KioskWebhookSigningSecret0123456789",
]
# A configured secret that looks like nothing in particular (an MQTT password).
PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - a test value the output must never show


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    logs.reset()
    yield
    logs.reset()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets or (*STRIPE_SECRETS, PASSWORD):
        assert secret not in text
        # Not even the part after the prefix.
        assert secret.split("_")[-1] not in text


def test_json_lines_when_the_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    logs.configure(stream=out)
    logs.get("bus").info("bus.connected", host="127.0.0.1", port=1883, clean=False)
    logs.get("bus").warning("bus.disconnected", reconnect_in_s=2.5)
    first, second = json_lines(out)
    assert first["event"] == "bus.connected"
    assert first["level"] == "info"
    assert first["logger"] == "bus"
    assert (first["host"], first["port"], first["clean"]) == ("127.0.0.1", 1883, False)
    assert first["timestamp"].endswith("Z")
    assert (second["event"], second["level"], second["reconnect_in_s"]) == ("bus.disconnected", "warning", 2.5)


def test_a_readable_console_when_asked() -> None:
    out = io.StringIO()
    logs.configure(stream=out, json=False)
    logs.get("bus").info("bus.connected", host="127.0.0.1")
    line = out.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert "bus.connected" in line
    assert "host=127.0.0.1" in line
    assert "[info" in line


def test_a_terminal_gets_the_console() -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", encoding="utf-8", closefd=False) as tty:
            logs.configure(stream=tty)
            logs.get("bus").info("bus.connected", host="127.0.0.1")
            tty.flush()
        text = os.read(leader, 65536).decode()
    finally:
        os.close(follower)
        os.close(leader)
    assert "bus.connected" in text
    assert "127.0.0.1" in text
    assert not text.lstrip().startswith("{")


def test_the_level_filters_both_structlog_and_library_records() -> None:
    out = io.StringIO()
    logs.configure(stream=out, level="warning")
    logs.get("bus").info("bus.quiet")
    logging.getLogger("aiomqtt").info("library chatter")
    logs.get("bus").warning("bus.loud")
    logging.getLogger("aiomqtt").error("library trouble")
    assert [line["event"] for line in json_lines(out)] == ["bus.loud", "library trouble"]


def test_library_info_is_quietened_but_warnings_pass() -> None:
    out = io.StringIO()
    logs.configure(stream=out, level="info")
    logging.getLogger("httpx").info("HTTP Request: POST https://api.stripe.com/v1/payment_intents")
    logging.getLogger("stripe").warning("retrying request")
    [line] = json_lines(out)
    assert (line["event"], line["logger"], line["level"]) == ("retrying request", "stripe", "warning")


def test_configure_again_replaces_the_output_and_keeps_other_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    others = list(logging.getLogger().handlers)
    logs.configure(stream=first)
    logs.configure(stream=second, json=False)
    logs.get("t").info("t.once")
    logging.getLogger("t").warning("stdlib once")
    assert first.getvalue() == ""
    assert second.getvalue().count("t.once") == 1
    assert second.getvalue().count("stdlib once") == 1
    assert len(logging.getLogger().handlers) == len(others) + 1
    logs.reset()
    assert logging.getLogger().handlers == others


@pytest.mark.parametrize("secret", STRIPE_SECRETS)
@pytest.mark.parametrize("use_json", [True, False])
def test_stripe_secrets_are_removed_from_fields_nested_values_and_messages(secret: str, *, use_json: bool) -> None:
    out = io.StringIO()
    logs.configure(stream=out, json=use_json)
    logs.get("gateway").info(
        f"gateway.key_loaded {secret}",
        key=secret,
        header=f"Bearer {secret}",
        nested={"auth": {"key": secret}, "list": [1, secret, {"deeper": (secret,)}]},
        raw=secret.encode(),
    )
    text = out.getvalue()
    assert_clean(text, secret)
    assert text.count(logs.REDACTED) >= 6
    if use_json:
        [line] = json_lines(out)
        assert line["event"] == f"gateway.key_loaded {logs.REDACTED}"
        assert line["header"] == f"Bearer {logs.REDACTED}"
        assert line["nested"] == {
            "auth": {"key": logs.REDACTED},
            "list": [1, logs.REDACTED, {"deeper": [logs.REDACTED]}],
        }


def test_a_key_inside_a_longer_word_is_still_removed() -> None:
    scrub = logs.Redactor().scrub
    key = STRIPE_SECRETS[1]
    assert scrub(f"api_key_{key}") == f"api_key_{logs.REDACTED}"
    assert scrub(f"key={key}&x=1") == f"key={logs.REDACTED}&x=1"
    assert scrub(f'{{"key":"{key}"}}') == f'{{"key":"{logs.REDACTED}"}}'
    # Publishable keys are not secret, and ordinary words stay.
    assert scrub("pk_live_51Abc and task_list") == "pk_live_51Abc and task_list"


def test_configured_secrets_are_removed_longest_first() -> None:
    redactor = logs.Redactor([PASSWORD, "horse", "pw"])
    assert redactor.scrub(f"login {PASSWORD} / horse / pw") == f"login {logs.REDACTED} / {logs.REDACTED} / pw"
    redactor.reset()
    assert redactor.scrub(PASSWORD) == PASSWORD


def test_configured_secrets_are_removed_from_every_event() -> None:
    out = io.StringIO()
    logs.configure(stream=out, secrets=[PASSWORD])
    logs.get("bus").info("bus.login", password=PASSWORD, url=f"mqtt://kiosk:{PASSWORD}@broker")
    [line] = json_lines(out)
    assert line["password"] == logs.REDACTED
    assert line["url"] == f"mqtt://kiosk:{logs.REDACTED}@broker"
    assert_clean(out.getvalue())


class Credentials:
    """An object whose text form carries a secret (as a library's repr might)."""

    def __str__(self) -> str:
        return f"Credentials({STRIPE_SECRETS[0]})"


def test_objects_are_rendered_to_text_and_scrubbed() -> None:
    out = io.StringIO()
    logs.configure(stream=out)
    logs.get("gateway").info("gateway.client", client=Credentials(), error=RuntimeError(STRIPE_SECRETS[1]))
    [line] = json_lines(out)
    assert line["client"] == f"Credentials({logs.REDACTED})"
    assert line["error"] == f"RuntimeError('{logs.REDACTED}')"
    assert_clean(out.getvalue())


def fail_with_secrets() -> None:
    # The literal keys are in the source line too, which a console traceback quotes.
    raise RuntimeError("Stripe refused sk_live_51KioskLiveSecretValue0123456789 and " + PASSWORD)


@pytest.mark.parametrize("use_json", [True, False])
def test_exception_text_and_tracebacks_are_scrubbed(*, use_json: bool) -> None:
    out = io.StringIO()
    logs.configure(stream=out, json=use_json, secrets=[PASSWORD])
    log = logs.get("gateway")
    try:
        fail_with_secrets()
    except RuntimeError:
        log.exception("gateway.request_failed", order_id="o-1")
    text = out.getvalue()
    assert "gateway.request_failed" in text
    assert "fail_with_secrets" in text  # the traceback is there
    assert "Stripe refused" in text
    assert_clean(text)
    if use_json:
        [line] = json_lines(out)
        assert line["level"] == "error"
        [exc] = line["exception"]
        assert exc["exc_type"] == "RuntimeError"
        assert exc["exc_value"] == f"Stripe refused {logs.REDACTED} and {logs.REDACTED}"
        assert "locals" not in exc["frames"][-1]
    else:
        assert "Traceback (most recent call last)" in text
        assert 'raise RuntimeError("Stripe refused [REDACTED] and " + PASSWORD)' in text


def lookup_with_a_cause() -> None:
    try:
        fail_with_webhook_secret()
    except ValueError as exc:
        raise LookupError(f"no account for {STRIPE_SECRETS[2]}") from exc


def fail_with_webhook_secret() -> None:
    raise ValueError(STRIPE_SECRETS[4])


def test_chained_exceptions_are_scrubbed_too() -> None:
    out = io.StringIO()
    logs.configure(stream=out, json=False)
    try:
        lookup_with_a_cause()
    except LookupError:
        logs.get("gateway").exception("gateway.lookup_failed")
    text = out.getvalue()
    assert "The above exception was the direct cause" in text
    assert_clean(text)


def fail_to_connect() -> None:
    raise ConnectionError(f"bad key {STRIPE_SECRETS[3]}")


@pytest.mark.parametrize("use_json", [True, False])
def test_standard_library_records_are_scrubbed(*, use_json: bool) -> None:
    out = io.StringIO()
    logs.configure(stream=out, json=use_json, secrets=[PASSWORD])
    stripe_log = logging.getLogger("stripe")
    stripe_log.warning("request with key %s failed", STRIPE_SECRETS[0])
    stripe_log.warning(f"webhook secret {STRIPE_SECRETS[4]}")  # libraries do this
    logging.getLogger("aiomqtt").error("auth failed", extra={"password": PASSWORD})
    try:
        fail_to_connect()
    except ConnectionError:
        logging.getLogger("httpx").exception("transport error for %s", STRIPE_SECRETS[1])
    text = out.getvalue()
    assert text.count("request with key [REDACTED] failed") == 1
    assert "auth failed" in text
    assert "ConnectionError" in text
    assert_clean(text)
    if use_json:
        lines = json_lines(out)
        assert [line["logger"] for line in lines] == ["stripe", "stripe", "aiomqtt", "httpx"]
        assert lines[2]["password"] == logs.REDACTED


def test_secrets_accumulate_across_configure_calls() -> None:
    out = io.StringIO()
    logs.configure(stream=io.StringIO(), secrets=[PASSWORD])
    logs.configure(stream=out)
    logs.get("t").info("t.line", value=PASSWORD)
    assert_clean(out.getvalue())


class _BrokenStream(io.StringIO):
    def write(self, _text: str) -> int:
        raise OSError(32, "Broken pipe")


def test_an_output_that_fails_never_breaks_the_caller() -> None:
    logs.configure(stream=_BrokenStream(), json=True)
    logs.get("runner").info("order.status", order_id="o-1", state="approved")  # must not raise
    logs.get("runner").error("payment.authorization_expired", order_id="o-1")
