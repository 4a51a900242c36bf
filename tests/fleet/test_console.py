"""`kiosk fleet status|config|cmd` against a real Mosquitto with two kiosks (two daemons, one simulator)."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from kiosk import __version__, cli
from kiosk.fleet import console, signing
from tests.harness import Daemon, retained

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto


def test_assignments_nest_parse_json_and_null_removes() -> None:
    base = {"payments": {"card_timeout_s": 30, "max_card_attempts": 2}, "currency": ["usd"]}
    config = console.parse_assignments(
        ["payments.card_timeout_s=45", "maintenance.enabled=true", "maintenance.message=back soon", "currency=null"],
        base,
    )
    assert config == {
        "payments": {"card_timeout_s": 45, "max_card_attempts": 2},
        "maintenance": {"enabled": True, "message": "back soon"},
    }
    assert base["payments"] == {"card_timeout_s": 30, "max_card_attempts": 2}  # not changed in place


def test_rows_come_from_retained_state_and_health_and_a_silent_kiosk_is_stale() -> None:
    seen: list[tuple[str, dict[str, object] | None]] = [
        ("fleet/v1/b/state", {"state": "online", "version": "1.0", "session": 2, "config_version": 3}),
        (
            "fleet/v1/b/health",
            {"ts": "2026-01-01T00:00:00Z", "period_s": 60, "orders": {"open": 1}, "reader": {"status": "online"}},
        ),
        ("fleet/v1/a/state", {"state": "offline", "version": "0.9"}),
        ("fleet/v1/_console/x/marker", None),
    ]
    rows = console.fleet_rows(seen, "fleet/v1", now=1767225600.0 + 600)
    assert [r["kiosk"] for r in rows] == ["a", "b"]
    assert rows[1]["stale"] is True  # 10 minutes without health at a 60 s period
    assert rows[1]["health_age_s"] == 600
    lines = console.table(rows)
    assert lines[0].split()[:3] == ["KIOSK", "STATE", "VERSION"]
    assert "online (stale)" in lines[2]


@dataclass
class Fleet:
    broker: Mosquitto
    daemons: dict[str, Daemon]
    key_path: Path

    async def console(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await asyncio.to_thread(cli.main, ["fleet", *argv, "--broker", self.broker.url], out=out, err=out)
        return code, out.getvalue()


@pytest.fixture(name="fleet")
async def fixture_fleet(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Fleet]:
    from kiosk.simulator import Simulator  # noqa: PLC0415 - only end-to-end tests load it

    key = signing.generate()
    key_path = tmp_path / "operator.pem"
    key_path.write_bytes(signing.private_pem(key))
    handle = Simulator(seed=5).start_in_thread()
    daemons: dict[str, Daemon] = {}
    try:
        for kiosk_id in ("k1", "k2"):
            workdir = tmp_path / kiosk_id
            workdir.mkdir()
            daemons[kiosk_id] = Daemon(
                workdir,
                broker_url=broker.url,
                api_base=handle.url,
                reader_id=handle.simulator.register_reader("simulated-wpe"),
                ID=kiosk_id,
                FLEET__ENABLED="true",
                FLEET__SIGNING_PUBLIC_KEY=signing.public_key_text(key.public_key()),
            )
            daemons[kiosk_id].start()
        async with asyncio.timeout(30):
            while True:
                states = await retained(broker.host, broker.port, "fleet/v1/+/health")
                if len(states) == 2:
                    break
                await asyncio.sleep(0.2)
        yield Fleet(broker, daemons, key_path)
    finally:
        for daemon in daemons.values():
            if daemon.alive():
                daemon.terminate()
            print(daemon.log()[-3000:])
        handle.stop()


async def test_status_shows_every_kiosk_with_its_version_and_health(fleet: Fleet) -> None:
    code, out = await fleet.console("status")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["KIOSK", "STATE", "VERSION", "CONFIG"]
    assert [line.split()[:3] for line in lines[1:]] == [["k1", "online", __version__], ["k2", "online", __version__]]
    code, out = await fleet.console("status", "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["kiosk"] for r in rows] == ["k1", "k2"]
    for row in rows:
        assert row["state"] == "online"
        assert row["orders"]["open"] == 0
        assert row["payments"] == "available"
        assert row["health_age_s"] is not None
        assert row["stale"] is False


async def test_a_signed_config_change_applies_to_one_kiosk_and_a_bad_one_is_rejected_with_its_path(
    fleet: Fleet,
) -> None:
    key = str(fleet.key_path)
    code, out = await fleet.console("config", "set", "k1", "payments.card_timeout_s=45", "--key", key)
    assert code == 0, out
    assert "version 1 applied" in out
    reported = {
        s.topic.split("/")[2]: s.payload
        for s in await retained(fleet.broker.host, fleet.broker.port, "fleet/v1/+/config/reported")
    }
    assert reported["k1"]["effective"]["payments"]["card_timeout_s"] == 45
    assert reported["k2"]["effective"]["payments"]["card_timeout_s"] == 30
    code, out = await fleet.console("config", "set", "k1", "payments.card_timeout_s=-1", "--key", key)
    assert code == 1, out
    assert "version 2 rejected" in out
    assert "payments.card_timeout_s:" in out
    code, out = await fleet.console("status", "--json")
    rows = {json.loads(line)["kiosk"]: json.loads(line) for line in out.strip().splitlines()}
    assert rows["k1"]["config_version"] == 1
    assert rows["k2"]["config_version"] is None
    code, out = await fleet.console("config", "show", "k1")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["desired"]["version"] == 2
    assert shown["reported"]["status"] == "rejected"


async def test_signed_commands_print_their_one_response(fleet: Fleet) -> None:
    key = str(fleet.key_path)
    code, out = await fleet.console("cmd", "k2", "ping", "--key", key)
    assert code == 0, out
    response = json.loads(out)
    assert response["status"] == "ok"
    assert response["data"]["pong"] is True
    code, out = await fleet.console(
        "cmd", "k1", "set_maintenance", '{"enabled": true, "message": "cleaning"}', "--key", key
    )
    assert code == 0, out
    code, out = await fleet.console("cmd", "k1", "self_destruct", "--key", key)
    assert code == 1, out
    assert json.loads(out)["error"]["code"] == "unknown_command"


async def test_an_absent_kiosk_or_broker_is_one_sentence_and_exit_1(fleet: Fleet, tmp_path: Path) -> None:
    code, out = await fleet.console("cmd", "k9", "ping", "--key", str(fleet.key_path), "--wait", "1")
    assert code == 1
    assert "k9 did not answer ping within 1 s" in out
    out_buf = io.StringIO()
    code = await asyncio.to_thread(
        cli.main, ["fleet", "status", "--broker", "mqtt://127.0.0.1:1"], out=out_buf, err=out_buf
    )
    assert code == 1
    assert "cannot be used" in out_buf.getvalue()
    assert "Traceback" not in out_buf.getvalue()
    del tmp_path
