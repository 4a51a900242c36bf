"""Fleet pieces without a broker: signatures, the sign/keygen commands, remote config rules, probes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kiosk import cli
from kiosk.errors import ConfigError
from kiosk.fleet import health, remote_config, signing
from kiosk.fleet.topics import Incoming, Topics
from kiosk.settings import Settings

LOCAL = Settings.model_validate(
    {
        "id": "k1",
        "stripe": {"api_key": "sk_test_unit000000000000", "reader_id": "tmr_unit"},
        "state_dir": "/var/lib/kiosk",
    }
)


def test_canonical_json_is_sorted_compact_utf8_without_sig() -> None:
    payload = {"b": 1, "a": {"z": "é", "y": [1, 2]}, "sig": "x"}
    assert signing.canonical(payload) == '{"a":{"y":[1,2],"z":"é"},"b":1}'.encode()


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    key = signing.generate()
    public = signing.public_key(signing.public_key_text(key.public_key()))
    signed = signing.sign({"version": 2, "config": {"max_amount": 5}}, key)
    assert signing.verify(signed, public)
    assert signing.verify(dict(reversed(list(signed.items()))), public)  # key order does not matter
    assert not signing.verify({**signed, "version": 3}, public)
    assert not signing.verify({k: v for k, v in signed.items() if k != "sig"}, public)
    assert not signing.verify({**signed, "sig": "not base64!"}, public)
    other = signing.public_key(signing.public_key_text(signing.generate().public_key()))
    assert not signing.verify(signed, other)


@pytest.mark.parametrize("text", ["", "abc", "AAAA", "aGVsbG8="])
def test_a_public_key_that_is_not_32_bytes_of_base64_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"fleet\.signing_public_key"):
        signing.public_key(text)


def test_keygen_then_sign_from_the_command_line(tmp_path: Path) -> None:
    key_path = tmp_path / "op.pem"
    out = io.StringIO()
    assert cli.main(["fleet", "keygen", "--out", str(key_path)], out=out, err=io.StringIO()) == 0
    assert key_path.stat().st_mode & 0o777 == 0o600
    public = signing.public_key(out.getvalue().splitlines()[-1])
    payload = tmp_path / "cmd.json"
    payload.write_text(json.dumps({"args": {"order_id": "o1"}}))
    out = io.StringIO()
    assert cli.main(["fleet", "sign", "--key", str(key_path), "--file", str(payload), "--command"], out=out) == 0
    signed = json.loads(out.getvalue())
    assert signed["request_id"]
    assert signed["expires_at"].endswith("Z")
    assert signing.verify(signed, public)
    err = io.StringIO()
    assert cli.main(["fleet", "keygen", "--out", str(key_path)], out=io.StringIO(), err=err) == 2
    assert "exists already" in err.getvalue()


def test_remote_config_lays_the_subset_over_local_settings() -> None:
    desired = remote_config.validate(
        LOCAL,
        {
            "currency": ["usd", "eur"],
            "max_amount": 900,
            "payments": {"card_timeout_s": 20, "max_card_attempts": 2},
            "fleet": {"health_period_s": 15},
            "maintenance": {"enabled": True, "message": "cleaning"},
        },
    )
    assert desired.settings.currency == ("usd", "eur")
    assert desired.settings.payments.card_timeout_s == 20
    assert desired.settings.fleet.health_period_s == 15
    assert desired.settings.stripe == LOCAL.stripe
    assert desired.maintenance == remote_config.Maintenance(enabled=True, message="cleaning")
    assert not remote_config.needs_restart(LOCAL, desired.settings)
    assert remote_config.validate(LOCAL, {}).settings == LOCAL  # keys left out: the local values


def test_remote_config_refuses_with_one_error_per_field_using_the_local_rules() -> None:
    with pytest.raises(remote_config.Invalid) as caught:
        remote_config.validate(
            LOCAL,
            {
                "currency": ["USD"],
                "max_amount": 0,
                "payments": {"card_timeout_s": 601, "flow": "collect_confirm"},
                "fleet": {"health_period_s": 5},
                "mqtt": {"url": "mqtt://evil:1883"},
                "maintenance": {"enabled": "yes"},
            },
        )
    errors = {e["path"]: e["message"] for e in caught.value.errors}
    assert set(errors) == {
        "currency",
        "max_amount",
        "payments.card_timeout_s",
        "payments.flow",
        "fleet.health_period_s",
        "mqtt.url",
        "maintenance.enabled",
    }
    assert "lower-case ISO 4217" in errors["currency"]
    assert "at most 600" in errors["payments.card_timeout_s"]
    assert "cannot be set remotely" in errors["mqtt.url"]


def test_a_restart_only_setting_is_reported_as_such() -> None:
    desired = remote_config.validate(LOCAL, {"payments": {"request_timeout_s": 7}})
    assert remote_config.needs_restart(LOCAL, desired.settings)


def test_probes_read_proc_and_sys(tmp_path: Path) -> None:
    assert (health.rss_mb() or 0) > 1
    assert (health.disk_free_mb(tmp_path) or 0) > 0
    assert health.disk_free_mb(tmp_path / "missing") is None
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert health.cpu_temp_c(zone) == 48.3
    assert health.cpu_temp_c(tmp_path / "none") is None
    status = tmp_path / "status"
    status.write_text("Name:\tkiosk\nVmRSS:\t   40960 kB\n")
    assert health.rss_mb(status) == 40.0
    errors = [0.0, 100.0, 3700.0, 3900.0]
    assert health.recent_errors(errors, now=4000.0) == 2
    assert errors == [3700.0, 3900.0]


def test_topics_parse_only_this_kiosks_requests() -> None:
    topics = Topics("fleet/v1", "k1")
    assert topics.parse("fleet/v1/k1/cmd/ping/req") == Incoming("cmd", "ping")
    assert topics.parse("fleet/v1/k1/jobs/j-1/doc") == Incoming("job", "j-1")
    assert topics.parse("fleet/v1/k1/events/ack") == Incoming("ack")
    assert topics.parse("fleet/v1/k1/config/desired") == Incoming("desired")
    assert topics.parse("fleet/v1/k1/state") == Incoming("state")
    assert topics.parse("fleet/v1/k1/cmd/ping/res") is None
    assert topics.parse("fleet/v1/k10/state") is None
    assert topics.parse("vend/v1/order/o1/request") is None
